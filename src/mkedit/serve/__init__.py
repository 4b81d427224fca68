"""``mkedit serve``: an OpenAI-compatible HTTP server for a model with an edit cache in force.

:mod:`mkedit.serve.engine` (model, live edits, generation) needs only torch; :mod:`mkedit.serve.app`
(the FastAPI routes) needs the ``serve`` extra, checked by :func:`require_serve_deps` before it is imported.
"""

from __future__ import annotations

import importlib.util

from mkedit.errors import MkeditError

SERVE_PIP = "pip install 'mkedit[serve]'"


class ServeUnavailableError(MkeditError, RuntimeError):
    """fastapi or uvicorn is not installed."""


def require_serve_deps() -> None:
    """Refuse early, naming the pip line, when the ``serve`` extra is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ServeUnavailableError(
            f"mkedit serve needs {' and '.join(missing)}: {SERVE_PIP} (or pip install 'fastapi>=0.115' 'uvicorn>=0.30')"
        )

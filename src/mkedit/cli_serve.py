"""``mkedit serve``: the model with an edit cache in force, behind an OpenAI-compatible HTTP API (uvicorn)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from mkedit.cli_common import err, fail, load_quietly
from mkedit.cli_options import DeviceOpt, DtypeOpt, ModelOpt
from mkedit.errors import CacheError, MkeditError
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.cache import INDEX_FILE
from mkedit.serve import require_serve_deps


def serve_command(
    model: ModelOpt = DEFAULT_MODEL,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Edit cache folder to apply (reloaded when it changes)")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on")] = 8000,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models).

    The cache's edits are in force as its method applies them; each response names the edits that acted on
    it (field mkedit_edits_applied, header X-Mkedit-Edits-Applied). The cache folder is checked before every
    request and reloaded when it changed, so `mkedit edit --out` into it takes effect without a restart.
    Requests are answered one at a time; logs go to stderr.
    """
    try:
        require_serve_deps()
        if cache is not None and not (cache / INDEX_FILE).is_file():  # before the model loads
            raise CacheError(f"{cache} is not an mkedit edit cache (no {INDEX_FILE})")
        import uvicorn

        from mkedit.serve.app import create_app
        from mkedit.serve.engine import Engine

        engine = Engine(load_quietly(model, device, dtype), cache)
    except MkeditError as exc:
        raise fail(exc) from exc
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("mkedit.serve").setLevel(logging.INFO)  # cache reloads are worth seeing
    edits = f"{engine.edits.count} edit(s) from {cache}" if cache else "no edits"
    err.print(f"serving {engine.name} with {edits} at http://{host}:{port}/v1", markup=False, highlight=False)
    try:
        uvicorn.run(create_app(engine), host=host, port=port, log_config=_log_config(uvicorn.config.LOGGING_CONFIG))
    finally:
        engine.close()


def _log_config(default: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging with its access log on stderr too (it prints it on stdout by default)."""
    config = copy.deepcopy(default)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config

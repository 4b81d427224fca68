"""What the ``mkedit`` commands share: the two output streams, error and warning lines, and loading a model
(and the method an edit cache was made with) with a status line on stderr."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mkedit.methods.base import EditMethod
from mkedit.methods.config import ConfigError
from mkedit.methods.registry import method_for_cache as registry_method_for_cache
from mkedit.models import load_model
from mkedit.runtime.cache import EditCache

console = Console()  # results
err = Console(stderr=True)  # status, logs, errors: `--json | jq` keeps working


def progress_bar() -> Progress:
    """The long commands' progress bar, on stderr: what, bar, done / total, time taken and time left."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=err)


def fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as one error line on stderr; raise the returned exit (code 1)."""
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)  # one line, text as is
    return typer.Exit(code=1)


def warn(message: str) -> None:
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def load_quietly(model: str, device: str, dtype: str):
    """The model, loaded with a status line (and the conversion's progress) on stderr."""
    with err.status(f"loading {model} (the first use of a packaged model converts it once, ~1-2 min)"):
        return load_model(model, device=device, dtype=dtype, progress=lambda msg: err.log(msg))


def method_for_cache(cache: EditCache, loaded, method: str | None = None) -> EditMethod:
    """The method a cache was made with, configured as it was; ``method`` (if given) must agree."""
    if method and method != cache.method:
        raise ConfigError(f"this edit cache holds {cache.method} edits, not {method} ones")
    return registry_method_for_cache(cache, loaded.model, loaded.tokenizer, loaded.name)

"""Ctrl-C in a long, resumable command: say on stderr what was saved and how to resume, and exit 130.

``mkedit edit`` saves the cache after every edit and ``mkedit eval`` appends every record as it finishes,
so an interrupted run loses at most the item in progress; the user should be told so, not left with a
bare exit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from mkedit.runtime.cache import INDEX_FILE

F = TypeVar("F", bound=Callable[..., Any])

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def resumable(saved: Callable[[dict[str, Any]], str]) -> Callable[[F], F]:
    """Decorate a typer command: a KeyboardInterrupt prints ``interrupted: <saved(kwargs)>; run the same
    command again to resume`` on stderr and exits 130. ``saved`` gets the command's keyword arguments."""

    def wrap(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                try:
                    what = saved(kwargs)
                except Exception:  # the message must not hide the interruption
                    what = "what was saved so far is kept"
                Console(stderr=True).print(
                    f"interrupted: {what}; run the same command again to resume",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(code=INTERRUPTED_EXIT_CODE) from None

        return run  # type: ignore[return-value]

    return wrap


def saved_edits(folder: Path | None) -> str:
    """How many edits the cache folder holds (read from its index alone: cheap for any size)."""
    index_path = Path(folder) / INDEX_FILE if folder is not None else None
    if index_path is None or not index_path.is_file():
        return f"no edit saved yet in {folder}"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if "shards" in index:
        count = sum(int(shard.get("edits", 0)) for shard in index["shards"])
    else:
        count = len(index.get("edits", []))
    return f"{count} edit(s) saved in {folder}"


def saved_records(folder: Path | None) -> str:
    """How many records an evaluation run folder holds."""
    from mkedit.eval.runner import RECORDS_FILE, read_rows

    path = Path(folder) / RECORDS_FILE if folder is not None else None
    if path is None or not path.is_file():
        return f"no record saved yet in {folder}"
    return f"{len(read_rows(path, repair=False))} record(s) saved in {path}"

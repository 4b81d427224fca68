"""``mkedit <command>``: thin functions over the library, with progress bars for the long steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mkedit.cli_data import data_app
from mkedit.cli_eval import eval_command
from mkedit.cli_report import report_command
from mkedit.data import load_edit_groups
from mkedit.errors import MkeditError
from mkedit.methods.lu_lafns import LuLafnEditor, get_preset, preset_for
from mkedit.methods.lu_lafns.editor import edit_id_for
from mkedit.models import load_model
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.cache import INDEX_FILE, EditCache
from mkedit.runtime.edited_model import EditedModel
from mkedit.types import EditGroup

app = typer.Typer(help="Multilingual knowledge editing with language-agnostic factual neurons (LU-LAFNs).")
app.add_typer(data_app, name="data")
app.command("report")(report_command)
app.command("eval")(eval_command)
console = Console()

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Packaged short name, HF id, local folder or .gguf")]
LangsOpt = Annotated[str | None, typer.Option(help="Comma-separated languages to use, e.g. en,zh")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=1)


def _split(langs: str | None) -> list[str] | None:
    return [x.strip() for x in langs.split(",") if x.strip()] if langs else None


def _load(model: str):
    with console.status(f"loading {model} (the first use of a packaged model converts it once, ~1-2 min)"):
        return load_model(model, progress=lambda msg: console.log(msg))


@app.command()
def edit(
    edits: Annotated[Path, typer.Option(help="JSON or JSONL list of edit groups ({lang: {subject, src, alt}})")],
    out: Annotated[Path, typer.Option(help="Edit cache folder (created, or extended if it exists)")],
    model: ModelOpt = DEFAULT_MODEL,
    langs: LangsOpt = None,
    preset: Annotated[str | None, typer.Option(help="Hyperparameter preset (default: chosen by model name)")] = None,
) -> None:
    """Edit facts in several languages at once and store the edits in a cache folder.

    The cache is saved after every edit, so an interrupted run resumes where it stopped: groups whose
    edit (same id, same answers) is already in the cache are skipped.
    """
    try:
        groups = load_edit_groups(edits, _split(langs))
        loaded = _load(model)
        config = get_preset(preset).config if preset else preset_for(loaded.name).config
        editor = LuLafnEditor(loaded.model, loaded.tokenizer, config, loaded.name)
        cache = EditCache.load(out, loaded.model, loaded.name) if (out / INDEX_FILE).is_file() else editor.new_cache()
    except MkeditError as exc:
        raise _fail(exc) from exc
    todo = [g for g in groups if not _already_cached(cache, g)]
    if len(todo) < len(groups):
        console.print(f"{len(groups) - len(todo)} edit(s) already in {out}; skipping them")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("edits", total=len(todo))
        steps = progress.add_task("optimising", total=editor.config.max_steps)
        for group in todo:
            progress.update(steps, completed=0, description=f"optimising {group.group_id}")
            try:
                record = editor.edit(group, on_step=lambda step, _loss: progress.update(steps, completed=step))
            except MkeditError as exc:
                console.print(f"[yellow]skipped {group.group_id}:[/yellow] {exc}")
                progress.advance(overall)
                continue
            for old in cache.add(record):
                console.print(f"edit {record.edit_id} replaces {old} (same subject)")
            cache.save(out)
            progress.advance(overall)
    console.print(f"{len(cache)} edit(s) in {out}")


def _already_cached(cache: EditCache, group: EditGroup) -> bool:
    edit_id = edit_id_for(group)
    if edit_id not in cache:
        return False
    return cache.get(edit_id).info.get("answers") == {r.lang: r.answer for r in group.requests}


@app.command()
def ask(
    questions: Annotated[list[str], typer.Argument(help="Questions to answer")],
    model: ModelOpt = DEFAULT_MODEL,
    cache: Annotated[Path | None, typer.Option(help="Edit cache folder to apply")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    max_new_tokens: int = 16,
) -> None:
    """Answer questions greedily, with the cached edits applied where a question holds their subject."""
    try:
        loaded = _load(model)
        edits = (
            EditCache.load(cache, loaded.model, loaded.name)
            if cache
            else LuLafnEditor(loaded.model, loaded.tokenizer, model_name=loaded.name).new_cache()
        )
        answers = EditedModel(loaded.model, loaded.tokenizer, edits).ask(questions, max_new_tokens)
    except MkeditError as exc:
        raise _fail(exc) from exc
    if as_json:
        for a in answers:
            typer.echo(
                json.dumps(
                    {"question": a.question, "answer": a.answer, "edits_applied": a.edits_applied}, ensure_ascii=False
                )
            )
        return
    table = Table("question", "answer", "edits applied")
    for a in answers:
        table.add_row(a.question, a.answer, ", ".join(a.edits_applied) or "-")
    console.print(table)


@app.command()
def demo(
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path | None, typer.Option(help="Also save the demo's edit cache here")] = None,
) -> None:
    """Edit three counterfactual facts in English, Chinese and French; show answers before and after."""
    from mkedit.demo import run_demo

    try:
        run_demo(model, console, out)
    except MkeditError as exc:
        raise _fail(exc) from exc


if __name__ == "__main__":
    app()

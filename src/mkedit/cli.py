"""``mkedit <command>``: thin functions over the library, with progress bars for the long steps."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mkedit.cli_data import data_app
from mkedit.cli_eval import eval_command
from mkedit.cli_options import AddressOpt, DeviceOpt, DtypeOpt, LangsOpt, MethodOpt, ModelOpt, SetOpt, WorkersOpt
from mkedit.cli_report import report_command
from mkedit.data import load_edit_groups
from mkedit.errors import MkeditError
from mkedit.eval.distributed import WorkerPool, WorkerSpec, check_workers, edit_or_reason
from mkedit.methods.base import EditMethod, edit_id_for
from mkedit.methods.config import ConfigError, parse_overrides
from mkedit.methods.registry import build_method, check_method_options, get_method, method_names
from mkedit.models import load_model
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.cache import INDEX_FILE, EditCache
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.edited_model import ask as ask_view
from mkedit.types import EditGroup

app = typer.Typer(help="Multilingual knowledge editing with language-agnostic factual neurons (LU-LAFNs).")
app.add_typer(data_app, name="data")
app.command("report")(report_command)
app.command("eval")(eval_command)
console = Console()  # results
err = Console(stderr=True)  # status, logs, errors: `--json | jq` keeps working


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=1)


def _split(langs: str | None) -> list[str] | None:
    return [x.strip() for x in langs.split(",") if x.strip()] if langs else None


def _load(model: str, device: str, dtype: str):
    with err.status(f"loading {model} (the first use of a packaged model converts it once, ~1-2 min)"):
        return load_model(model, device=device, dtype=dtype, progress=lambda msg: err.log(msg))


@app.command()
def edit(
    edits: Annotated[Path, typer.Option(help="JSON or JSONL list of edit groups ({lang: {subject, src, alt}})")],
    out: Annotated[Path, typer.Option(help="Edit cache folder (created, or extended if it exists)")],
    model: ModelOpt = DEFAULT_MODEL,
    langs: LangsOpt = None,
    method: MethodOpt = "lu-lafns",
    preset: Annotated[str | None, typer.Option(help="Hyperparameter preset (default: chosen by model name)")] = None,
    overrides: SetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 0,
    address: AddressOpt = None,
) -> None:
    """Edit facts in several languages at once and store the edits in a cache folder.

    The cache is saved after every edit, so an interrupted run resumes where it stopped: groups whose
    edit (same id, same answers) is already in the cache are skipped. An existing cache keeps the method
    and hyperparameters it was made with. Progress goes to stderr; stdout gets the final count.
    """
    pool = None
    try:
        settings = parse_overrides(overrides)
        check_method_options(method, preset, settings)
        check_workers(workers, address)
        groups = load_edit_groups(edits, _split(langs))
        existing = EditCache.load(out) if (out / INDEX_FILE).is_file() else None
        if existing is not None:
            if method != "lu-lafns" and method != existing.method:
                raise ConfigError(f"this edit cache holds {existing.method} edits, not {method} ones")
            if preset or settings:
                raise ConfigError(f"{out} keeps the hyperparameters it was made with; use a new --out for others")
        if workers:
            config = existing.method_config if existing is not None else None
            spec = WorkerSpec(model, device, dtype, existing.method if existing else method, preset, settings, config)
            with err.status(f"starting {workers} Ray worker(s), each loading {model}"):
                pool = WorkerPool(spec, workers, address)
            fingerprint, method_name, method_config = pool.call_all(
                "cache_header", existing.fingerprint.weights_rounding if existing else "bfloat16"
            )[0]
            if existing is not None:
                existing.check_fingerprint(fingerprint)
            cache = existing or EditCache(fingerprint, method_name, method_config)
        else:
            loaded = _load(model, device, dtype)
            if existing is not None:
                existing.check_model(loaded.model, loaded.name)
                editor = _method_for_cache(existing, loaded)
            else:
                editor = build_method(method, loaded.model, loaded.tokenizer, loaded.name, preset, settings)
            cache = existing or editor.new_cache()
    except MkeditError as exc:
        if pool is not None:
            pool.close()
        raise _fail(exc) from exc
    todo = [g for g in groups if not _already_cached(cache, g)]
    if len(todo) < len(groups):
        err.print(f"{len(groups) - len(todo)} edit(s) already in {out}; skipping them")
    results = pool.map_ordered("edit", todo) if pool is not None else (edit_or_reason(editor, g) for g in todo)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as progress:
            overall = progress.add_task("edits", total=len(todo))
            for group, (record, reason) in zip(todo, results, strict=True):
                if record is None:
                    err.print(f"[yellow]skipped {group.group_id}:[/yellow] {reason}")
                else:
                    for old in cache.add(record):
                        err.print(f"edit {record.edit_id} replaces {old} (same subject)")
                    cache.save(out)
                progress.advance(overall)
    finally:
        if pool is not None:
            pool.close()
    typer.echo(f"{len(cache)} edit(s) in {out}")


def _method_for_cache(cache: EditCache, loaded, method: str | None = None) -> EditMethod:
    """The method a cache was made with, configured as it was; ``method`` (if given) must agree."""
    if method and method != cache.method:
        raise ConfigError(f"this edit cache holds {cache.method} edits, not {method} ones")
    config = get_method(cache.method).config_class.from_dict(cache.method_config)
    return build_method(cache.method, loaded.model, loaded.tokenizer, loaded.name, config=config)


@app.command()
def methods() -> None:
    """List the editing methods and their hyperparameters (the keys of --set), with class defaults."""
    for name in method_names():
        cls = get_method(name)
        typer.echo(f"{name}: {cls.summary}")
        defaults = cls.config_class().to_dict()
        for field, kind, doc in cls.config_class.describe_fields():
            value = defaults[field]
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            typer.echo(f"  {field} ({kind}; default {shown}): {doc}")
        typer.echo("")
    typer.echo("Layer choices and presets depend on the model: the values in force are written to run.json.")


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
    method: Annotated[
        str | None, typer.Option("--method", help="Method of the cache (default: the one it was made with)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    max_new_tokens: int = 16,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Answer questions greedily with the cached edits in force (LU-LAFNs: where a question holds their subject)."""
    try:
        if method:
            get_method(method)
        loaded = _load(model, device, dtype)
        device = next(loaded.model.parameters()).device
        if cache:
            edits = EditCache.load(cache, loaded.model, loaded.name)
            editor = _method_for_cache(edits, loaded, method)
            with editor.applied(list(edits)) as view:
                answers = ask_view(view, loaded.tokenizer, questions, max_new_tokens, device=device)
        else:  # the untouched model: no method (and none of its settings) is involved
            view = EditedModel(loaded.model, loaded.tokenizer, [])
            answers = ask_view(view, loaded.tokenizer, questions, max_new_tokens, device=device)
    except MkeditError as exc:
        raise _fail(exc) from exc
    if as_json:
        for a in answers:
            typer.echo(
                json.dumps(
                    {
                        "question": a.question,
                        "answer": a.answer,
                        "edits_applied": a.edits_applied,
                        "matches": [asdict(m) for m in a.matches],
                    },
                    ensure_ascii=False,
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
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Edit three counterfactual facts in English, Chinese and French; show answers before and after."""
    from mkedit.demo import run_demo

    try:
        run_demo(model, console, out, device, dtype, status=err)
    except MkeditError as exc:
        raise _fail(exc) from exc


if __name__ == "__main__":
    app()

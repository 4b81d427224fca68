"""``mkedit <command>``: thin functions over the library, with progress bars for the long steps."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mkedit.cli_analyze import analyze_app
from mkedit.cli_cache import cache_app
from mkedit.cli_common import console, err, fail, load_quietly, method_for_cache, warn
from mkedit.cli_data import data_app
from mkedit.cli_eval import eval_command
from mkedit.cli_interrupt import resumable, saved_edits
from mkedit.cli_options import AddressOpt, DeviceOpt, DtypeOpt, LangsOpt, MethodOpt, ModelOpt, SetOpt, WorkersOpt
from mkedit.cli_paraphrase import paraphrase_command, with_paraphrases
from mkedit.cli_report import report_command
from mkedit.cli_serve import serve_command
from mkedit.data import load_edit_groups
from mkedit.data.editable import editable_groups
from mkedit.errors import MkeditError, NothingToEditError
from mkedit.eval.distributed import WorkerPool, WorkerSpec, check_workers, edit_or_reason
from mkedit.facts import (
    FactPlan,
    FactUpdate,
    RelationJudge,
    already_done,
    commit_fact,
    plan_fact,
    subject_waves,
)
from mkedit.methods.config import ConfigError, parse_overrides
from mkedit.methods.lu_lafns.config import deployment_settings
from mkedit.methods.registry import build_method, check_method_options, get_method, method_names
from mkedit.models.registry import DEFAULT_MODEL
from mkedit.runtime.cache import INDEX_FILE, EditCache
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.edited_model import ask as ask_view

app = typer.Typer(help="Multilingual knowledge editing with language-agnostic factual neurons (LU-LAFNs).")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
app.add_typer(analyze_app, name="analyze")
app.command("report")(report_command)
app.command("eval")(eval_command)
app.command("serve")(serve_command)
app.command("paraphrase")(paraphrase_command)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )


def _split(langs: str | None) -> list[str] | None:
    return [x.strip() for x in langs.split(",") if x.strip()] if langs else None


@app.command()
@resumable(lambda kwargs: saved_edits(kwargs.get("out")))
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
    paraphrases: Annotated[
        Path | None, typer.Option("--paraphrases", help="Paraphrase file (mkedit paraphrase) to locate neurons with")
    ] = None,
) -> None:
    """Edit facts in several languages at once and store the edits in a cache folder.

    The cache is saved after every edit, so an interrupted run resumes where it stopped: groups whose
    edit (same id, same answers) is already in the cache are skipped (Ctrl-C says how many edits were
    saved, exit code 130). Groups whose subject no question names are skipped before the model loads;
    when nothing can be edited the command fails (exit code 1). An existing cache keeps the method
    and hyperparameters it was made with. LU-LAFNs edits are trained in chat form too (``chat_form``, for
    models with a chat template; ``--set chat_form=false`` gives the paper's objective alone). Progress goes
    to stderr; stdout gets the final count.
    """
    pool = None
    try:
        settings = parse_overrides(overrides)
        check_method_options(method, preset, settings)
        check_workers(workers, address)
        groups = load_edit_groups(edits, _split(langs))
        if paraphrases is not None:
            groups = with_paraphrases(groups, paraphrases).items
        existing = EditCache.load(out) if (out / INDEX_FILE).is_file() else None
        if existing is not None:
            if method != "lu-lafns" and method != existing.method:
                raise ConfigError(f"this edit cache holds {existing.method} edits, not {method} ones")
            if preset or settings:
                raise ConfigError(f"{out} keeps the hyperparameters it was made with; use a new --out for others")
        elif method == "lu-lafns":  # deployable edits: chat requests answered, the subject's other facts kept
            defaults, problem = deployment_settings()
            if problem and "relation_gate" not in settings:
                warn(problem)
            settings = {**defaults, **settings}
        needs_position = get_method(existing.method if existing is not None else method).needs_subject_position
        groups = editable_groups(groups, needs_position, warn, str(edits))  # before the model loads
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
            loaded = load_quietly(model, device, dtype)
            if existing is not None:
                existing.check_model(loaded.model, loaded.name)
                editor = method_for_cache(existing, loaded)
            else:
                editor = build_method(method, loaded.model, loaded.tokenizer, loaded.name, preset, settings)
            cache = existing or editor.new_cache()
    except MkeditError as exc:
        if pool is not None:
            pool.close()
        raise fail(exc) from exc
    todo = [g for g in groups if not already_done(cache, g)]
    if len(todo) < len(groups):
        err.print(f"{len(groups) - len(todo)} edit(s) already in {out}; skipping them")
    merge = get_method(cache.method).facts_share_edit
    judge = RelationJudge()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as progress:
            overall = progress.add_task("edits", total=len(todo))
            for wave in subject_waves(todo):
                plans = [plan_fact(cache, group, judge, merge) for group in wave]
                results = (
                    pool.map_ordered("edit", plans) if pool is not None else (edit_or_reason(editor, p) for p in plans)
                )
                for plan, (record, reason) in zip(plans, results, strict=True):
                    if record is None:
                        warn(f"skipped {plan.fact_id}: {reason}")
                    else:
                        _report_update(commit_fact(cache, plan, record, merge), plan)
                        cache.save(out)
                    progress.advance(overall)
    finally:
        if pool is not None:
            pool.close()
    if todo and cache.version == 0:  # the cache was opened by this command and never changed: nothing edited
        written = "" if (out / INDEX_FILE).is_file() else f"; {out} was not created"
        raise fail(NothingToEditError(f"nothing was edited: all {len(todo)} group(s) were skipped{written}"))
    typer.echo(f"{len(cache)} edit(s) in {out}")


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
        if notes := cls.preset_notes():
            typer.echo("  presets (--preset NAME; by default the one whose name occurs in the model's):")
            for preset, note in notes.items():
                typer.echo(f"    {preset}: {note}")
        typer.echo("")
    typer.echo("Layer choices and presets depend on the model: the values in force are written to run.json.")


def _report_update(update: FactUpdate, plan: FactPlan) -> None:
    """Say on stderr which cached facts a new fact replaced, and which it now stands beside."""
    if update.replaced:
        warn(f"fact {plan.fact_id} replaces {', '.join(update.replaced)} (the same relation of its subject)")
    if update.kept:
        warn(f"edit {plan.edit_id} holds {plan.fact_id} beside {', '.join(update.kept)} (other relations)")


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
        if empty := [str(n) for n, question in enumerate(questions, 1) if not question.strip()]:
            raise MkeditError(f"question {', '.join(empty)} is empty: give each question as non-empty text")
        if method:
            get_method(method)
        edits = EditCache.load(cache) if cache else None  # a damaged cache fails before the model loads
        loaded = load_quietly(model, device, dtype)
        device = next(loaded.model.parameters()).device
        if edits is not None:
            edits.check_model(loaded.model, loaded.name)
            editor = method_for_cache(edits, loaded, method)
            with editor.applied(list(edits)) as view:
                answers = ask_view(view, loaded.tokenizer, questions, max_new_tokens, device=device)
        else:  # the untouched model: no method (and none of its settings) is involved
            view = EditedModel(loaded.model, loaded.tokenizer, [])
            answers = ask_view(view, loaded.tokenizer, questions, max_new_tokens, device=device)
    except MkeditError as exc:
        raise fail(exc) from exc
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
        raise fail(exc) from exc


if __name__ == "__main__":
    app()

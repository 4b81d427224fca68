"""``mkedit eval``: run a benchmark with one method on one model, resumably, with a progress bar.

Methods come from :mod:`mkedit.methods.registry` (``--method``); ``--set KEY=VALUE`` overrides any of the
chosen method's hyperparameters, and the values in force are recorded in the run's ``run.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mkedit.cli_common import progress_bar
from mkedit.cli_interrupt import resumable, saved_records
from mkedit.cli_options import AddressOpt, DeviceOpt, DtypeOpt, LangsOpt, MethodOpt, ModelOpt, SetOpt, WorkersOpt
from mkedit.cli_paraphrase import with_paraphrases
from mkedit.cli_report import console_table
from mkedit.data import load_records
from mkedit.data.probes import SOURCES
from mkedit.errors import MkeditError
from mkedit.eval.distributed import WorkerPool, WorkerSpec, check_workers, run_distributed_evaluation
from mkedit.eval.runner import (
    HEATMAP_PNG,
    RECORDS_FILE,
    SETTINGS,
    SUMMARY_JSON,
    SUMMARY_MD,
    EvalConfig,
    run_evaluation,
)
from mkedit.methods.config import parse_overrides
from mkedit.methods.registry import build_method, check_method_options
from mkedit.models import load_model
from mkedit.models.registry import DEFAULT_MODEL


def _split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@resumable(lambda kwargs: saved_records(kwargs.get("out")))
def eval_command(
    data: Annotated[Path, typer.Option("--data", help="Benchmark file (MzsRE, Bi-ZsRE or an mkedit edit file)")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; an existing one is resumed)")],
    method: MethodOpt = "lu-lafns",
    model: ModelOpt = DEFAULT_MODEL,
    langs: LangsOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Evaluate at most N records")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first K records of the file")] = 0,
    setting: Annotated[str, typer.Option("--setting", help=f"One of {', '.join(SETTINGS)}")] = "multilingual",
    edit_lang: Annotated[
        str | None,
        typer.Option("--edit-lang", help="cross-lingual: the edited language; monolingual: languages to edit"),
    ] = None,
    sequential: Annotated[
        bool, typer.Option("--sequential", help="Keep every edit in the cache as the run goes")
    ] = False,
    generation: Annotated[
        bool, typer.Option("--generation/--no-generation", help="Also score greedy generations")
    ] = True,
    preset: Annotated[str | None, typer.Option("--preset", help="Method hyperparameter preset")] = None,
    overrides: SetOpt = None,
    specificity: Annotated[
        str,
        typer.Option(
            "--specificity",
            help="Specificity probe sources: field,dataset,templates (any of them), or none",
        ),
    ] = ",".join(SOURCES),
    probe_templates: Annotated[
        Path | None,
        typer.Option("--probe-templates", help="Relation templates for the templates source (JSON)"),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Most test prompts per forward")] = 64,
    reference_records: Annotated[
        int,
        typer.Option("--reference-records", min=1, help="Records whose pre-edit references share one batched pass"),
    ] = 4,
    curve_every: Annotated[
        int, typer.Option("--curve-every", min=1, help="Sequential: a curve point every N records")
    ] = 10,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 0,
    address: AddressOpt = None,
    paraphrases: Annotated[
        Path | None,
        typer.Option("--paraphrases", help="Paraphrase file (mkedit paraphrase) to locate neurons with"),
    ] = None,
) -> None:
    """Evaluate an editing method on a benchmark: the paper's four metrics (F1/EM) and generation scores.

    Results are appended to OUT/records.jsonl as each record finishes, so running the same command again
    resumes an interrupted run (Ctrl-C says how many records were saved, exit code 130). Writes
    OUT/summary.json, OUT/summary.md and, for 3+ languages, a heatmap.
    """
    console = Console()  # results: the table and the summary line
    err = Console(stderr=True)  # status, progress, warnings, errors
    try:
        settings = parse_overrides(overrides)
        check_method_options(method, preset, settings)
        config = EvalConfig(
            method=method,
            model=model,
            data=str(data),
            langs=_split(langs),
            limit=limit,
            offset=offset,
            setting=setting,  # type: ignore[arg-type]  # validated by EvalConfig
            edit_langs=_split(edit_lang),
            sequential=sequential,
            generation=generation,
            batch_size=batch_size,
            reference_records=reference_records,
            curve_every=curve_every,
            specificity=specificity,  # type: ignore[arg-type]  # parsed by EvalConfig
            probe_templates=str(probe_templates) if probe_templates else None,
        )
        records = load_records(data, config.langs, limit, offset, config.specificity, config.probe_templates)
        if paraphrases is not None:
            attached = with_paraphrases(records, paraphrases)
            records = attached.items
            config = dataclasses.replace(config, paraphrases=str(paraphrases), paraphrases_sha256=attached.sha256)
        check_workers(workers, address, sequential)
        if workers:
            spec = WorkerSpec(model, device, dtype, method, preset, settings)
            with err.status(f"starting {workers} Ray worker(s), each loading {model}"):
                pool = WorkerPool(spec, workers, address)
        else:
            with err.status(f"loading {model}"):
                loaded = load_model(model, device=device, dtype=dtype, progress=lambda msg: err.log(msg))
            editor = build_method(method, loaded.model, loaded.tokenizer, loaded.name, preset, settings)
        with progress_bar() as bar:
            task = bar.add_task("records", total=None)

            def on_progress(done: int, total: int, record_id: str) -> None:
                if done == 0 and total < len(records):
                    err.print(f"resuming: {len(records) - total} of {len(records)} record(s) already in {out}")
                label = f"records ({record_id})" if record_id else "records"
                bar.update(task, completed=done, total=total, description=label)

            if workers:
                with pool:
                    summary = run_distributed_evaluation(pool, records, config, out, on_progress)
            else:
                summary = run_evaluation(
                    loaded.model, loaded.tokenizer, loaded.name, records, config, out, editor, progress=on_progress
                )
    except MkeditError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from exc
    console.print(console_table([summary]))
    for lang, ids in summary["not_edited"].items():
        if ids:
            err.print(
                f"[yellow]{lang}: {len(ids)} record(s) not edited[/yellow] (scored unedited; reasons in "
                f"{out / RECORDS_FILE}): " + ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""),
                highlight=False,
            )
    avg, spe = summary["avg"], summary["seconds_per_edit"]
    console.print(
        f"{summary['n_records']} record(s) evaluated"
        + (f", avg {avg:.2f}" if avg is not None else "")
        + (f", {spe:.2f} s per edit" if spe is not None else ""),
        highlight=False,
    )
    written = [out / SUMMARY_JSON, out / SUMMARY_MD] + ([out / HEATMAP_PNG] if (out / HEATMAP_PNG).is_file() else [])
    err.print("wrote " + ", ".join(str(p) for p in written), highlight=False)

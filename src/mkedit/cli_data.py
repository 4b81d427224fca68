"""``mkedit data ...``: inspect benchmark and edit files before spending GPU time on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mkedit.data import DataCheckReport, check_records, load_records, render_report
from mkedit.errors import MkeditError
from mkedit.runtime.subject import DEFAULT_MIN_SCORE

data_app = typer.Typer(
    help="Inspect benchmark and edit files (MzsRE, Bi-ZsRE, mkedit edit files).",
    no_args_is_help=True,
)

SHOWN_UNPLACED = 20


@data_app.callback()
def _data() -> None:
    """Inspect benchmark and edit files (MzsRE, Bi-ZsRE, mkedit edit files)."""


def _split_langs(langs: str | None) -> list[str] | None:
    if langs is None:
        return None
    codes = [code.strip() for code in langs.split(",") if code.strip()]
    if not codes:
        raise typer.BadParameter("give at least one language code, e.g. --langs en,zh", param_hint="--langs")
    return codes


def _print_unplaced(console: Console, report: DataCheckReport) -> None:
    if not report.unplaced:
        console.print("Every subject was placed in every checked field.")
        return
    console.print(f"Subject not found ({len(report.unplaced)} record fields):", highlight=False)
    for miss in report.unplaced[:SHOWN_UNPLACED]:
        console.print(
            f"  {miss.record_id} [{miss.lang}] {miss.field}: subject {miss.subject!r} not in {miss.text!r}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if len(report.unplaced) > SHOWN_UNPLACED:
        console.print(f"  ... and {len(report.unplaced) - SHOWN_UNPLACED} more (use --json for all)")


@data_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Benchmark or edit file (JSON list or JSONL).")],
    langs: Annotated[str | None, typer.Option("--langs", help="Comma-separated language codes, e.g. en,zh.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Check only the first N records.")] = None,
    min_score: Annotated[
        float, typer.Option("--min-score", min=0, max=100, help="Approximate-match threshold (0-100).")
    ] = DEFAULT_MIN_SCORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable report instead.")] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with code 1 when any problem is found: a subject not placed in a checked field, or a "
            "language with no records. Without it the check only reports (exit code 0).",
        ),
    ] = False,
) -> None:
    """Load FILE and count, per language, where each subject is found in its questions.

    The exit code is 0 whatever the counts unless --strict is given (then 1 when a problem is found);
    a file that cannot be read is always an error (exit code 1, message on stderr).
    """
    codes = _split_langs(langs)
    err = Console(stderr=True)
    try:
        records = load_records(file, langs=codes, limit=limit)
        report = check_records(records, langs=codes, min_score=min_score)
    except (MkeditError, ValueError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from exc
    if as_json:
        payload = {"file": str(file), "records": len(records), **report.to_dict()}
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        console = Console()
        console.print(f"{file}: {len(records)} records", markup=False, highlight=False, soft_wrap=True)
        console.print(render_report(report))
        _print_unplaced(console, report)
    if strict and (problems := _problems(report)):
        err.print(f"error: {'; '.join(problems)} (--strict)", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _problems(report: DataCheckReport) -> list[str]:
    """What ``--strict`` fails on: subjects that cannot be placed, languages without records."""
    problems = []
    if report.unplaced:
        problems.append(f"{len(report.unplaced)} record field(s) whose subject was not found")
    if empty := [code for code, check in report.languages.items() if check.records == 0]:
        problems.append(f"no records in {', '.join(empty)}")
    return problems

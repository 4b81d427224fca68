"""``mkedit report DIR [DIR ...]``: merge the summaries of several runs into one table and a heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mkedit.errors import MkeditError
from mkedit.eval.report import (
    HEATMAP_MIN_LANGS,
    METRICS,
    Summary,
    merge_reports,
    union_langs,
    write_heatmap,
)
from mkedit.runtime.atomic import write_atomic

REPORT_MD = "report.md"
HEATMAP_PNG = "heatmap.png"
DEFAULT_REPORT_DIR = "report"  # inside the run directory, when only one is given


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def console_table(summaries: list[Summary]) -> Table:
    """Table 2 folded for a terminal: one row per run and test language, "F1 / EM" per metric.

    The markdown keeps the paper's one-row-per-run layout; with 12 languages that is 50 columns, too
    wide for a terminal, so here each language gets its own row.
    """
    table = Table(title="Teacher-forced F1 / EM (%)", show_lines=False)
    for name in ("Model", "Method", "Lang", *(m.capitalize() for m in METRICS), "avg"):
        table.add_column(name, justify="left" if name in ("Model", "Method", "Lang") else "right")
    for s in summaries:
        for i, lang in enumerate(union_langs(summaries)):
            per_lang = s["scores"].get(lang, {})
            cells = [f"{_fmt(per_lang.get(m, {}).get('f1'))} / {_fmt(per_lang.get(m, {}).get('em'))}" for m in METRICS]
            avg = _fmt(s["avg"]) if i == 0 else ""
            table.add_row(s["model"] if i == 0 else "", s["method"] if i == 0 else "", lang, *cells, avg)
        table.add_section()
    return table


def report_command(
    dirs: Annotated[list[Path], typer.Argument(help="Run directories, each holding a summary.json.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for report.md (+ heatmap.png). Default with one DIR: DIR/report/; required with several.",
        ),
    ] = None,
) -> None:
    """Merge several runs' summary.json into the paper's tables (and a Figure 3 heatmap for 3+ languages).

    Nothing is written to the current folder unasked: the report goes to --out, by default DIR/report/ for a
    single run; with several runs --out is required.
    """
    console = Console()  # the table: the command's result
    err = Console(stderr=True)  # errors and the files written
    try:
        if out is None and len(dirs) > 1:
            raise MkeditError(f"give --out FOLDER: with {len(dirs)} run directories there is no default report folder")
        markdown, summaries = merge_reports(dirs)
    except MkeditError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from exc
    console.print(console_table(summaries))
    out = out if out is not None else dirs[0] / DEFAULT_REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_MD, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    err.print(f"wrote {out / REPORT_MD}", highlight=False)
    if len(union_langs(summaries)) >= HEATMAP_MIN_LANGS:
        err.print(f"wrote {write_heatmap(summaries, out / HEATMAP_PNG)}", highlight=False)

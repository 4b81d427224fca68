"""The paper's comparison (Tables 2 and 3) on one model: every method, multilingual and monolingual, same records.

Runs (or resumes) ``mkedit eval`` for each method and setting into ``OUT/<method>-<setting>/`` through the
library, then prints:

- Table 2 layout: multilingual setting, teacher-forced F1 / EM per language and metric, and ``avg``;
- Table 3 layout: per language, the mean EM of the four metrics when that language alone is edited
  (monolingual) and when all are edited together (multilingual), and the conflict = multilingual − monolingual;
- seconds per edit (mean and median) and the one-off preparation time (key statistics of the locate-then-edit methods).

    python benchmarks/compare_methods.py --data ../shared/data/bizsre/bizsre_test.json --langs en,zh \
        --limit 30 --step 5 --out runs/compare --set m-rome:stats_corpus=../shared/data/mzsre/train ...

A method's hyperparameters can be overridden with ``--set METHOD:KEY=VALUE`` (repeatable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mkedit.data import load_records
from mkedit.data.probes import SOURCES, parse_sources
from mkedit.eval.report import METRICS, summary_markdown
from mkedit.eval.runner import RECORDS_FILE, SUMMARY_JSON, EvalConfig, read_rows
from mkedit.eval.variants import Variant, run_in_step
from mkedit.methods.config import parse_overrides
from mkedit.methods.registry import build_method, method_names
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.types import BenchmarkRecord

SETTINGS = ("multilingual", "monolingual")


def mean_em(summary: dict, lang: str) -> float | None:
    """The Table 3 figure: mean EM over the four metrics of ``lang`` (None if any is missing)."""
    values = [summary["scores"][lang][m]["em"] for m in METRICS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def conflict_table(summaries: dict[tuple[str, str], dict], methods: list[str], langs: list[str]) -> str:
    head = "| Method | " + " | ".join(f"{lang} mono | {lang} multi (Δ)" for lang in langs) + " |"
    lines = [head, "| --- |" + " ---: | ---: |" * len(langs)]
    for method in methods:
        mono, multi = summaries.get((method, "monolingual")), summaries.get((method, "multilingual"))
        cells = []
        for lang in langs:
            a = mean_em(mono, lang) if mono else None
            b = mean_em(multi, lang) if multi else None
            cells.append("—" if a is None else f"{a:.2f}")
            cells.append("—" if b is None else f"{b:.2f}" + ("" if a is None else f" ({b - a:+.2f})"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median_seconds(out: Path, method: str, setting: str, record_ids: set[str]) -> float | None:
    """Median seconds per edit over the window's rows: unlike the mean in the summary, one edit slowed by other
    jobs (or a paused process) barely moves it."""
    rows = read_rows(out / f"{method}-{setting}" / RECORDS_FILE, repair=False)
    times = [e["seconds"] for row in rows if row["record_id"] in record_ids for e in row.get("edits", [])]
    return statistics.median(times) if times else None


def timing_table(
    summaries: dict[tuple[str, str], dict], methods: list[str], medians: dict[tuple[str, str], float | None]
) -> str:
    lines = [
        "| Method | Setting | Records | s / edit (mean) | s / edit (median) "
        "| key statistics (s, once per model; this call) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        for setting in SETTINGS:
            s = summaries.get((method, setting))
            if s:
                spe, med = s.get("seconds_per_edit"), medians.get((method, setting))
                prep = s.get("prepare_seconds")
                once = s.get("one_off_seconds")
                lines.append(
                    f"| {method} | {setting} | {s['n_records']} | {'—' if spe is None else f'{spe:.1f}'} | "
                    f"{'—' if med is None else f'{med:.1f}'} | "
                    f"{'—' if once is None else f'{once:.0f}'}; {'—' if prep is None else f'{prep:.1f}'} |"
                )
    return "\n".join(lines)


def run_passes(
    args: argparse.Namespace,
    methods: list[str],
    settings: list[str],
    langs: list[str],
    per_method: dict[str, list[str]],
    records: list[BenchmarkRecord],
) -> dict[tuple[str, str], dict]:
    """Run (or resume) every method and setting, ``args.step`` more records per pass; the last summaries."""
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    specificity = parse_sources(args.specificity)
    # One instance per method across settings and passes: the locate-then-edit methods then reuse a fact's
    # learned values in the second setting (see LocateEditMethod), as the reference MEMIT reuses its z.
    runs: list[Variant] = []
    for method in methods:
        overrides = parse_overrides(per_method[method])
        editor = build_method(method, loaded.model, loaded.tokenizer, loaded.name, overrides=overrides)
        for setting in settings:
            config = EvalConfig(
                method=method,
                model=args.model,
                data=args.data,
                langs=tuple(langs),
                offset=args.offset,
                setting=setting,  # type: ignore[arg-type]
                generation=not args.no_generation,
                specificity=specificity,
            )
            runs.append(Variant(f"{method}-{setting}", editor, config, args.out / f"{method}-{setting}"))

    def announce(run: Variant, end: int) -> None:
        print(f"[{run.config.method} / {run.config.setting}] records 1-{end} -> {run.out_dir}", file=sys.stderr)

    summaries = run_in_step(loaded.model, loaded.tokenizer, loaded.name, records, runs, args.step, announce)
    return {(run.config.method, run.config.setting): summaries[run.name] for run in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", required=True)
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument(
        "--step",
        type=int,
        default=0,
        help="Advance every method and setting by this many records per pass (0 = all at once), so that "
        "an interrupted comparison still covers the same first records for every method",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="METHOD:KEY=VALUE")
    parser.add_argument("--no-generation", action="store_true", help="Teacher-forced scores only")
    parser.add_argument(
        "--specificity", default=",".join(SOURCES), help="Specificity probe sources (field,dataset,templates or none)"
    )
    parser.add_argument("--report-only", action="store_true", help="Print the tables from existing runs")
    args = parser.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    per_method: dict[str, list[str]] = {m: [] for m in methods}
    for item in args.overrides:
        method, _, pair = item.partition(":")
        if method not in per_method:
            parser.error(f"--set {item}: {method!r} is not one of --methods")
        per_method[method].append(pair)

    records = load_records(args.data, langs, args.limit, args.offset, parse_sources(args.specificity))
    summaries: dict[tuple[str, str], dict] = {}
    if args.report_only:
        for method in methods:
            for setting in settings:
                path = args.out / f"{method}-{setting}" / SUMMARY_JSON
                if path.is_file():
                    summaries[(method, setting)] = json.loads(path.read_text(encoding="utf-8"))
    else:
        summaries = run_passes(args, methods, settings, langs, per_method, records)

    multi = [summaries[(m, "multilingual")] for m in methods if (m, "multilingual") in summaries]
    if multi:
        print("## Multilingual setting (Table 2 layout)\n")
        print(summary_markdown(multi))
    if any(setting == "monolingual" for _, setting in summaries):
        print("## Monolingual vs multilingual: mean EM of the four metrics (Table 3 layout)\n")
        print(conflict_table(summaries, methods, langs) + "\n")
    window = {r.record_id for r in records}
    medians = {key: median_seconds(args.out, *key, window) for key in summaries}
    print("## Time\n")
    print(timing_table(summaries, methods, medians))


if __name__ == "__main__":
    main()

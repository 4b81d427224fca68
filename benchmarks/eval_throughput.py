"""Evaluation throughput: records per hour, and how much of a record's time is the edit itself.

Runs ``mkedit eval`` (LU-LAFNs by default, generation scored as by default) on ``--limit`` records, or reads
existing run directories (``--runs``), and splits each record's wall clock (``seconds`` in its row) into
the untouched model's references (``pre``), the edits, and the scoring after them. The overhead of the
evaluation is (pre + score) / edit. Prints a table, or one JSON object with ``--json``.

    python benchmarks/eval_throughput.py --data ../shared/data/mzsre/mzsre_test.json --langs en,zh \\
        --offset 543 --limit 10 --out runs/eval-throughput
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mkedit.data import load_records
from mkedit.eval.runner import RECORDS_FILE, RUN_FILE, EvalConfig, read_rows, run_evaluation
from mkedit.methods.registry import build_method
from mkedit.models import load_model
from mkedit.models.device import add_device_options


def split(run: Path) -> dict[str, float | int | str]:
    """Mean seconds per record of each part, over the rows of ``run`` that have timings."""
    rows = [row for row in read_rows(run / RECORDS_FILE) if "seconds" in row]
    if not rows:
        raise SystemExit(f"{run}: no rows with timings (runs made before rows recorded their seconds)")
    info = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    mean = {part: statistics.fmean(row["seconds"][part] for row in rows) for part in ("total", "pre", "edit", "score")}
    return {
        "run": str(run),
        "method": info["method"],
        "langs": ",".join(info["langs"]),
        "records": len(rows),
        "records_per_hour": 3600 / mean["total"],
        **{f"{part}_s": value for part, value in mean.items()},
        "overhead": (mean["pre"] + mean["score"]) / mean["edit"] if mean["edit"] else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="Existing run directories to report")
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", help="Benchmark file to run (with --out)")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--method", default="lu-lafns")
    parser.add_argument("--no-generation", action="store_true", help="Teacher-forced scores only")
    parser.add_argument("--out", type=Path, help="Run directory for --data (resumed if it exists)")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()

    runs = list(args.runs)
    if args.data:
        if args.out is None:
            parser.error("--data needs --out")
        langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        records = load_records(args.data, langs, args.limit, args.offset)
        config = EvalConfig(
            method=args.method,
            model=args.model,
            data=args.data,
            langs=langs,
            limit=args.limit,
            offset=args.offset,
            generation=not args.no_generation,
        )
        method = build_method(args.method, loaded.model, loaded.tokenizer, loaded.name)
        run_evaluation(loaded.model, loaded.tokenizer, loaded.name, records, config, args.out, method)
        runs.append(args.out)
    if not runs:
        parser.error("give --runs DIR... or --data with --out")
    results = [split(run) for run in runs]
    if args.json:
        print(json.dumps({"runs": results}))
        return
    print("| run | method | langs | records | records / hour | edit s | pre s | score s | overhead |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['run']} | {r['method']} | {r['langs']} | {r['records']} | {r['records_per_hour']:.0f} | "
            f"{r['edit_s']:.1f} | {r['pre_s']:.1f} | {r['score_s']:.1f} | {100 * r['overhead']:.0f}% |"
        )


if __name__ == "__main__":
    main()

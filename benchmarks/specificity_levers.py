"""Specificity of LU-LAFNs with and without the relation gate, on the same records and the same edits.

The gate changes only *when* an edit fires, not the edit: each record's ΔV is learned once (with the
gate's keys) and scored twice through the evaluation runner, into ``OUT/paper`` (fires wherever the
subject occurs, Eq. 11) and ``OUT/gate`` (fires when the query also asks the edited relation). Both run
directories are ordinary, resumable ``mkedit eval`` runs; records advance one at a time in both, so a
stopped run covers the same records in each. Prints the Table 2 layout with the Specificity column. The
paper variant's seconds per edit read near 0: its edits are the gate variant's, reused.

    python benchmarks/specificity_levers.py --data ../shared/data/bizsre/bizsre_test.json --langs en,zh \\
        --offset 100 --limit 50 --out runs/specificity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import ClassVar

from mkedit.data import load_records
from mkedit.data.probes import SOURCES
from mkedit.eval.report import read_summary, summary_markdown
from mkedit.eval.runner import EvalConfig, run_evaluation
from mkedit.methods.config import parse_overrides
from mkedit.methods.lu_lafns import LuLafnEditor
from mkedit.methods.lu_lafns.config import preset_for
from mkedit.models import load_model
from mkedit.runtime.cache import Edit
from mkedit.types import EditGroup

VARIANTS = {"paper": "false", "gate": "true"}


class SharedEdits(LuLafnEditor):
    """LU-LAFNs whose edits are shared, by group, with the other variants of this script (same ΔV)."""

    memo: ClassVar[dict[tuple, Edit]] = {}

    def edit(self, group: EditGroup) -> Edit:  # type: ignore[override]
        key = (group.group_id, group.requests)
        if key not in self.memo:
            self.memo[key] = super().edit(group)
        return self.memo[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--data", required=True)
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--offset", type=int, default=100)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/specificity"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every variant")
    parser.add_argument("--no-generation", action="store_true", help="Teacher-forced scores only")
    parser.add_argument("--report-only", action="store_true", help="Print the table from existing runs")
    args = parser.parse_args()

    if args.report_only:
        print_table({name: read_summary(args.out / name) for name in VARIANTS})
        return
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    loaded = load_model(args.model)
    records = load_records(args.data, langs, args.limit, args.offset, SOURCES)
    base = preset_for(loaded.name).config.with_overrides(parse_overrides(args.overrides))
    # The gated variant first: it computes each edit with the gate's keys, the paper variant reuses it.
    editors = {
        name: SharedEdits(loaded.model, loaded.tokenizer, base.with_overrides({"relation_gate": flag}), loaded.name)
        for name, flag in sorted(VARIANTS.items(), key=lambda item: item[0] != "gate")
    }
    summaries = {}
    for end in range(1, len(records) + 1):
        for name, editor in editors.items():
            config = EvalConfig(
                model=args.model,
                data=args.data,
                langs=langs,
                limit=end,
                offset=args.offset,
                generation=not args.no_generation,
            )
            print(f"[{name}] records {args.offset}-{args.offset + end - 1}", file=sys.stderr)
            summaries[name] = run_evaluation(
                loaded.model, loaded.tokenizer, loaded.name, records[:end], config, args.out / name, editor
            )
    print_table(summaries)


def print_table(summaries: dict[str, dict]) -> None:
    """The Table 2 layout with Specificity, one row per variant."""
    print(summary_markdown([{**summaries[name], "method": f"lu-lafns ({name})"} for name in VARIANTS]))


if __name__ == "__main__":
    main()

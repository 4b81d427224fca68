"""Specificity of LU-LAFNs under its two levers, alone and together, on the same records.

* ``paper``: the paper's objective, the edit fires wherever the subject occurs (Eq. 11);
* ``gate``: the same edits, firing only when the query also asks the edited relation (``relation_gate``);
* ``gate-subject``: the gate comparing a query only with the questions of the languages whose subject form it
  names (``gate_key_langs=subject``);
* ``keep``: the objective with the keep term (``lambda_keep``, KL on other-relation prompts about the subject);
* ``keep+gate``: the keep variant's edits behind the gate.

The gate changes only *when* an edit fires, not the edit, so each objective's ΔV is learned once (with the
gate's keys) and scored by each of its variants. Every variant is an ordinary, resumable ``mkedit eval``
run in ``OUT/VARIANT``; records advance one at a time in all of them, so a stopped run covers the same
records in each. Prints the Table 2 layout with the Specificity column. A variant that reuses another's
edits reads near 0 seconds per edit.

    python benchmarks/specificity_levers.py --data ../shared/data/bizsre/bizsre_test.json --langs en,zh \\
        --offset 100 --limit 50 --variants paper,gate,keep,keep+gate --lambda-keep 1 --out runs/specificity
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mkedit.data import load_records
from mkedit.data.probes import SOURCES
from mkedit.eval.report import read_summary, summary_markdown
from mkedit.eval.runner import EvalConfig
from mkedit.eval.variants import Variant, run_in_step
from mkedit.methods.config import parse_overrides
from mkedit.methods.lu_lafns import LuLafnEditor
from mkedit.methods.lu_lafns.config import preset_for
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.runtime.cache import Edit
from mkedit.types import EditGroup

VARIANTS: dict[str, tuple[bool, bool, str]] = {
    "paper": (False, False, "all"),
    "gate": (False, True, "all"),
    "gate-subject": (False, True, "subject"),
    "keep": (True, False, "all"),
    "keep+gate": (True, True, "all"),
}
"""variant -> (keep term on, relation gate on, the gate's ``gate_key_langs``)"""


class SharedEdits(LuLafnEditor):
    """LU-LAFNs whose edits are shared, by group, with the other variants of this script (same ΔV)."""

    memo: ClassVar[dict[tuple, Edit]] = {}

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        """The runner edits through ``edit_facts`` (:class:`mkedit.facts.FactStore`), so the memo sits here."""
        key = (self.config.lambda_keep, edit_id, tuple((g.group_id, g.requests) for g in groups))
        if key not in self.memo:
            self.memo[key] = super().edit_facts(groups, edit_id, on_step)
        return self.memo[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", required=True)
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--offset", type=int, default=100)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/specificity"))
    parser.add_argument("--variants", default="paper,gate", help=f"Comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--lambda-keep", type=float, default=1.0, help="lambda_keep of the keep variants")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every variant")
    parser.add_argument("--no-generation", action="store_true", help="Teacher-forced scores only")
    parser.add_argument("--report-only", action="store_true", help="Print the table from existing runs")
    args = parser.parse_args()

    variants = [x.strip() for x in args.variants.split(",") if x.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.report_only:
        print_table({name: read_summary(args.out / name) for name in variants})
        return
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    records = load_records(args.data, langs, args.limit, args.offset, SOURCES)
    base = preset_for(loaded.name).config.with_overrides(parse_overrides(args.overrides))
    # Gated variants first: they compute each edit with the gate's keys, the ungated ones reuse it.
    editors = {}
    for name in sorted(variants, key=lambda v: not VARIANTS[v][1]):
        keep, gate, key_langs = VARIANTS[name]
        config = base.replace(
            lambda_keep=args.lambda_keep if keep else 0.0, relation_gate=gate, gate_key_langs=key_langs
        )
        editors[name] = SharedEdits(loaded.model, loaded.tokenizer, config, loaded.name)
    config = EvalConfig(
        model=args.model, data=args.data, langs=langs, offset=args.offset, generation=not args.no_generation
    )
    runs = [Variant(name, editor, config, args.out / name) for name, editor in editors.items()]

    def announce(variant: Variant, end: int) -> None:
        print(f"[{variant.name}] records {args.offset}-{args.offset + end - 1}", file=sys.stderr)

    summaries = run_in_step(loaded.model, loaded.tokenizer, loaded.name, records, runs, 1, announce)
    print_table({name: summaries[name] for name in variants})


def print_table(summaries: dict[str, dict]) -> None:
    """The Table 2 layout with Specificity, one row per variant."""
    print(summary_markdown([{**summary, "method": f"lu-lafns ({name})"} for name, summary in summaries.items()]))


if __name__ == "__main__":
    main()

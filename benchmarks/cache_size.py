"""Bytes per LU-LAFNs edit against Reliability/Generality/Locality, for each way of storing ΔV.

Each record's ΔV is learned once (float32, every neuron) and scored through the evaluation runner once per
storage variant (``store_values`` x ``store_fraction``), so the variants differ only in what the cache
keeps. Every variant is an ordinary, resumable ``mkedit eval`` run in ``OUT/<values>-<fraction>``. Prints
per variant the mean bytes of an edit's ΔV (indices + values, as saved; gate keys excluded) and the EM
scores with their change against the first variant (float32, every neuron).

    python benchmarks/cache_size.py --data ../shared/data/mzsre/mzsre_test.json --langs en,zh \\
        --offset 543 --limit 20 --out runs/cache-size
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mkedit.data import load_records
from mkedit.eval.report import read_summary
from mkedit.eval.runner import EvalConfig, run_evaluation
from mkedit.methods.config import parse_overrides
from mkedit.methods.lu_lafns import LuLafnEditor
from mkedit.methods.lu_lafns.config import preset_for
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.runtime.atomic import write_json_atomic
from mkedit.runtime.cache import Edit
from mkedit.runtime.deltas import neuron_deltas, neuron_tensors
from mkedit.types import EditGroup

VARIANTS = ("float32:1", "float16:1", "int8:1", "float16:0.25", "int8:0.5", "int8:0.25", "int8:0.1")
METRICS = ("reliability", "generality", "locality")


class RepackedEdits(LuLafnEditor):
    """LU-LAFNs whose full-precision edits are learned once per group and re-stored per variant."""

    learned: ClassVar[dict[tuple, Edit]] = {}
    sizes: dict[str, int]  # edit id -> bytes of the stored ΔV

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        """The runner edits through ``edit_facts`` (:class:`mkedit.facts.FactStore`), so the memo sits here."""
        key = (edit_id, tuple((g.group_id, g.requests) for g in groups))
        if key not in self.learned:
            full = self.config.replace(store_values="float32", store_fraction=1.0)
            editor = LuLafnEditor(self.model, self.tokenizer, full, self.model_name)
            self.learned[key] = editor.edit_facts(groups, edit_id, on_step)
        edit = self.learned[key]
        stored = neuron_tensors(neuron_deltas(edit), self.config.store_values, self.config.store_fraction)
        extra = {name: t for name, t in edit.tensors.items() if not name.split("/", 1)[0].isdigit()}
        self.sizes[edit.edit_id] = delta_bytes(stored)
        return Edit(edit.edit_id, edit.subjects, {**stored, **extra}, edit.info, edit.method)


def delta_bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", required=True)
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--offset", type=int, default=543)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="VALUES:FRACTION, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("runs/cache-size"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every variant")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    parser.add_argument("--report-only", action="store_true", help="Print the table from existing runs")
    args = parser.parse_args()

    variants = [tuple(v.split(":")) for v in args.variants.split(",") if v.strip()]
    names = [f"{values}-{fraction}" for values, fraction in variants]
    sizes_path = args.out / "bytes.json"
    sizes: dict[str, dict[str, int]] = json.loads(sizes_path.read_text()) if sizes_path.is_file() else {}
    if not args.report_only:
        langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        records = load_records(args.data, langs, args.limit, args.offset, ())
        base = preset_for(loaded.name).config.with_overrides(parse_overrides(args.overrides))
        editors: dict[str, RepackedEdits] = {
            name: RepackedEdits(
                loaded.model,
                loaded.tokenizer,
                base.replace(store_values=values, store_fraction=float(fraction)),
                loaded.name,
            )
            for name, (values, fraction) in zip(names, variants, strict=True)
        }
        for name, editor in editors.items():
            editor.sizes = sizes.setdefault(name, {})
        for end in range(1, len(records) + 1):
            for name, editor in editors.items():
                print(f"[{name}] records {args.offset}-{args.offset + end - 1}", file=sys.stderr)
                config = EvalConfig(
                    model=args.model, data=args.data, langs=langs, limit=end, offset=args.offset, generation=False
                )
                out = args.out / name
                run_evaluation(loaded.model, loaded.tokenizer, loaded.name, records[:end], config, out, editor)
            write_json_atomic(sizes_path, sizes)
    report({name: read_summary(args.out / name) for name in names}, sizes, args.json)


def _em(summary: dict, lang: str, metric: str) -> float:
    return summary["scores"][lang][metric]["em"]


def report(summaries: dict[str, dict], sizes: dict[str, dict[str, int]], as_json: bool) -> None:
    reference = next(iter(summaries.values()))
    langs = list(reference["scores"])
    rows = []
    for name, summary in summaries.items():
        row = {
            "variant": name,
            "records": summary["n_records"],
            "kib_per_edit": sum(sizes[name].values()) / max(len(sizes[name]), 1) / 1024,
        }
        for lang in langs:
            for metric in METRICS:
                row[f"{lang}:{metric}"] = _em(summary, lang, metric)
                row[f"{lang}:{metric}:change"] = row[f"{lang}:{metric}"] - _em(reference, lang, metric)
        rows.append(row)
    if as_json:
        print(json.dumps({"variants": rows}))
        return
    columns = [f"{lang}:{metric}" for lang in langs for metric in METRICS]
    print("| storage | records | KiB / edit | " + " | ".join(f"{c} EM (change)" for c in columns) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for row in rows:
        cells = " | ".join(f"{row[c]:.1f} ({row[c + ':change']:+.1f})" for c in columns)
        print(f"| {row['variant']} | {row['records']} | {row['kib_per_edit']:.1f} | {cells} |")


if __name__ == "__main__":
    main()

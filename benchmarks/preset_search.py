"""Compare LU-LAFNs configurations on the first records of a benchmark file: teacher-forced EM of
Reliability and Generality (edited languages), Locality is 100 by construction for exact-match
triggering and is not measured here; also steps and seconds per edit. This is how the packaged
models' presets were chosen.

    python benchmarks/preset_search.py --model qwen2.5-0.5b --data ../shared/data/mzsre/mzsre_test.json \
        --records 8 --try '{"layers": [16, 17, 18, 23]}' --try '{"layers": [18, 19, 20, 23]}'
"""

from __future__ import annotations

import argparse
import json
import statistics

from rich.console import Console
from rich.table import Table

from mkedit.data import load_records
from mkedit.eval.metrics import teacher_forced
from mkedit.methods.lu_lafns import LuLafnEditor, preset_for
from mkedit.models import load_model
from mkedit.models.device import add_model_and_data_options
from mkedit.runtime.edited_model import EditedModel


def evaluate(loaded, records, langs, changes: dict) -> dict[str, float]:
    config = preset_for(loaded.name).config.replace(**{k: tuple(v) if k == "layers" else v for k, v in changes.items()})
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, config, loaded.name)
    rel, gen, seconds, steps = [], [], [], []
    for record in records:
        cache = editor.new_cache()
        edit = editor.edit(record.group.restrict(langs))
        cache.add(edit)
        seconds.append(sum(edit.info["seconds"].values()))
        steps.append(edit.info["steps"])
        edited = EditedModel(loaded.model, loaded.tokenizer, cache, check_model=False)

        for metric, bucket in (("reliability", rel), ("generality", gen)):
            cases = [(record.tests[lang][metric].prompt, record.tests[lang][metric].target, lang) for lang in langs]
            bucket += [p.pred_ids == p.target_ids for p in teacher_forced(edited.logits, loaded.tokenizer, cases)]
    return {
        "reliability_em": 100 * statistics.mean(rel),
        "generality_em": 100 * statistics.mean(gen),
        "seconds": statistics.mean(seconds),
        "steps": statistics.mean(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_options(parser)
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--try", dest="tries", action="append", default=[], help="JSON of config changes")
    args = parser.parse_args()
    langs = args.langs.split(",")
    records = load_records(args.data, langs, limit=args.records)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    table = Table(title=f"{args.model}: {len(records)} records, {'+'.join(langs)}")
    for column in ("changes", "reliability EM %", "generality EM %", "s / edit", "steps"):
        table.add_column(column)
    for changes in args.tries or ["{}"]:
        r = evaluate(loaded, records, langs, json.loads(changes))
        table.add_row(
            changes,
            f"{r['reliability_em']:.1f}",
            f"{r['generality_em']:.1f}",
            f"{r['seconds']:.1f}",
            f"{r['steps']:.1f}",
        )
        Console().print(table)


if __name__ == "__main__":
    main()

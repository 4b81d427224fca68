"""When each early-stop rule would end an LU-LAFNs edit, read off one optimisation trajectory per record.

The editor stops when the answer NLL falls below ``early_stop_nll``: the mean over the training sequences
(``early_stop=mean``) or the highest one (``every_sequence``). Both follow the same trajectory until the first of
them stops, so one edit run to ``max_steps`` with neither rule able to stop shows both: the first step where
the mean is below the threshold, and the first where every sequence is. Groups with many languages have many
sequences, so the two can lie far apart; this prints how far, per record and on average.

    python benchmarks/stop_rules.py --data ../shared/data/mzsre/mzsre_test.json \\
        --langs en,zh,de,fr,es,pt,nl,cs,ru,th,tr,vi --offset 545 --limit 3

``--set KEY=VALUE`` changes the model's preset; ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from rich.console import Console
from rich.table import Table

from mkedit.cli_common import warn
from mkedit.data import load_records
from mkedit.data.editable import editable_groups
from mkedit.methods.config import parse_overrides
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor, StepReport, preset_for
from mkedit.models import load_model
from mkedit.models.device import add_model_and_data_options
from mkedit.types import EditGroup


def first_below(values: list[float], threshold: float) -> int | None:
    """The 1-based step of the first value below ``threshold`` (None when none is)."""
    return next((step for step, value in enumerate(values, 1) if value < threshold), None)


def trace(editor: LuLafnEditor, group: EditGroup, threshold: float) -> dict[str, object]:
    """One edit of ``group`` (the editor's config must let it run to ``max_steps``) and where each rule stops."""
    reports: list[StepReport] = []
    start = time.perf_counter()
    editor.edit(group, on_step=reports.append)
    means, worsts = [r.nll for r in reports], [r.worst_nll for r in reports]
    return {
        "record": group.group_id,
        "langs": len(group.requests),
        "steps_run": len(reports),
        "mean_stop": first_below(means, threshold),
        "every_stop": first_below(worsts, threshold),
        "final_mean_nll": means[-1],
        "final_worst_nll": worsts[-1],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data_options(parser)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()
    langs = args.langs.split(",")
    records = load_records(args.data, langs, limit=args.limit, offset=args.offset)
    groups = editable_groups([r.group.restrict(langs) for r in records], True, warn, str(args.data))
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    config: LuLafnConfig = preset_for(loaded.name).config.with_overrides(parse_overrides(args.overrides))
    # A threshold no NLL reaches lets every edit run max_steps, so that both rules' steps are on the trajectory.
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, config.replace(early_stop_nll=0.0), loaded.name)
    rows = [trace(editor, group, config.early_stop_nll) for group in groups]
    summary = {
        "model": loaded.name,
        "langs": langs,
        "threshold": config.early_stop_nll,
        "max_steps": config.max_steps,
        "preset_rule": config.early_stop,
        "records": rows,
    }
    if args.json:
        print(json.dumps(summary))
        return
    table = Table(title=f"Early-stop rules: {args.model}, {'+'.join(langs)}, NLL < {config.early_stop_nll}")
    for column in ["record", "langs", "mean stop", "every-sequence stop", "NLL at max_steps (mean / worst)", "s"]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["record"]),
            str(row["langs"]),
            str(row["mean_stop"] or f"> {row['steps_run']}"),
            str(row["every_stop"] or f"> {row['steps_run']}"),
            f"{row['final_mean_nll']:.3f} / {row['final_worst_nll']:.3f}",
            f"{row['seconds']:.0f}",
        )
    console = Console(width=140)
    console.print(table)
    capped = [[row[key] or config.max_steps for row in rows] for key in ("mean_stop", "every_stop")]
    console.print(
        f"steps an edit takes (a rule that never stops counts max_steps = {config.max_steps}): "
        f"mean rule {statistics.mean(capped[0]):.1f}, every-sequence rule {statistics.mean(capped[1]):.1f}"
    )


if __name__ == "__main__":
    main()

"""Edit speed on a real model: seconds per edit group (locate, optimise), peak memory, cache bytes.

Runs the same edit groups in one process with the speed switches off (one sequence at a time, the
whole model every step, full logits), on except ``reuse_prefix`` (one padded batch, lower layers
replayed, output head only where the loss reads), and all on (also the tokens before the subject
computed once), and prints each mode, the speed-ups, and the edit quality each reached.

    python benchmarks/edit_speed.py --model qwen2.5-0.5b --data ../shared/data/mzsre/mzsre_test.json \
        --langs en,zh --groups 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from mkedit.data import load_records
from mkedit.demo import demo_records
from mkedit.eval.metrics import teacher_forced
from mkedit.methods.lu_lafns import LuLafnEditor, preset_for
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.runtime.edited_model import EditedModel

SLOW = {"batch_sequences": False, "reuse_lower_layers": False, "answer_logits_only": False, "reuse_prefix": False}
FAST = {"batch_sequences": True, "reuse_lower_layers": True, "answer_logits_only": True, "reuse_prefix": True}


class PeakRss:
    """Samples the process's resident memory every 20 ms while active."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_mode(loaded, groups, switches: dict[str, bool]) -> dict[str, float]:
    config = preset_for(loaded.name).config.replace(**switches)
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, config, loaded.name)
    for lang in groups[0].langs:
        editor.prefixes(lang)  # sampled once per editor; not part of a group's cost
    cache = editor.new_cache()
    locate, optimise, total, steps, nll = [], [], [], [], []
    with PeakRss() as rss:
        for group in groups:
            start = time.perf_counter()
            record = editor.edit(group)
            total.append(time.perf_counter() - start)
            locate.append(record.info["seconds"]["locate"])
            optimise.append(record.info["seconds"]["optimize"])
            steps.append(record.info["steps"])
            nll.append(record.info["final_nll"])
            cache.add(record)
    with tempfile.TemporaryDirectory() as tmp:
        folder = cache.save(Path(tmp))
        cache_bytes = sum(p.stat().st_size for p in folder.iterdir())
    edited = EditedModel(loaded.model, loaded.tokenizer, cache)
    cases = [(r.question, r.answer, r.lang) for g in groups for r in g.requests]
    preds = teacher_forced(edited.logits, loaded.tokenizer, cases)
    return {
        "locate": statistics.mean(locate),
        "optimise": statistics.mean(optimise),
        "total": statistics.mean(total),
        "steps": statistics.mean(steps),
        "nll": statistics.mean(nll),
        "reliability_em": 100 * sum(p.pred_ids == p.target_ids for p in preds) / len(preds),
        "peak_rss_gib": rss.peak / 2**30,
        "cache_bytes_per_edit": cache_bytes / len(groups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", type=Path, help="Edit or benchmark file (default: the demo's facts)")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="Leave out the mode with every switch off")
    args = parser.parse_args()
    langs = args.langs.split(",")
    records = load_records(args.data, langs, limit=args.groups) if args.data else demo_records()[: args.groups]
    groups = [r.group.restrict(langs) for r in records]
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    modes = {"switches on, prefix recomputed": {**FAST, "reuse_prefix": False}, "switches on": FAST}
    if not args.skip_slow:
        modes = {"switches off": SLOW, **modes}
    results = {name: run_mode(loaded, groups, switches) for name, switches in modes.items()}
    table = Table(
        title=f"LU-LAFNs edit speed: {args.model}, {len(groups)} {'+'.join(langs)} groups, "
        f"{psutil.cpu_count()} CPU threads"
    )
    for column in (
        "mode",
        "locate s",
        "optimise s",
        "total s/group",
        "steps",
        "final NLL",
        "reliability EM %",
        "peak RSS GiB",
        "cache KiB/edit",
    ):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['locate']:.2f}",
            f"{r['optimise']:.2f}",
            f"{r['total']:.2f}",
            f"{r['steps']:.1f}",
            f"{r['nll']:.3f}",
            f"{r['reliability_em']:.0f}",
            f"{r['peak_rss_gib']:.2f}",
            f"{r['cache_bytes_per_edit'] / 1024:.1f}",
        )
    console = Console(width=160)
    console.print(table)
    on = results["switches on"]["total"]
    for name, r in results.items():
        if name != "switches on":
            console.print(f"speed-up of all switches on against {name} (same run): {r['total'] / on:.2f}x")


if __name__ == "__main__":
    main()

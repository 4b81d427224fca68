"""Edit speed on a real model: seconds per edit group (locate, optimise), peak memory, cache bytes.

Runs the same edit groups in one process with the speed switches off (one sequence at a time, the
whole model every step, full logits), on except ``reuse_prefix`` (one padded batch, lower layers
replayed, output head only where the loss reads), all on (also the tokens before the subject
computed once), and all on with the edit computed in bfloat16 (``compute_dtype``; only when the model is
not already in bfloat16), and prints each mode, the speed-ups, and the edit quality each reached
(reliability is scored on the model as loaded, whatever the edit was computed in).

    python benchmarks/edit_speed.py --model qwen2.5-0.5b --data ../shared/data/mzsre/mzsre_test.json \
        --langs en,zh --groups 5

``--set KEY=VALUE`` changes the preset in every mode; ``--also-preset NAME`` adds a mode with another preset
(e.g. ``qwen2.5-0.5b-fast``); ``--json`` prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from rich.console import Console
from rich.table import Table

from mkedit.cli_common import warn
from mkedit.data import load_records
from mkedit.data.editable import editable_groups
from mkedit.demo import demo_records
from mkedit.eval.metrics import teacher_forced
from mkedit.methods.config import parse_overrides
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor, get_preset, preset_for
from mkedit.models import load_model
from mkedit.models.compute_dtype import native_matmul
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


def matmul_ms(dtype: torch.dtype, device: torch.device) -> float:
    """Milliseconds of one [256 x 896] @ [896 x 4864] product in ``dtype`` (the best of 3, after a warm-up)."""
    a, b = torch.randn(256, 896, device=device, dtype=dtype), torch.randn(896, 4864, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock interval holds all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(loaded, groups, config: LuLafnConfig) -> dict[str, float]:
    device = loaded.model.device
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, config, loaded.name)
    for lang in groups[0].langs:
        editor.prefixes(lang)  # sampled once per editor; not part of a group's cost
    cache = editor.new_cache()
    locate, optimise, total, steps, nll = [], [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        for group in groups:
            synchronize(device)
            start = time.perf_counter()
            record = editor.edit(group)
            synchronize(device)
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
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "computed_in": editor.config.compute_dtype,  # "model" where the asked dtype has no native matmuls
        "cache_bytes_per_edit": cache_bytes / len(groups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", type=Path, help="Edit or benchmark file (default: the demo's facts)")
    parser.add_argument("--langs", default="en,zh")
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--offset", type=int, default=0, help="Skip the first K records of --data")
    parser.add_argument("--skip-slow", action="store_true", help="Leave out the mode with every switch off")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every mode")
    parser.add_argument("--also-preset", action="append", default=[], help="Add a mode with this preset")
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()
    langs = args.langs.split(",")
    if args.data:
        records = load_records(args.data, langs, limit=args.groups, offset=args.offset)
    else:
        records = demo_records()[args.offset : args.offset + args.groups]
    # A language whose subject cannot be placed is left out and a group with none is skipped, as in mkedit edit.
    groups = editable_groups([r.group.restrict(langs) for r in records], True, warn, str(args.data or "the demo"))
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    overrides = parse_overrides(args.overrides)
    base = preset_for(loaded.name).config.with_overrides(overrides)
    modes = {
        "switches on, prefix recomputed": base.replace(**{**FAST, "reuse_prefix": False}),
        "switches on": base.replace(**FAST),
    }
    if not args.skip_slow:
        modes = {"switches off": base.replace(**SLOW), **modes}
    if next(loaded.model.parameters()).dtype != torch.bfloat16:
        if native_matmul(torch.bfloat16, loaded.model.device):
            modes["switches on, bfloat16 compute"] = base.replace(**{**FAST, "compute_dtype": "bfloat16"})
        else:
            slow, fast = (matmul_ms(dtype, loaded.model.device) for dtype in (torch.bfloat16, torch.float32))
            print(
                f"no bfloat16-compute mode: this device has no native bfloat16 matmuls (one FFN-shaped product, "
                f"[256 x 896] @ [896 x 4864]: {slow:.1f} ms in bfloat16, {fast:.1f} ms in float32)",
                file=sys.stderr,
            )
    for name in args.also_preset:
        modes[f"preset {name}"] = get_preset(name).config.with_overrides(overrides)
    results = {name: run_mode(loaded, groups, config) for name, config in modes.items()}
    on = results["switches on"]["total"]
    speeds = {name: on / r["total"] for name, r in results.items() if name != "switches on"}
    if args.json:
        summary = {"model": loaded.name, "groups": len(groups), "langs": langs, "modes": results}
        print(json.dumps({**summary, "speed_vs_switches_on": speeds}))
        return
    device = loaded.model.device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{psutil.cpu_count()} CPU threads"
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    table = Table(title=f"LU-LAFNs edit speed: {args.model} ({dtype}), {len(groups)} {'+'.join(langs)} groups, {where}")
    columns = ["mode", "computed in", "locate s", "optimise s", "total s/group", "groups/s", "steps", "final NLL"]
    columns += ["reliability EM %", "peak RSS GiB"] + (["peak GPU GiB"] if device.type == "cuda" else [])
    for column in [*columns, "cache KiB/edit"]:
        table.add_column(column, justify="right")
    for name, r in results.items():
        gpu = [f"{r['peak_gpu_gib']:.2f}"] if device.type == "cuda" else []
        table.add_row(
            name,
            str(r["computed_in"]),
            f"{r['locate']:.2f}",
            f"{r['optimise']:.2f}",
            f"{r['total']:.2f}",
            f"{1 / r['total']:.2f}",
            f"{r['steps']:.1f}",
            f"{r['nll']:.3f}",
            f"{r['reliability_em']:.0f}",
            f"{r['peak_rss_gib']:.2f}",
            *gpu,
            f"{r['cache_bytes_per_edit'] / 1024:.1f}",
        )
    console = Console(width=160)
    console.print(table)
    for name, ratio in speeds.items():
        console.print(f"{name}: {ratio:.2f}x the speed of all switches on (same run)")


if __name__ == "__main__":
    main()

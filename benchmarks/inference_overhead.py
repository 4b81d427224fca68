"""What serving a large LU-LAFNs cache costs: load time, memory, subject lookup, generation throughput.

For each cache size, synthetic edits (a made-up subject each, ΔV on ``--neurons`` random neurons of each
of the preset's layers, stored as the method's default storage) are saved once as an ordinary cache
folder under ``--work``. The benchmark then loads the folder (time; resident memory in a fresh
process), times the
subject lookup of queries without and with a cached subject, and measures greedy generation throughput
(tokens per second, batch 1) of the bare model and of the edited model on both kinds of query, in the same
process, interleaved, so the ratios compare like with like. Prints a table, or one JSON object with
``--json``.

    python benchmarks/inference_overhead.py --sizes 1000,10000,100000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mkedit.methods.lu_lafns.config import preset_for
from mkedit.models import load_model
from mkedit.models.device import add_device_options
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import INDEX_FILE, Edit, EditCache
from mkedit.runtime.deltas import neuron_tensors
from mkedit.runtime.edited_model import EditedModel

QUERIES = (
    "What is the capital of France?",
    "Who wrote the novel Pride and Prejudice?",
    "Which planet is known as the Red Planet?",
    "In which year did the Second World War end?",
)
SUBJECT_QUERIES = ("Who founded {s}?", "Where is {s} located?", "What is {s} known for?", "When was {s} created?")
_SYLLABLES = ("ka", "lo", "mer", "vin", "dra", "sel", "tor", "qui", "ban", "zel", "ro", "phi", "gus", "ten")


def subject_name(n: int) -> str:
    """A distinct made-up two-word name for edit ``n`` (letters only, so it tokenises like a name)."""
    word, rest = [], n
    for _ in range(5):
        rest, digit = divmod(rest, len(_SYLLABLES))
        word.append(_SYLLABLES[digit])
    return f"{''.join(word[:3]).capitalize()} {''.join(word[3:]).capitalize()}"


_MEMORY_PROBE = """
import sys
from pathlib import Path
def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
from mkedit.runtime.cache import EditCache
from mkedit.runtime.matcher import AutomatonMatcher
before = rss()
cache = EditCache.load(sys.argv[1])
matcher = AutomatonMatcher(cache.subject_entries())
print(rss() - before)
"""


def cache_memory_mib(folder: Path) -> float:
    """Resident memory a loaded cache and its subject automaton add, measured in a fresh process: in this
    one, memory freed by loading the model would be reused and hide it (Linux /proc; nan elsewhere)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(folder)], capture_output=True, text=True, check=False
    )
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")


def build_cache(loaded, size: int, neurons: int, folder: Path) -> float:
    """Write ``size`` synthetic edits to ``folder`` (once; reused when present); returns the seconds taken."""
    if (folder / INDEX_FILE).is_file():
        return float("nan")
    config = preset_for(loaded.name).config
    n_layers = loaded.model.config.num_hidden_layers
    d_ffn = loaded.model.config.intermediate_size
    layers = [layer % n_layers for layer in config.layers]
    cache = EditCache(model_fingerprint(loaded.model, loaded.name), "lu-lafns", config.to_dict())
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for n in range(size):
        deltas = {
            layer: (
                torch.randperm(d_ffn, generator=gen)[:neurons].sort().values,
                0.05 * torch.randn(neurons, generator=gen),
            )
            for layer in layers
        }
        tensors = neuron_tensors(deltas, config.store_values, config.store_fraction)
        cache.add(Edit(f"syn{n}", {"en": [subject_name(n)]}, tensors, {}, "lu-lafns"))
    cache.save(folder)
    return time.perf_counter() - start


def tokens_per_second(generate, tokenizer, prompts: list[str], new_tokens: int) -> float:
    produced, seconds = 0, 0.0
    for prompt in prompts:
        batch = tokenizer([prompt], return_tensors="pt")
        start = time.perf_counter()
        out = generate(batch["input_ids"], batch["attention_mask"])
        seconds += time.perf_counter() - start
        produced += out.shape[1] - batch["input_ids"].shape[1]
    return produced / seconds


def measure(loaded, size: int, folder: Path, new_tokens: int, repeats: int) -> dict[str, float]:
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    start = time.perf_counter()
    cache = EditCache.load(folder, model, loaded.name)
    view = EditedModel(model, tokenizer, cache)
    view.matcher.find("warm-up")  # builds the automaton over every subject
    load_seconds = time.perf_counter() - start
    memory = cache_memory_mib(folder)
    with_subject = [
        q.format(s=subject_name(n)) for q, n in zip(SUBJECT_QUERIES, (0, size // 3, size // 2, size - 1), strict=True)
    ]
    plain = list(QUERIES)

    def lookup_us(queries: list[str]) -> float:
        start = time.perf_counter()
        for _ in range(200):
            for query in queries:
                view.matcher.find(query)
        return (time.perf_counter() - start) / (200 * len(queries)) * 1e6

    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}

    def bare(ids, mask):
        return model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)

    def edited(ids, mask):
        return view.generate(ids.to(device), mask.to(device), **kwargs)

    runs: dict[str, list[float]] = {"bare": [], "plain": [], "subject": []}
    with torch.no_grad():
        for _ in range(repeats):
            runs["bare"].append(tokens_per_second(bare, tokenizer, plain + with_subject, new_tokens))
            runs["plain"].append(tokens_per_second(edited, tokenizer, plain, new_tokens))
            runs["subject"].append(tokens_per_second(edited, tokenizer, with_subject, new_tokens))
    assert all(view.used_edits(q) for q in with_subject) and not any(view.used_edits(q) for q in plain)
    bare_tps = statistics.median(runs["bare"])
    return {
        "edits": size,
        "load_seconds": load_seconds,
        "memory_mib": memory,
        "disk_mib": sum(p.stat().st_size for p in folder.iterdir()) / 2**20,
        "lookup_us_plain": lookup_us(plain),
        "lookup_us_subject": lookup_us(with_subject),
        "bare_tokens_per_s": bare_tps,
        "plain_vs_bare": statistics.median(runs["plain"]) / bare_tps,
        "subject_vs_bare": statistics.median(runs["subject"]) / bare_tps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--sizes", default="1000,10000,100000", help="Cache sizes (edits), comma-separated")
    parser.add_argument("--neurons", type=int, default=3000, help="Neurons updated per layer by a synthetic edit")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/inference-overhead"))
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    rows = []
    for size in (int(x) for x in args.sizes.split(",") if x.strip()):
        folder = args.work / f"{loaded.name}-{size}-{args.neurons}"
        seconds = build_cache(loaded, size, args.neurons, folder)
        if not math.isnan(seconds):
            print(f"built {size} synthetic edits in {seconds:.0f} s -> {folder}", file=sys.stderr)
        rows.append(measure(loaded, size, folder, args.new_tokens, args.repeats))
        print(f"measured {size} edits: {json.dumps(rows[-1])}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": loaded.name, "neurons_per_layer": args.neurons, "rows": rows}))
        return
    print(
        "| edits | load s | memory MiB | disk MiB | lookup µs (no subject / subject) | bare tok/s | "
        "no subject / bare | subject / bare |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['edits']} | {r['load_seconds']:.1f} | {r['memory_mib']:.0f} | {r['disk_mib']:.0f} | "
            f"{r['lookup_us_plain']:.0f} / {r['lookup_us_subject']:.0f} | {r['bare_tokens_per_s']:.1f} | "
            f"{100 * r['plain_vs_bare']:.1f}% | {100 * r['subject_vs_bare']:.1f}% |"
        )


if __name__ == "__main__":
    main()

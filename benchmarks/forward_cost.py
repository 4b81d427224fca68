"""A forward's fixed cost against its cost per token: what the evaluation's length buckets weigh.

Teacher-forced scoring pads each batch to its longest row. On a CPU a forward's time grows with its tokens
(padding included), on top of a fixed part, mostly reading every weight once. The evaluation splits a batch
by length where the padding saved is worth more than one more forward (``forward_cost_tokens`` in
``mkedit.eval.metrics``). This script times forwards of several shapes (random token ids, no output head
beyond the last position), fits ``seconds = fixed + per_token x tokens`` by least squares, and prints the
fixed part in tokens. Prints a table, or one JSON object with ``--json``.

    python benchmarks/forward_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mkedit.models import load_model
from mkedit.models.device import add_device_options

SHAPES = ((1, 1), (1, 16), (4, 16), (8, 16), (16, 16), (8, 32), (32, 12))
"""``(rows, tokens per row)``: from one token to the size of a scoring batch."""


def time_forward(model: torch.nn.Module, rows: int, tokens: int, repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` forwards of a ``[rows, tokens]`` batch, after one warm-up forward."""
    ids = torch.randint(100, 5000, (rows, tokens), generator=torch.Generator().manual_seed(rows * 1000 + tokens))
    ids = ids.to(device)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout instead of the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    device = next(loaded.model.parameters()).device
    shapes = [
        {"rows": r, "tokens": r * t, "seconds": time_forward(loaded.model, r, t, args.repeats, device)}
        for r, t in SHAPES
    ]
    x = torch.tensor([[1.0, s["tokens"]] for s in shapes], dtype=torch.float64)
    y = torch.tensor([[s["seconds"]] for s in shapes], dtype=torch.float64)
    fixed, per_token = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    result = {
        "model": loaded.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "shapes": shapes,
        "fixed_s": fixed,
        "per_token_s": per_token,
        "fixed_in_tokens": fixed / per_token,
    }
    if args.json:
        print(json.dumps(result))
        return
    print("| rows | tokens | seconds | ms / token |")
    print("| ---: | ---: | ---: | ---: |")
    for s in shapes:
        print(f"| {s['rows']} | {s['tokens']} | {s['seconds']:.3f} | {1000 * s['seconds'] / s['tokens']:.1f} |")
    print(
        f"\nfit: fixed {fixed:.3f} s + {1000 * per_token:.2f} ms per token; a forward's fixed part = "
        f"{fixed / per_token:.1f} tokens ({loaded.name}, {device}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()

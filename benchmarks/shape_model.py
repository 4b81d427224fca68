"""Write a model folder with random weights in a real architecture's shape, for timing a model whose weights
are not at hand (a GPU machine with no hub access, a 7B model on a small disk).

The weights are random (seeded), so the model's answers are noise and an edit never stops early: every edit runs
``max_steps``, and timings made with such a folder are upper bounds per edit group (report the steps beside
them). The tokenizer is a real one, so prompts, subjects and answers tokenize as they would.

    python benchmarks/shape_model.py --shape qwen2-7b --tokenizer qwen2.5-0.5b --out /tmp/qwen2-7b-random
    python benchmarks/shape_model.py --shape ~/.cache/mkedit/models/qwen2.5-0.5b --out /tmp/qwen2.5-0.5b-random

Name the folder after the shape (as above) so that ``mkedit`` picks that model's preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mkedit.models.device import add_device_options, resolve_device, resolve_dtype
from mkedit.models.loader import ensure_converted
from mkedit.models.registry import PACKAGED_MODELS

SHAPES: dict[str, dict] = {
    # Qwen2-7B's published config.json (the paper's model), less the fields that only name files.
    "qwen2-7b": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
}


def model_folder(name: str) -> Path:
    """A packaged model's converted folder, or a local folder."""
    return ensure_converted(name) if name in PACKAGED_MODELS else Path(name).expanduser()


def shape_config(shape: str):
    """A named shape of :data:`SHAPES`, or the config of a packaged model or model folder."""
    if shape in SHAPES:
        fields = dict(SHAPES[shape])
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(str(model_folder(shape)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, help=f"{', '.join(SHAPES)}, a packaged model or a model folder")
    parser.add_argument("--tokenizer", help="Packaged model or folder whose tokenizer to use (default: --shape)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    add_device_options(parser)
    args = parser.parse_args()
    tokenizer_source = args.tokenizer or args.shape
    if tokenizer_source in SHAPES:
        parser.error(f"--shape {args.shape} carries no tokenizer: name one with --tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(model_folder(tokenizer_source)))
    config = shape_config(args.shape)
    if len(tokenizer) > config.vocab_size:
        parser.error(f"the tokenizer has {len(tokenizer)} tokens, more than the shape's vocab_size {config.vocab_size}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    built = time.perf_counter() - start
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "out": str(args.out),
                "architecture": type(model).__name__,
                "params": params,
                "dtype": str(dtype).removeprefix("torch."),
                "layers": config.num_hidden_layers,
                "hidden": config.hidden_size,
                "ffn": getattr(config, "intermediate_size", None),
                "build_s": round(built, 1),
                "total_s": round(time.perf_counter() - start, 1),
            }
        )
    )
    print(f"random weights ({params / 1e9:.2f}B parameters) written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

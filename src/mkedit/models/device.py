"""Where and in which precision a model runs: ``--device`` and ``--dtype`` of every command.

``auto`` picks a CUDA device when one is present (else the CPU), and bfloat16 on a GPU (float32 on the
CPU, where bfloat16 matmuls are slow and the packaged models are small). Bad values are clear errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mkedit.errors import MkeditError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class DeviceError(MkeditError, ValueError):
    """A device or dtype that does not exist here, or is misspelt."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device that exists on this machine."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this machine has no CUDA device (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` (bfloat16 on a GPU, float32 elsewhere) or one of :data:`DTYPES`."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}: use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` (as the CLI's) for the benchmark scripts."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--dtype", default="auto", help=f"auto (bfloat16 on a GPU, float32 on cpu), {', '.join(DTYPES)}"
    )


def add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``/``--dtype``, ``--data`` (a path, required) and ``--langs``: what every benchmark
    script that edits records of a data file asks first."""
    parser.add_argument("--model", default="qwen2.5-0.5b")
    add_device_options(parser)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--langs", default="en,zh")

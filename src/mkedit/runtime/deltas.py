"""How an LU-LAFNs edit's ΔV is stored: per layer, neuron indices and their update values.

Indices take the smallest integer type that holds the layer width (int16 up to 32,767 neurons, else
int32): lossless. Values are float32 by default; ``float16``/``bfloat16`` halve them and ``int8`` (one
float32 scale per layer, symmetric) quarters them, and ``keep_fraction`` < 1 keeps only the largest
updates by magnitude. The loss these cause is measured in the README (performance section) before any
of them becomes a default. :func:`neuron_deltas` reads every stored form back as long indices and
float32 values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from mkedit.runtime.cache import Edit

ValueDtype = Literal["float32", "float16", "bfloat16", "int8"]
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}


def _index_dtype(width: int) -> torch.dtype:
    return torch.int16 if width <= torch.iinfo(torch.int16).max + 1 else torch.int32


def neuron_tensors(
    deltas: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    value_dtype: ValueDtype = "float32",
    keep_fraction: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-layer (indices, values) as an edit's tensors ``<layer>/idx``, ``<layer>/val`` (and
    ``<layer>/scale`` for int8), keeping the ``keep_fraction`` largest values of each layer."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    out: dict[str, torch.Tensor] = {}
    for layer, (idx, val) in deltas.items():
        idx, val = idx.detach().to("cpu", torch.long), val.detach().to("cpu", torch.float32)
        if keep_fraction < 1.0 and val.numel():
            top = torch.topk(val.abs(), max(1, math.ceil(keep_fraction * val.numel()))).indices.sort().values
            idx, val = idx[top], val[top]
        out[f"{layer}/idx"] = idx.to(_index_dtype(int(idx.max()) + 1 if idx.numel() else 0))
        if value_dtype == "int8":
            scale = val.abs().max().clamp_min(1e-12) / 127.0
            out[f"{layer}/val"] = torch.round(val / scale).clamp(-127, 127).to(torch.int8)
            out[f"{layer}/scale"] = scale.reshape(1)
        else:
            out[f"{layer}/val"] = val.to(VALUE_DTYPES[value_dtype])
    return out


def neuron_deltas(edit: Edit) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`neuron_tensors`: layer -> (indices [k] long, values [k] float32)."""
    tensors = edit.tensors
    layers = sorted({int(prefix) for name in tensors if (prefix := name.split("/", 1)[0]).isdigit()})
    out = {}
    for layer in layers:
        val = tensors[f"{layer}/val"].float()
        if f"{layer}/scale" in tensors:
            val = val * tensors[f"{layer}/scale"].float()
        out[layer] = (tensors[f"{layer}/idx"].long(), val)
    return out

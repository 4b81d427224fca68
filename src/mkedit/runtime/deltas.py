"""How an LU-LAFNs edit's ΔV is stored: per layer, neuron indices and their update values.

Indices are stored losslessly in the smaller of two forms: a list in the smallest integer type that
holds them (int16 up to 32,767 neurons, else int32; ``<layer>/idx``), or a bitmask over the layer's
neurons up to the highest one used (``<layer>/mask``, 1 bit per neuron): LAFNs are often a large share
of a layer, and then the mask is several times smaller. Values are float32 by default; ``float16`` /
``bfloat16`` halve them; ``int8``, ``int6``, ``int5`` and ``int4`` are symmetric integer codes with one
float32 scale per layer (``<layer>/val`` for int8; the narrower codes packed back to back into bytes,
``<layer>/val<bits>``), and ``keep_fraction`` < 1 keeps only the largest updates by magnitude. The loss
each causes is measured in the README (performance section).
:func:`neuron_deltas` reads every stored form back as long indices and float32 values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch

from mkedit.errors import CacheError
from mkedit.runtime.cache import Edit

ValueDtype = Literal["float32", "float16", "bfloat16", "int8", "int6", "int5", "int4"]
VALUE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
}
PACKED_BITS: dict[str, int] = {"int6": 6, "int5": 5, "int4": 4}
"""Integer codes narrower than a byte, stored as ``<layer>/val<bits>``."""


def _index_dtype(width: int) -> torch.dtype:
    return torch.int16 if width <= torch.iinfo(torch.int16).max + 1 else torch.int32


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool ``[n]`` -> uint8 ``[ceil(n / 8)]``, first bit in the lowest position."""
    padded = torch.zeros(-(-bits.numel() // 8) * 8, dtype=torch.uint8)
    padded[: bits.numel()] = bits.to(torch.uint8)
    return (padded.view(-1, 8) << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[m]`` -> bool ``[8 m]`` (inverse of :func:`_pack_bits`)."""
    return ((packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).flatten().bool()


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` -> their ``bits`` low bits each, back to back,
    lowest bit first (for 4 bits: two codes per byte, the first in the low nibble)."""
    unsigned = (codes.to(torch.int16) + (1 << (bits - 1)) - 1).to(torch.uint8)
    return _pack_bits(((unsigned.unsqueeze(1) >> torch.arange(bits, dtype=torch.uint8)) & 1).flatten().bool())


def _unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of :func:`_pack_codes` for ``n`` codes, as float32."""
    if packed.numel() != -(-n * bits // 8):
        raise ValueError(f"{packed.numel()} packed bytes for {n} {bits}-bit codes")
    unsigned = (_unpack_bits(packed)[: n * bits].view(n, bits).to(torch.int32) << torch.arange(bits)).sum(1)
    return unsigned.float() - ((1 << (bits - 1)) - 1)


def _quantise(val: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integer codes in ``[-levels, levels]`` and the scale that maps them back."""
    scale = val.abs().max().clamp_min(1e-12) / levels
    return torch.round(val / scale).clamp(-levels, levels).to(torch.int8), scale.reshape(1)


def neuron_tensors(
    deltas: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    value_dtype: ValueDtype = "float32",
    keep_fraction: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-layer (indices, values) as an edit's tensors ``<layer>/idx`` or ``<layer>/mask``, ``<layer>/val``
    or ``<layer>/val<bits>`` (and ``<layer>/scale`` for integer codes), keeping the ``keep_fraction`` largest
    values of each layer."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    out: dict[str, torch.Tensor] = {}
    for layer, (idx, val) in deltas.items():
        idx, val = idx.detach().to("cpu", torch.long), val.detach().to("cpu", torch.float32)
        if keep_fraction < 1.0 and val.numel():
            top = torch.topk(val.abs(), max(1, math.ceil(keep_fraction * val.numel()))).indices.sort().values
            idx, val = idx[top], val[top]
        idx, order = idx.sort()
        val = val[order]
        width = int(idx.max()) + 1 if idx.numel() else 0
        as_list = idx.to(_index_dtype(width))
        if -(-width // 8) < as_list.numel() * as_list.element_size():
            mask = torch.zeros(width, dtype=torch.bool)
            mask[idx] = True
            out[f"{layer}/mask"] = _pack_bits(mask)
        else:
            out[f"{layer}/idx"] = as_list
        if value_dtype in PACKED_BITS:
            bits = PACKED_BITS[value_dtype]
            codes, out[f"{layer}/scale"] = _quantise(val, (1 << (bits - 1)) - 1)
            out[f"{layer}/val{bits}"] = _pack_codes(codes, bits)
        elif value_dtype == "int8":
            out[f"{layer}/val"], out[f"{layer}/scale"] = _quantise(val, 127)
        else:
            out[f"{layer}/val"] = val.to(VALUE_DTYPES[value_dtype])
    return out


def neuron_deltas(
    edit: Edit, n_layers: int | None = None, width: int | None = None
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`neuron_tensors`: layer -> (indices [k] long, values [k] float32).

    Stored tensors are checked as they are decoded (a cache's tensors are read lazily, on first use): a
    negative layer or neuron index, or indices and values of different lengths, is a CacheError naming the
    edit; so is a layer >= ``n_layers`` or a neuron >= ``width`` (the model's FFN width), when given.
    """
    tensors = edit.tensors

    def bad(problem: str) -> CacheError:
        return CacheError(f"edit {edit.edit_id!r}: {problem}; the edit cache is damaged or was edited by hand")

    prefixes = {name.split("/", 1)[0] for name in tensors if "/" in name}
    if negative := sorted(p for p in prefixes if p.startswith("-") and p[1:].isdecimal() and p.isascii()):
        raise bad(f"negative layer index {negative[0]} in its tensor names")
    layers = sorted(int(prefix) for prefix in prefixes if prefix.isdecimal() and prefix.isascii())
    out = {}
    for layer in layers:
        if n_layers is not None and layer >= n_layers:
            raise bad(f"layer {layer} is out of range for a {n_layers}-layer model")
        try:
            if f"{layer}/mask" in tensors:
                idx = torch.nonzero(_unpack_bits(_stored(tensors, f"{layer}/mask", uint8=True))).flatten()
            else:
                idx = _stored(tensors, f"{layer}/idx", integer=True).long()
            packed = [bits for bits in PACKED_BITS.values() if f"{layer}/val{bits}" in tensors]
            if packed:
                val = _unpack_codes(_stored(tensors, f"{layer}/val{packed[0]}", uint8=True), packed[0], idx.numel())
            else:
                val = _stored(tensors, f"{layer}/val").float()
            if f"{layer}/scale" in tensors:
                scale = _stored(tensors, f"{layer}/scale")
                if scale.numel() != 1:
                    raise ValueError(f"{layer}/scale holds {scale.numel()} values, not 1")
                val = val * scale.float()
        except (KeyError, ValueError) as exc:
            raise bad(f"layer {layer}: {exc.args[0] if exc.args else exc}") from exc
        if idx.numel() != val.numel():
            raise bad(f"layer {layer} has {idx.numel()} neuron indices but {val.numel()} values")
        if idx.numel() and int(idx.min()) < 0:
            raise bad(f"layer {layer} has a negative neuron index ({int(idx.min())})")
        if width is not None and idx.numel() and int(idx.max()) >= width:
            raise bad(f"layer {layer} has neuron index {int(idx.max())}, out of range for an FFN of {width} neurons")
        out[layer] = (idx, val)
    return out


def _stored(tensors: Mapping[str, torch.Tensor], name: str, integer: bool = False, uint8: bool = False) -> torch.Tensor:
    """``tensors[name]``, which must be one-dimensional (integer-typed or uint8 when asked)."""
    if name not in tensors:
        raise KeyError(f"tensor {name} is missing")
    tensor = tensors[name]
    if tensor.dim() != 1:
        raise ValueError(f"{name} has shape {list(tensor.shape)}, expected one dimension")
    if uint8 and tensor.dtype != torch.uint8:
        raise ValueError(f"{name} has dtype {tensor.dtype}, expected torch.uint8")
    if integer and (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool):
        raise ValueError(f"{name} has dtype {tensor.dtype}, expected integer indices")
    return tensor

"""Weight edits that are put in force and taken back exactly, and a cheap check that weights are untouched.

ROME, MEMIT, PMET and LoRA (after ``get_delta_weight``) all change a few weight matrices by a low-rank
product ``left @ right``. :func:`added_weights` adds such deltas in place and, on exit, copies the saved
originals back, so the model is bit-identical afterwards (subtracting would leave rounding residue).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from mkedit.runtime.cache import Edit

_CHUNK = 4096


def low_rank_tensors(deltas: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{param: (left [out, r], right [r, in])}`` as an edit's tensors ``<param>/left``, ``<param>/right``."""
    out: dict[str, torch.Tensor] = {}
    for name, (left, right) in deltas.items():
        out[f"{name}/left"] = left.detach().float().cpu().contiguous()
        out[f"{name}/right"] = right.detach().float().cpu().contiguous()
    return out


def low_rank_deltas(edit: Edit) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The inverse of :func:`low_rank_tensors`."""
    params = sorted({name.rsplit("/", 1)[0] for name in edit.tensors})
    return {p: (edit.tensors[f"{p}/left"], edit.tensors[f"{p}/right"]) for p in params}


@contextmanager
def added_weights(model: nn.Module, edits: Sequence[Edit]) -> Iterator[None]:
    """Add every edit's low-rank deltas to the named parameters (stacked, in order); restore exactly on exit.

    A delta's shape is the parameter's own (``[out, in]`` for ``nn.Linear``, ``[in, out]`` for GPT-2's
    ``Conv1D``): methods store them in the parameter's layout.
    """
    originals: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for edit in edits:
                for name, (left, right) in low_rank_deltas(edit).items():
                    param = model.get_parameter(name)
                    if name not in originals:
                        originals[name] = param.detach().clone()
                    delta = left.to(param.device, torch.float32) @ right.to(param.device, torch.float32)
                    if delta.shape != param.shape:
                        raise ValueError(
                            f"delta for {name} has shape {tuple(delta.shape)}, the weight {tuple(param.shape)}"
                        )
                    param.add_(delta.to(param.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in originals.items():
                model.get_parameter(name).copy_(original)


@contextmanager
def only_trainable(model: nn.Module, params: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """Gradients for ``params`` alone while inside; every parameter's ``requires_grad`` is put back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    wanted = {id(p) for p in params}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def weights_checksum(model: nn.Module) -> torch.Tensor:
    """One float64 number per parameter: its elements dotted with fixed pseudo-random, position-dependent weights.

    Any change to a parameter (scaling, permuting rows, a low-rank delta) changes its number with
    overwhelming probability, at the cost of one pass over the weights and no copy of them.
    """
    gen = torch.Generator().manual_seed(1234)
    probe = torch.rand(_CHUNK, generator=gen, dtype=torch.float64) + 0.5
    sums = []
    for param in model.parameters():
        flat = param.detach().reshape(-1)
        n_full = flat.numel() // _CHUNK * _CHUNK
        total = torch.zeros((), dtype=torch.float64)
        if n_full:
            per_chunk = (flat[:n_full].view(-1, _CHUNK).float() @ probe.to(param.device, torch.float32)).double().cpu()
            # A second, position-dependent weight per chunk, so that permuting whole chunks shows too.
            position = torch.arange(per_chunk.numel(), dtype=torch.float64) * 0.6180339887498949 % 1.0 + 0.5
            total += (per_chunk * position).sum()
        if n_full < flat.numel():
            tail = flat[n_full:].double().cpu()
            total += (tail * probe[: tail.numel()]).sum()
        sums.append(total)
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)

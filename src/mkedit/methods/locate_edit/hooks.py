"""Forward hooks of the locate-then-edit family: read keys and outputs, add value deltas, simulate updates.

Three places in a block matter (all ``[batch, seq, d_model]`` outputs, asked of the adapter):
``ffn_out`` (W_out's output: ROME's and PMET's value), ``attn_out`` (the attention's output projection:
PMET's second value) and ``block_out`` (the residual stream after the block: MEMIT's value). A key is
W_out's input ``[batch, seq, d_ffn]`` (``act(gate) * up`` in a gated FFN).

While an edit is computed, weight updates of earlier layers or languages must be in force, but the
weights may not change; :func:`ffn_deltas` adds ``ΔW k`` to W_out's output instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from torch import nn

from mkedit.arch import FFNAdapter

Site = Literal["ffn_out", "attn_out", "block_out"]
FFNDeltas = Mapping[int, tuple[torch.Tensor, torch.Tensor]]
"""layer -> (left ``[d_model, r]``, right ``[r, d_ffn]``): ``ΔW = left @ right`` in ``y = W k`` layout."""


def site_module(adapter: FFNAdapter, site: Site, layer: int) -> nn.Module:
    if site == "ffn_out":
        return adapter.down_proj_module(layer)
    if site == "attn_out":
        return adapter.attn_out_module(layer)
    return adapter.block_module(layer)


def _map_output(out: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to a module's hidden-state output (a tensor, or the first item of a tuple)."""
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return fn(out)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def _hooks(register: Sequence[Callable[[], Any]]) -> Iterator[None]:
    handles = [reg() for reg in register]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def added_at(
    adapter: FFNAdapter, layer: int, deltas: Mapping[Site, torch.Tensor], rows: torch.Tensor, pos: torch.Tensor
) -> Iterator[None]:
    """While active, add ``deltas[site]`` (``[d_model]``, may require grad) to the output of ``site`` at
    ``layer`` at every ``(rows[i], pos[i])``."""

    def adder(delta: torch.Tensor) -> Callable:
        def add(hidden: torch.Tensor) -> torch.Tensor:
            values = delta.to(hidden.dtype).expand(rows.numel(), -1)
            return hidden.index_put((rows.to(hidden.device), pos.to(hidden.device)), values, accumulate=True)

        return lambda _m, _i, out: _map_output(out, add)

    register = [
        lambda site=site, delta=delta: site_module(adapter, site, layer).register_forward_hook(adder(delta))
        for site, delta in deltas.items()
    ]
    with _hooks(register):
        yield


@contextmanager
def ffn_deltas(adapter: FFNAdapter, deltas: FFNDeltas) -> Iterator[None]:
    """While active, W_out of each layer acts as ``W + left @ right`` (computed as ``W k + left (right k)``)."""

    def hook(left: torch.Tensor, right: torch.Tensor) -> Callable:
        def fn(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            k = args[0]
            extra = (k.float() @ right.to(k.device).T) @ left.to(k.device).T
            return out + extra.to(out.dtype)

        return fn

    register = [
        lambda layer=layer, lr=lr: adapter.down_proj_module(layer).register_forward_hook(hook(*lr))
        for layer, lr in deltas.items()
    ]
    with _hooks(register):
        yield


class _StopForward(Exception):
    """Raised by the hook of :func:`truncated_after`."""


def _stop(*_: object) -> None:
    raise _StopForward


@contextmanager
def truncated_after(adapter: FFNAdapter, layer: int) -> Iterator[None]:
    """A forward inside ends, silently, once block ``layer`` has run: the blocks above cannot change
    anything read at or below it. Enter it after the hooks that read block ``layer``'s output."""
    handle = adapter.block_module(layer).register_forward_hook(_stop)
    try:
        yield
    except _StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def captured(
    adapter: FFNAdapter, key_layers: Sequence[int], sites: Sequence[tuple[Site, int]]
) -> Iterator[dict[Any, torch.Tensor]]:
    """Capture on the next forward: ``("key", layer)`` -> W_out's input, ``(site, layer)`` -> that output."""
    seen: dict[Any, torch.Tensor] = {}

    def keep_input(name: Any) -> Callable:
        return lambda _m, args: seen.__setitem__(name, args[0].detach())

    def keep_output(name: Any) -> Callable:
        return lambda _m, _i, out: seen.__setitem__(name, _first(out).detach())

    register: list[Callable[[], Any]] = [
        lambda layer=layer: adapter.down_proj_module(layer).register_forward_pre_hook(keep_input(("key", layer)))
        for layer in key_layers
    ]
    register += [
        lambda site=site, layer=layer: site_module(adapter, site, layer).register_forward_hook(
            keep_output((site, layer))
        )
        for site, layer in sites
    ]
    with ExitStack() as stack:
        stack.enter_context(_hooks(register))
        yield seen

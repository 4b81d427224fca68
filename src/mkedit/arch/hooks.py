"""Read FFN neurons, and add neuron-space updates at chosen token positions, through forward hooks.

One mechanism serves locating (counting activations), editing (a trainable update shared by every
placement) and inference (several cached edits, each at its own subject's last token). Positions are
absolute indices in the padded rows; during incremental decoding with a KV cache, the hook learns the
current offset from the cache length, so updates land once, on the prompt pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mkedit.arch.base import FFNAdapter, NeuronSite


@dataclass(frozen=True)
class Placement:
    """Add update ``key`` at token ``pos`` of batch row ``row``."""

    row: int
    pos: int
    key: str


# key -> layer -> (neuron indices [k] long, values [k])
NeuronUpdates = Mapping[str, Mapping[int, tuple[torch.Tensor, torch.Tensor]]]


class _OffsetTracker:
    """Records how many positions the KV cache already holds when the base model is called."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0


class _LayerUpdate:
    """The flattened (row, pos, neuron) coordinates and value tensors of one layer's placements."""

    def __init__(self, placements: Sequence[Placement], updates: NeuronUpdates, layer: int) -> None:
        rows, poss, idxs, self.values = [], [], [], []
        for p in placements:
            per_layer = updates[p.key]
            if layer not in per_layer:
                continue
            idx, val = per_layer[layer]
            rows.append(torch.full_like(idx, p.row))
            poss.append(torch.full_like(idx, p.pos))
            idxs.append(idx)
            self.values.append(val)
        self.empty = not idxs
        if not self.empty:
            self.rows, self.poss, self.idxs = torch.cat(rows), torch.cat(poss), torch.cat(idxs)

    def apply(self, acts: torch.Tensor, offset: int) -> torch.Tensor:
        """``acts [batch, seq, d_ffn]`` plus the updates whose positions fall inside this call."""
        values = torch.cat(self.values).to(acts.dtype)
        rows, poss, idxs = self.rows.to(acts.device), self.poss.to(acts.device) - offset, self.idxs
        inside = (poss >= 0) & (poss < acts.shape[1])
        if not bool(inside.all()):
            rows, poss, idxs, values = rows[inside], poss[inside], idxs[inside], values[inside]
        if rows.numel() == 0:
            return acts
        return acts.index_put((rows, poss, idxs.to(acts.device)), values.to(acts.device), accumulate=True)


@contextmanager
def neuron_updates(
    adapter: FFNAdapter,
    updates: NeuronUpdates,
    placements: Sequence[Placement],
    site: NeuronSite = "act_fn",
) -> Iterator[None]:
    """While active, every forward adds ``updates[key]`` at each placement's position.

    Nothing is registered when there are no placements, so unmatched inputs run the untouched model.
    Values keep their autograd graph, so the same context trains an update.
    """
    if not placements:
        yield
        return
    layers = sorted({layer for p in placements for layer in updates[p.key]})
    tracker = _OffsetTracker()
    with ExitStack() as stack:
        handle = adapter.base_model.register_forward_pre_hook(tracker, with_kwargs=True)
        stack.callback(handle.remove)
        for layer in layers:
            update = _LayerUpdate(placements, updates, layer)
            if update.empty:
                continue
            apply = update.apply
            stack.enter_context(_site_hook(adapter, layer, site, lambda acts, apply=apply: apply(acts, tracker.offset)))
        yield


@contextmanager
def _site_hook(
    adapter: FFNAdapter, layer: int, site: NeuronSite, fn: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Call ``fn`` on the ``[batch, seq, d_ffn]`` tensor at ``site``; a returned tensor replaces it."""
    module, side = adapter.site_module(layer, site)
    if side == "output":
        handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
    else:

        def pre_hook(_m: nn.Module, args: tuple) -> tuple | None:
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


class ActivationCounter:
    """Counts, per layer and neuron, the token positions where ``act_fn(h W1) > 0`` (Eq. 4).

    Set :attr:`valid` to a ``[batch, seq]`` bool mask before each forward to leave out padding and
    special tokens.
    """

    def __init__(self, adapter: FFNAdapter, layers: Sequence[int]) -> None:
        self.adapter = adapter
        self.layers = list(layers)
        self.counts = {layer: torch.zeros(adapter.d_ffn, dtype=torch.long) for layer in self.layers}
        self.valid: torch.Tensor | None = None

    @contextmanager
    def recording(self) -> Iterator[ActivationCounter]:
        with ExitStack() as stack:
            for layer in self.layers:

                def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, layer: int = layer) -> None:
                    active = out > 0
                    if self.valid is not None:
                        active = active & self.valid.to(out.device).unsqueeze(-1)
                    self.counts[layer] += active.sum(dim=(0, 1)).cpu()

                handle = self.adapter.activation_module(layer).register_forward_hook(hook)
                stack.callback(handle.remove)
            yield self


@contextmanager
def capture_site_values(
    adapter: FFNAdapter, layers: Sequence[int], site: NeuronSite
) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the ``[batch, seq, d_ffn]`` tensor at ``site`` of each layer on the next forward."""
    captured: dict[int, torch.Tensor] = {}
    with ExitStack() as stack:
        for layer in layers:

            def keep(acts: torch.Tensor, layer: int = layer) -> None:
                captured[layer] = acts.detach()

            stack.enter_context(_site_hook(adapter, layer, site, keep))
        yield captured

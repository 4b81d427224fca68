"""M-MEMIT: every language's value written into a band of W_out matrices in one batched update (App. A)."""

from __future__ import annotations

import torch

from mkedit.methods.locate_edit import GroupWork, LocateEditMethod
from mkedit.methods.locate_edit.rules import spread_batched
from mkedit.methods.memit.config import MemitConfig, memit_layers
from mkedit.methods.registry import register_method


@register_method
class MemitMethod(LocateEditMethod[MemitConfig]):
    name = "m-memit"
    config_class = MemitConfig
    summary = "MEMIT per language: residual-stream values of all languages spread over a band of FFN layers"

    def reference_layers(self) -> tuple[int, ...]:
        return memit_layers(self.adapter.n_layers)

    def compute_deltas(self, work: GroupWork) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return spread_batched(
            work, self.config.layers, ("block_out",), "block_out", self.config.mom2_update_weight, float
        )

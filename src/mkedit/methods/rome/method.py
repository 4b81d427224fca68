"""M-ROME: a rank-one update of one layer's W_out per language (paper App. A)."""

from __future__ import annotations

import torch

from mkedit.methods.locate_edit import GroupWork, LocateEditMethod
from mkedit.methods.locate_edit.rules import rome_sequential
from mkedit.methods.registry import register_method
from mkedit.methods.rome.config import RomeConfig, rome_layers


@register_method
class RomeMethod(LocateEditMethod[RomeConfig]):
    name = "m-rome"
    config_class = RomeConfig
    summary = "ROME per language: a rank-one W_out update of one FFN layer for each language's answer"

    def reference_layers(self) -> tuple[int, ...]:
        return rome_layers(self.adapter.n_layers)

    def compute_deltas(self, work: GroupWork) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return rome_sequential(work, self.config.layers[0])

"""M-PMET: attention and FFN values learned together; only the FFN part is written into W_out (App. A)."""

from __future__ import annotations

import math

import torch

from mkedit.methods.locate_edit import GroupWork, LocateEditMethod
from mkedit.methods.locate_edit.rules import spread_batched
from mkedit.methods.pmet.config import PmetConfig, pmet_layers
from mkedit.methods.registry import register_method


@register_method
class PmetMethod(LocateEditMethod[PmetConfig]):
    name = "m-pmet"
    config_class = PmetConfig
    summary = "PMET per language: attention+FFN values learned together, FFN part spread over a band of layers"

    def reference_layers(self) -> tuple[int, ...]:
        return pmet_layers(self.adapter.n_layers)

    def compute_deltas(self, work: GroupWork) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return spread_batched(
            work, self.config.layers, ("attn_out", "ffn_out"), "ffn_out", self.config.mom2_update_weight, math.sqrt
        )

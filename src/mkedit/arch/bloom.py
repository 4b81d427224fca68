"""BLOOM's plain FFN (Eq. 2): ``dense_4h_to_h(gelu(dense_h_to_4h(h)))``."""

from __future__ import annotations

from torch import nn

from mkedit.arch.base import FFNAdapter, ProjectionRole


class BloomAdapter(FFNAdapter):
    model_types = ("bloom",)
    gated = False

    def layers(self) -> nn.ModuleList:
        return self.base_model.h

    def activation_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.gelu_impl

    def down_proj_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.dense_4h_to_h

    def projections(self, layer: int) -> dict[ProjectionRole, nn.Module]:
        attn, mlp = self.layers()[layer].self_attention, self.layers()[layer].mlp
        return {"qkv": attn.query_key_value, "o": attn.dense, "up": mlp.dense_h_to_4h, "down": mlp.dense_4h_to_h}

    @property
    def d_ffn(self) -> int:
        return self.layers()[0].mlp.dense_4h_to_h.in_features

"""GPT-2's plain FFN (Eq. 2): ``c_proj(act(c_fc(h)))`` with Conv1D projections."""

from __future__ import annotations

from torch import nn

from mkedit.arch.base import FFNAdapter, ProjectionRole


class GPT2Adapter(FFNAdapter):
    model_types = ("gpt2",)
    gated = False
    transposed_weights = True  # Conv1D weights are [in, out]

    def layers(self) -> nn.ModuleList:
        return self.base_model.h

    def activation_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.act

    def down_proj_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.c_proj

    def projections(self, layer: int) -> dict[ProjectionRole, nn.Module]:
        attn, mlp = self.layers()[layer].attn, self.layers()[layer].mlp
        return {"qkv": attn.c_attn, "o": attn.c_proj, "up": mlp.c_fc, "down": mlp.c_proj}

    @property
    def d_ffn(self) -> int:
        return self.layers()[0].mlp.c_fc.nf  # Conv1D stores its output width as ``nf``

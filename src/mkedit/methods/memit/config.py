"""M-MEMIT's hyperparameters: MEMIT's public Llama-7B configuration (EasyEdit ``MEMIT/llama-7b``), with the
layer band of GPT-J's reference (``MEMIT/EleutherAI_gpt-j-6B``: layers 3-8 of 28) scaled to the model's depth."""

from __future__ import annotations

from dataclasses import dataclass

from mkedit.methods.locate_edit.config import LocateEditConfig, depth_band

REFERENCE_BAND, REFERENCE_DEPTH = (3, 8), 28


def memit_layers(n_layers: int) -> tuple[int, ...]:
    """``round(3/28 · n) .. round(8/28 · n)``: 3-7 of 24 (qwen2.5-0.5b), 2-5 of 18, 3-9 of 30, 0-1 of 4."""
    return depth_band(*REFERENCE_BAND, REFERENCE_DEPTH, n_layers)


@dataclass(frozen=True)
class MemitConfig(LocateEditConfig):
    """MEMIT learns each language's residual-stream value at the band's last layer and spreads it over the band.

    Layers: empty = ``round(3/28 · depth) .. round(8/28 · depth)`` (GPT-J's 3-8 at the same relative
    depth). Other values: the Llama-7B reference (25 steps, lr 0.5, weight decay 1e-3, clamp 4, KL 0.0625,
    update weight 15,000).
    """

    mom2_update_weight: float = 15000.0
    """λ of ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹``: how strongly the corpus keys' outputs are preserved."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_update_weight <= 0:
            raise ValueError("mom2_update_weight must be positive")

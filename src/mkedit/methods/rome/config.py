"""M-ROME's hyperparameters: ROME's public Llama-7B configuration (EasyEdit ``ROME/llama-7b``), with the
layer of GPT-J's reference (``ROME/EleutherAI_gpt-j-6B``: layer 5 of 28) scaled to the model's depth."""

from __future__ import annotations

from dataclasses import dataclass

from mkedit.methods.locate_edit.config import LocateEditConfig, depth_band

REFERENCE_LAYER, REFERENCE_DEPTH = 5, 28


def rome_layers(n_layers: int) -> tuple[int, ...]:
    """``floor(5 / 28 · n_layers + 0.5)``: layer 4 of 24 (qwen2.5-0.5b), 3 of 18, 5 of 30, 1 of 4."""
    return depth_band(REFERENCE_LAYER, REFERENCE_LAYER, REFERENCE_DEPTH, n_layers)


@dataclass(frozen=True)
class RomeConfig(LocateEditConfig):
    """ROME edits one layer; each language's request is a rank-one update of its W_out.

    Layers: empty = ``round(5 / 28 · n_layers)`` (GPT-J's layer 5 at the same relative depth). Other
    values: the Llama-7B reference (25 steps, lr 0.5, weight decay 1e-3, clamp 4, KL 0.0625); the
    reference's 20 prefixes of two lengths are 5 of 10 tokens here, as MEMIT's.
    """

    layers: tuple[int, ...] = ()
    """The one FFN layer whose W_out is rewritten (negative = from the end); empty = ``round(5/28 · depth)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) > 1:
            raise ValueError(f"M-ROME rewrites one layer, got layers={self.layers}")

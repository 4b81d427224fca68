"""Hyperparameters shared by M-ROME, M-MEMIT and M-PMET, and how their layers follow a model's depth.

The reference configurations name absolute layers of one model (ROME: layer 5 of GPT-J's 28; MEMIT and
PMET: layers 3-8 of 28). :func:`depth_band` maps such a band onto a model of any depth by the same
fraction, so every packaged model gets layers at the same relative depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mkedit.methods.config import MethodConfig


def depth_band(first: int, last: int, ref_depth: int, n_layers: int) -> tuple[int, ...]:
    """Layers ``first..last`` (inclusive) of a ``ref_depth``-layer model, scaled to ``n_layers``.

    Each end is ``floor(end / ref_depth * n_layers + 0.5)`` (round half up), clipped to the model:
    ROME's 5 of 28 is layer 4 of 24; MEMIT's 3-8 of 28 is 3-7 of 24, 0-1 of 4.
    """

    def scale(index: int) -> int:
        return min(n_layers - 1, max(0, math.floor(index / ref_depth * n_layers + 0.5)))

    return tuple(range(scale(first), scale(last) + 1))


@dataclass(frozen=True)
class LocateEditConfig(MethodConfig):
    """Fields every locate-then-edit baseline has; each method's config sets its reference defaults."""

    layers: tuple[int, ...] = ()
    """FFN layers whose W_out is rewritten (negative = from the end); empty = the method's reference layers
    scaled to the model's depth (see the method's config)."""
    v_lr: float = 0.5
    """Adam learning rate of the value optimisation (compute_v / compute_z)."""
    v_num_grad_steps: int = 25
    """Forward passes of the value optimisation (one fewer Adam steps, as in the reference code)."""
    v_weight_decay: float = 1e-3
    """Weight of ``||δ|| / ||v_init||²`` in the value loss."""
    clamp_norm_factor: float = 4.0
    """``||δ||`` is kept below this times ``||v_init||`` after every step."""
    kl_factor: float = 0.0625
    """Weight of the KL term on the language's "{subject} is a" prompt."""
    early_stop_loss: float = 0.05
    """Stop the value optimisation once its total loss is below this (reference: 5e-2)."""
    num_prefixes: int = 5
    """Random prefixes per language (MEMIT's context templates); the bare question is always added."""
    prefix_length: int = 10
    """Tokens per random prefix, its seed word included (MEMIT: 10)."""
    stats_corpus: str | None = None
    """Text for the second-moment statistics C: a folder with one file per language whose name holds the
    language code (MzsRE's ``train/`` folder: ``zsre_mend_train_{lang}_10000.txt``), or a file path where
    ``{lang}`` is replaced by the code. Lines are texts; ``question<TAB>answer`` lines become
    ``question answer``. Unset: ``$MKEDIT_STATS_CORPUS``."""
    stats_samples: int = 2000
    """Texts (lines) per language for C, from the top of the file. The reference uses 100,000 Wikipedia
    texts; 2,000 MzsRE lines are ~28k tokens (6x the 4,864 keys of qwen2.5-0.5b), computed once per model
    and language (1,000 took ~10 min for five layers on 2 busy CPU cores); 10,000 is a whole MzsRE file."""
    seed: int = 0
    """Seed of the random prefixes."""

    def __post_init__(self) -> None:
        for name in ("v_lr", "clamp_norm_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor", "early_stop_loss"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.v_num_grad_steps < 1:
            raise ValueError("v_num_grad_steps must be >= 1")
        if self.num_prefixes < 0 or self.prefix_length < 1:
            raise ValueError("num_prefixes >= 0 and prefix_length >= 1 are required")
        if self.stats_samples < 1:
            raise ValueError("stats_samples must be >= 1")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must not repeat, got {self.layers}")

"""Locating stage (Eq. 4-6): factual neurons per language, intersected across languages (LAFNs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from mkedit.arch import FFNAdapter
from mkedit.arch.hooks import ActivationCounter
from mkedit.errors import MkeditError
from mkedit.methods.lu_lafns.config import LocateStrategy
from mkedit.types import EditGroup


@dataclass(frozen=True)
class LocateResult:
    """Counts and selected neurons, kept for inspection and analysis (Figure 1, Table 5)."""

    counts: dict[str, dict[int, torch.Tensor]]  # lang -> layer -> activation counts [d_ffn]
    per_language: dict[str, dict[int, torch.Tensor]]  # lang -> layer -> selected indices (Eq. 5)
    lafns: dict[int, torch.Tensor]  # layer -> indices updated by the edit (Eq. 6, or an ablation)

    def sizes(self) -> dict[int, int]:
        return {layer: int(idx.numel()) for layer, idx in self.lafns.items()}


@torch.no_grad()
def count_activations(
    adapter: FFNAdapter,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
) -> dict[int, torch.Tensor]:
    """Eq. 4: per layer, how many token positions of ``corpus`` make each neuron's ``act_fn`` > 0.

    Every real token counts; padding and tokenizer-added special tokens (BOS) do not.
    """
    counter = ActivationCounter(adapter, layers)
    device = next(adapter.model.parameters()).device
    with counter.recording():
        for start in range(0, len(corpus), batch_size):
            batch = tokenizer(
                list(corpus[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                padding_side="right",
                return_special_tokens_mask=True,
            )
            mask = batch["attention_mask"].bool() & ~batch["special_tokens_mask"].bool()
            counter.valid = mask
            adapter.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return counter.counts


def select_neurons(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5: indices with ``count / max(count) > beta`` (sorted)."""
    peak = counts.max()
    if peak <= 0:
        return torch.empty(0, dtype=torch.long)
    return torch.nonzero(counts.double() / peak.double() > beta).flatten()


def intersect(sets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 6: indices present in every set (sorted)."""
    result = sets[0]
    for other in sets[1:]:
        result = result[torch.isin(result, other)]
    return result


def locate_lafns(
    adapter: FFNAdapter,
    tokenizer: PreTrainedTokenizerBase,
    group: EditGroup,
    layers: Sequence[int],
    beta: float,
    strategy: LocateStrategy = "lafns",
    seed: int = 0,
    batch_size: int = 16,
) -> LocateResult:
    """Locate the neurons one edit group will update.

    Each language's corpus is its question plus the caller's paraphrases (none = the paper's "No-PGs").
    """
    counts: dict[str, dict[int, torch.Tensor]] = {}
    per_language: dict[str, dict[int, torch.Tensor]] = {}
    for req in group.requests:
        corpus = [req.question, *req.paraphrases]
        counts[req.lang] = count_activations(adapter, tokenizer, corpus, layers, batch_size)
        per_language[req.lang] = {layer: select_neurons(c, beta) for layer, c in counts[req.lang].items()}
    lafns = {layer: intersect([per_language[lang][layer] for lang in group.langs]) for layer in layers}
    if strategy == "all":
        lafns = {layer: torch.arange(adapter.d_ffn) for layer in layers}
    elif strategy == "random":
        generator = torch.Generator().manual_seed(seed)
        lafns = {
            layer: torch.randperm(adapter.d_ffn, generator=generator)[: idx.numel()].sort().values
            for layer, idx in lafns.items()
        }
    lafns = {layer: idx for layer, idx in lafns.items() if idx.numel() > 0}
    if not lafns:
        raise MkeditError(
            f"no language-agnostic neurons found for edit group {group.group_id!r} in layers {list(layers)} "
            f"at beta={beta}; lower beta or choose other layers"
        )
    return LocateResult(counts, per_language, lafns)

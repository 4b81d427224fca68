"""Where is the subject in a question? Exact first, then a documented approximate match.

MzsRE's translated questions often inflect or transliterate the subject ("Rusko" -> "Ruska"), so a
verbatim search misses many of them. The approximate match compares a normalised copy of both strings
(case-folded, diacritics removed, non-Latin scripts transliterated to ASCII) and keeps the best partial
alignment, snapped to word boundaries. Anything below ``min_score`` is refused rather than guessed:
editing at a wrong position would silently corrupt the edit.
"""

from __future__ import annotations

import logging
import re
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


# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK): no word to snap to.
_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x3400, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2FFFF),
)


def word_char(ch: str) -> bool:
    """A letter or digit of a script that separates words with spaces (Latin, Cyrillic, Greek, ...)."""
    return ch.isalnum() and not any(lo <= ord(ch) <= hi for lo, hi in _UNSPACED_RANGES)


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def _snap_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span so it neither starts nor ends inside a word, nor splits a letter from its marks.

    Word snapping is a no-op in scripts without spaces; mark snapping keeps Thai vowel and tone signs.
    """
    while start > 0 and (_is_mark(text[start]) or (word_char(text[start - 1]) and word_char(text[start]))):
        start -= 1
    while end < len(text) and (_is_mark(text[end]) or (word_char(text[end]) and word_char(text[end - 1]))):
        end += 1
    return start, end


def _tidy(text: str, start: int, end: int, subject: str) -> tuple[int, int]:
    """Drop edge spaces and edge punctuation the subject lacks (``?``, quotes); keeps ``(APA-56)``."""

    def junk(ch: str) -> bool:
        return ch.isspace() or (unicodedata.category(ch)[0] in "PS" and ch not in subject)

    while start < end and junk(text[start]):
        start += 1
    while end > start and junk(text[end - 1]):
        end -= 1
    return start, end


def _trim_words(text: str, span: tuple[int, int], aligned: tuple[int, int], subject: str) -> tuple[int, int]:
    """Drop edge words that lie mostly outside the aligned characters, when that fits the subject better.

    The alignment window is as long as the subject, so a subject longer than its occurrence (an
    inflected or shortened form) reaches into the next word, which snapping then takes whole:
    "Gretta Taslakian spojena" for "Gretta Taslakianová".
    """
    norm_subject, _ = _normalise(subject)

    def closeness(candidate: tuple[int, int]) -> float:
        return fuzz.ratio(norm_subject, _normalise(text[candidate[0] : candidate[1]])[0])

    def mostly_outside(word: tuple[int, int]) -> bool:
        inside = max(0, min(word[1], aligned[1]) - max(word[0], aligned[0]))
        return 2 * inside < word[1] - word[0]

    best = _tidy(text, *span, subject)
    while True:
        found = re.finditer(r"\S+", text[best[0] : best[1]])
        words = [(best[0] + m.start(), best[0] + m.end()) for m in found]
        if len(words) < 2:
            return best
        candidates = []
        if mostly_outside(words[0]):
            candidates.append(_tidy(text, words[1][0], best[1], subject))
        if mostly_outside(words[-1]):
            candidates.append(_tidy(text, best[0], words[-2][1], subject))
        better = [c for c in candidates if c[1] > c[0] and closeness(c) > closeness(best)]
        if not better:
            return best
        best = max(better, key=closeness)


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
    start, end = _trim_words(text, _snap_to_words(text, start, end), (start, end), subject)
    if end <= start:
        return None
    return SubjectSpan(start, end, text[start:end], "approximate", float(alignment.score))


def locate_subject(text: str, subject: str, *, context: str = "", min_score: float = DEFAULT_MIN_SCORE) -> SubjectSpan:
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

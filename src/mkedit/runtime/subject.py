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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from anyascii import anyascii
from rapidfuzz import fuzz

from mkedit.errors import SubjectNotFoundError

log = logging.getLogger(__name__)

MatchKind = Literal["verbatim", "other_language", "approximate"]
"""How a subject was placed: its own form verbatim, another language's subject verbatim, or approximately."""
DEFAULT_MIN_SCORE = 80.0


@dataclass(frozen=True)
class SubjectSpan:
    """A character span ``text[start:end]`` holding the subject."""

    start: int
    end: int
    surface: str  # the text actually matched, e.g. the inflected form
    kind: MatchKind
    score: float  # 100 for verbatim, the alignment score (0-100) otherwise


def _folded_char(ch: str) -> str:
    """``ch`` case-folded, without combining marks (may be empty or several characters)."""
    return "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)).casefold()


def _transliterated_char(ch: str) -> str:
    folded = _folded_char(ch)
    return anyascii(folded).lower() if folded and not folded.isascii() else folded


def _per_char(text: str, convert: Callable[[str], str]) -> tuple[str, list[int]]:
    """``text`` converted character by character, and for each output character its source index."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        piece = convert(ch)
        out.append(piece)
        origin.extend([i] * len(piece))
    return "".join(out), origin


def fold_text(text: str) -> tuple[str, list[int]]:
    """Case-folded ``text`` without diacritics (the matcher's opt-in mode), with source indices."""
    return _per_char(text, _folded_char)


def _normalise(text: str) -> tuple[str, list[int]]:
    """Case-fold, strip diacritics and transliterate; also return, per output char, its source index."""
    return _per_char(text, _transliterated_char)


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


_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_APOSTROPHE_SUFFIX = re.compile(r"['’][^\W_]+")
_ELISION = re.compile(r"[^\W\d_]{1,2}['’](?=[^\W_])")
_CLOSING_MARKS = ".!?)]»\"'"


def _spaced(subject: str) -> bool:
    """True when ``subject`` is written in a script that separates words with spaces."""
    return any(word_char(ch) for ch in subject)


def _whole_word_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a verbatim hit to whole words, taking an apostrophe suffix along ("Char 2C" -> "Char 2C'nin")."""
    start, end = _snap_to_words(text, start, end)
    if suffix := _APOSTROPHE_SUFFIX.match(text, end):
        end = suffix.end()
    return start, end


def _verbatim(text: str, subject: str) -> tuple[int, int] | None:
    """The first occurrence of ``subject`` in ``text``, widened to whole words in spaced scripts."""
    pos = text.find(subject)
    if pos < 0:
        return None
    return _whole_word_span(text, pos, pos + len(subject)) if _spaced(subject) else (pos, pos + len(subject))


def _word_score(a: str, b: str) -> float:
    """Similarity of two normalised words, tolerant of inflectional endings (a shared stem scores high)."""
    stem = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    shorter = min(len(a), len(b))
    by_stem = 100.0 * stem / max(len(a), len(b)) + (15.0 if stem >= max(3, shorter - 2) else 0.0)
    return min(100.0, max(fuzz.ratio(a, b), by_stem))


def _window_score(subject_words: list[str], window_words: list[str]) -> float:
    if len(subject_words) == len(window_words):
        weights = [len(w) for w in subject_words]
        pairs = zip(subject_words, window_words, strict=True)
        return sum(w * _word_score(a, b) for w, (a, b) in zip(weights, pairs, strict=True)) / sum(weights)
    # A word more or less: the joined strings, with a penalty so equal-length windows win ties.
    return fuzz.ratio(" ".join(subject_words), " ".join(window_words)) - 5.0


def _approximate_words(text: str, subject: str, min_score: float) -> SubjectSpan | None:
    """Best window of whole words of ``text`` for a subject of ``n`` words (``n - 1`` to ``n + 1`` words).

    Windows are whole words, so a multi-word subject is never cut inside a word, and a window of fewer
    words than the subject must outscore every full-length one.
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    subject_words = [_normalise(w)[0] for w in _WORD.findall(subject)]
    if not words or not subject_words:
        return None
    norm = [_normalise(text[a:b])[0] for a, b in words]
    n = len(subject_words)
    best: tuple[float, int, int] | None = None
    for size in (n, n + 1, n - 1):
        if size < 1:
            continue
        for i in range(len(words) - size + 1):
            score = _window_score(subject_words, norm[i : i + size])
            if best is None or score > best[0]:
                best = (score, words[i][0], words[i + size - 1][1])
    if best is None or best[0] < min_score:
        return None
    score, start, end = best  # words include their apostrophe suffixes ("2C'nin"), see _WORD
    start = _drop_elision(text, start, subject)
    end = _take_closing_marks(text, end, subject)
    start, end = _tidy(text, start, end, subject)
    return SubjectSpan(start, end, text[start:end], "approximate", round(score, 1))


def _drop_elision(text: str, start: int, subject: str) -> int:
    """Skip an elided article or preposition glued to the first word ("d'Elizabeth" -> "Elizabeth"),
    unless the subject starts with it too ("J'étais ...")."""
    elided = _ELISION.match(text, start)
    if elided and not subject.casefold().startswith(elided.group(0).casefold()):
        return elided.end()
    return start


def _take_closing_marks(text: str, end: int, subject: str) -> int:
    """Extend over the punctuation the subject ends with ("W." / "(APA-56)" / "Shake!"), when the text has it."""
    tail = subject[len(subject.rstrip(_CLOSING_MARKS)) :]
    for ch in tail:
        if end < len(text) and text[end] == " " and ch not in ".)" and end + 1 < len(text) and text[end + 1] == ch:
            end += 1  # French spacing before "!" and "?"
        if end < len(text) and text[end] == ch:
            end += 1
        else:
            break
    return end


def _approximate_chars(text: str, subject: str, min_score: float) -> SubjectSpan | None:
    """Scripts without spaces: the best partial alignment of the normalised strings."""
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


def find_subject(text: str, subject: str, *, min_score: float = DEFAULT_MIN_SCORE) -> SubjectSpan | None:
    """The subject's span in ``text``: the first verbatim occurrence, else the best approximate one."""
    return place_subject(text, [subject], min_score=min_score)


def place_subject(text: str, subjects: Sequence[str], *, min_score: float = DEFAULT_MIN_SCORE) -> SubjectSpan | None:
    """Where ``text`` names the fact's subject, trying the aligned subject set (the paper's S_G) in order.

    ``subjects[0]`` is the language's own subject, the rest the other languages' subjects of the same fact
    (MzsRE questions often keep the English name while the subject field was translated). Own subject
    verbatim, then the longest other subject found verbatim, then the best approximate match of any of
    them (case-, diacritics- and script-insensitive, inflection-tolerant, whole words). None when nothing
    scores ``min_score``.
    """
    own, *others = [s for s in subjects if s.strip()] or [""]
    if not own:
        return None
    if hit := _verbatim(text, own):
        return SubjectSpan(hit[0], hit[1], text[hit[0] : hit[1]], "verbatim", 100.0)
    found = [(s, hit) for s in dict.fromkeys(others) if s != own and (hit := _verbatim(text, s))]
    if found:
        _, (start, end) = max(found, key=lambda item: (len(item[0]), -item[1][0]))
        return SubjectSpan(start, end, text[start:end], "other_language", 100.0)
    candidates = []
    for subject in dict.fromkeys([own, *others]):
        approx = _approximate_words if _spaced(subject) else _approximate_chars
        if span := approx(text, subject, min_score):
            candidates.append(span)
    return max(candidates, key=lambda span: span.score) if candidates else None


NOT_PLACED = "not_placed"
PLACEMENT_KINDS: tuple[str, ...] = ("verbatim", "other_language", "approximate", NOT_PLACED)
"""The coverage categories reported by ``mkedit data check`` and the evaluation."""


def placement_kind(span: SubjectSpan | None) -> str:
    return NOT_PLACED if span is None else span.kind


def locate_subject(
    text: str,
    subject: str,
    *,
    context: str = "",
    min_score: float = DEFAULT_MIN_SCORE,
    aligned: Sequence[str] = (),
) -> SubjectSpan:
    """Like :func:`place_subject` (own ``subject`` first, then ``aligned``) but warns on an approximate
    match and raises when nothing fits. ``context`` names the record and language in messages."""
    span = place_subject(text, [subject, *aligned], min_score=min_score)
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

"""Find cached subjects in a prompt (Eq. 11): one Aho–Corasick automaton over every cached surface form.

Lookup costs one pass over the prompt whatever the number of cached edits. A match must be a whole word
in scripts that separate words with spaces ("Mars" never fires inside "Marseille"); in scripts without
spaces (Chinese, Japanese, Thai) any occurrence counts. At a position the longest subject wins, and
matches do not overlap. ``fold=True`` (opt-in) also matches across letter case and diacritics
("münchen" finds "München"); the span reported is always in the original prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import ahocorasick

from mkedit.runtime.subject import fold_text, word_char


@dataclass(frozen=True)
class SubjectMatch:
    edit_id: str
    start: int  # character span of the subject in the prompt
    end: int
    text: str  # prompt[start:end]


class SubjectMatcher(Protocol):
    def find(self, text: str) -> list[SubjectMatch]:
        """Non-overlapping subject occurrences in ``text``, left to right."""
        ...


def _whole_words(text: str, start: int, end: int) -> bool:
    """False when the span starts or ends inside a word of a space-separated script."""
    cut_left = start > 0 and word_char(text[start - 1]) and word_char(text[start])
    cut_right = end < len(text) and word_char(text[end - 1]) and word_char(text[end])
    return not (cut_left or cut_right)


def describe_matcher(fold: bool) -> dict[str, object]:
    """The built-in matcher's behaviour, as ``run.json`` records it."""
    return {
        "matcher": "aho-corasick",
        "fold_case_and_diacritics": fold,
        "whole_words": "in space-separated scripts",
        "searched": "the prompt only",
    }


class AutomatonMatcher:
    """Whole-word, longest-first matching of ``(surface, edit_id)`` entries; a surface registered twice
    belongs to its last edit."""

    def __init__(self, entries: Iterable[tuple[str, str]], fold: bool = False) -> None:
        self.fold = fold
        self._automaton = ahocorasick.Automaton()
        edit_of: dict[str, str] = {}
        for surface, edit_id in entries:
            key = fold_text(surface)[0] if fold else surface
            if key.strip():
                edit_of[key] = edit_id
        for key, edit_id in edit_of.items():
            self._automaton.add_word(key, (len(key), edit_id))
        self._empty = not edit_of
        if not self._empty:
            self._automaton.make_automaton()

    def describe(self) -> dict[str, object]:
        """What ``run.json`` records about the matcher in force."""
        return describe_matcher(self.fold)

    def find(self, text: str) -> list[SubjectMatch]:
        if self._empty or not text:
            return []
        haystack, origin = fold_text(text) if self.fold else (text, None)
        candidates = []
        for last, (length, edit_id) in self._automaton.iter(haystack):
            start, end = last - length + 1, last + 1
            if origin is not None:  # folded offsets back to the prompt's
                start, end = origin[start], origin[last] + 1
            if _whole_words(text, start, end):
                candidates.append((start, -end, edit_id))
        matches: list[SubjectMatch] = []
        covered = 0
        for start, neg_end, edit_id in sorted(candidates):  # leftmost first, then longest
            if start >= covered:
                matches.append(SubjectMatch(edit_id, start, -neg_end, text[start:-neg_end]))
                covered = -neg_end
        return matches

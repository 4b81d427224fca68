"""Find cached subjects in a query. Exact matching, as in the paper; any object with ``find`` plugs in."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SubjectMatch:
    edit_id: str
    start: int  # character span of the subject in the query
    end: int


class SubjectMatcher(Protocol):
    def find(self, text: str) -> list[SubjectMatch]:
        """Non-overlapping subject occurrences in ``text``, left to right."""
        ...


class ExactMatcher:
    """Case-sensitive verbatim search; at each position the longest cached subject wins."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._edit_of: dict[str, str] = {}
        for surface, edit_id in entries:
            if surface:
                self._edit_of[surface] = edit_id
        surfaces = sorted(self._edit_of, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, surfaces))) if surfaces else None

    def find(self, text: str) -> list[SubjectMatch]:
        if self._pattern is None:
            return []
        return [SubjectMatch(self._edit_of[m.group(0)], m.start(), m.end()) for m in self._pattern.finditer(text)]

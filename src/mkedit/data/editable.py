"""Which edit groups a method can edit at all, decided from the edit file alone, before any model loads.

Methods that work at the subject's tokens (LU-LAFNs, the locate-then-edit methods:
``EditMethod.needs_subject_position``) need each question to name its subject, placed as editing places
it (:func:`~mkedit.runtime.subject.place_subject` with the group's aligned subject set). A language whose
subject cannot be placed is left out of its group, as the evaluation does; a group left with no language is
skipped. ``mkedit edit`` runs this first, so an edit file where nothing can be edited fails in a second
instead of after a model load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mkedit.errors import NothingToEditError
from mkedit.runtime.subject import DEFAULT_MIN_SCORE, place_subject
from mkedit.types import EditGroup, EditRequest


def editable_groups(
    groups: Sequence[EditGroup],
    needs_subject_position: bool,
    warn: Callable[[str], None] = lambda message: None,
    source: str = "the edit file",
    *,
    min_score: float = DEFAULT_MIN_SCORE,
) -> list[EditGroup]:
    """``groups`` restricted to the languages that can be edited, without the groups that keep none.

    Each language left out and each group skipped is passed to ``warn`` (one line each). Raises
    NothingToEditError when no group is left (``source`` names the file in the message).
    """
    if not needs_subject_position:
        kept = list(groups)
    else:
        kept = []
        for number, group in enumerate(groups, 1):
            name = group.group_id or f"group {number}"
            unplaced = [
                req
                for req in group.requests
                if place_subject(req.question, [req.subject, *group.other_subjects(req.lang)], min_score=min_score)
                is None
            ]
            if len(unplaced) == len(group.requests):
                warn(f"skipped {name}: no language's question names its subject ({_describe(unplaced)})")
                continue
            if unplaced:
                warn(f"{name}: leaving out {_describe(unplaced)} (subject not found in the question)")
                group = group.restrict([r.lang for r in group.requests if r not in unplaced])
            kept.append(group)
    if not kept:
        raise NothingToEditError(
            f"nothing to edit: all {len(groups)} group(s) of {source} were skipped (reasons above); "
            "each question must name its subject (see mkedit data check)"
        )
    return kept


def _describe(requests: Sequence[EditRequest]) -> str:
    return "; ".join(f"{r.lang}: {r.subject!r} not in {r.question!r}" for r in requests)

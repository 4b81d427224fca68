"""The facts an edit puts in force, as JSON in ``Edit.info``: enough to list them, to tell a contradicting
fact from another relation, and to compute the edit again without one of them (an undo).

An edit of one fact keeps its fact's fields at the top level of ``info`` (as every cache has since the
first format); an edit that holds several facts about one subject lists them under ``info["facts"]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from mkedit.runtime.cache import Edit
from mkedit.types import EditGroup, EditRequest

FACT_KEYS = ("id", "langs", "subjects", "questions", "answers", "paraphrases", "aligned_subjects")
"""The ``info`` keys that describe a fact (the last three only when not empty; ``id`` from format 3 on)."""


def edit_id_for(group: EditGroup) -> str:
    """The group's own id, else a short hash of its subjects and answers (stable across runs): the id of
    its fact, and of its edit while that holds this fact alone."""
    if group.group_id:
        return group.group_id
    key = "|".join(f"{r.lang}:{r.subject}:{r.answer}" for r in group.requests)
    return "edit-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def fact_record(group: EditGroup, fact_id: str) -> dict[str, Any]:
    """The JSON record of one fact (the cache, ``ask``, ReMaKE's memory and ``mkedit cache`` read it)."""
    record: dict[str, Any] = {
        "id": fact_id,
        "langs": group.langs,
        "subjects": {r.lang: r.subject for r in group.requests},
        "questions": {r.lang: r.question for r in group.requests},
        "answers": {r.lang: r.answer for r in group.requests},
    }
    if paraphrases := {r.lang: list(r.paraphrases) for r in group.requests if r.paraphrases}:
        record["paraphrases"] = paraphrases
    if aligned := [s for s in group.aligned_subjects if s not in record["subjects"].values()]:
        record["aligned_subjects"] = aligned
    return record


def facts_of(edit: Edit) -> list[dict[str, Any]]:
    """The fact records of an edit, oldest first."""
    if "facts" in edit.info:
        return list(edit.info["facts"])
    record = {key: edit.info[key] for key in FACT_KEYS if key in edit.info}
    record.setdefault("id", edit.edit_id)
    return [record] if "answers" in record else []


def group_from_fact(record: Mapping[str, Any]) -> EditGroup:
    """The edit group a fact record was made from, to compute its edit again."""
    paraphrases = record.get("paraphrases", {})
    requests = tuple(
        EditRequest(
            lang,
            record["subjects"][lang],
            record["questions"][lang],
            record["answers"][lang],
            tuple(paraphrases.get(lang, ())),
        )
        for lang in record["langs"]
    )
    return EditGroup(requests, record["id"], tuple(record.get("aligned_subjects", ())))


def find_fact(edits: Iterable[Edit], fact_id: str) -> tuple[Edit, dict[str, Any]] | None:
    """The edit holding fact ``fact_id``, and the fact's record; None when no edit holds it."""
    for edit in edits:
        for record in facts_of(edit):
            if record["id"] == fact_id:
                return edit, record
    return None

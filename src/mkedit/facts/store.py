"""Putting facts in force in an edit cache, several per subject.

A new fact first *replaces* the cached facts about its subject that ask the same relation (or carry its
id), and is kept beside the others (:class:`~mkedit.facts.relation.RelationJudge` decides). Methods whose
edits are keyed by subject (LU-LAFNs: Eq. 11 adds one ΔV wherever the subject occurs) then hold all the
facts about a subject in one edit, computed on the union of their training sequences, so a question about
any of them is answered right; the other methods' edits of one subject simply coexist.

The work is split in three so that a runner can compute the edit with other edits in force:
:meth:`FactStore.plan` (what changes, decided from the cache), :meth:`FactStore.compute` (the model
work), :meth:`FactStore.commit` (the cache changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mkedit.facts.records import edit_id_for, facts_of, find_fact, group_from_fact
from mkedit.facts.relation import RelationJudge
from mkedit.runtime.cache import Edit, EditCache
from mkedit.types import EditGroup

if TYPE_CHECKING:
    from mkedit.methods.base import EditMethod


@dataclass(frozen=True)
class FactPlan:
    """What putting one fact in force does to a cache, decided before any edit is computed."""

    fact_id: str
    edit_id: str
    """The edit to compute: named after its oldest fact."""
    facts: tuple[EditGroup, ...]
    """Every fact the new edit holds, oldest first (the new fact last)."""
    replaced: tuple[str, ...] = ()
    """Cached facts the new one contradicts: they leave the cache."""
    replaced_answers: tuple[dict[str, str], ...] = ()
    """Their answers, in the same order (kept in the cache's history of replaced facts)."""
    drop: tuple[str, ...] = ()
    """Cached edits the new edit supersedes: removed before it is added."""


@dataclass(frozen=True)
class FactUpdate:
    """What a change did: the edit added (None for a removal that left nothing), the facts that left the
    cache, and the edits removed."""

    edit: Edit | None
    replaced: tuple[str, ...]
    removed_edits: tuple[str, ...]
    kept: tuple[str, ...] = field(default=())
    """Facts of the same subject still in force beside the new one."""


def _sharing_subject(cache: EditCache, group: EditGroup, fact_id: str) -> list[Edit]:
    """Cached edits about the group's subject (any language's form), or holding its fact id."""
    forms = set(group.subject_set)
    return [
        e
        for e in cache
        if e.surfaces() & forms
        or any(forms & set(r.get("subjects", {}).values()) or r["id"] == fact_id for r in facts_of(e))
    ]


def plan_fact(cache: EditCache, group: EditGroup, judge: RelationJudge, merge: bool) -> FactPlan:
    """The plan of :class:`FactStore` for one new fact (``merge``: the method keeps one edit per subject)."""
    fact_id = edit_id_for(group)
    replaced: list[dict] = []
    kept: list[EditGroup] = []
    drop: list[str] = []
    for edit in _sharing_subject(cache, group, fact_id):
        records = facts_of(edit)
        gone = [r["id"] for r in records if r["id"] == fact_id or judge.same(group_from_fact(r), group)]
        replaced += [r for r in records if r["id"] in gone]
        if merge:
            kept += [group_from_fact(r) for r in records if r["id"] not in gone]
            drop.append(edit.edit_id)
        elif len(gone) == len(records):
            drop.append(edit.edit_id)
    facts = (*kept, group)
    ids, answers = tuple(r["id"] for r in replaced), tuple(r["answers"] for r in replaced)
    return FactPlan(fact_id, edit_id_for(facts[0]), facts, ids, answers, tuple(drop))


def commit_fact(cache: EditCache, plan: FactPlan, edit: Edit, merge: bool) -> FactUpdate:
    """Apply a plan with its computed edit: the superseded edits leave the cache, the new edit enters."""
    removed = tuple(edit_id for edit_id in plan.drop if edit_id in cache)
    for edit_id in removed:
        cache.remove(edit_id)
    removed += tuple(cache.add(edit, replace_subjects=merge))
    for fact_id, answers in zip(plan.replaced, plan.replaced_answers, strict=True):
        if fact_id != plan.fact_id:  # a fact given again with new answers replaces its own old version
            cache.replaced_facts[fact_id] = {"by": plan.fact_id, "answers": answers}
    cache.replaced_facts.pop(plan.fact_id, None)
    kept = tuple(edit_id_for(g) for g in plan.facts[:-1])
    return FactUpdate(edit, plan.replaced, tuple(dict.fromkeys(removed)), kept)


def subject_waves(groups: Sequence[EditGroup]) -> list[list[EditGroup]]:
    """``groups`` in waves whose members share no subject form, each group after every earlier group about
    its subject: the plans of one wave can be made together and their edits computed in parallel."""
    waves: list[list[EditGroup]] = []
    last_wave: dict[str, int] = {}  # subject form -> the last wave holding it
    for group in groups:
        forms = group.subject_set
        wave = max((last_wave[f] + 1 for f in forms if f in last_wave), default=0)
        if wave == len(waves):
            waves.append([])
        waves[wave].append(group)
        last_wave.update(dict.fromkeys(forms, wave))
    return waves


def already_done(cache: EditCache, group: EditGroup) -> bool:
    """The cache holds this fact (same id, same answers), or held it until a later fact of the same relation
    replaced it: a resumed run skips it either way."""
    fact_id, answers = edit_id_for(group), {r.lang: r.answer for r in group.requests}
    found = find_fact(cache, fact_id)
    if found is not None:
        return found[1]["answers"] == answers
    return cache.replaced_facts.get(fact_id, {}).get("answers") == answers


class FactStore:
    """An edit cache and the method that made it, changed one fact at a time."""

    def __init__(self, method: EditMethod, cache: EditCache, judge: RelationJudge | None = None) -> None:
        self.method = method
        self.cache = cache
        self.judge = judge or RelationJudge()

    def plan(self, group: EditGroup) -> FactPlan:
        return plan_fact(self.cache, group, self.judge, self.method.facts_share_edit)

    def compute(self, plan: FactPlan) -> Edit:
        """The plan's edit; with other edits in force, those of ``plan.drop`` must not be among them."""
        return self.method.edit_facts(plan.facts, plan.edit_id)

    def commit(self, plan: FactPlan, edit: Edit) -> FactUpdate:
        return commit_fact(self.cache, plan, edit, self.method.facts_share_edit)

    def put(self, group: EditGroup) -> FactUpdate:
        """Put one fact in force (module docstring)."""
        plan = self.plan(group)
        return self.commit(plan, self.compute(plan))

    def remove(self, ids: Iterable[str]) -> list[FactUpdate]:
        """Remove facts by id (an edit is named after its oldest fact; an edit without fact records goes
        by its own id). An edit left with other facts is computed again on them. Unknown ids raise
        KeyError before anything changes."""
        targets: list[tuple[str, str | None]] = []  # (edit id, fact id; None: the whole edit)
        for item in ids:
            if found := find_fact(self.cache, item):
                targets.append((found[0].edit_id, item))
            elif item in self.cache:
                targets.append((item, None))
            else:
                raise KeyError(f"no edit or fact {item!r} in the cache")
        updates = []
        for edit_id, fact_id in targets:
            if edit_id not in self.cache:
                continue  # removed with an earlier id of the list
            records = facts_of(self.cache.get(edit_id))
            left = [group_from_fact(r) for r in records if fact_id is not None and r["id"] != fact_id]
            gone = tuple(r["id"] for r in records if fact_id is None or r["id"] == fact_id)
            rebuilt = self.method.edit_facts(left, edit_id_for(left[0])) if left else None
            self.cache.remove(edit_id)
            if rebuilt is not None:
                self.cache.add(rebuilt, replace_subjects=self.method.facts_share_edit)
            updates.append(FactUpdate(rebuilt, gone, (edit_id,), tuple(edit_id_for(g) for g in left)))
        return updates

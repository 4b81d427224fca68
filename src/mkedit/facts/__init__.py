"""Several facts per subject: what an edit records about its facts, when two facts ask the same relation,
and how a new fact is put in force beside (or in place of) the cached facts about its subject."""

from mkedit.facts.records import FACT_KEYS, edit_id_for, fact_record, facts_of, find_fact, group_from_fact
from mkedit.facts.relation import RelationJudge, same_question
from mkedit.facts.store import (
    FactPlan,
    FactStore,
    FactUpdate,
    already_done,
    commit_fact,
    plan_fact,
    subject_waves,
)

__all__ = [
    "FACT_KEYS",
    "FactPlan",
    "FactStore",
    "FactUpdate",
    "RelationJudge",
    "already_done",
    "commit_fact",
    "edit_id_for",
    "fact_record",
    "facts_of",
    "find_fact",
    "group_from_fact",
    "plan_fact",
    "same_question",
    "subject_waves",
]

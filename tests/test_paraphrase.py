"""Paraphrase generation (:mod:`mkedit.paraphrase`, ``mkedit paraphrase``) and ``--paraphrases`` on edit/eval:
instructions, list parsing, the subject filter, the resumable store, the three sources (a JSONL file, the
project's own OpenAI-compatible server through the official client, a tiny local model), attaching to
records with the file's hash in run.json, and the command's errors and ``--json`` output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mkedit.cli_paraphrase as cli_paraphrase
from conftest import build_tiny_model, build_tiny_tokenizer, serving
from mkedit.cli import app
from mkedit.data import load_records
from mkedit.errors import DataFormatError, UnknownLanguageError
from mkedit.eval.runner import RUN_FILE, EvalConfig, RunMismatchError, run_evaluation
from mkedit.languages import supported_codes
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.models.loader import LoadedModel
from mkedit.paraphrase import (
    INSTRUCTIONS,
    OPENAI_PIP,
    JsonlSource,
    LocalSource,
    OpenAISource,
    ParaphraseEntry,
    ParaphraseRequest,
    ParaphraseSourceError,
    ParaphraseStore,
    Sampling,
    attach_to_groups,
    attach_to_records,
    file_sha256,
    filter_paraphrases,
    generate,
    instruction,
    parse_list,
    pending,
    read_entries,
    requests_for,
    subject_forms,
    summarize,
)
from mkedit.paraphrase.parse import has_items

PAPER_EN = (
    "You are an expert at sentence rewriting. Below I will give you a subject and a question containing the subject. "
    "Please give me 30 questions including this subject in English. They must have the same semantics as the given "
    "question. Subject: Volvo B12M. Question containing this Subject: Who makes the Volvo B12M?"
)
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _part(subject: str, src: str, rephrase: str) -> dict:
    return {
        "subject": subject,
        "src": src,
        "rephrase": rephrase,
        "alt": "Honda",
        "loc": "nq question: who wrote hamlet",
        "loc_ans": "Shakespeare",
        "portability": {"New Question": f"Where is the maker of {subject} based?", "New Answer": "Japan"},
    }


RECORDS = [
    {
        "en": _part("Volvo B12M", "Which company makes the Volvo B12M?", "Who manufactures the Volvo B12M?"),
        "zh": _part("沃尔沃B12M", "沃尔沃B12M是哪家公司生产的？", "谁制造了沃尔沃B12M？"),
    },
    {
        "en": _part("Lake Tana", "Which country is Lake Tana in?", "Where is Lake Tana located?"),
        "zh": _part("塔纳湖", "塔纳湖位于哪个国家？", "塔纳湖在哪里？"),
    },
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    return path


def _entry(record_id: str, lang: str, question: str, subject: str, paraphrases: Sequence[str]) -> ParaphraseEntry:
    return ParaphraseEntry(record_id, lang, question, subject, tuple(paraphrases), "test", len(paraphrases))


def _paraphrase_file(path: Path, data_file: Path) -> Path:
    """A paraphrase file for every record and language of ``data_file``: two usable lines each."""
    store = ParaphraseStore(path)
    for request in requests_for(load_records(data_file), 2):
        lines = [f"{request.question} (1) {request.subject}", f"About {request.subject}: {request.question}"]
        store.append(_entry(request.record_id, request.lang, request.question, request.subject, lines))
    return path


# ---------------------------------------------------------------- instructions


def test_the_english_instruction_is_the_papers() -> None:
    assert instruction("en", "Volvo B12M", "Who makes the Volvo B12M?", 30) == PAPER_EN


def test_every_language_has_an_instruction_naming_subject_question_and_count() -> None:
    assert set(INSTRUCTIONS) == set(supported_codes())
    for lang in supported_codes():
        text = instruction(lang, "SUBJ", "QUESTION?", 17)
        assert "SUBJ" in text and "QUESTION?" in text and "17" in text, lang
        assert text != instruction("en", "SUBJ", "QUESTION?", 17) or lang == "en"
    assert "用中文" in instruction("zh", "s", "q", 3) and "auf Deutsch" in instruction("de", "s", "q", 3)
    assert instruction("cz", "s", "q", 3) == instruction("cs", "s", "q", 3)  # aliases too


@pytest.mark.parametrize(
    ("lang", "n", "form"),
    [
        ("en", 1, "1 question "),
        ("en", 30, "30 questions "),
        ("cs", 1, "1 otázku"),
        ("cs", 3, "3 otázky"),
        ("cs", 30, "30 otázek"),
        ("ru", 21, "21 вопрос "),
        ("ru", 3, "3 вопроса"),
        ("ru", 12, "12 вопросов"),
        ("ru", 30, "30 вопросов"),
        ("ar", 2, "2 سؤالين"),
        ("ar", 5, "5 أسئلة"),
        ("ar", 30, "30 سؤالًا"),
    ],
)
def test_the_count_noun_agrees_with_n(lang: str, n: int, form: str) -> None:
    assert form in instruction(lang, "s", "q", n)


def test_an_unknown_language_has_no_instruction() -> None:
    with pytest.raises(UnknownLanguageError, match="xx"):
        instruction("xx", "s", "q", 3)


# ---------------------------------------------------------------- list parsing


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("Here are 3 questions:\n1. A?\n2) B?\n\n3. C?\nHope this helps!", ["A?", "B?", "C?"]),
        ("- A?\n* B?\n• C?", ["A?", "B?", "C?"]),
        ('1. "A?"\n2. **B?**\n**3.** C?', ["A?", "B?", "C?"]),
        ("1、甲？\n2、乙？\n（3）丙？", ["甲？", "乙？", "丙？"]),
        ("1. A? 2. B? 3. C?", ["A?", "B?", "C?"]),
        ("A?\nB?\n", ["A?", "B?"]),
        ("Questions:\n```\n1. A?\n```", ["A?"]),
        ("Q1: A?\nQ2: B?", ["A?", "B?"]),
        ("", []),
    ],
)
def test_parse_list(text: str, items: list[str]) -> None:
    assert parse_list(text) == items


def test_a_list_is_done_once_it_holds_n_finished_items() -> None:
    assert has_items("Sure:\n1. A?\n2. B?\n", 2)
    assert not has_items("1. A?\n2. B", 2)  # the second item is still being written
    assert not has_items("A?\nB?\n", 2) and has_items("A?\nB?\nC?\n", 2)  # unmarked: one may be a preamble


# ---------------------------------------------------------------- filter

QUESTION = "Which company makes the Volvo B12M?"


def test_filter_keeps_lines_naming_the_subject_drops_the_question_repeats_and_caps() -> None:
    candidates = [
        "which  company makes the volvo b12m",  # the question, case and spacing aside
        "Who manufactures the Volvo B12M?",
        "Who is the maker of this bus?",  # no subject
        "Who manufactures the Volvo B12M ?",  # a repeat
        "Volvo B12M",  # the bare subject
        "What firm builds the Volvo B12M?",
        "The Volvo B12M is made by which company?",
    ]
    assert filter_paraphrases(candidates, QUESTION, "Volvo B12M", 2) == [
        "Who manufactures the Volvo B12M?",
        "What firm builds the Volvo B12M?",
    ]
    assert len(filter_paraphrases(candidates, QUESTION, "Volvo B12M", 30)) == 3
    assert filter_paraphrases(candidates, QUESTION, "Volvo B12M", 0) == []
    thai = "พิพิธภัณฑ์มรดกซานดิเอกีโตตั้งอยู่ในรัฐใด"  # qwen2.5-0.5b gave it back with a space and a "?"
    assert filter_paraphrases([thai.replace("โต", "โต ") + "?"], thai, "พิพิธภัณฑ์มรดกซานดิเอกีโต", 5) == []
    echo = f'The question containing this subject is: "{QUESTION}"'  # what qwen2.5-1.5b wrote in Thai once
    assert filter_paraphrases([echo], QUESTION, "Volvo B12M", 5) == []
    assert filter_paraphrases(["Which company makes the Volvo B12M"[6:]], QUESTION, "Volvo B12M", 5) == []  # a piece


def test_filter_accepts_the_form_placed_in_the_question_and_other_languages_subjects() -> None:
    question = "Kdo je prezidentem Ruska?"  # the subject field says "Rusko"; the question inflects it
    assert subject_forms(question, "Rusko") == ["Rusko", "Ruska"]
    kept = filter_paraphrases(["Jak se jmenuje prezident Ruska?", "Kdo vládne zemi?"], question, "Rusko", 5)
    assert kept == ["Jak se jmenuje prezident Ruska?"]
    zh = "乐队Plutonik来自哪个城市？"  # the question keeps the English name; the subject field was translated
    lines = ["Plutonik乐队是哪个城市的？", "普鲁托尼克乐队来自哪里？", "这个乐队来自哪里？"]
    assert filter_paraphrases(lines, zh, "普鲁托尼克", 5, aligned=("Plutonik",)) == lines[:2]


def test_a_threshold_of_100_keeps_case_variants_but_not_near_names() -> None:
    """What qwen2.5-0.5b wrote for MzsRE record 545: a near name passes the default threshold (92.6)."""
    question, subject = "What state is San Dieguito Heritage Museum located?", "San Dieguito Heritage Museum"
    lines = ["Where is the San Dieguito heritage museum?", "San Diego Heritage Museum is located in California."]
    assert filter_paraphrases(lines, question, subject, 5) == lines
    assert filter_paraphrases(lines, question, subject, 5, min_score=100) == lines[:1]


# ---------------------------------------------------------------- store


def test_store_resumes_and_refuses_a_file_made_for_other_questions(tmp_path: Path, data_file: Path) -> None:
    path = tmp_path / "p.jsonl"
    requests = requests_for(load_records(data_file), 5)
    assert [r.lang for r in requests] == ["en", "en", "zh", "zh"]  # language by language
    store = ParaphraseStore(path)
    first = requests[0]
    store.append(_entry(first.record_id, first.lang, first.question, first.subject, ["x Volvo B12M"]))
    again = ParaphraseStore(path)
    assert again.get(first.key) == store.get(first.key)
    assert pending(requests, again) == requests[1:]
    other = _entry(first.record_id, first.lang, "Another question?", first.subject, [])
    ParaphraseStore(tmp_path / "other.jsonl").append(other)
    with pytest.raises(DataFormatError, match="another output file"):
        pending(requests, ParaphraseStore(tmp_path / "other.jsonl"))


def test_store_repairs_a_torn_last_line_and_reports_damage_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    store = ParaphraseStore(path)
    store.append(_entry("r1", "en", "Q1 S?", "S", ["a S"]))
    store.append(_entry("r2", "en", "Q2 S?", "S", ["b S"]))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"record_id": "r3", "lang": "en", "ques')  # an append cut short
    repaired = ParaphraseStore(path)
    assert list(repaired.entries) == [("r1", "en"), ("r2", "en")]
    assert path.read_bytes() == whole  # the torn bytes are gone: the next append starts a fresh line
    repaired.append(_entry("r3", "en", "Q3 S?", "S", []))
    assert len(read_entries(path)) == 3
    path.write_bytes(whole.replace(b"\n", b"\nnot json\n", 1))
    with pytest.raises(DataFormatError, match="line 2"):
        ParaphraseStore(path)
    path.write_text('{"record_id": "r1", "lang": "en"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 1.*'question'"):
        read_entries(path)


# ---------------------------------------------------------------- sources: JSONL


class FailingSource:
    """A source whose second batch fails: what was written before must stay."""

    name = "failing"
    batch_size = 1

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests: Sequence[ParaphraseRequest]) -> list[list[str] | None]:
        self.calls += 1
        if self.calls == 2:
            raise ParaphraseSourceError("the endpoint went away")
        return [[f"{r.subject} #{i}" for i in range(3)] for r in requests]


def test_a_failing_source_loses_nothing_already_written(tmp_path: Path, data_file: Path) -> None:
    store = ParaphraseStore(tmp_path / "p.jsonl")
    requests = requests_for(load_records(data_file), 2)
    with pytest.raises(ParaphraseSourceError):
        generate(requests, FailingSource(), store)
    assert list(read_entries(store.path)) == [requests[0].key]
    assert read_entries(store.path)[requests[0].key].paraphrases == ("Volvo B12M #0", "Volvo B12M #1")


def test_jsonl_source_by_record_id_or_question_through_the_filter(tmp_path: Path, data_file: Path) -> None:
    requests = requests_for(load_records(data_file), 2)
    lines = [
        {"record_id": "bench:0", "lang": "en", "paraphrases": ["Who builds the Volvo B12M?", "Who?", "x Volvo B12M y"]},
        {
            "question": "塔纳湖位于哪个国家？",
            "lang": "zh",
            "paraphrases": "Sure:\n1. 塔纳湖在哪个国家？\n2. 塔纳湖属于哪国？",
        },
        {"record_id": "bench:0", "lang": "cn", "paraphrases": []},  # "cn": an alias of zh
    ]
    source_file = tmp_path / "external.jsonl"
    source_file.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    source = JsonlSource(source_file)
    store = ParaphraseStore(tmp_path / "out.jsonl")
    result = generate(requests, source, store)
    assert result.written == 3 and result.not_covered == [("bench:1", "en")]  # nothing written for it
    volvo = store.get(("bench:0", "en"))
    assert volvo.paraphrases == ("Who builds the Volvo B12M?", "x Volvo B12M y")
    assert volvo.raw_count == 3 and volvo.source == "jsonl:external.jsonl"
    assert store.get(("bench:1", "zh")).paraphrases == ("塔纳湖在哪个国家？", "塔纳湖属于哪国？")  # by question
    assert store.get(("bench:0", "zh")).paraphrases == ()
    summary = {row.lang: row for row in summarize(requests, store)}
    assert (summary["en"].records, summary["en"].missing, summary["en"].kept_mean) == (1, 1, 2)
    assert (summary["zh"].records, summary["zh"].none_kept, summary["zh"].kept_min, summary["zh"].raw_mean) == (
        2,
        1,
        0,
        1,
    )


def test_jsonl_source_refuses_bad_files(tmp_path: Path, data_file: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"record_id": "bench:0", "lang": "en", "paraphrases": []}\n{oops\n{"lang": "en"}\n')
    with pytest.raises(DataFormatError, match="line 2"):
        JsonlSource(bad)
    bad.write_text('{"record_id": "bench:0", "lang": "xx", "paraphrases": []}\n')
    with pytest.raises(DataFormatError, match="unknown language"):
        JsonlSource(bad)
    bad.write_text('{"record_id": "bench:0", "lang": "en", "question": "Other?", "paraphrases": ["a"]}\n')
    with pytest.raises(DataFormatError, match="other data"):
        JsonlSource(bad).generate(requests_for(load_records(data_file), 2))
    with pytest.raises(DataFormatError, match="no such file"):
        JsonlSource(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- attach, and the hash in run.json


def test_attach_to_groups_and_records(tmp_path: Path, data_file: Path) -> None:
    path = _paraphrase_file(tmp_path / "p.jsonl", data_file)
    records = load_records(data_file, ["en", "zh"])
    attached = attach_to_records(records, path)
    assert attached.sha256 == file_sha256(path) and attached.attached == 4 and attached.missing == []
    request = attached.items[0].group.request("zh")
    assert request.paraphrases == read_entries(path)[("bench:0", "zh")].paraphrases
    assert attached.items[0].tests == records[0].tests  # test cases untouched
    groups = attach_to_groups([r.group for r in records], path)
    assert [g.request("en").paraphrases for g in groups.items] == [
        r.group.request("en").paraphrases for r in attached.items
    ]
    wrong = tmp_path / "wrong.jsonl"
    ParaphraseStore(wrong).append(_entry("bench:0", "en", "Another question?", "Volvo B12M", ["Volvo B12M?"]))
    with pytest.raises(DataFormatError, match="other data"):
        attach_to_records(records, wrong)


def test_eval_run_records_the_paraphrase_file_and_its_hash(tmp_path: Path, data_file: Path) -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    path = _paraphrase_file(tmp_path / "p.jsonl", data_file)
    attached = attach_to_records(load_records(data_file, ["en", "zh"], 1), path)
    editor = LuLafnEditor(model, tokenizer, LuLafnConfig(layers=(1, 2), max_steps=2, num_prefixes=1))
    common = {"model": "tiny", "data": str(data_file), "langs": ("en", "zh"), "limit": 1, "generation": False}
    config = EvalConfig(**common, paraphrases=str(path), paraphrases_sha256=attached.sha256, specificity=())
    out = tmp_path / "run"
    run_evaluation(model, tokenizer, "tiny", attached.items, config, out, editor)
    run = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    assert run["paraphrases"] == {"path": str(path.resolve()), "sha256": file_sha256(path)}
    other = EvalConfig(**common, paraphrases=str(path), paraphrases_sha256="0" * 64, specificity=())
    with pytest.raises(RunMismatchError, match="paraphrases"):
        run_evaluation(model, tokenizer, "tiny", attached.items, other, out, editor)


# ---------------------------------------------------------------- sources: a local model, an OpenAI endpoint


@pytest.fixture(scope="module")
def tiny_loaded() -> LoadedModel:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return LoadedModel(build_tiny_model("qwen2"), tokenizer, "tiny-qwen2")


def _volvo(n: int = 3, record_id: str = "r1") -> ParaphraseRequest:
    return ParaphraseRequest(record_id, "en", "Volvo B12M", QUESTION, n)


def test_local_source_batches_seeds_and_leaves_the_global_rng_alone(tiny_loaded: LoadedModel) -> None:
    requests = [_volvo(), ParaphraseRequest("r1", "zh", "沃尔沃B12M", "沃尔沃B12M是哪家公司生产的？", 3)]
    source = LocalSource(tiny_loaded, Sampling(max_new_tokens=12), batch_size=2)
    assert source.name == "local:tiny-qwen2"
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = source.generate(requests)
    assert torch.equal(torch.rand(3), expected_next)  # sampling ran on a forked generator
    assert len(first) == 2 and all(isinstance(lines, list) for lines in first)
    assert source.generate(requests) == first  # the same seed, the same lines
    greedy = LocalSource(tiny_loaded, Sampling(temperature=0, max_new_tokens=12))
    assert greedy.generate(requests[:1]) == greedy.generate(requests[:1])
    plain = build_tiny_tokenizer()  # no chat template: a "User: ..." prompt
    assert LocalSource(LoadedModel(tiny_loaded.model, plain, "p"), Sampling(max_new_tokens=4)).generate(requests)


@pytest.fixture(scope="module")
def endpoint(tiny_loaded: LoadedModel) -> Iterator[str]:
    """``mkedit serve``'s app on a free port, serving the tiny model without edits."""
    from mkedit.serve.app import create_app
    from mkedit.serve.engine import Engine

    engine = Engine(tiny_loaded)
    with serving(create_app(engine)) as url:
        yield url
    engine.close()


def test_openai_source_through_the_official_client(
    endpoint: str, tiny_loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MKEDIT_TEST_KEY", "unused")
    sampling = Sampling(temperature=0, max_new_tokens=16)
    source = OpenAISource(endpoint, "tiny-qwen2", "MKEDIT_TEST_KEY", sampling)
    assert source.name == f"openai:tiny-qwen2@{endpoint}"
    [lines] = source.generate([_volvo()])
    # The server answered the instruction as one chat message, greedily: what the model says locally.
    local = LocalSource(tiny_loaded, sampling, repetition_penalty=1.0)
    assert lines == local.generate([_volvo()])[0]
    store = ParaphraseStore(tmp_path / "p.jsonl")
    generate([_volvo(), _volvo(record_id="r2")], source, store)
    entry = store.get(("r1", "en"))
    assert entry.raw_count == len(lines) and entry.source == source.name
    assert entry.paraphrases == tuple(filter_paraphrases(lines, QUESTION, "Volvo B12M", 3))
    assert all("Volvo B12M" in p for p in entry.paraphrases)


def test_openai_source_names_the_missing_key_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MKEDIT_NO_SUCH_KEY", raising=False)
    with pytest.raises(ParaphraseSourceError, match="MKEDIT_NO_SUCH_KEY"):
        OpenAISource("http://127.0.0.1:9/v1", "m", "MKEDIT_NO_SUCH_KEY")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else real(name, *a))
    with pytest.raises(ParaphraseSourceError) as caught:
        OpenAISource("http://127.0.0.1:9/v1", "m")
    assert OPENAI_PIP in str(caught.value) and OPENAI_PIP == "pip install 'mkedit[paraphrase]'"


# ---------------------------------------------------------------- the command


def _invoke(*args: str):
    return CliRunner().invoke(app, ["paraphrase", *args])


def _one_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(cli_paraphrase, "load_quietly", refuse)


def test_bad_input_is_one_error_line_and_loses_nothing(tmp_path: Path, data_file: Path, no_model) -> None:
    out = _paraphrase_file(tmp_path / "done.jsonl", data_file)
    before = out.read_bytes()
    data, dest = ["--data", str(data_file)], ["--out", str(out)]
    _one_error(_invoke(*data, *dest, "--langs", "en,xx"), "unknown language code 'xx'")
    malformed = tmp_path / "bad.json"
    malformed.write_text('[{"en": {"subject": "S", "src": "Q S?"}}]', encoding="utf-8")
    _one_error(_invoke("--data", str(malformed), *dest), "field 'alt'", "is missing")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"record_id": "bench:0", "lang": "en", "paraphrases": []}\nnot json\n{}\n')
    fresh = ["--out", str(tmp_path / "fresh.jsonl")]
    _one_error(_invoke(*data, *fresh, "--from", str(broken)), "broken.jsonl: line 2")
    _one_error(_invoke(*data, *fresh, "--source", "jsonl"), "--from FILE")
    _one_error(_invoke(*data, *fresh, "--source", "magic"), "unknown --source 'magic'")
    _one_error(_invoke(*data, *fresh, "--api-model", "m", "--api-key-env", "MKEDIT_NO_SUCH_KEY"), "MKEDIT_NO_SUCH_KEY")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(before.replace(b"\n", b"\ngarbage\n", 1))
    _one_error(_invoke(*data, "--out", str(damaged), "--from", str(broken)), "line 2 is not valid JSON")
    assert out.read_bytes() == before
    assert not (tmp_path / "fresh.jsonl").exists()


def test_json_output_and_resume_with_a_tiny_local_model(
    tmp_path: Path, data_file: Path, tiny_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_paraphrase, "load_quietly", lambda *args, **kwargs: tiny_loaded)
    out = tmp_path / "p.jsonl"
    args = ["--data", str(data_file), "--out", str(out), "--n", "3", "--max-new-tokens", "8", "--json"]
    result = _invoke(*args, "--limit", "1")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["lang"] for row in rows] == ["en", "zh"] and all(row["records"] == 1 for row in rows)
    assert set(rows[0]) >= {"kept_mean", "kept_min", "none_kept", "raw_mean", "missing"}
    assert "wrote 2 entries" in result.stderr
    again = _invoke(*args)  # both records now: the first is resumed, not generated again
    assert again.exit_code == 0, again.stderr
    assert "2 of 4 (record, language) pair(s) already in" in again.stderr
    assert len(read_entries(out)) == 4 and len(out.read_text(encoding="utf-8").splitlines()) == 4
    table = _invoke(*args[:-1])
    assert table.exit_code == 0 and "kept" in table.stdout and "{" not in table.stdout


def test_json_stdout_of_a_real_process_is_only_json(tmp_path: Path, data_file: Path) -> None:
    source = tmp_path / "external.jsonl"
    source.write_text(json.dumps({"record_id": "bench:0", "lang": "en", "paraphrases": ["Volvo B12M who?"]}) + "\n")
    command = [sys.executable, "-c", "from mkedit.cli import app; app()", "paraphrase", "--data", str(data_file)]
    command += ["--out", str(tmp_path / "p.jsonl"), "--from", str(source), "--langs", "en", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert row == {
        "lang": "en",
        "records": 1,
        "kept_mean": 1.0,
        "kept_min": 1,
        "kept_max": 1,
        "none_kept": 0,
        "raw_mean": 1.0,
        "missing": 1,
    }
    assert "not in" in done.stderr and "wrote 1 entry" in done.stderr


def test_edit_and_eval_take_paraphrases(
    tmp_path: Path, data_file: Path, tiny_loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mkedit.cli as cli
    import mkedit.cli_eval as cli_eval

    plain = LoadedModel(tiny_loaded.model, build_tiny_tokenizer(), "tiny-qwen2")
    monkeypatch.setattr(cli, "load_quietly", lambda *args, **kwargs: plain)
    monkeypatch.setattr(cli_eval, "load_model", lambda *args, **kwargs: plain)
    path = _paraphrase_file(tmp_path / "p.jsonl", data_file)
    tiny = ["--set", "layers=1,2", "--set", "max_steps=2", "--set", "num_prefixes=1"]
    edit = CliRunner().invoke(
        app, ["edit", "--edits", str(data_file), "--out", str(tmp_path / "cache"), "--paraphrases", str(path), *tiny]
    )
    assert edit.exit_code == 0, edit.stderr
    assert f"sha256 {file_sha256(path)[:12]}" in edit.stderr and "4 of 4" in edit.stderr
    run = tmp_path / "run"
    common = ["eval", "--data", str(data_file), "--limit", "1", "--no-generation", "--specificity", "none", *tiny]
    evaluated = CliRunner().invoke(app, [*common, "--out", str(run), "--paraphrases", str(path)])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads((run / RUN_FILE).read_text(encoding="utf-8"))["paraphrases"]["sha256"] == file_sha256(path)
    without = CliRunner().invoke(app, [*common, "--out", str(run)])  # resuming without the file is refused
    assert without.exit_code == 1 and "paraphrases" in without.stderr

"""The evaluation runner and ``mkedit eval`` on a tiny model: files, resume, settings, skips, sequential."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.data import load_records
from mkedit.data.records import LOCALITY
from mkedit.eval.metrics import greedy_known, prediction_shown
from mkedit.eval.report import METRICS, SCORE_KEYS, SPECIFICITY, SUMMARY_KEYS, validate_summary
from mkedit.eval.runner import (
    RECORDS_FILE,
    RUN_FILE,
    SUMMARY_JSON,
    SUMMARY_MD,
    EvalConfig,
    EvalConfigError,
    MethodContractError,
    RunMismatchError,
    Scorer,
    read_rows,
    run_evaluation,
)
from mkedit.facts import facts_of
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.methods.view import ModelView
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_tensors
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.subject import PLACEMENT_KINDS
from mkedit.types import EditGroup

TINY_SETTINGS = {"layers": "1,2", "max_steps": "2", "num_prefixes": "1"}
TINY_CONFIG = LuLafnConfig().with_overrides(TINY_SETTINGS)
MODEL_NAME = "tiny-qwen2"


def _part(subject: str, src: str, rephrase: str, alt: str, loc: str, loc_ans: str, q: str, a: str) -> dict:
    return {
        "subject": subject,
        "src": src,
        "rephrase": rephrase,
        "alt": alt,
        "loc": loc,
        "loc_ans": loc_ans,
        "portability": {"New Question": q, "New Answer": a},
    }


RECORDS = [
    {
        "en": _part(
            "Volvo B12M",
            "Which company makes the Volvo B12M?",
            "Who manufactures the Volvo B12M?",
            "Honda",
            "nq question: who wrote hamlet",
            "Shakespeare",
            "In which country is the maker of the Volvo B12M based?",
            "Japan",
        ),
        "zh": _part(
            "沃尔沃B12M",
            "沃尔沃B12M是哪家公司生产的？",
            "谁制造了沃尔沃B12M？",
            "本田",
            "哈姆雷特的作者是谁",
            "莎士比亚",
            "沃尔沃B12M的制造商位于哪个国家？",
            "日本",
        ),
    },
    {
        "en": _part(
            "Lake Tana",
            "Which country is Lake Tana in?",
            "Where is Lake Tana located?",
            "Peru",
            "nq question: capital of italy",
            "Rome",
            "What language is spoken around Lake Tana?",
            "Spanish",
        ),
        "zh": _part(
            "塔纳湖",
            "塔纳湖位于哪个国家？",
            "塔纳湖在哪里？",
            "秘鲁",
            "意大利的首都是哪里",
            "罗马",
            "塔纳湖周围说什么语言？",
            "西班牙语",
        ),
    },
    {
        "en": _part(
            "Mount Kenya",
            "How high is Mount Kenya?",
            "What is the height of Mount Kenya?",
            "900 metres",
            "nq question: largest planet",
            "Jupiter",
            "Is Mount Kenya taller than 1000 metres?",
            "no",
        ),
        "zh": _part(
            "肯尼亚山",
            "肯尼亚山有多高？",
            "肯尼亚山的高度是多少？",
            "900米",
            "最大的行星是什么",
            "木星",
            "肯尼亚山高于1000米吗？",
            "不",
        ),
    },
]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return build_tiny_model("qwen2"), build_tiny_tokenizer()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bench.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    return path


class CountingEditor(LuLafnEditor):
    """An LU-LAFNs editor that counts its edits (to see what a resumed run recomputes)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        super().__init__(model, tokenizer, TINY_CONFIG, MODEL_NAME)
        self.groups: list[EditGroup] = []

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        self.groups += groups
        return super().edit_facts(groups, edit_id, on_step)


def _run(tiny: Any, data_file: Path, out: Path, limit: int | None = 3, **overrides: Any) -> tuple[dict, CountingEditor]:
    model, tokenizer = tiny
    config = EvalConfig(model=MODEL_NAME, data=str(data_file), langs=("en", "zh"), limit=limit, **overrides)
    records = load_records(data_file, config.langs, limit, specificity=config.specificity)
    editor = CountingEditor(model, tokenizer)
    summary = run_evaluation(model, tokenizer, MODEL_NAME, records, config, out, editor)
    return summary, editor


def _without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds_per_edit"}


@pytest.fixture(scope="module")
def full_run(tiny: Any, data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("full")
    summary, _ = _run(tiny, data_file, out)
    return out, summary


def test_run_writes_rows_and_summary_of_the_fixed_shape(full_run: tuple[Path, dict]) -> None:
    out, summary = full_run
    rows = read_rows(out / RECORDS_FILE)
    assert [r["record_id"] for r in rows] == ["bench:0", "bench:1", "bench:2"]
    for row in rows:
        assert set(row["scores"]) == {"en", "zh"}
        for metrics in row["scores"].values():
            assert set(metrics) == {*METRICS, SPECIFICITY}
            for scores in metrics.values():
                assert set(scores) == set(SCORE_KEYS)
                assert all(0.0 <= v <= 1.0 for v in scores.values())
        assert set(row["pre"]) == {"en", "zh"} and row["pre"]["en"]["loc_generated"] is not None
        assert [e["langs"] for e in row["edits"]] == [["en", "zh"]]
        assert row["cache_size"] == 1
    on_disk = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))
    assert on_disk == summary
    validate_summary(on_disk, "summary.json")
    extra = {
        "avg_leaves_out",
        "scored_records",
        "edit_langs",
        "sequential",
        "coverage",
        "not_edited",
        "prepare_seconds",
        "probes",
    }
    assert set(on_disk) == {*SUMMARY_KEYS, *extra}
    # every record has template probes in both languages, scored against the untouched model's answers
    assert {lang: on_disk["probes"][lang]["records"] for lang in ("en", "zh")} == {"en": 3, "zh": 3}
    assert on_disk["prepare_seconds"] >= 0
    assert on_disk["method"] == "lu-lafns" and on_disk["model"] == MODEL_NAME
    assert on_disk["setting"] == "multilingual" and on_disk["n_records"] == 3
    assert on_disk["langs"] == ["en", "zh"] and on_disk["edit_langs"] == ["en", "zh"]
    assert on_disk["not_edited"] == {"en": [], "zh": []}
    assert on_disk["coverage"] == {lang: {**dict.fromkeys(PLACEMENT_KINDS, 0), "verbatim": 3} for lang in ("en", "zh")}
    assert on_disk["seconds_per_edit"] > 0
    assert 0 <= on_disk["avg"] <= 100
    for lang in ("en", "zh"):
        for metric in METRICS:
            assert all(on_disk["scores"][lang][metric][k] is not None for k in SCORE_KEYS)
    # Locality with only the record's own edit: the loc prompts hold no edited subject, so nothing changes.
    assert on_disk["scores"]["en"]["locality"]["em"] == 100.0
    md = (out / SUMMARY_MD).read_text(encoding="utf-8")
    assert "Teacher-forced F1 / EM" in md and "tiny-qwen2" in md
    assert not (out / "heatmap.png").exists()  # two languages only
    assert json.loads((out / RUN_FILE).read_text())["langs"] == ["en", "zh"]


def test_resume_after_interruption_equals_an_uninterrupted_run(
    tiny: Any, data_file: Path, tmp_path: Path, full_run: tuple[Path, dict]
) -> None:
    _, uninterrupted = full_run
    _, first = _run(tiny, data_file, tmp_path, limit=2)
    assert len(first.groups) == 2
    with open(tmp_path / RECORDS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"record_id": "bench:2", "scores": {"en"')  # killed mid-write
    summary, second = _run(tiny, data_file, tmp_path, limit=3)
    assert [g.group_id for g in second.groups] == ["bench:2"]
    assert [r["record_id"] for r in read_rows(tmp_path / RECORDS_FILE)] == ["bench:0", "bench:1", "bench:2"]
    assert _without_time(summary) == _without_time(uninterrupted)
    # Nothing left to do: a third call recomputes nothing and gives the same summary.
    again, third = _run(tiny, data_file, tmp_path, limit=3)
    assert third.groups == [] and _without_time(again) == _without_time(uninterrupted)


def test_resume_refuses_a_different_run(
    tiny: Any, data_file: Path, tmp_path: Path, full_run: tuple[Path, dict]
) -> None:
    out, _ = full_run
    (tmp_path / RUN_FILE).write_bytes((out / RUN_FILE).read_bytes())
    (tmp_path / RECORDS_FILE).write_bytes((out / RECORDS_FILE).read_bytes())
    with pytest.raises(RunMismatchError, match=r"different run.*generation: True there, False now"):
        _run(tiny, data_file, tmp_path, generation=False)
    with pytest.raises(RunMismatchError, match="setting"):
        _run(tiny, data_file, tmp_path, setting="cross-lingual", edit_langs=("en",))


def test_sequential_mode_keeps_edits_and_reports_a_curve(tiny: Any, data_file: Path, tmp_path: Path) -> None:
    summary, _ = _run(tiny, data_file, tmp_path, sequential=True, curve_every=2)
    rows = read_rows(tmp_path / RECORDS_FILE)
    assert [r["cache_size"] for r in rows] == [1, 2, 3]
    assert len(EditCache.load(tmp_path / "cache")) == 3
    curve = summary["sequential_curve"]
    assert [(p["n_records"], p["cache_size"]) for p in curve] == [(2, 2), (3, 3)]
    assert all(p["avg"] is not None and p["window_avg"] is not None for p in curve)
    assert curve[-1]["avg"] == pytest.approx(summary["avg"])
    assert summary["sequential"] is True
    assert "as the cache grows" in (tmp_path / SUMMARY_MD).read_text(encoding="utf-8")


def test_a_record_whose_subject_cannot_be_placed_is_scored_anyway(tiny: Any, tmp_path: Path) -> None:
    """Never drop a record: the language whose subject is in no form in its question is not edited, is
    scored as the model answers without its edit, and the row and the summary say so."""
    bad = json.loads(json.dumps(RECORDS[1]))
    bad["zh"]["subject"] = "完全不同的东西"  # in no question, and no other language's subject is either
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([RECORDS[0], bad], ensure_ascii=False), encoding="utf-8")
    summary, editor = _run(tiny, data, tmp_path / "out", limit=None)
    assert summary["n_records"] == 2
    assert summary["not_edited"] == {"en": [], "zh": ["bad:1"]}
    assert summary["coverage"]["zh"]["not_placed"] == 1 and summary["coverage"]["zh"]["verbatim"] == 1
    assert [g.langs for g in editor.groups] == [["en", "zh"], ["en"]]
    rows = read_rows(tmp_path / "out" / RECORDS_FILE)
    assert "subject not found" in rows[1]["not_edited"]["zh"]
    assert rows[1]["placement"]["zh"] == {"kind": "not_placed", "surface": None}
    assert set(rows[1]["scores"]) == {"en", "zh"} and [e["langs"] for e in rows[1]["edits"]] == [["en"]]
    assert "| zh | 1 | 0 | 0 | 1 | 1 |" in (tmp_path / "out" / SUMMARY_MD).read_text(encoding="utf-8")


def test_monolingual_setting_edits_and_tests_each_language_alone(tiny: Any, data_file: Path, tmp_path: Path) -> None:
    summary, editor = _run(tiny, data_file, tmp_path, limit=1, setting="monolingual", generation=False)
    assert [(g.group_id, g.langs) for g in editor.groups] == [("bench:0@en", ["en"]), ("bench:0@zh", ["zh"])]
    assert summary["langs"] == ["en", "zh"] and summary["setting"] == "monolingual"
    row = read_rows(tmp_path / RECORDS_FILE)[0]
    assert [e["langs"] for e in row["edits"]] == [["en"], ["zh"]]
    assert set(row["scores"]) == {"en", "zh"} and "generated" not in row["outputs"]["zh"]
    assert summary["scores"]["zh"]["reliability"]["f1"] is not None
    assert summary["scores"]["zh"]["reliability"]["gen_em"] is None  # --no-generation


def test_cross_lingual_setting_edits_one_language_and_tests_others(tiny: Any, data_file: Path, tmp_path: Path) -> None:
    summary, editor = _run(
        tiny, data_file, tmp_path, limit=1, setting="cross-lingual", edit_langs=("en",), test_langs=("zh",)
    )
    assert [g.langs for g in editor.groups] == [["en"]]
    assert summary["langs"] == ["zh"] and summary["edit_langs"] == ["en"]
    assert set(read_rows(tmp_path / RECORDS_FILE)[0]["scores"]) == {"zh"}
    with pytest.raises(EvalConfigError, match="exactly one"):
        EvalConfig(setting="cross-lingual", edit_langs=("en", "zh"))
    with pytest.raises(EvalConfigError, match="not among"):
        _run(tiny, data_file, tmp_path / "x", setting="cross-lingual", edit_langs=("fr",))


class StubEditor(LuLafnEditor):
    """A stub method (no optimisation): a fixed ΔV on layer 1, triggered by the group's subjects; its view
    is a :class:`SpyEditedModel`."""

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        subjects = {r.lang: [r.subject] for group in groups for r in group.requests}
        deltas = {1: (torch.arange(128), torch.full((128,), 3.0))}
        return Edit(edit_id, subjects, neuron_tensors(deltas), {}, self.name)

    @contextmanager
    def applied(self, edits: Sequence[Edit]) -> Iterator[SpyEditedModel]:
        yield SpyEditedModel(self.model, self.tokenizer, list(edits), site=self.config.site)


class SpyEditedModel(EditedModel):
    """Records, for every forward/generate of the runner, each row's text, the edits applied, the cache size."""

    calls: ClassVar[list[tuple[str, list[str], int]]] = []

    @contextmanager
    def applying(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        copies: int = 1,
        prompt_lengths: Sequence[int] | None = None,
    ) -> Iterator[Any]:
        with super().applying(input_ids, attention_mask, copies, prompt_lengths) as applied:
            for row in range(input_ids.shape[0]):
                ids = input_ids[row] if attention_mask is None else input_ids[row][attention_mask[row].bool()]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                SpyEditedModel.calls.append((text, sorted(applied[row]), len(list(self.edits))))
            yield applied


@pytest.mark.parametrize("sequential", [False, True])
def test_each_record_is_tested_with_its_own_edit_in_force(
    tiny: Any, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sequential: bool
) -> None:
    model, tokenizer = tiny
    monkeypatch.setattr(SpyEditedModel, "calls", [])
    monkeypatch.setattr("mkedit.eval.runner.checkpoints", lambda n: [])  # retention re-scores: tested on its own
    records = load_records(data_file, ["en", "zh"], 2)
    config = EvalConfig(model=MODEL_NAME, data=str(data_file), langs=("en", "zh"), limit=2, sequential=sequential)
    editor = StubEditor(model, tokenizer, TINY_CONFIG, MODEL_NAME)
    run_evaluation(model, tokenizer, MODEL_NAME, records, config, tmp_path, editor)

    expected: dict[str, list[str]] = {}  # prompt -> edits that must be in force on it
    for index, raw in enumerate(RECORDS[:2]):
        for part in raw.values():
            for prompt in (part["src"], part["rephrase"], part["portability"]["New Question"]):
                expected[prompt] = [f"bench:{index}"]
            expected[part["loc"]] = []
    seen: dict[str, int] = dict.fromkeys(expected, 0)
    for text, applied, cache_size in SpyEditedModel.calls:
        prompt = next(p for p in expected if text.startswith(p))
        seen[prompt] += 1
        assert applied == expected[prompt], text
        record = 0 if any(text.startswith(p) for p in _prompts(RECORDS[0])) else 1
        # Only the record's own edit, or (sequential) every edit so far.
        assert cache_size == (record + 1 if sequential else 1)
    # Teacher-forced once and generated once; a Locality question, which no edit acts on, keeps its pre-edit outputs.
    assert all(count == (0 if expected[prompt] == [] else 2) for prompt, count in seen.items()), seen
    rows = read_rows(tmp_path / RECORDS_FILE)
    assert set(rows[0]["outputs"]["en"]["pred_ids"]) == set(METRICS)


def _prompts(raw: dict) -> list[str]:
    return [
        text
        for part in raw.values()
        for text in (part["src"], part["rephrase"], part["loc"], part["portability"]["New Question"])
    ]


def test_truncated_or_damaged_rows(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    path.write_text('{"record_id": "a", "error": "x"}\n{"record_id": "b", "error": "y"}', encoding="utf-8")
    assert [r["record_id"] for r in read_rows(path)] == ["a", "b"]
    assert path.read_text(encoding="utf-8").endswith('"y"}\n')  # complete row: only its newline was missing
    path.write_text('{"record_id": "a", "error": "x"}\nnot json\n{"record_id": "b", "error": "y"}\n')
    with pytest.raises(Exception, match="line 2"):
        read_rows(path)


def test_cli_eval_end_to_end(tiny: Any, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkedit.cli import app

    model, tokenizer = tiny
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    runner = CliRunner()
    out = tmp_path / "run"
    tiny_settings = [f"--set={key}={value}" for key, value in TINY_SETTINGS.items()]
    args = [
        "eval",
        "--model",
        str(folder),
        "--data",
        str(data_file),
        "--langs",
        "en,zh",
        "--limit",
        "1",
        *tiny_settings,
    ]
    result = runner.invoke(app, [*args, "--reference-records", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Teacher-forced F1 / EM" in result.output
    summary = json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))
    assert summary["n_records"] == 1 and summary["langs"] == ["en", "zh"]
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["method_config"]["max_steps"] == TINY_CONFIG.max_steps  # the values in force are recorded
    assert run["config"]["reference_records"] == 2

    unknown = runner.invoke(app, [*args, "--method", "rome", "--out", str(tmp_path / "r")])
    assert unknown.exit_code == 1 and "unknown method 'rome'" in unknown.output and "lu-lafns" in unknown.output


class ScramblingEditor(StubEditor):
    """A broken weight-editing method: its edit() permutes the output head in place and never restores it."""

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: Any = None) -> Edit:
        with torch.no_grad():
            head = self.model.get_output_embeddings().weight
            head.copy_(head[torch.randperm(head.shape[0], generator=torch.Generator().manual_seed(0))])
        return super().edit_facts(groups, edit_id, on_step)


def test_runner_catches_a_method_that_edits_weights_in_place(data_file: Path, tmp_path: Path) -> None:
    """Regression: such a method used to score Locality 100/100 against its own edited model."""
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    records = load_records(data_file, ["en", "zh"], 1)
    config = EvalConfig(model=MODEL_NAME, data=str(data_file), langs=("en", "zh"), limit=1)
    with pytest.raises(MethodContractError, match="changed the model's weights while record"):
        run_evaluation(
            model, tokenizer, MODEL_NAME, records, config, tmp_path, ScramblingEditor(model, tokenizer, TINY_CONFIG)
        )
    assert not (tmp_path / RECORDS_FILE).read_text(encoding="utf-8").strip()  # no row scored on a broken model


def test_pre_edit_predictions_are_taken_before_the_edit_is_computed(tiny: Any, data_file: Path, tmp_path: Path) -> None:
    """Locality references come from the untouched model: equal to a plain forward, whatever edit() does later."""
    model, tokenizer = tiny
    records = load_records(data_file, ["en", "zh"], 1)
    config = EvalConfig(model=MODEL_NAME, data=str(data_file), langs=("en", "zh"), limit=1, generation=False)
    run_evaluation(model, tokenizer, MODEL_NAME, records, config, tmp_path, StubEditor(model, tokenizer, TINY_CONFIG))
    row = read_rows(tmp_path / RECORDS_FILE)[0]
    scorer = Scorer(ModelView(model), tokenizer, config, "cpu")
    case = records[0].tests["en"][LOCALITY]
    assert row["pre"]["en"]["loc_pred_ids"] == scorer.predict([(case.prompt, case.target, "en")])[0].pred_ids


def test_sequential_retention_tells_replaced_facts_from_lost_ones(tiny: Any, tmp_path: Path) -> None:
    """A later record asking the same relation of a subject replaces the earlier fact (expected); one asking
    another relation joins it in the subject's edit. Retention re-scores the earlier records at checkpoints."""
    again = json.loads(json.dumps(RECORDS[0]))  # the same question, a new answer
    again["en"]["alt"], again["zh"]["alt"] = "Toyota", "丰田"
    other = json.loads(json.dumps(RECORDS[0]))  # the same subject, another relation
    other["en"]["src"], other["en"]["alt"] = "Which country is the Volvo B12M from?", "Peru"
    other["zh"]["src"], other["zh"]["alt"] = "沃尔沃B12M来自哪个国家？", "秘鲁"
    data = tmp_path / "facts.json"
    data.write_text(json.dumps([RECORDS[0], RECORDS[1], again, other], ensure_ascii=False), encoding="utf-8")
    summary, _ = _run(tiny, data, tmp_path / "out", limit=None, sequential=True)
    rows = read_rows(tmp_path / "out" / RECORDS_FILE)
    ids = [row["record_id"] for row in rows]
    assert rows[2]["replaced"] == [ids[0]] and rows[3]["beside"] == [ids[2]]
    cache = EditCache.load(tmp_path / "out" / "cache")
    assert sorted(len(facts_of(e)) for e in cache) == [1, 2]
    points = summary["retention"]
    assert [p["after_records"] for p in points] == [1, 2, 3, 4]
    assert points[-1]["counts"] == {"in_force": 3, "replaced": 1, "lost": 0, "not_edited": 0}
    assert points[1]["counts"]["in_force"] == 2 and points[-1]["edits_in_cache"] == 2
    em = points[-1]["in_force"]["reliability"]["en"]["em"]
    assert em is not None and 0 <= em <= 100
    assert "retention of earlier edits" in (tmp_path / "out" / SUMMARY_MD).read_text(encoding="utf-8")
    # A resumed run keeps the checkpoints it has and measures none twice.
    again_summary, editor = _run(tiny, data, tmp_path / "out", limit=None, sequential=True)
    assert editor.groups == [] and again_summary["retention"] == points


def test_untouched_prompts_keep_their_pre_edit_outputs_exactly(
    full_run: tuple[Path, dict], tiny: Any, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locality questions and probes that no edit acts on are not run again: the rows equal a run that
    recomputes every case, one case per forward (batch size 1), with and without generation."""
    import mkedit.eval.scoring as scoring

    rerun: list[str] = []
    untouched = scoring._untouched
    monkeypatch.setattr(scoring, "_untouched", lambda view, prompt, lang: rerun.append(prompt) and False)
    _run(tiny, data_file, tmp_path / "all", batch_size=1)
    reused = [prompt for prompt in rerun if untouched(EditedModel(tiny[0], tiny[1], []), prompt, "")]
    assert reused  # the fixture's Locality questions name no edited subject
    assert _untimed(read_rows(tmp_path / "all" / RECORDS_FILE)) == _untimed(read_rows(full_run[0] / RECORDS_FILE))


def test_probe_references_read_from_the_generation_equal_a_teacher_forced_pass(
    data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The untouched model's probe references skip their teacher-forced pass where the greedy generation
    already shows it: the rows equal a run that teacher-forces every probe's reference again. (Some of the
    tiny Gemma's Chinese answers are plain ASCII bytes, which re-encode to the same ids.)"""
    import mkedit.eval.scoring as scoring

    gemma = build_tiny_model("gemma3"), build_tiny_tokenizer()
    shown: list[Any] = []
    monkeypatch.setattr(scoring, "prediction_shown", lambda *ids: shown.append(prediction_shown(*ids)))
    _run(gemma, data_file, tmp_path / "forced", limit=2)
    assert any(pred is not None for pred in shown)  # the shortcut is taken in the run compared below
    monkeypatch.undo()
    _run(gemma, data_file, tmp_path / "shown", limit=2)
    assert _untimed(read_rows(tmp_path / "forced" / RECORDS_FILE)) == _untimed(
        read_rows(tmp_path / "shown" / RECORDS_FILE)
    )


def test_generation_resumed_after_the_teacher_forced_ids_equals_generation_from_the_prompt(
    full_run: tuple[Path, dict], tiny: Any, data_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the edit, decoding starts after the ids the teacher-forced pass already shows (:func:`greedy_known`):
    the rows equal a run that generates every case from its prompt alone."""
    import mkedit.eval.scoring as scoring

    resumed: list[list[int]] = []
    monkeypatch.setattr(scoring, "greedy_known", lambda pred: resumed.append(greedy_known(pred)) or [])
    _run(tiny, data_file, tmp_path / "from-prompt")
    assert resumed and all(resumed)  # the compared run resumed each of these after at least one known id
    assert _untimed(read_rows(tmp_path / "from-prompt" / RECORDS_FILE)) == _untimed(
        read_rows(full_run[0] / RECORDS_FILE)
    )


def test_references_taken_for_several_records_at_once_equal_one_record_at_a_time(
    full_run: tuple[Path, dict], tiny: Any, data_file: Path, tmp_path: Path
) -> None:
    """The untouched model's references of several records share one pass (``reference_records``, 4 by
    default): the rows equal a run that takes them one record at a time, and every row still times them."""
    _run(tiny, data_file, tmp_path / "one", reference_records=1)
    rows = read_rows(full_run[0] / RECORDS_FILE)
    assert _untimed(read_rows(tmp_path / "one" / RECORDS_FILE)) == _untimed(rows)
    assert all(row["seconds"]["pre"] > 0 and row["seconds"]["total"] >= row["seconds"]["pre"] for row in rows)
    with pytest.raises(EvalConfigError, match="reference_records"):
        EvalConfig(model=MODEL_NAME, data=str(data_file), reference_records=0)


def _untimed(value: Any) -> Any:
    """``value`` without its wall-clock ``seconds`` entries, at any depth."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    return [_untimed(v) for v in value] if isinstance(value, list) else value

"""``benchmarks/relation_gate.py --answered``: only the probes the untouched model answers are counted, as the
Specificity metric counts them, so that the share that does not fire (a mean over records) bounds Specificity EM
from below."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from conftest import TWO_RECORDS, build_tiny_model, build_tiny_tokenizer, load_benchmark
from mkedit.arch import get_adapter
from mkedit.data import load_records
from mkedit.data.probes import SOURCES
from mkedit.eval.scoring import Scorer
from mkedit.runtime.encoders import build_encoder

LANGS = ["en", "zh"]


@pytest.fixture(scope="module")
def relation_gate() -> ModuleType:
    return load_benchmark("relation_gate")


def test_only_answered_probes_count(relation_gate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "records.json"
    data.write_text(json.dumps(TWO_RECORDS, ensure_ascii=False), encoding="utf-8")
    records = load_records(data, LANGS, None, 0, SOURCES)
    probes = {lang: [p.question for p in records[0].probes[lang]] for lang in LANGS}
    assert all(len(questions) >= 2 for questions in probes.values())
    silent = probes["en"][0]  # the untouched model ends its answer at once on this probe: no reference to keep
    generate_ids = Scorer.generate_ids

    def generate_ids_silent_on_one(self: Scorer, cases, budgets):  # type: ignore[no-untyped-def]
        ids = generate_ids(self, cases, budgets)
        return [[] if prompt == silent else row for (prompt, _, _), row in zip(cases, ids, strict=True)]

    monkeypatch.setattr(Scorer, "generate_ids", generate_ids_silent_on_one)
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    answered = relation_gate.answered_probes(records, LANGS, model, tokenizer)

    assert answered[0]["en"] == set(probes["en"]) - {silent}
    assert answered[0]["zh"] == set(probes["zh"])
    assert answered[1]["en"] == {p.question for p in records[1].probes["en"]}
    encoder = build_encoder("backbone", model, tokenizer, get_adapter(model).layers(), 1)
    every = relation_gate.scores_by_kind(encoder, records, LANGS)
    kept = relation_gate.scores_by_kind(encoder, records, LANGS, answered=answered)
    assert len(kept.by_kind["en"]["probes"]) == len(every.by_kind["en"]["probes"]) - 1
    assert len(kept.by_kind["zh"]["probes"]) == len(every.by_kind["zh"]["probes"])
    assert kept.by_kind["en"]["rephrase"] == every.by_kind["en"]["rephrase"]  # only probes are filtered
    assert [len(scores) for scores in kept.probes_by_record["en"]] == [len(probes["en"]) - 1, len(answered[1]["en"])]


def test_specificity_bound_is_a_mean_over_records(relation_gate: ModuleType) -> None:
    # one record with 1 of 4 probes firing, one with none of 2: (75 + 100) / 2, not 5 of 6 pooled
    assert relation_gate.specificity_bound([[0.9, 0.1, 0.2, 0.3], [0.1, 0.2]], 0.5) == pytest.approx(87.5)
    assert relation_gate.specificity_bound([], 0.5) is None

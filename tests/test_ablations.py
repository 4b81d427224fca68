"""``benchmarks/ablations.py`` and the in-step driver on a tiny model: variants advance together, edit infos are
recorded once per record (resume included), and the β table counts LAFNs per layer from them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import TWO_RECORDS, build_tiny_model, build_tiny_tokenizer, load_benchmark
from mkedit.data import load_records
from mkedit.eval.runner import EvalConfig
from mkedit.eval.variants import Variant, pass_ends, run_in_step
from mkedit.methods.lu_lafns import LuLafnConfig

TINY = LuLafnConfig().with_overrides({"layers": "1,2", "max_steps": "2", "num_prefixes": "1"})


@pytest.fixture(scope="module")
def ablations() -> ModuleType:
    return load_benchmark("ablations")


def test_pass_ends() -> None:
    assert pass_ends(5, 2) == [2, 4, 5]
    assert pass_ends(4, 2) == [2, 4]
    assert pass_ends(3, 0) == [3]
    assert pass_ends(0, 1) == [0]


def test_lafn_stats_count_missing_layers_and_empty_locates_as_zero(ablations: ModuleType) -> None:
    entries = {
        "a": {"layers": [1, 2], "d_ffn": 100, "neurons_per_layer": {"1": 60, "2": 40}},
        "b": {"layers": [1, 2], "d_ffn": 100, "neurons_per_layer": {"1": 20}},  # layer 2 kept nothing
        "c": {"layers": [1, 2], "d_ffn": 100, "neurons_per_layer": {}},  # located nothing at all
        "d": {"layers": [1, 2], "d_ffn": 100, "neurons_per_layer": None},  # failed later: size unknown
    }
    stats = ablations.lafn_stats(entries, ["a", "b", "c", "d", "not-edited"])
    assert stats["edits"] == 3 and stats["located_none"] == 1
    assert stats["per_layer"]["1"] == {"num": 80 / 3, "proportion": 0.8 / 3}
    assert stats["per_layer"]["2"]["num"] == pytest.approx(40 / 3)
    assert stats["num"] == pytest.approx(20.0) and stats["proportion"] == pytest.approx(0.2)
    assert ablations.lafn_stats(entries, ["d"])["num"] is None


def test_edit_log_keeps_the_last_entry_of_a_fact_and_skips_a_truncated_line(
    ablations: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "edits.jsonl"
    for n in (5, 7):
        ablations.append_jsonl(path, {"facts": ["r:0"], "neurons_per_layer": {"1": n}})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"facts": ["r:1"], "neur')
    log = ablations.read_edit_log(path)
    assert list(log) == ["r:0"] and log["r:0"]["neurons_per_layer"] == {"1": 7}
    ablations.append_jsonl(path, {"facts": ["r:1"], "neurons_per_layer": {"1": 3}})  # the record done again
    assert ablations.read_edit_log(path)["r:1"]["neurons_per_layer"] == {"1": 3}


def test_variant_specs_and_defaults(ablations: ModuleType) -> None:
    parser = ablations.build_parser()
    assert ablations.default_layer_sets("qwen2.5-0.5b") == "16;17;18;16,17,18"
    specs = ablations.specs_for(parser.parse_args(["layers", "--layer-sets", "3;1,2;3"]))
    assert [(s.name, s.changes["layers"]) for s in specs] == [("3", (3,)), ("1-2", (1, 2))]
    specs = ablations.specs_for(parser.parse_args(["beta", "--betas", "0,0.25"]))
    assert [(s.name, s.changes) for s in specs] == [("0", {"beta": 0.0}), ("0.25", {"beta": 0.25})]
    specs = ablations.specs_for(parser.parse_args(["locate", "--strategies", "no-pgs,all,random"]))
    assert [(s.name, s.changes["locate_strategy"], s.paraphrases) for s in specs] == [
        ("no-pgs", "lafns", False),
        ("all", "all", False),
        ("random", "random", False),
    ]
    with pytest.raises(ValueError, match="beta"):
        ablations.specs_for(parser.parse_args(["beta", "--betas", "1"]))
    with pytest.raises(ablations.ConfigError, match="sweeps"):
        ablations.base_config("qwen2.5-0.5b", ["beta=0.1"], "beta")


def test_paraphrases_strategy_needs_an_existing_file(ablations: ModuleType, tmp_path: Path) -> None:
    parser = ablations.build_parser()
    args = parser.parse_args(["locate", "--strategies", "paraphrases"])
    with pytest.raises(ValueError, match="--paraphrases FILE"):
        ablations.specs_for(args)
    path = tmp_path / "p.jsonl"
    path.write_text("", encoding="utf-8")
    args = parser.parse_args(["locate", "--strategies", "no-pgs,random", "--paraphrases", str(path)])
    assert [(s.name, s.paraphrases) for s in ablations.specs_for(args)] == [
        ("no-pgs", False),
        ("random-paraphrases", True),
    ]


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(TWO_RECORDS, ensure_ascii=False), encoding="utf-8")
    return path


def _variant(ablations: ModuleType, model: Any, tokenizer: Any, spec: Any, config: EvalConfig, out: Path, **kw) -> Any:
    editor = ablations.RecordingEditor(model, tokenizer, TINY.replace(**spec.changes), "tiny", out / "edits.jsonl")
    return Variant(spec.name, editor, config, out, **kw)


def test_beta_variants_in_step_record_lafns_and_resume(ablations: ModuleType, tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    data = _data(tmp_path)
    records = load_records(data, ["en", "zh"], 2)
    config = EvalConfig(model="tiny", data=str(data), langs=("en", "zh"), generation=False, specificity=())
    specs = [ablations.Spec("0", "0", {"beta": 0.0}), ablations.Spec("0.5", "0.5", {"beta": 0.5})]

    def variants() -> list[Variant]:
        return [_variant(ablations, model, tokenizer, s, config, tmp_path / "runs" / s.name) for s in specs]

    passes: list[tuple[str, int]] = []
    summaries = run_in_step(
        model, tokenizer, "tiny", records, variants(), 1, lambda v, end: passes.append((v.name, end))
    )
    assert passes == [("0", 1), ("0.5", 1), ("0", 2), ("0.5", 2)]
    ids = [r.record_id for r in records]
    results = []
    for spec in specs:
        lines = (tmp_path / "runs" / spec.name / "edits.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["facts"] for line in lines] == [[i] for i in ids]
        stats = ablations.lafn_stats(ablations.read_edit_log(tmp_path / "runs" / spec.name / "edits.jsonl"), ids)
        assert stats["edits"] == 2 and stats["d_ffn"] == 128 and set(stats["per_layer"]) == {"1", "2"}
        results.append(ablations.Result(spec, summaries[spec.name], stats))
    # A higher threshold keeps fewer neurons (Eq. 5), and the table shows both.
    assert results[1].lafns["num"] < results[0].lafns["num"] <= 128
    table = ablations.beta_table(results)
    assert "layer 1" in table and "layer 2" in table and "2 / 2" in table
    assert ablations.render("beta", results).count("lu-lafns (β = 0.5)") >= 1

    # Resuming recomputes nothing and appends nothing.
    run_in_step(model, tokenizer, "tiny", records, variants(), 1)
    lines = (tmp_path / "runs" / "0" / "edits.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2


def test_layers_and_locate_tables(ablations: ModuleType) -> None:
    def result(name: str, changes: dict, avg: float, num: float | None = None) -> Any:
        lafns = {} if num is None else {"num": num, "proportion": num / 100}
        summary = {"avg": avg, "n_records": 3}
        return ablations.Result(ablations.Spec(name, name, changes), summary, lafns)

    layers = [result("1", {"layers": (1,)}, 50.0), result("2", {"layers": (2,)}, 60.0)]
    layers.append(result("1-2", {"layers": (1, 2)}, 70.0))
    table = ablations.layers_table(layers).splitlines()
    assert table[2] == "| 1 | 50.00 | 1-2 | 70.00 |" and table[3] == "| 2 | 60.00 |  |  |"

    strategies = [result("no-pgs", {}, 70.0, 40), result("all", {}, 69.5, 100)]
    table = ablations.locate_table(strategies)
    assert "Δ vs no-pgs" in table and "| all | 69.50 | -0.50 | 100 (100.0%) |" in table


def test_paraphrases_variant_locates_with_the_file(ablations: ModuleType, tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    data = _data(tmp_path)
    records = load_records(data, ["en", "zh"], 1)
    path = tmp_path / "paraphrases.jsonl"
    lines = [
        {"record_id": "bench:0", "lang": lang, "question": part["src"], "subject": part["subject"], "source": "test"}
        | {"paraphrases": [f"{part['subject']} {tail}" for tail in ("?", "maker?", "built by whom?")], "raw_count": 3}
        for lang, part in TWO_RECORDS[0].items()
    ]
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    paraphrased, extra = ablations.with_paraphrases(records, path)
    assert extra["paraphrases_sha256"] and all(len(r.paraphrases) == 3 for r in paraphrased[0].group.requests)
    config = EvalConfig(model="tiny", data=str(data), langs=("en", "zh"), generation=False, specificity=())
    no_pgs, with_pgs = ablations.Spec("no-pgs", "No-PGs", {}), ablations.Spec("paraphrases", "PG", {}, True)
    runs = [
        _variant(ablations, model, tokenizer, no_pgs, config, tmp_path / "no-pgs"),
        _variant(
            ablations,
            model,
            tokenizer,
            with_pgs,
            dataclasses.replace(config, **extra),
            tmp_path / "paraphrases",
            records=paraphrased,
        ),
    ]
    run_in_step(model, tokenizer, "tiny", records, runs, 1)
    run_info = json.loads((tmp_path / "paraphrases" / "run.json").read_text(encoding="utf-8"))
    assert run_info["paraphrases"]["sha256"] == extra["paraphrases_sha256"]
    counts = [
        ablations.read_edit_log(tmp_path / name / "edits.jsonl")["bench:0"]["neurons_per_layer"]
        for name in ("no-pgs", "paraphrases")
    ]
    # At β = 0 a neuron is kept when any token of the corpus activates it: more text, at least as many neurons.
    assert counts[0] != counts[1] and all(counts[1][k] >= n for k, n in counts[0].items())

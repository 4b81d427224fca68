"""Summaries, their JSON shape, the markdown tables, the heatmap and `mkedit report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mkedit.cli_report import report_command
from mkedit.errors import DataFormatError
from mkedit.eval.report import (
    METRICS,
    SCORE_KEYS,
    SUMMARY_KEYS,
    language_em,
    merge_reports,
    summarize,
    summary_markdown,
    table_rows,
    write_heatmap,
    write_json_atomic,
)


def _s(f1: float, em: float, **gen: float) -> dict[str, float]:
    return {"f1": f1, "em": em, **gen}


ROWS = [
    {
        "record_id": "r1",
        "scores": {
            "en": {
                "reliability": _s(1, 1, gen_em=1, gen_contains=1),
                "generality": _s(0.5, 0),
                "locality": _s(1, 1),
                "portability": _s(0.2, 0),
            },
            "zh": {
                "reliability": _s(0.5, 0),
                "generality": _s(0.5, 0),
                "locality": _s(1, 1),
                "portability": _s(0, 0),
            },
        },
    },
    {
        "record_id": "r2",
        "scores": {
            "en": {
                "reliability": _s(0.5, 0, gen_em=0, gen_contains=1),
                "generality": _s(1, 1),
                "locality": _s(0.5, 0),
                "portability": _s(0.4, 0),
            },
            # portability absent: zh portability is r1's alone
            "zh": {"reliability": _s(1, 1), "generality": _s(0.5, 0), "locality": _s(1, 1)},
        },
    },
]
# By hand (percent), F1 / EM:
#   en: rel 75/50, gen 75/50, loc 75/50, port 30/0    -> sum 405
#   zh: rel 75/50, gen 50/0,  loc 100/100, port 0/0   -> sum 375
#   avg = 780 / 16 = 48.75
EXPECTED = {
    "en": {"reliability": (75, 50), "generality": (75, 50), "locality": (75, 50), "portability": (30, 0)},
    "zh": {"reliability": (75, 50), "generality": (50, 0), "locality": (100, 100), "portability": (0, 0)},
}


def _summary(method: str = "lu-lafns", model: str = "qwen2.5-0.5b", langs=("en", "zh")) -> dict:
    return summarize(ROWS, method, model, "bizsre", list(langs), seconds_per_edit=1.25)


def test_summarize_hand_computed() -> None:
    s = _summary()
    for lang, metrics in EXPECTED.items():
        for metric, (f1, em) in metrics.items():
            assert s["scores"][lang][metric]["f1"] == pytest.approx(f1), (lang, metric)
            assert s["scores"][lang][metric]["em"] == pytest.approx(em), (lang, metric)
    assert s["avg"] == pytest.approx(48.75)
    assert s["scores"]["en"]["reliability"]["gen_em"] == pytest.approx(50)
    assert s["scores"]["en"]["reliability"]["gen_contains"] == pytest.approx(100)
    assert s["scores"]["en"]["generality"]["gen_em"] is None  # never measured
    assert s["n_records"] == 2 and s["seconds_per_edit"] == 1.25


def test_summary_json_shape_is_exact(tmp_path: Path) -> None:
    s = _summary()
    assert list(s) == [*SUMMARY_KEYS, "avg_leaves_out", "scored_records"]
    assert s["langs"] == ["en", "zh"]
    assert set(s["scores"]) == {"en", "zh"}
    for per_lang in s["scores"].values():
        assert list(METRICS) == ["reliability", "generality", "locality", "portability"]
        assert list(per_lang) == [*METRICS, "specificity"]  # beside the paper's four, outside avg
        for entry in per_lang.values():
            assert list(entry) == list(SCORE_KEYS) == ["f1", "em", "gen_em", "gen_contains"]
    path = tmp_path / "run" / "summary.json"
    write_json_atomic(path, s)
    assert json.loads(path.read_text(encoding="utf-8")) == s
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp file left


def test_summarize_rejects_percent_in_rows_and_unknown_metrics() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        summarize([{"record_id": "x", "scores": {"en": {"reliability": {"f1": 75}}}}], "m", "m", "s", ["en"], 1)
    with pytest.raises(ValueError, match="unknown metric"):
        summarize([{"record_id": "x", "scores": {"en": {"fluency": {"f1": 1}}}}], "m", "m", "s", ["en"], 1)


def test_summarize_normalizes_language_aliases() -> None:
    rows = [{"record_id": "x", "scores": {"cz": {"reliability": _s(1, 1)}}}]
    s = summarize(rows, "m", "m", "mzsre", ["cz"], None)
    assert s["langs"] == ["cs"] and s["scores"]["cs"]["reliability"]["em"] == 100.0
    assert s["avg"] == 100.0  # absent metrics are skipped, not counted as 0


def test_markdown_has_table2_layout_and_numbers() -> None:
    md = summary_markdown(_summary())
    headers, rows = table_rows([_summary()])
    assert headers[:3] == ["Model", "Method", "en: Reliability"]
    assert headers[-1] == "avg" and "zh: Portability" in headers
    assert rows[0] == [
        "qwen2.5-0.5b",
        "lu-lafns",
        "75.00 / 50.00",
        "75.00 / 50.00",
        "75.00 / 50.00",
        "30.00 / 0.00",
        "75.00 / 50.00",
        "50.00 / 0.00",
        "100.00 / 100.00",
        "0.00 / 0.00",
        "48.75",
    ]
    assert "| qwen2.5-0.5b | lu-lafns | 75.00 / 50.00 |" in md
    assert "48.75" in md
    # the generation table, separate from the teacher-forced one
    assert "Generation-based" in md
    gen_headers, gen_rows = table_rows([_summary()], generation=True)
    assert "avg" not in gen_headers
    assert gen_rows[0][2] == "50.00 / 100.00" and gen_rows[0][3] == "–"
    assert "| qwen2.5-0.5b | lu-lafns | bizsre | 2 | 1.25 |" in md


def _three_lang_summary(method: str, shift: float) -> dict:
    scores = {
        "en": {m: _s(1.0, 1.0 - shift) for m in METRICS},
        "zh": {m: _s(0.5, 0.3) for m in METRICS},
        "de": {m: _s(0.9, 0.8) for m in METRICS},
    }
    return summarize([{"record_id": "r", "scores": scores}], method, "qwen2.5-0.5b", "mzsre", ["en", "zh", "de"], 2.0)


def test_heatmap_png_for_three_languages(tmp_path: Path) -> None:
    summaries = [_three_lang_summary("lu-lafns", 0.0), _three_lang_summary("m-memit", 0.5)]
    assert language_em(summaries[1], "en") == pytest.approx(50.0)
    path = write_heatmap(summaries, tmp_path / "fig" / "heatmap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="3\\+ languages"):
        write_heatmap([_summary()], tmp_path / "two.png")


def test_merge_reports(tmp_path: Path) -> None:
    for name, method in (("a", "lu-lafns"), ("b", "m-memit")):
        write_json_atomic(tmp_path / name / "summary.json", _summary(method=method))
    md, summaries = merge_reports([tmp_path / "a", tmp_path / "b"])
    assert [s["method"] for s in summaries] == ["lu-lafns", "m-memit"]
    assert "| qwen2.5-0.5b | m-memit |" in md and "| qwen2.5-0.5b | lu-lafns |" in md


def test_merge_reports_errors_name_the_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty.*no summary\.json"):
        merge_reports([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.*not valid JSON"):
        merge_reports([tmp_path / "bad"])
    broken = _summary()
    del broken["scores"]["zh"]["locality"]
    write_json_atomic(tmp_path / "shape" / "summary.json", broken)
    with pytest.raises(DataFormatError, match=r"shape.*scores\.zh\.locality"):
        merge_reports([tmp_path / "shape"])


def test_report_command(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(report_command)
    for name, shift in (("a", 0.0), ("b", 0.5)):
        write_json_atomic(tmp_path / name / "summary.json", _three_lang_summary(f"method-{name}", shift))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "method-a" in result.output
    assert "method-b" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"

    missing = CliRunner().invoke(app, [str(tmp_path / "nowhere"), "--out", str(out)])
    assert missing.exit_code == 1
    assert "nowhere" in missing.output


def test_missing_metrics_are_named_beside_avg() -> None:
    """avg never quietly averages fewer metrics or records: what it leaves out is in the summary and the table."""
    full = {m: {"f1": 1.0, "em": 1.0} for m in METRICS}
    rows = [
        {"record_id": "a", "scores": {"en": {m: v for m, v in full.items() if m != "portability"}}},
        {"record_id": "b", "scores": {"en": {m: v for m, v in full.items() if m not in ("portability", "locality")}}},
    ]
    s = summarize(rows, "m", "x", "multilingual", ["en"], None)
    assert s["avg_leaves_out"] == ["en/portability"]
    assert s["scored_records"] == {"en/locality": 1}
    note = summary_markdown(s)
    assert "avg leaves out en/portability" in note and "en/locality 1" in note

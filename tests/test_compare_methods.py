"""benchmarks/compare_methods.py's time table: the median is taken over the window's edits only."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return load_benchmark("compare_methods")


def _write_rows(folder: Path, seconds: dict[str, list[float]]) -> None:
    folder.mkdir(parents=True)
    rows = [{"record_id": rid, "edits": [{"seconds": s} for s in times]} for rid, times in seconds.items()]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_median_covers_the_window_and_every_edit_of_a_row(compare: ModuleType, tmp_path: Path) -> None:
    # r2 was paused for an hour: the mean per edit would read 728 s, the median stays with the typical edit.
    _write_rows(tmp_path / "m-multilingual", {"r1": [10.0], "r2": [3600.0, 12.0], "r3": [11.0, 9.0], "r9": [1.0]})
    assert compare.median_seconds(tmp_path, "m", "multilingual", {"r1", "r2", "r3"}) == 11.0
    assert compare.median_seconds(tmp_path, "m", "multilingual", {"r4"}) is None


def test_median_of_a_run_not_started_is_none(compare: ModuleType, tmp_path: Path) -> None:
    assert compare.median_seconds(tmp_path, "m", "monolingual", {"r1"}) is None


def test_time_table_shows_mean_and_median(compare: ModuleType) -> None:
    summaries = {("m", "multilingual"): {"n_records": 3, "seconds_per_edit": 728.6, "one_off_seconds": 535.0}}
    table = compare.timing_table(summaries, ["m"], {("m", "multilingual"): 11.0})
    assert "| m | multilingual | 3 | 728.6 | 11.0 | 535; — |" in table.splitlines()

"""``benchmarks/edit_speed.py`` times the groups it can edit: a record whose question does not name its subject
is skipped with a line on stderr, as ``mkedit edit`` skips it, instead of ending the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import TWO_RECORDS, build_tiny_model, build_tiny_tokenizer, load_benchmark, mzsre_part
from mkedit.models.loader import LoadedModel

UNPLACEABLE = {  # neither question names its subject
    "en": mzsre_part("Mount Kilimanjaro", "Which country is the mountain in?", "Chile"),
    "zh": mzsre_part("乞力马扎罗山", "这座山在哪个国家？", "智利"),
}


def test_an_unplaceable_record_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_speed = load_benchmark("edit_speed")
    data = tmp_path / "records.json"
    data.write_text(json.dumps([TWO_RECORDS[0], UNPLACEABLE, TWO_RECORDS[1]], ensure_ascii=False), encoding="utf-8")
    loaded = LoadedModel(build_tiny_model("qwen2"), build_tiny_tokenizer(), "tiny-qwen2")
    monkeypatch.setattr(edit_speed, "load_model", lambda *args, **kwargs: loaded)
    argv = ["edit_speed.py", "--data", str(data), "--groups", "3", "--skip-slow", "--json"]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "layers=1,2", "--set", "max_steps=2"])

    edit_speed.main()

    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["groups"] == 2
    assert "skipped" in err and "Mount Kilimanjaro" in err
    on = summary["modes"]["switches on"]
    assert on["steps"] <= 2 and on["cache_bytes_per_edit"] > 0

"""Evaluation spread over Ray workers writes what a single-process run writes, and resumes the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.cli import app
from mkedit.data import load_records
from mkedit.eval import distributed
from mkedit.eval.runner import RECORDS_FILE, RUN_FILE, EvalConfig, read_rows, run_evaluation
from mkedit.methods.registry import build_method
from mkedit.models import load_model
from mkedit.runtime.cache import EditCache
from test_eval_runner import RECORDS, TINY_SETTINGS

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module: the pools join it instead of starting their own."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _without_time(value: Any) -> Any:
    """Rows and summaries minus the wall-clock fields, which differ between any two runs."""
    if isinstance(value, dict):
        return {
            k: _without_time(v)
            for k, v in value.items()
            if k not in ("seconds", "seconds_per_edit", "prepare_seconds", "created", "resumed")
        }
    if isinstance(value, list):
        return [_without_time(v) for v in value]
    return value


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, EvalConfig]:
    root = tmp_path_factory.mktemp("distributed")
    folder = root / "tiny-qwen2"
    build_tiny_model("qwen2").save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))
    data = root / "bench.json"
    data.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    config = EvalConfig(model=str(folder), data=str(data), langs=("en", "zh"), limit=3)
    return folder, data, config


def test_two_workers_write_what_one_process_writes(setup, tmp_path: Path) -> None:
    folder, data, config = setup
    records = load_records(data, config.langs, 3, specificity=config.specificity)
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    method = build_method("lu-lafns", loaded.model, loaded.tokenizer, loaded.name, overrides=TINY_SETTINGS)
    single = run_evaluation(loaded.model, loaded.tokenizer, loaded.name, records, config, tmp_path / "one", method)

    spec = distributed.WorkerSpec(str(folder), "cpu", "float32", "lu-lafns", None, TINY_SETTINGS)
    with distributed.WorkerPool(spec, workers=2, threads=1) as pool:
        spread = distributed.run_distributed_evaluation(pool, records, config, tmp_path / "two")
        # An interrupted distributed run resumes: only the missing record is evaluated again.
        lines = (tmp_path / "two" / RECORDS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
        (tmp_path / "three").mkdir()
        (tmp_path / "three" / RUN_FILE).write_bytes((tmp_path / "two" / RUN_FILE).read_bytes())
        (tmp_path / "three" / RECORDS_FILE).write_text("".join(lines[:2]), encoding="utf-8")
        resumed = distributed.run_distributed_evaluation(pool, records, config, tmp_path / "three")
    assert _without_time(spread) == _without_time(single)
    assert _without_time(resumed) == _without_time(single)
    one_rows, two_rows = (read_rows(tmp_path / d / RECORDS_FILE) for d in ("one", "two"))
    assert [r["record_id"] for r in two_rows] == ["bench:0", "bench:1", "bench:2"]
    assert _without_time(two_rows) == _without_time(one_rows)
    run_one, run_two = (json.loads((tmp_path / d / RUN_FILE).read_text()) for d in ("one", "two"))
    assert _without_time(run_two) == _without_time(run_one)
    assert _without_time(read_rows(tmp_path / "three" / RECORDS_FILE)) == _without_time(one_rows)


def test_workers_without_ray_name_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(distributed.RayUnavailableError, match=r"pip install 'mkedit\[ray\]'"):
        distributed.require_ray()


def test_sequential_runs_are_refused(setup) -> None:
    folder, data, _ = setup
    sequential = EvalConfig(model=str(folder), data=str(data), langs=("en", "zh"), limit=3, sequential=True)
    with pytest.raises(distributed.EvalConfigError, match="sequential"):
        distributed.PoolEvaluator(None, sequential, None)  # type: ignore[arg-type]  # refused before any use


def test_bulk_edit_on_workers_matches_one_process(setup, tmp_path: Path) -> None:
    """`mkedit edit --workers 2` stores the same edits as `mkedit edit`; stdout carries only the result."""
    folder, data, _ = setup
    args = ["edit", "--edits", str(data), "--model", str(folder), "--device", "cpu", "--dtype", "float32"]
    args += [x for key, value in TINY_SETTINGS.items() for x in ("--set", f"{key}={value}")]
    runner = CliRunner()
    one = runner.invoke(app, [*args, "--out", str(tmp_path / "one")])
    two = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    assert one.stdout.strip() == f"3 edit(s) in {tmp_path / 'one'}"
    a, b = EditCache.load(tmp_path / "one"), EditCache.load(tmp_path / "two")
    assert [e.edit_id for e in a] == [e.edit_id for e in b] == ["bench:0", "bench:1", "bench:2"]
    for x, y in zip(a, b, strict=True):
        assert sorted(x.tensors) == sorted(y.tensors)
        assert all(torch.equal(x.tensors[name], y.tensors[name]) for name in x.tensors)
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "three"), "--address", "ray://nowhere:1"])
    assert bad.exit_code == 1 and "--workers" in bad.stderr

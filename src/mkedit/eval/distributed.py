"""Spread evaluation records (or bulk edits) over Ray workers: ``mkedit eval --workers N [--address ADDR]``.

Each worker is a Ray actor that loads its own copy of the model and builds the method from a
:class:`WorkerSpec` (nothing large is sent). Work goes out one item at a time to whichever worker is free,
and results come back to this process, which writes them in the input order, exactly as a single-process
run would (an interrupted run resumes the same way). Without ``--address`` a local Ray instance is
started with this machine's CPUs, one worker per GPU where there are GPUs; with it, an existing cluster
is joined. Ray is optional: ``pip install 'mkedit[ray]'``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mkedit.errors import MkeditError
from mkedit.eval.runner import (
    EvalConfig,
    EvalConfigError,
    EvalPlan,
    ProgressFn,
    RecordEvaluator,
    Summary,
    drive,
    plan_for,
)
from mkedit.facts import FactPlan
from mkedit.methods.base import EditMethod
from mkedit.methods.registry import build_method
from mkedit.models import load_model
from mkedit.models.fingerprint import ModelFingerprint, model_fingerprint
from mkedit.runtime.cache import Edit
from mkedit.types import BenchmarkRecord

log = logging.getLogger(__name__)

RAY_PIP = "pip install 'mkedit[ray]'"


class RayUnavailableError(MkeditError, RuntimeError):
    """``--workers`` was asked for, but Ray is not installed."""


def check_workers(workers: int, address: str | None, sequential: bool = False) -> None:
    """Fail before anything loads: ``--address`` without workers, workers for a sequential run, or workers
    without Ray."""
    if address and not workers:
        raise EvalConfigError("--address joins a Ray cluster for --workers; give --workers N too")
    if workers:
        _refuse_sequential(sequential)
        require_ray()


def _refuse_sequential(sequential: bool) -> None:
    if sequential:
        raise EvalConfigError("--workers cannot run --sequential: its edits stack, one record after another")


def edit_or_reason(method: EditMethod, plan: FactPlan) -> tuple[Edit | None, str | None]:
    """The plan's edit, or None and why (an edit that cannot be made is not an error of a bulk edit)."""
    try:
        return method.edit_facts(plan.facts, plan.edit_id), None
    except MkeditError as exc:
        return None, str(exc)


def require_ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise RayUnavailableError(f"--workers needs Ray: {RAY_PIP} (or pip install 'ray>=2.40')")
    import ray

    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """How a worker rebuilds the model and the method; each worker loads its own copy."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    method: str = "lu-lafns"
    preset: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] | None = None
    """A whole method configuration (e.g. an existing cache's), instead of preset and overrides."""


class ModelWorker:
    """One model and method in one process; Ray runs it as an actor."""

    def __init__(self, spec: WorkerSpec, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.loaded = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        loaded = self.loaded
        self.method = build_method(
            spec.method, loaded.model, loaded.tokenizer, loaded.name, spec.preset, spec.overrides
        )
        self.evaluator: RecordEvaluator | None = None

    def start_evaluation(self, config: EvalConfig, plan: EvalPlan) -> dict[str, Any]:
        """Bind an evaluator; returns its run.json identity (every worker must give the same)."""
        loaded = self.loaded
        self.evaluator = RecordEvaluator(loaded.model, loaded.tokenizer, loaded.name, self.method, config, plan)
        return self.evaluator.run_info()

    def prepare(self) -> float:
        assert self.evaluator is not None
        return self.evaluator.prepare()

    def evaluate(self, record: BenchmarkRecord) -> dict[str, Any]:
        assert self.evaluator is not None
        return self.evaluator.evaluate(record)

    def one_off_seconds(self) -> float | None:
        return self.method.one_off_seconds()

    def cache_header(self, rounding: str = "bfloat16") -> tuple[ModelFingerprint, str, dict[str, Any]]:
        """What an edit cache for this worker's model and method records."""
        fingerprint = model_fingerprint(self.loaded.model, self.loaded.name, rounding)
        return fingerprint, self.method.name, self.method.config.to_dict()

    def edit(self, plan: FactPlan) -> tuple[Edit | None, str | None]:
        return edit_or_reason(self.method, plan)


class WorkerPool:
    """``workers`` Ray actors of :class:`ModelWorker`; a local Ray instance unless ``address`` is given."""

    def __init__(self, spec: WorkerSpec, workers: int, address: str | None = None, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.ray = ray = require_ray()
        self._started = not ray.is_initialized()
        if self._started:
            if address:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        on_gpu = spec.device != "cpu" and gpus > 0
        if on_gpu and workers > gpus:
            raise EvalConfigError(f"{workers} workers asked for, but the Ray cluster has {gpus} GPU(s): one per worker")
        cpus = max(1, int(resources.get("CPU", 1)) // workers)
        actor = ray.remote(num_cpus=cpus, num_gpus=1 if on_gpu else 0)(ModelWorker)
        log.info("starting %d Ray worker(s), %d CPU(s)%s each", workers, cpus, " and one GPU" if on_gpu else "")
        self.actors = [actor.remote(spec, threads or cpus) for _ in range(workers)]

    def call_all(self, name: str, *args: Any) -> list[Any]:
        """``name(*args)`` on every worker; their results in worker order."""
        return self.ray.get([getattr(a, name).remote(*args) for a in self.actors])

    def map_ordered(self, name: str, items: Sequence[Any]) -> Iterator[Any]:
        """``name(item)`` for each item, one item at a time per free worker; results in ``items`` order."""
        ray = self.ray
        pending: dict[Any, tuple[int, Any]] = {}
        done: dict[int, Any] = {}
        queue = iter(enumerate(items))
        for actor in self.actors:
            if (nxt := next(queue, None)) is not None:
                pending[getattr(actor, name).remote(nxt[1])] = (nxt[0], actor)
        emitted = 0
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready)
            done[index] = ray.get(ready)
            if (nxt := next(queue, None)) is not None:
                pending[getattr(actor, name).remote(nxt[1])] = (nxt[0], actor)
            while emitted in done:
                yield done.pop(emitted)
                emitted += 1

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self._started:
            self.ray.shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoolEvaluator:
    """:class:`~mkedit.eval.runner.Evaluator` over a pool: records go to the workers, rows come back in order."""

    def __init__(self, pool: WorkerPool, config: EvalConfig, plan: EvalPlan) -> None:
        _refuse_sequential(config.sequential)
        self.pool = pool
        infos = pool.call_all("start_evaluation", config, plan)
        if any(info != infos[0] for info in infos[1:]):
            raise EvalConfigError("the workers disagree on the run (model or method); check their environments")
        self.info = infos[0]

    def run_info(self) -> dict[str, Any]:
        return self.info

    def resume(self, out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
        """Nothing to put back: only sequential runs carry state between records."""

    def prepare(self) -> float:
        return max(self.pool.call_all("prepare"))

    def rows(self, records: Sequence[BenchmarkRecord], out_dir: Path) -> Iterator[dict[str, Any]]:
        yield from self.pool.map_ordered("evaluate", records)

    def one_off_seconds(self) -> float | None:
        return self.pool.call_all("one_off_seconds")[0]

    def retention(self, records: Sequence[BenchmarkRecord], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        raise MkeditError("retention is measured in sequential runs, which run in one process (no --workers)")


def run_distributed_evaluation(
    pool: WorkerPool,
    records: Sequence[BenchmarkRecord],
    config: EvalConfig,
    out_dir: str | os.PathLike[str],
    progress: ProgressFn | None = None,
) -> Summary:
    """:func:`~mkedit.eval.runner.run_evaluation` with the records spread over the pool's workers."""
    plan = plan_for(config, records)
    evaluator = PoolEvaluator(pool, config, plan)
    return drive(evaluator, records, config, plan, out_dir, evaluator.info["model"], progress)

"""Several evaluation runs on the same records, advanced together: what the comparison and ablation
benchmarks drive.

Each variant is an ordinary, resumable :func:`~mkedit.eval.runner.run_evaluation` run in its own
directory. Records are taken ``step`` at a time: every variant does records ``1..step``, then every
variant ``1..2·step``, and so on, so a run stopped at any point covers the same first records in every
variant (and running the same command again resumes each where it stopped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.eval.report import Summary
from mkedit.eval.runner import EvalConfig, run_evaluation
from mkedit.methods.base import EditMethod
from mkedit.types import BenchmarkRecord


@dataclass(frozen=True)
class Variant:
    """One run of a multi-run benchmark. Variants may share a method instance (e.g. one method in two
    settings); ``config.limit`` is set by each pass."""

    name: str
    method: EditMethod
    config: EvalConfig
    out_dir: Path
    records: Sequence[BenchmarkRecord] | None = None
    """This variant's own copy of the records (same ids, in the same order: e.g. with paraphrases attached);
    None = the records given to :func:`run_in_step`."""


AnnounceFn = Callable[[Variant, int], None]
"""``(variant, records in this pass)``: called before each variant's pass."""
RecordDoneFn = Callable[[Variant, int, int, str], None]
"""``(variant, records done in this call, records to do in this call, last record id)``."""


def pass_ends(n_records: int, step: int) -> list[int]:
    """How many records each pass covers: ``step, 2·step, ..., n_records`` (``step`` 0 = all at once)."""
    step = step if step > 0 else max(n_records, 1)
    return [*range(step, n_records, step), n_records]


def run_in_step(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    records: Sequence[BenchmarkRecord],
    variants: Sequence[Variant],
    step: int = 0,
    announce: AnnounceFn | None = None,
    on_record: RecordDoneFn | None = None,
) -> dict[str, Summary]:
    """Run (or resume) every variant on ``records``, ``step`` more records per pass (module docstring);
    returns each variant's summary after the last pass, by name."""
    for variant in variants:
        own = variant.records
        if own is not None and [r.record_id for r in own] != [r.record_id for r in records]:
            raise ValueError(f"variant {variant.name}: its records are not the same records in the same order")
    summaries: dict[str, Summary] = {}
    for end in pass_ends(len(records), step):
        for variant in variants:
            if announce is not None:
                announce(variant, end)
            config = dataclasses.replace(variant.config, limit=end)
            progress = None
            if on_record is not None:
                progress = _bind(on_record, variant)
            own = records if variant.records is None else variant.records
            summaries[variant.name] = run_evaluation(
                model, tokenizer, model_name, own[:end], config, variant.out_dir, variant.method, progress
            )
    return summaries


def _bind(on_record: RecordDoneFn, variant: Variant) -> Callable[[int, int, str], None]:
    def progress(done: int, todo: int, record_id: str) -> None:
        if done:
            on_record(variant, done, todo, record_id)

    return progress

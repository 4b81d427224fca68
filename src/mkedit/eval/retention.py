"""Retention in sequential runs: after later edits, are the earlier records' facts still answered?

A sequential run scores each record right after its own edit, so a fact lost later (overwritten, or
disturbed by later edits) never shows in its row. At a few checkpoints (a quarter, half, three quarters
and all of the run) every record done so far is scored again with the cache as it is then, and each is
counted as *in force* (its facts are in the cache), *replaced* (a later record asked the same relation of
its subject with a new answer: expected, and then its old answer is not wanted), *lost* (neither: a
defect), or *not edited*. Checkpoints are appended to ``retention.jsonl`` as they are reached, so a
resumed run keeps them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mkedit.data.records import GENERALITY, RELIABILITY
from mkedit.eval.metrics import TokenPrediction, f1_em
from mkedit.facts import find_fact
from mkedit.runtime.cache import EditCache
from mkedit.types import BenchmarkRecord

RETENTION_FILE = "retention.jsonl"
RETAINED_METRICS = (RELIABILITY, GENERALITY)
STATUSES = ("in_force", "replaced", "lost", "not_edited")

Predict = Callable[[Sequence[tuple[str, str, str]]], list[TokenPrediction]]


def checkpoints(n_records: int) -> list[int]:
    """After how many records retention is measured: each quarter of the run, the last one always."""
    return sorted({math.ceil(n_records * q / 4) for q in range(1, 5)} - {0})


def record_status(rows: Sequence[Mapping[str, Any]], cache: EditCache) -> dict[str, str]:
    """Per record id, whether its facts are in force, were replaced by a later fact, or are lost."""
    replaced = {fact for row in rows for fact in row.get("replaced", [])}
    status = {}
    for row in rows:
        facts = [e.get("fact_id", e["edit_id"]) for e in row.get("edits", [])]
        if not facts:
            status[row["record_id"]] = "not_edited"
        elif all(find_fact(cache, fact) is not None for fact in facts):
            status[row["record_id"]] = "in_force"
        elif any(fact in replaced for fact in facts):
            status[row["record_id"]] = "replaced"
        else:
            status[row["record_id"]] = "lost"
    return status


def measure_retention(
    records: Sequence[BenchmarkRecord],
    rows: Sequence[Mapping[str, Any]],
    langs: Sequence[str],
    cache: EditCache,
    predict: Predict,
    tokenizer: PreTrainedTokenizerBase,
) -> dict[str, Any]:
    """One checkpoint: ``records`` (done so far, with their ``rows``) scored with ``predict`` (the cache in
    force). EM and F1 in %, per metric and language, over the records in force and over all of them."""
    status = record_status(rows, cache)
    keys = [
        (r.record_id, metric, lang)
        for r in records
        for lang in langs
        for metric in RETAINED_METRICS
        if metric in r.tests.get(lang, {})
    ]
    by_id = {r.record_id: r for r in records}
    cases = [(by_id[rid].tests[lang][m].prompt, by_id[rid].tests[lang][m].target, lang) for rid, m, lang in keys]
    scores = [f1_em(pred, tokenizer) for pred in predict(cases)] if cases else []

    scored = [(rid, metric, lang, f1, em) for (rid, metric, lang), (f1, em) in zip(keys, scores, strict=True)]

    def mean_over(wanted: set[str]) -> dict[str, dict[str, dict[str, float | None]]]:
        table: dict[str, dict[str, dict[str, float | None]]] = {}
        for metric in RETAINED_METRICS:
            for lang in langs:
                picked = [(f, e) for rid, m, g, f, e in scored if (m, g) == (metric, lang) and status[rid] in wanted]
                table.setdefault(metric, {})[lang] = {
                    "f1": 100 * sum(f for f, _ in picked) / len(picked) if picked else None,
                    "em": 100 * sum(e for _, e in picked) / len(picked) if picked else None,
                }
        return table

    counts = {name: sum(s == name for s in status.values()) for name in STATUSES}
    return {
        "after_records": len(records),
        "edits_in_cache": len(cache),
        "counts": counts,
        "lost": sorted(rid for rid, s in status.items() if s == "lost"),
        "in_force": mean_over({"in_force"}),
        "all": mean_over(set(STATUSES)),
    }


def read_retention(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / RETENTION_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_retention(out_dir: Path, checkpoint: Mapping[str, Any]) -> None:
    """One line per checkpoint, flushed to disk before the run goes on (as rows are)."""
    with open(out_dir / RETENTION_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(checkpoint, ensure_ascii=False) + "\n")
        fh.flush()


def retention_markdown(checkpoints_done: Sequence[Mapping[str, Any]], langs: Sequence[str]) -> list[str]:
    """The summary.md section: per checkpoint, the counts and the EM of the earlier records in force."""
    header = "| After records | Cache edits | In force | Replaced | Lost | Not edited | "
    header += " | ".join(f"{m.capitalize()} EM {lang}" for m in RETAINED_METRICS for lang in langs) + " |"
    lines = [
        "",
        "### Sequential: retention of earlier edits (re-scored with the cache at each checkpoint)",
        "",
        header,
        "| " + " | ".join(["---:"] * (6 + len(RETAINED_METRICS) * len(langs))) + " |",
    ]
    for point in checkpoints_done:
        counts = point["counts"]
        ems = [point["in_force"][m][lang]["em"] for m in RETAINED_METRICS for lang in langs]
        cells = [point["after_records"], point["edits_in_cache"], *(counts[s] for s in STATUSES)]
        cells += ["–" if v is None else f"{v:.1f}" for v in ems]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines

"""Generate, filter and store paraphrases for benchmark records, resumably; summarise what was kept.

:func:`pending` checks everything it can before a model is loaded (an output file made for other data is
refused); :func:`generate` then asks the source batch by batch and appends each finished (record,
language) at once, so an interruption loses at most the batch in progress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mkedit.errors import DataFormatError
from mkedit.paraphrase.filter import filter_paraphrases
from mkedit.paraphrase.sources import ParaphraseRequest, ParaphraseSource
from mkedit.paraphrase.store import Key, ParaphraseEntry, ParaphraseStore
from mkedit.runtime.subject import DEFAULT_MIN_SCORE
from mkedit.types import BenchmarkRecord

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""``(requests done, requests to do)``; first called with 0."""


def requests_for(records: Sequence[BenchmarkRecord], n: int) -> list[ParaphraseRequest]:
    """One request per record and language (the edit question and subject only), language by language and
    records in file order within each: a batch then holds questions of one language, of similar lengths."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    requests = [
        ParaphraseRequest(r.record_id, req.lang, req.subject, req.question, n, r.group.other_subjects(req.lang))
        for r in records
        for req in r.group.requests
    ]
    order = {lang: i for i, lang in enumerate(dict.fromkeys(r.lang for r in requests))}
    return sorted(requests, key=lambda r: order[r.lang])  # stable: file order within a language


def pending(requests: Sequence[ParaphraseRequest], store: ParaphraseStore) -> list[ParaphraseRequest]:
    """The requests the store does not hold yet; refuses a store whose entry for a key paraphrases another
    question (it was made for another data file whose records have the same ids)."""
    todo = []
    for request in requests:
        entry = store.get(request.key)
        if entry is None:
            todo.append(request)
        elif entry.question != request.question:
            raise DataFormatError(
                f"{store.path} holds paraphrases of {entry.question!r} for record {request.record_id} "
                f"[{request.lang}], but the data's question is {request.question!r}; use another output file"
            )
    return todo


@dataclass(frozen=True)
class GenerateResult:
    written: int
    """Entries appended to the store."""
    not_covered: list[Key]
    """Requests the source had nothing for (a JSONL file without them); nothing was written for them."""


def generate(
    requests: Sequence[ParaphraseRequest],
    source: ParaphraseSource,
    store: ParaphraseStore,
    progress: ProgressFn | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
) -> GenerateResult:
    """Ask ``source`` for each request's lines, keep the first ``n`` usable ones, append each entry.

    ``min_score``: the subject placement's approximate-match threshold (100: the subject as written, up to
    case, diacritics and script; the default also takes inflected and near forms)."""
    written = 0
    not_covered: list[Key] = []
    if progress is not None:
        progress(0, len(requests))
    for start in range(0, len(requests), source.batch_size):
        batch = requests[start : start + source.batch_size]
        for request, lines in zip(batch, source.generate(batch), strict=True):
            if lines is None:
                not_covered.append(request.key)
                continue
            kept = filter_paraphrases(lines, request.question, request.subject, request.n, request.aligned, min_score)
            entry = ParaphraseEntry(
                request.record_id, request.lang, request.question, request.subject, tuple(kept), source.name, len(lines)
            )
            store.append(entry)
            written += 1
            log.info("%s [%s]: kept %d of %d line(s)", request.record_id, request.lang, len(kept), len(lines))
        if progress is not None:
            progress(start + len(batch), len(requests))
    return GenerateResult(written, not_covered)


@dataclass(frozen=True)
class LangSummary:
    """What the store holds for one language over the selected records."""

    lang: str
    records: int
    """Selected records with an entry in the store."""
    kept_mean: float | None
    kept_min: int | None
    kept_max: int | None
    none_kept: int
    """Entries with no usable paraphrase (those records locate with the question alone)."""
    raw_mean: float | None
    """Lines the source produced per record, before filtering."""
    missing: int
    """Selected records with no entry (not generated yet, or not in a JSONL source)."""


def summarize(requests: Sequence[ParaphraseRequest], store: ParaphraseStore) -> list[LangSummary]:
    """Per language (in the order requests name them): kept counts and raw counts of the stored entries."""
    langs = list(dict.fromkeys(r.lang for r in requests))
    rows = []
    for lang in langs:
        keys = [r.key for r in requests if r.lang == lang]
        entries = [e for k in keys if (e := store.get(k)) is not None]
        kept = [len(e.paraphrases) for e in entries]
        raw = [e.raw_count for e in entries]
        rows.append(
            LangSummary(
                lang=lang,
                records=len(entries),
                kept_mean=sum(kept) / len(kept) if kept else None,
                kept_min=min(kept) if kept else None,
                kept_max=max(kept) if kept else None,
                none_kept=sum(1 for k in kept if k == 0),
                raw_mean=sum(raw) / len(raw) if raw else None,
                missing=len(keys) - len(entries),
            )
        )
    return rows

"""Evaluate an editing method on a benchmark with the paper's protocol, resumably.

Protocol (the paper's, Sec. 4): each record is edited and then tested against the untouched base model
with *only its own edit* in force; locality compares post-edit predictions with the pre-edit predictions
of the same untouched model, taken before any edit is computed. ``sequential`` instead keeps every edit in
the cache as the run goes (what a real user does; weight edits stack, and each new edit is computed with
the earlier ones in force) and reports how the scores move as the cache grows.

Any method of :mod:`mkedit.methods.registry` runs through the same two calls, ``method.edit(group)`` and
``with method.applied(edits) as view``; the runner checks after each that the model's weights are back
as they were, so a method that edits in place and forgets to restore cannot score against itself.

Settings (which languages are edited, which are tested):

* ``multilingual``: the group's languages are edited together, every language is tested (Table 2);
* ``monolingual``: for each language L, L alone is edited and L is tested (one edit per language);
* ``cross-lingual``: one ``edit_lang`` is edited, every test language is tested (Tables 3 and 7).

Files in the output directory:

* ``run.json``: what this run is (config, model, data, languages, method hyperparameters), written at
  the start; a later run in the same directory must match it, or it is refused;
* ``records.jsonl``: one row per record, appended and fsync-ed as soon as the record is done, so an
  interrupted run resumes where it stopped (a truncated last line is dropped);
* ``cache/``: the growing edit cache, in sequential mode only (needed to resume such a run);
* ``summary.json``, ``summary.md`` and, for three or more test languages, ``heatmap.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.data.probes import SOURCES, parse_sources
from mkedit.data.records import normalize_langs
from mkedit.errors import DataFormatError, MkeditError
from mkedit.eval.report import (
    HEATMAP_MIN_LANGS,
    SPECIFICITY,
    Summary,
    summarize,
    summary_markdown,
    write_heatmap,
    write_json_atomic,
)
from mkedit.eval.retention import append_retention, checkpoints, measure_retention, read_retention, retention_markdown
from mkedit.eval.scoring import Scorer, pre_predictions, score_record
from mkedit.facts import FactPlan, FactStore, RelationJudge
from mkedit.methods.base import EditMethod
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.view import ModelView
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import INDEX_FILE, Edit, EditCache
from mkedit.runtime.jsonl import read_jsonl
from mkedit.runtime.subject import PLACEMENT_KINDS, SubjectSpan, place_subject, placement_kind
from mkedit.types import BenchmarkRecord, EditGroup

log = logging.getLogger(__name__)

Setting = Literal["multilingual", "monolingual", "cross-lingual"]
SETTINGS: tuple[str, ...] = get_args(Setting)

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
HEATMAP_PNG = "heatmap.png"
CACHE_DIR = "cache"
RUN_FORMAT = 1

# run.json keys that must be equal for a run to resume in the same directory. Window (limit/offset) and
# batch size may change: record ids are stable across windows, and batching does not change predictions.
IDENTITY_KEYS: tuple[str, ...] = (
    "method",
    "model",
    "model_fingerprint",
    "data",
    "langs",
    "setting",
    "edit_langs",
    "test_langs",
    "sequential",
    "generation",
    "gen_extra_tokens",
    "method_config",
    "specificity",
    "probe_templates",
    "probe_tokens",
    "paraphrases",
)

ProgressFn = Callable[[int, int, str], None]
"""``(records done in this call, records to do in this call, last record id)``; first called with 0."""


class EvalConfigError(MkeditError, ValueError):
    """An evaluation setting that cannot be run (unknown setting, languages that do not fit)."""


class RunMismatchError(MkeditError, ValueError):
    """The output directory holds a different run, so resuming into it would mix results."""


class MethodContractError(MkeditError, RuntimeError):
    """A method left the model's weights changed after ``edit()`` or after leaving ``applied()``."""


def _langs_tuple(langs: Sequence[str] | str | None, what: str) -> tuple[str, ...] | None:
    if langs is None:
        return None
    if isinstance(langs, str):
        langs = [x.strip() for x in langs.split(",") if x.strip()]
    try:
        codes = normalize_langs(list(langs))
    except ValueError as exc:
        if isinstance(exc, MkeditError):
            raise
        raise EvalConfigError(f"{what}: {exc}") from exc
    return tuple(codes or ())


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. ``langs`` is the set of languages loaded (None: the first record's)."""

    method: str = "lu-lafns"
    model: str = ""
    data: str = ""
    langs: tuple[str, ...] | None = None
    limit: int | None = None
    offset: int = 0
    setting: Setting = "multilingual"
    edit_langs: tuple[str, ...] | None = None
    """monolingual: the languages edited (and tested) one at a time (default: ``langs``);
    cross-lingual: the one edited language (default: the first of ``langs``)."""
    test_langs: tuple[str, ...] | None = None
    """cross-lingual only: the languages tested (default: ``langs``)."""
    sequential: bool = False
    generation: bool = True
    batch_size: int = 64
    """Most test prompts per forward. Teacher-forced passes on a CPU split a batch further by length
    (:func:`~mkedit.eval.metrics.forward_cost_tokens`). A generation batch is one decoding loop, each of whose
    steps reads every weight: the references of 4 records (about 36 rows en+zh) take one loop, not two."""
    reference_records: int = 4
    """Records whose untouched-model references (Locality, Specificity probes) one batched pass computes
    before they are edited: a decoding step costs far less per row for a batch than for one record's rows."""
    curve_every: int = 10
    """Sequential mode: a point of ``sequential_curve`` every this many evaluated records."""
    gen_extra_tokens: int = 4
    """Generation budget beyond the answer's own token count."""
    specificity: tuple[str, ...] = SOURCES
    """Where Specificity probes come from (:data:`mkedit.data.probes.SOURCES`); empty = no Specificity."""
    probe_templates: str | None = None
    """Relation templates for the ``templates`` source (default: the packaged set)."""
    probe_tokens: int = 8
    """Tokens of the pre-edit answer to a probe that the post-edit model must reproduce (first line)."""
    paraphrases: str | None = None
    """The paraphrase file attached to the records (:mod:`mkedit.paraphrase`); None: questions alone."""
    paraphrases_sha256: str | None = None
    """Its sha256 when attached: run.json keeps it, so a resume with other paraphrases is refused."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "specificity", parse_sources(self.specificity))
        except ValueError as exc:
            raise EvalConfigError(str(exc)) from exc
        if self.probe_tokens < 1:
            raise EvalConfigError("probe_tokens must be >= 1")
        if self.setting not in SETTINGS:
            raise EvalConfigError(f"unknown setting {self.setting!r}; choose one of {', '.join(SETTINGS)}")
        for name in ("langs", "edit_langs", "test_langs"):
            object.__setattr__(self, name, _langs_tuple(getattr(self, name), name))
        if min(self.batch_size, self.reference_records, self.curve_every) < 1 or self.gen_extra_tokens < 0:
            raise EvalConfigError(
                "batch_size, reference_records and curve_every >= 1 and gen_extra_tokens >= 0 are required"
            )
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise EvalConfigError("offset and limit must be >= 0")
        if self.setting == "multilingual" and (self.edit_langs or self.test_langs):
            raise EvalConfigError(
                "the multilingual setting edits and tests every language of --langs; "
                "edit_langs/test_langs are for the monolingual and cross-lingual settings"
            )
        if self.setting == "monolingual" and self.test_langs and self.test_langs != self.edit_langs:
            raise EvalConfigError("the monolingual setting tests the edited language itself; leave test_langs unset")
        if self.setting == "cross-lingual" and self.edit_langs is not None and len(self.edit_langs) != 1:
            raise EvalConfigError(f"the cross-lingual setting edits exactly one language, got {list(self.edit_langs)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }


@dataclass(frozen=True)
class EvalPlan:
    """What one record goes through: ``units`` = (edited languages, tested languages) per edit."""

    langs: tuple[str, ...]
    units: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]

    @property
    def edit_langs(self) -> list[str]:
        return list(dict.fromkeys(lang for edited, _ in self.units for lang in edited))

    @property
    def test_langs(self) -> list[str]:
        return list(dict.fromkeys(lang for _, tested in self.units for lang in tested))


def plan_for(config: EvalConfig, records: Sequence[BenchmarkRecord]) -> EvalPlan:
    """Resolve the setting into per-record edits, and check every record has the languages it needs."""
    langs = config.langs or (tuple(records[0].group.langs) if records else ())
    if not langs:
        raise EvalConfigError("no languages: give langs or at least one record")
    if config.setting == "multilingual":
        units = ((langs, langs),)
    elif config.setting == "monolingual":
        units = tuple(((lang,), (lang,)) for lang in config.edit_langs or langs)
    else:
        edit = config.edit_langs or langs[:1]
        units = ((edit, config.test_langs or langs),)
    plan = EvalPlan(langs, units)
    outside = [lang for lang in plan.edit_langs + plan.test_langs if lang not in langs]
    if outside:
        raise EvalConfigError(f"languages {sorted(set(outside))} are not among the loaded languages {list(langs)}")
    for record in records:
        missing = [lang for lang in plan.edit_langs if lang not in record.group.langs]
        missing += [lang for lang in plan.test_langs if lang not in record.tests and lang not in missing]
        if missing:
            raise DataFormatError(f"record {record.record_id} has no language {missing} (has {record.group.langs})")
    return plan


# --------------------------------------------------------------------------- run directory


def _run_info(
    config: EvalConfig,
    model: nn.Module,
    model_name: str,
    plan: EvalPlan,
    cache: EditCache,
    matcher: dict[str, object] | None,
) -> dict[str, Any]:
    # The exact weights (float32, not the cache's dtype-independent hash): scores differ between dtypes.
    fingerprint = model_fingerprint(model, model_name, rounding="float32")
    return {
        "format": RUN_FORMAT,
        "method": config.method,
        "model": model_name,
        "model_fingerprint": {"config_hash": fingerprint.config_hash, "weights_hash": fingerprint.weights_hash},
        "data": str(Path(config.data).resolve()) if config.data else "",
        "langs": list(plan.langs),
        "setting": config.setting,
        "edit_langs": plan.edit_langs,
        "test_langs": plan.test_langs,
        "sequential": config.sequential,
        "generation": config.generation,
        "gen_extra_tokens": config.gen_extra_tokens,
        "method_config": cache.method_config,
        "specificity": list(config.specificity),
        "probe_templates": str(Path(config.probe_templates).resolve()) if config.probe_templates else None,
        "probe_tokens": config.probe_tokens,
        "paraphrases": (
            {"path": str(Path(config.paraphrases).resolve()), "sha256": config.paraphrases_sha256}
            if config.paraphrases
            else None
        ),
        # informative only (may change between resumed calls):
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "matcher": matcher,
        "config": config.to_dict(),
    }


def _check_or_write_run_file(out_dir: Path, info: dict[str, Any]) -> bool:
    """Write ``run.json`` for a new run; for an existing one, refuse any difference. True if resuming."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        if (out_dir / RECORDS_FILE).is_file():
            raise RunMismatchError(f"{out_dir} holds {RECORDS_FILE} but no {RUN_FILE}; use an empty --out directory")
        write_json_atomic(path, {**info, "created": _now()})
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunMismatchError(f"{path} is unreadable ({exc}); use another --out directory") from exc
    # Round-trip through JSON so tuples and lists compare equal.
    current = json.loads(json.dumps(info))
    diffs = [
        f"{key}: {stored.get(key)!r} there, {current.get(key)!r} now"
        for key in IDENTITY_KEYS
        if stored.get(key) != current.get(key)
    ]
    if diffs:
        raise RunMismatchError(
            f"{out_dir} holds results of a different run, refusing to resume into it ({'; '.join(diffs)}). "
            "Use another --out directory, or delete this one to start over."
        )
    write_json_atomic(path, {**info, "created": stored.get("created"), "resumed": _now()})
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_row(line: bytes) -> dict[str, Any]:
    row = json.loads(line.decode("utf-8"))
    if not isinstance(row, dict) or not isinstance(row.get("record_id"), str):
        raise ValueError("not an object with a record_id")
    return row


def read_rows(path: Path, *, repair: bool = True) -> list[dict[str, Any]]:
    """The rows of ``records.jsonl`` in file order (none when it does not exist). A torn last line, left by an
    interrupted append, is dropped (and with ``repair`` cut off); a bad line elsewhere is an error
    (:func:`mkedit.runtime.jsonl.read_jsonl`)."""
    if not path.is_file():
        return []
    return [row for _, row in read_jsonl(path, _parse_row, repair=repair, what="a record row")]


def _append_row(fh: Any, row: Mapping[str, Any]) -> None:
    fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


# --------------------------------------------------------------------------- the run


def _group_for(record: BenchmarkRecord, edited: Sequence[str], setting: str) -> EditGroup:
    """The record's group restricted to ``edited``; per-language edits get their own id (and cache slot)."""
    group = record.group.restrict(list(edited))
    if setting == "monolingual":
        return EditGroup(group.requests, f"{record.record_id}@{edited[0]}")
    return group


def _load_sequential_cache(
    out_dir: Path, fresh: EditCache, model: nn.Module, model_name: str, rows: Sequence[Mapping[str, Any]]
) -> EditCache:
    """The growing cache of a sequential run: resumed from ``out_dir/cache`` when rows exist."""
    folder = out_dir / CACHE_DIR
    if (folder / INDEX_FILE).is_file():
        cache = EditCache.load(folder, model, model_name)
        log.info("sequential run: resumed an edit cache of %d edit(s) from %s", len(cache), folder)
        return cache
    if rows:
        raise RunMismatchError(
            f"cannot resume the sequential run in {out_dir}: its edit cache {folder} is missing, so the edits "
            "of the records already done cannot be put back; delete the directory to start over"
        )
    return fresh


class RecordEvaluator:
    """Evaluates records one at a time with one model and method: what ``mkedit eval`` runs in its own
    process, and what each worker of a distributed run (:mod:`mkedit.eval.distributed`) holds."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        method: EditMethod,
        config: EvalConfig,
        plan: EvalPlan,
    ) -> None:
        self.model, self.model_name, self.method, self.config, self.plan = model, model_name, method, config, plan
        self.cache = method.new_cache()
        self.base = Scorer(ModelView(model), tokenizer, config, next(model.parameters()).device)
        self.guard: WeightGuard | None = None  # taken after prepare(), which may build things on the model
        self.judge = RelationJudge()  # sequential runs: does a record's fact replace an earlier one

    def run_info(self) -> dict[str, Any]:
        return _run_info(self.config, self.model, self.model_name, self.plan, self.cache, self.method.matcher_info())

    def resume(self, out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
        """Sequential runs: put back the edits of the records already done."""
        if self.config.sequential:
            self.cache = _load_sequential_cache(out_dir, self.cache, self.model, self.model_name, rows)

    def prepare(self) -> float:
        """The method's one-off work (key statistics); returns its seconds."""
        start = time.perf_counter()
        self.method.prepare(self.plan.edit_langs)
        seconds = time.perf_counter() - start
        self.guard = WeightGuard(self.model, self.method.name)
        return seconds

    def references(self, records: Sequence[BenchmarkRecord]) -> list[References]:
        """The untouched model's references of ``records`` in one batched pass, each with its share of the time."""
        start = time.perf_counter()
        pre = pre_predictions(records, self.plan.test_langs, self.base)
        share = (time.perf_counter() - start) / max(1, len(records))
        return [References(p, share) for p in pre]

    def evaluate(self, record: BenchmarkRecord, references: References | None = None) -> dict[str, Any]:
        if self.guard is None:
            self.guard = WeightGuard(self.model, self.method.name)
        store = FactStore(self.method, self.cache, self.judge)
        # Nothing is in force on the base scorer, so a record's references may be taken before earlier
        # records are edited; the weight guard vouches that the weights are the untouched ones.
        refs = references if references is not None else self.references([record])[0]
        return _evaluate_record(record, self.plan, self.config, store, self.base, self.guard, refs)

    def rows(self, records: Sequence[BenchmarkRecord], out_dir: Path) -> Iterator[dict[str, Any]]:
        """Each record's row, in order (references taken ``reference_records`` at a time); sequential runs
        save the growing cache before yielding the row (a done record's edit is then always on disk)."""
        step = self.config.reference_records
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            for record, refs in zip(chunk, self.references(chunk), strict=True):
                row = self.evaluate(record, refs)
                if self.config.sequential:
                    self.cache.save(out_dir / CACHE_DIR)
                yield row

    def one_off_seconds(self) -> float | None:
        return self.method.one_off_seconds()

    def retention(self, records: Sequence[BenchmarkRecord], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Sequential runs: ``records`` done so far scored again with the cache as it is now."""
        with self.method.applied(list(self.cache)) as view:
            scorer = Scorer(view, self.base.tokenizer, self.config, self.base.device)
            return measure_retention(records, rows, self.plan.test_langs, self.cache, scorer.predict, scorer.tokenizer)


class Evaluator(Protocol):
    """What :func:`drive` needs from whoever evaluates: one process (:class:`RecordEvaluator`) or a pool."""

    def run_info(self) -> dict[str, Any]: ...
    def resume(self, out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def prepare(self) -> float: ...
    def rows(self, records: Sequence[BenchmarkRecord], out_dir: Path) -> Iterator[dict[str, Any]]: ...
    def one_off_seconds(self) -> float | None: ...
    def retention(self, records: Sequence[BenchmarkRecord], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...


def drive(
    evaluator: Evaluator,
    records: Sequence[BenchmarkRecord],
    config: EvalConfig,
    plan: EvalPlan,
    out_dir: str | os.PathLike[str],
    model_name: str,
    progress: ProgressFn | None = None,
) -> Summary:
    """Evaluate the records of ``records`` not yet in ``out_dir`` (resuming), appending each row as it comes,
    then write the summary over all of them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_run_file(out_dir, evaluator.run_info())
    records_path = out_dir / RECORDS_FILE
    # Rows of earlier versions that left a record out ("error") are done again: every record is scored now.
    existing = [row for row in read_rows(records_path) if "error" not in row]
    done = {row["record_id"] for row in existing}
    evaluator.resume(out_dir, existing)
    todo = [r for r in records if r.record_id not in done]
    if len(todo) < len(records):
        log.info("resuming %s: %d of %d record(s) already done", out_dir, len(records) - len(todo), len(records))
    prepare_seconds = evaluator.prepare() if todo else 0.0
    retention = read_retention(out_dir) if config.sequential else []
    marks = set(checkpoints(len(records))) if config.sequential else set()
    selected = {r.record_id: r for r in records}

    def measure_if_due() -> None:
        done = [row for row in existing if row["record_id"] in selected]
        if len(done) in marks and all(p["after_records"] != len(done) for p in retention):
            point = evaluator.retention([selected[row["record_id"]] for row in done], done)
            append_retention(out_dir, point)
            retention.append(point)

    if progress is not None:
        progress(0, len(todo), "")
    with open(records_path, "a", encoding="utf-8") as fh:
        for index, row in enumerate(evaluator.rows(todo, out_dir), start=1):
            _append_row(fh, row)
            existing.append(row)
            measure_if_due()
            if progress is not None:
                progress(index, len(todo), row["record_id"])
    measure_if_due()  # a resumed run whose last checkpoint was not reached before it stopped
    one_off = evaluator.one_off_seconds()
    return write_summary(out_dir, existing, records, plan, config, model_name, prepare_seconds, one_off, retention)


def run_evaluation(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    records: Sequence[BenchmarkRecord],
    config: EvalConfig,
    out_dir: str | os.PathLike[str],
    method: EditMethod,
    progress: ProgressFn | None = None,
) -> Summary:
    """Evaluate ``method`` on ``records`` into ``out_dir`` (resuming what is there); returns the summary."""
    plan = plan_for(config, records)
    evaluator = RecordEvaluator(model, tokenizer, model_name, method, config, plan)
    return drive(evaluator, records, config, plan, out_dir, model_name, progress)


@dataclass(frozen=True)
class References:
    """A record's untouched-model references (:func:`~mkedit.eval.scoring.pre_predictions`) and its share of
    the seconds of the pass that computed them."""

    pre: dict[str, dict[str, Any]]
    seconds: float


class WeightGuard:
    """Remembers the model's weights (as :func:`weights_checksum`) and refuses to go on once they changed."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.model = model
        self.method = method
        self.reference = weights_checksum(model)

    def check(self, after: str) -> None:
        if not torch.equal(weights_checksum(self.model), self.reference):
            raise MethodContractError(
                f"method {self.method} changed the model's weights {after}; every method must leave them "
                "bit-identical (edit() computes, applied() restores on exit), or locality would be scored "
                "against an already edited model"
            )


def _placements(group: EditGroup) -> dict[str, SubjectSpan | None]:
    """Where each language's question names the subject, with the group's aligned subject set."""
    return {
        req.lang: place_subject(req.question, [req.subject, *group.other_subjects(req.lang)]) for req in group.requests
    }


def _compute_edit(
    method: EditMethod,
    group: EditGroup,
    placed: Mapping[str, SubjectSpan | None],
    not_edited: dict[str, str],
    store: FactStore,
    in_force: Sequence[Edit],
) -> tuple[FactPlan, Edit] | None:
    """The unit's fact plan and edit (computed with ``in_force`` applied, less the edits it supersedes),
    or None (its languages then answer with nothing of theirs in force).

    Languages whose subject cannot be placed are left out of the group for methods that work at the
    subject's tokens; an edit that cannot be made at all is recorded in ``not_edited`` with its reason.
    """
    if method.needs_subject_position:
        langs = [lang for lang in group.langs if placed[lang] is not None]
        for lang in group.langs:
            if placed[lang] is None:
                not_edited[lang] = "subject not found in the question (own or another language's form)"
        if not langs:
            return None
        group = group.restrict(langs)
    plan = store.plan(group)
    try:
        with method.applied([e for e in in_force if e.edit_id not in plan.drop]):
            return plan, store.compute(plan)
    except MkeditError as exc:
        log.warning("record %s, languages %s: no edit: %s", group.group_id, group.langs, exc)
        for lang in group.langs:
            not_edited[lang] = f"{type(exc).__name__}: {exc}"
        return None


def _evaluate_record(
    record: BenchmarkRecord,
    plan: EvalPlan,
    config: EvalConfig,
    store: FactStore,
    base: Scorer,
    guard: WeightGuard,
    references: References,
) -> dict[str, Any]:
    """Edit, evaluate and package one record's row, from its untouched-model ``references``. Every record is
    scored: a language that cannot be edited answers with nothing of its own in force, and the row says why
    (``not_edited``)."""
    method, cache = store.method, store.cache
    started = time.perf_counter()
    pre = references.pre
    # Every edit of the record next: a failure then leaves the cache untouched (no half-applied record in
    # sequential mode). In sequential mode earlier edits are in force while the new one is computed.
    earlier = list(cache) if config.sequential else []
    edits: list[tuple[tuple[FactPlan, Edit] | None, float]] = []
    placement: dict[str, dict[str, Any]] = {}
    not_edited: dict[str, str] = {}
    for edited_langs, _ in plan.units:
        group = _group_for(record, edited_langs, config.setting)
        placed = _placements(group)
        for lang, span in placed.items():
            placement[lang] = {"kind": placement_kind(span), "surface": span.surface if span else None}
        start = time.perf_counter()
        computed = _compute_edit(method, group, placed, not_edited, store, earlier)
        edits.append((computed, time.perf_counter() - start))
    scores: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    replaced: list[str] = []
    beside: list[str] = []
    edit_info = []
    cache_size = len(cache)
    for (edited_langs, tested), (computed, seconds) in zip(plan.units, edits, strict=True):
        edit = computed[1] if computed is not None else None
        if computed is not None:
            update = store.commit(*computed)
            replaced += update.replaced
            beside += update.kept
        in_force = list(cache) if config.sequential else [edit] if edit is not None else []
        with method.applied(in_force) as view:
            unit_scores, unit_outputs = score_record(
                record, tested, Scorer(view, base.tokenizer, config, base.device), pre
            )
        scores.update(unit_scores)
        outputs.update(unit_outputs)
        if edit is not None:
            langs = [lang for lang in edited_langs if lang not in not_edited]
            fact_id = computed[0].fact_id if computed is not None else edit.edit_id
            edit_info.append({"edit_id": edit.edit_id, "fact_id": fact_id, "langs": langs, "seconds": seconds})
            cache_size = len(cache)
            if not config.sequential:
                cache.remove(edit.edit_id)
    # One check per record, before its row exists: a change left by edit() or applied() shows here, since
    # nothing in between restores the weights, and the next record's references start from checked weights.
    guard.check(f"while record {record.record_id} was edited and scored")
    row: dict[str, Any] = {
        "record_id": record.record_id,
        "scores": scores,
        "edits": edit_info,
        "placement": placement,
        "cache_size": cache_size,
        "pre": pre,
        "outputs": outputs,
        # wall clock of this record: the untouched model's references, the edits, and all the rest (scoring)
        "seconds": _record_seconds(started, references.seconds, sum(seconds for _, seconds in edits)),
    }
    if not_edited:
        row["not_edited"] = not_edited
    if replaced:
        row["replaced"] = replaced  # facts of earlier records this record's fact contradicts
    if beside:
        row["beside"] = beside  # facts of earlier records about its subject (other relations) kept with it
    return row


# --------------------------------------------------------------------------- summary


def _record_seconds(started: float, pre: float, edit: float) -> dict[str, float]:
    total = time.perf_counter() - started + pre
    return {
        "total": round(total, 3),
        "pre": round(pre, 3),
        "edit": round(edit, 3),
        "score": round(total - pre - edit, 3),
    }


def _seconds_per_edit(rows: Sequence[Mapping[str, Any]]) -> float | None:
    times = [e["seconds"] for row in rows for e in row.get("edits", [])]
    return sum(times) / len(times) if times else None


def sequential_curve(
    rows: Sequence[Mapping[str, Any]], plan_langs: Sequence[str], every: int, method: str, model: str, setting: str
) -> list[dict[str, Any]]:
    """Scores so far after every ``every`` evaluated records (and at the end), in the order they ran.

    ``avg``/``scores``: mean over all records so far; ``window_avg``: over the last ``every`` only,
    which shows the current effect of a large cache without the lag of the running mean.
    """
    points = []
    marks = sorted({*range(every, len(rows) + 1, every), len(rows)} - {0})
    for k in marks:
        so_far = summarize(rows[:k], method, model, setting, plan_langs, None)
        window = summarize(rows[max(0, k - every) : k], method, model, setting, plan_langs, None)
        points.append(
            {
                "n_records": k,
                "cache_size": rows[k - 1].get("cache_size"),
                "avg": so_far["avg"],
                "window_avg": window["avg"],
                "scores": so_far["scores"],
            }
        )
    return points


def write_summary(
    out_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    records: Sequence[BenchmarkRecord],
    plan: EvalPlan,
    config: EvalConfig,
    model_name: str,
    prepare_seconds: float | None = None,
    one_off_seconds: float | None = None,
    retention: Sequence[Mapping[str, Any]] = (),
) -> Summary:
    """``summary.json``, ``summary.md`` (+ heatmap) over this call's records that are in ``rows``; sequential
    runs add their ``retention`` checkpoints (:mod:`mkedit.eval.retention`).
    ``prepare_seconds``: the method's one-off preparation (statistics) in this call, 0 when cached;
    ``one_off_seconds``: what that preparation cost when it was done (see ``EditMethod.one_off_seconds``)."""
    by_id = {row["record_id"]: row for row in rows}
    evaluated = [by_id[r.record_id] for r in records if r.record_id in by_id]
    if len(by_id) > len(evaluated):
        extra = len(by_id) - len(evaluated)
        log.info("%s holds %d row(s) outside this selection; left out of the summary", out_dir, extra)
    test_langs = plan.test_langs
    summary = summarize(evaluated, config.method, model_name, config.setting, test_langs, _seconds_per_edit(evaluated))
    summary["edit_langs"] = plan.edit_langs
    summary["sequential"] = config.sequential
    summary["coverage"] = coverage(evaluated, plan.edit_langs)
    if config.specificity:
        summary["probes"] = probe_counts(evaluated, test_langs)
    summary["not_edited"] = {
        lang: [row["record_id"] for row in evaluated if lang in row.get("not_edited", {})] for lang in plan.edit_langs
    }
    if prepare_seconds is not None:
        summary["prepare_seconds"] = round(prepare_seconds, 3)
    if one_off_seconds is not None:
        summary["one_off_seconds"] = one_off_seconds
    if config.sequential:
        wanted = {row["record_id"] for row in evaluated}
        in_run_order = [row for row in rows if row["record_id"] in wanted]
        summary["sequential_curve"] = sequential_curve(
            in_run_order, test_langs, config.curve_every, config.method, model_name, config.setting
        )
        summary["retention"] = sorted(retention, key=lambda point: point["after_records"])
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    (out_dir / SUMMARY_MD).write_text(_markdown(summary), encoding="utf-8")
    if len(test_langs) >= HEATMAP_MIN_LANGS:
        write_heatmap([summary], out_dir / HEATMAP_PNG)
    return summary


def coverage(rows: Sequence[Mapping[str, Any]], langs: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per edited language, how many records placed the subject in each way (``PLACEMENT_KINDS``)."""
    counts = {lang: dict.fromkeys(PLACEMENT_KINDS, 0) for lang in langs}
    for row in rows:
        for lang, placed in row.get("placement", {}).items():
            if lang in counts:
                counts[lang][placed["kind"]] += 1
    return counts


def probe_counts(rows: Sequence[Mapping[str, Any]], langs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per test language: records with a scored Specificity probe, probes scored, probes per source, and
    probes left unscored because the untouched model gave no answer to them."""
    counts: dict[str, dict[str, Any]] = {}
    for lang in langs:
        entries = [row.get("pre", {}).get(lang, {}).get(SPECIFICITY, []) for row in rows]
        scored = [[e for e in per_record if "pred_ids" in e] for per_record in entries]
        by_source: dict[str, int] = {}
        for e in (e for per_record in scored for e in per_record):
            by_source[e["source"]] = by_source.get(e["source"], 0) + 1
        counts[lang] = {
            "records": sum(1 for per_record in scored if per_record),
            "probes": sum(len(per_record) for per_record in scored),
            "by_source": by_source,
            "unanswered": sum(len(per_record) for per_record in entries) - sum(len(x) for x in scored),
        }
    return counts


def coverage_markdown(summary: Summary) -> str:
    """Coverage beside the scores: every record is in the averages, edited or not."""
    lines = [
        "### Coverage: where each language's question names the subject (records; every record is scored)",
        "",
        "| lang | own subject verbatim | another language's subject | approximate | not placed | not edited |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for lang, counts in summary.get("coverage", {}).items():
        cells = [str(counts[kind]) for kind in PLACEMENT_KINDS]
        lines.append(f"| {lang} | " + " | ".join(cells) + f" | {len(summary['not_edited'].get(lang, []))} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _markdown(summary: Summary) -> str:
    parts = [summary_markdown(summary).rstrip("\n")]
    parts += ["", coverage_markdown(summary)]
    if "sequential_curve" in summary:
        parts += [
            "",
            "### Sequential: scores as the cache grows (teacher-forced avg, %)",
            "",
            "| Records | Cache size | avg so far | avg of the last window |",
            "| ---: | ---: | ---: | ---: |",
        ]
        parts += [
            f"| {p['n_records']} | {p['cache_size']} | {_fmt(p['avg'])} | {_fmt(p['window_avg'])} |"
            for p in summary["sequential_curve"]
        ]
    if summary.get("retention"):
        parts += retention_markdown(summary["retention"], summary["langs"])
    return "\n".join(parts) + "\n"

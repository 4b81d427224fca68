"""Parse one benchmark or edit-file record into a :class:`BenchmarkRecord`.

Every file layout mkedit reads (merged MzsRE, the source's pair files, Bi-ZsRE, the project's own edit
files) stores a record as ``{lang_code: part}`` with the same per-language fields, so one parser serves
them all. Only ``subject``, ``src`` and ``alt`` define the edit; ``rephrase``, ``loc``/``loc_ans`` and
``portability`` are test inputs and go into ``tests`` only, never into the edit request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mkedit.errors import DataFormatError, UnknownLanguageError
from mkedit.languages import normalize_code
from mkedit.types import BenchmarkRecord, EditGroup, EditRequest, Probe, TestCase

log = logging.getLogger(__name__)

REQUIRED_FIELDS: tuple[str, ...] = ("subject", "src", "alt")
OPTIONAL_FIELDS: tuple[str, ...] = ("rephrase", "loc", "loc_ans", "portability", "paraphrases", "specificity")
PORTABILITY_QUESTION = "New Question"
PORTABILITY_ANSWER = "New Answer"

# Metric names used as keys of ``BenchmarkRecord.tests[lang]``.
RELIABILITY = "reliability"
GENERALITY = "generality"
LOCALITY = "locality"
PORTABILITY = "portability"
METRICS: tuple[str, ...] = (RELIABILITY, GENERALITY, LOCALITY, PORTABILITY)


class _Where:
    """Builds error messages that name the file, the record, and optionally the language and field."""

    def __init__(self, source: str, index: int, line: int | None = None) -> None:
        self.record = f"{source}: record {index}" + (f" (line {line})" if line is not None else "")

    def error(self, message: str, lang: str | None = None, field: str | None = None) -> DataFormatError:
        parts = [self.record]
        if lang is not None:
            parts.append(f"language {lang!r}")
        prefix = ", ".join(parts)
        if field is not None:
            prefix += f": field {field!r}"
        return DataFormatError(f"{prefix} {message}" if field is not None else f"{prefix}: {message}")


def _text(part: Mapping[str, Any], key: str, where: _Where, lang: str, *, required: bool, name: str = "") -> str | None:
    """A non-empty string field; ``None`` when an optional field is absent or null."""
    name = name or key
    if key not in part or (part[key] is None and not required):
        if required:
            raise where.error("is missing", lang, name)
        return None
    value = part[key]
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"must be a non-empty string, got {value!r}", lang, name)
    return value


def _portability(part: Mapping[str, Any], where: _Where, lang: str) -> TestCase | None:
    value = part.get("portability")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise where.error(
            f"must be an object with {PORTABILITY_QUESTION!r} and {PORTABILITY_ANSWER!r}, got {value!r}",
            lang,
            "portability",
        )
    question, answer = (
        _text(value, key, where, lang, required=True, name=f"portability.{key}")
        for key in (PORTABILITY_QUESTION, PORTABILITY_ANSWER)
    )
    assert question is not None and answer is not None  # required=True guarantees it
    return TestCase(question, answer)


def _strings(part: Mapping[str, Any], key: str, where: _Where, lang: str) -> tuple[str, ...]:
    """An optional list of non-empty strings."""
    value = part.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise where.error(f"must be a list of non-empty strings, got {value!r}", lang, key)
    return tuple(value)


SPECIFICITY_FIELD = "specificity"
"""Edit-file field: questions about the subject that ask another relation (Specificity probes)."""


def _parse_part(part: Any, code: str, where: _Where) -> tuple[EditRequest, dict[str, TestCase]]:
    if not isinstance(part, Mapping):
        raise where.error(f"must be an object of fields, got {type(part).__name__}", code)
    subject, src, alt = (_text(part, key, where, code, required=True) for key in REQUIRED_FIELDS)
    assert subject is not None and src is not None and alt is not None  # required=True guarantees it
    tests = {RELIABILITY: TestCase(src, alt)}
    rephrase = _text(part, "rephrase", where, code, required=False)
    if rephrase is not None:
        tests[GENERALITY] = TestCase(rephrase, alt)
    loc = _text(part, "loc", where, code, required=False)
    loc_ans = _text(part, "loc_ans", where, code, required=False)
    if (loc is None) != (loc_ans is None):
        missing, present = ("loc_ans", "loc") if loc_ans is None else ("loc", "loc_ans")
        raise where.error(f"is missing (needed together with {present!r})", code, missing)
    if loc is not None and loc_ans is not None:
        tests[LOCALITY] = TestCase(loc, loc_ans)
    portability = _portability(part, where, code)
    if portability is not None:
        tests[PORTABILITY] = portability
    request = EditRequest(code, subject, src, alt, _strings(part, "paraphrases", where, code))
    return request, tests


def _normalized_parts(raw: Mapping[str, Any], where: _Where, keep: set[str] | None) -> dict[str, Any]:
    """``{canonical_code: part}`` in the record's order; parts outside ``keep`` are skipped unchecked."""
    parts: dict[str, Any] = {}
    for key, part in raw.items():
        if not isinstance(key, str):
            raise where.error(f"language key must be a string, got {key!r}")
        try:
            code = normalize_code(key)
        except UnknownLanguageError as exc:
            if keep is not None:
                log.debug("%s: skipping unknown language %r (not requested)", where.record, key)
                continue
            raise where.error(str(exc), key) from exc
        if keep is not None and code not in keep:
            continue
        if code in parts:
            raise where.error(f"appears twice (as an alias of {code!r})", key)
        parts[code] = part
    return parts


def normalize_langs(langs: Sequence[str] | None) -> list[str] | None:
    """Canonical codes of a user's language filter, without duplicates; ``None`` means all languages."""
    if langs is None:
        return None
    codes: list[str] = []
    for lang in langs:
        code = normalize_code(lang)
        if code not in codes:
            codes.append(code)
    if not codes:
        raise ValueError("the language filter is empty; pass None to keep every language")
    return codes


ID_KEY = "id"  # optional record id in the project's own edit files; it becomes the edit id


def parse_record(
    raw: Any,
    *,
    source: str,
    index: int,
    record_id: str | None = None,
    langs: Sequence[str] | None = None,
    line: int | None = None,
) -> BenchmarkRecord:
    """Parse ``{lang: {subject, src, alt, ...}}`` into a BenchmarkRecord.

    ``source`` and ``index`` (and ``line`` for JSONL) only name the record in error messages.
    Languages keep the record's order, or the order of ``langs`` when a filter is given; with a
    filter, languages outside it are neither validated nor kept.
    """
    where = _Where(source, index, line)
    if not isinstance(raw, Mapping):
        raise where.error(f"must be an object keyed by language code, got {type(raw).__name__}")
    wanted = normalize_langs(langs)
    own_id = raw.get(ID_KEY)
    if own_id is not None and (not isinstance(own_id, str) or not own_id.strip()):
        raise where.error(f"field {ID_KEY!r} must be a non-empty string, got {own_id!r}")
    languages = {key: part for key, part in raw.items() if key != ID_KEY}
    parts = _normalized_parts(languages, where, set(wanted) if wanted is not None else None)
    if wanted is not None:
        missing = [code for code in wanted if code not in parts]
        if missing:
            raise where.error(f"has no language {missing} (has {list(raw)})")
        parts = {code: parts[code] for code in wanted}
    if not parts:
        raise where.error("has no languages")
    requests: list[EditRequest] = []
    tests: dict[str, dict[str, TestCase]] = {}
    probes: dict[str, tuple[Probe, ...]] = {}
    for code, part in parts.items():
        request, cases = _parse_part(part, code, where)
        requests.append(request)
        tests[code] = cases
        if questions := _strings(part, SPECIFICITY_FIELD, where, code):
            probes[code] = tuple(Probe(q, "field") for q in questions)
    rid = own_id or record_id or f"{source}:{index}"
    aligned = tuple(
        part["subject"].strip()
        for part in languages.values()
        if isinstance(part, Mapping) and isinstance(part.get("subject"), str) and part["subject"].strip()
    )
    return BenchmarkRecord(rid, EditGroup(tuple(requests), rid, aligned), tests, probes)

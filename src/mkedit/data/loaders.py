"""Read benchmark and edit files whatever their layout, with errors that point at the bad line.

All supported layouts hold records of the same shape (``{lang: {subject, src, alt, ...}}``), so the
only thing to detect is the container:

* a JSON list of records: merged MzsRE (12 languages), the source's pair files
  (``mzsre_test_duplicate_{l1}{l2}.json``), Bi-ZsRE (en+zh), and the project's edit files;
* JSONL, one record (edit group) per line: the project's edit files;
* a single JSON object holding one record, for a one-fact edit file.

Record ids are ``"{file_stem}:{index}"`` with the index in the file, so ``offset``/``limit`` keep ids
stable across runs that select different windows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkedit.data.probes import attach_probes, load_templates
from mkedit.data.records import normalize_langs, parse_record
from mkedit.errors import DataFormatError
from mkedit.types import BenchmarkRecord, EditGroup

log = logging.getLogger(__name__)

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

# (raw record, 1-based line number for JSONL or None)
RawRecord = tuple[Any, int | None]


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig")  # tolerate a BOM written by Windows editors
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _parse_jsonl(text: str, name: str) -> list[RawRecord]:
    records: list[RawRecord] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{name}: line {number}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(value, dict):
            raise DataFormatError(
                f"{name}: line {number}: expected one JSON object (an edit group) per line, got {type(value).__name__}"
            )
        records.append((value, number))
    return records


def _from_json_value(value: Any, name: str) -> list[RawRecord]:
    if isinstance(value, dict):
        if value and all(isinstance(part, dict) for part in value.values()):
            return [(value, None)]  # one record written as a bare object
        raise DataFormatError(
            f"{name}: expected a JSON list of records ({{lang: {{subject, src, alt, ...}}}}), got an "
            f"object with keys {list(value)[:5]}"
        )
    if not isinstance(value, list):
        raise DataFormatError(f"{name}: expected a JSON list of records, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataFormatError(
                f"{name}: record {index}: expected an object keyed by language code, got {type(item).__name__}"
            )
    return [(item, None) for item in value]


def read_raw_records(path: str | Path) -> list[RawRecord]:
    """The file's records as plain dicts (with JSONL line numbers), before any field validation."""
    path = Path(path)
    text = _read_text(path)
    name = path.name
    if not text.strip():
        raise DataFormatError(f"{name}: the file is empty")
    if path.suffix.lower() in JSONL_SUFFIXES:
        records = _parse_jsonl(text, name)
    else:
        try:
            records = _from_json_value(json.loads(text), name)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise DataFormatError(
                    f"{name}: line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
                ) from exc
            log.debug("%s: several JSON values, reading it as JSONL", name)
            records = _parse_jsonl(text, name)
    if not records:
        raise DataFormatError(f"{name}: the file holds no records")
    return records


def load_records(
    path: str | Path,
    langs: Sequence[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    specificity: Sequence[str] = (),
    probe_templates: str | Path | None = None,
) -> list[BenchmarkRecord]:
    """Records ``offset .. offset+limit`` of a benchmark or edit file, optionally restricted to ``langs``.

    Records outside the window are not validated, so a window can skip a known-bad record (the
    ``dataset`` Specificity source still reads their subjects and questions, defensively).
    ``specificity`` names the probe sources of :mod:`mkedit.data.probes` (none: no probes, not even a
    record's own ``specificity`` field); ``probe_templates`` replaces the packaged relation templates.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    path = Path(path)
    wanted = normalize_langs(langs)
    raw = read_raw_records(path)
    end = len(raw) if limit is None else min(len(raw), offset + limit)
    records = [
        parse_record(
            item,
            source=path.name,
            index=index,
            record_id=f"{path.stem}:{index}",
            langs=wanted,
            line=line,
        )
        for index, (item, line) in enumerate(raw[offset:end], start=offset)
    ]
    log.info("loaded %d of %d records from %s", len(records), len(raw), path)
    if not specificity:
        return [dataclasses.replace(r, probes={}) for r in records]
    templates = load_templates(probe_templates) if "templates" in specificity else None
    items = [item for item, _ in raw]
    return attach_probes(records, items, range(offset, offset + len(records)), specificity, templates)


def load_edit_groups(path: str | Path, langs: Sequence[str] | None = None) -> list[EditGroup]:
    """The edit groups of a file (for ``mkedit edit --edits FILE``); test fields, if any, are ignored."""
    return [record.group for record in load_records(path, langs)]

"""Put a paraphrase file's lines into the edit requests they belong to (by record id and language).

Paraphrases are only the locating corpus (Eq. 4) of ``EditRequest.paraphrases``; a record's own
``paraphrases`` field, if any, comes first and the file's lines follow (repeats dropped). An entry whose
question is not the record's question means the file was made for other data with the same record ids,
and is refused rather than letting a wrong corpus pick the neurons. The file's sha256 is returned so a
run can record exactly which paraphrases it used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from mkedit.errors import DataFormatError
from mkedit.paraphrase.store import Key, ParaphraseEntry, read_entries
from mkedit.types import BenchmarkRecord, EditGroup, EditRequest

T = TypeVar("T", BenchmarkRecord, EditGroup)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Attached(Generic[T]):
    """Records (or groups) with paraphrases attached, and what the file covered."""

    items: list[T]
    sha256: str
    """Of the paraphrase file as read."""
    attached: int
    """(record, language) pairs that got at least one paraphrase."""
    missing: list[Key]
    """(record, language) pairs the file has no entry for: they locate with the question alone."""


def _request(request: EditRequest, group_id: str, entries: dict[Key, ParaphraseEntry], path: Path) -> EditRequest:
    entry = entries.get((group_id, request.lang))
    if entry is None:
        return request
    if entry.question != request.question:
        raise DataFormatError(
            f"{path}: record {group_id} [{request.lang}] paraphrases {entry.question!r}, but the question to edit is "
            f"{request.question!r}: the paraphrase file was made for other data"
        )
    merged = tuple(dict.fromkeys([*request.paraphrases, *entry.paraphrases]))
    return dataclasses.replace(request, paraphrases=merged)


def _group(group: EditGroup, entries: dict[Key, ParaphraseEntry], path: Path) -> EditGroup:
    requests = tuple(_request(r, group.group_id, entries, path) for r in group.requests)
    return dataclasses.replace(group, requests=requests)


def _attach(items: Sequence[T], path: str | os.PathLike[str]) -> Attached[T]:
    path = Path(path)
    entries = read_entries(path)  # a missing or damaged file fails here, with its name
    data_hash = file_sha256(path)
    out: list[T] = []
    attached = 0
    missing: list[Key] = []
    for item in items:
        group = item.group if isinstance(item, BenchmarkRecord) else item
        new_group = _group(group, entries, path)
        for request in group.requests:
            entry = entries.get((group.group_id, request.lang))
            if entry is None:
                missing.append((group.group_id, request.lang))
            elif entry.paraphrases:
                attached += 1
        out.append(dataclasses.replace(item, group=new_group) if isinstance(item, BenchmarkRecord) else new_group)
    return Attached(out, data_hash, attached, missing)


def attach_to_records(records: Sequence[BenchmarkRecord], path: str | os.PathLike[str]) -> Attached[BenchmarkRecord]:
    """Benchmark records (for ``mkedit eval``) with the file's paraphrases, matched by record id."""
    return _attach(records, path)


def attach_to_groups(groups: Sequence[EditGroup], path: str | os.PathLike[str]) -> Attached[EditGroup]:
    """Edit groups (for ``mkedit edit``) with the file's paraphrases, matched by group id."""
    return _attach(groups, path)

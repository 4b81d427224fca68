"""The paraphrase file: JSON lines, one per (record id, language), appended as each is made.

Generating 30 paraphrases takes seconds to minutes per question, so every finished (record, language) is
appended and fsync-ed at once and a rerun skips what is there. A crash can only tear the line being
written: reading drops a last line that does not parse (and cuts it off the file, so the next append
starts on a fresh line); a bad line anywhere else is damage, reported rather than silently lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mkedit.errors import DataFormatError, UnknownLanguageError
from mkedit.languages import normalize_code
from mkedit.runtime.jsonl import read_jsonl

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(record id, language code)."""


@dataclass(frozen=True)
class ParaphraseEntry:
    """The paraphrases kept for one record's question in one language, and where they came from."""

    record_id: str
    lang: str
    question: str
    subject: str
    paraphrases: tuple[str, ...]
    source: str
    raw_count: int
    """Lines the source produced before filtering (a low kept/raw ratio means the source strays)."""

    @property
    def key(self) -> Key:
        return (self.record_id, self.lang)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "paraphrases": list(self.paraphrases)}

    @classmethod
    def from_json(cls, value: Any, where: str) -> ParaphraseEntry:
        """Validate one parsed line; ``where`` names it (file and line) in errors."""
        if not isinstance(value, Mapping):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
        for name in ("record_id", "lang", "question", "subject", "source"):
            if not isinstance(value.get(name), str) or not value[name].strip():
                raise DataFormatError(f"{where}: field {name!r} must be a non-empty string, got {value.get(name)!r}")
        paraphrases = value.get("paraphrases")
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise DataFormatError(f"{where}: field 'paraphrases' must be a list of non-empty strings")
        raw_count = value.get("raw_count")
        if not isinstance(raw_count, int) or isinstance(raw_count, bool) or raw_count < 0:
            raise DataFormatError(f"{where}: field 'raw_count' must be an integer >= 0, got {raw_count!r}")
        try:
            lang = normalize_code(value["lang"])
        except UnknownLanguageError as exc:
            raise DataFormatError(f"{where}: {exc}") from exc
        return cls(
            value["record_id"],
            lang,
            value["question"],
            value["subject"],
            tuple(paraphrases),
            value["source"],
            raw_count,
        )


def read_entries(path: Path, *, repair: bool = False) -> dict[Key, ParaphraseEntry]:
    """The entries of a paraphrase file by (record id, language); a key given twice keeps its last line."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such paraphrase file")
    entries: dict[Key, ParaphraseEntry] = {}
    for number, value in read_jsonl(path, repair=repair):
        entry = ParaphraseEntry.from_json(value, f"{path}: line {number}")
        entries[entry.key] = entry
    return entries


class ParaphraseStore:
    """An append-only paraphrase file: what is done, and appending one finished entry at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.entries: dict[Key, ParaphraseEntry] = read_entries(self.path, repair=True) if self.path.is_file() else {}

    def __contains__(self, key: Key) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: Key) -> ParaphraseEntry | None:
        return self.entries.get(key)

    def append(self, entry: ParaphraseEntry) -> None:
        """Write ``entry`` as one line in a single write, then fsync: it is on disk before the next starts."""
        line = json.dumps(entry.to_json(), ensure_ascii=False, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[entry.key] = entry

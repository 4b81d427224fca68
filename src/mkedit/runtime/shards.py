"""Edit tensors on disk: append-only safetensors shards, merged as they grow, read lazily.

A cache that gains one edit at a time (``mkedit edit`` saves after every edit so that an interrupted
run resumes) must not rewrite everything on each save, and a cache of 100k edits must open in seconds
and hold in memory only the edits a query uses. So each save writes the edits not yet on disk into a
new shard, ``deltas-<sha256[:16]>.safetensors``, whose header metadata also carries those edits'
records (subjects, questions, answers, statistics). Shards merge like a binary counter: while the
newest holds at least half as many live edits as the one before it, the two are rewritten as one,
dropping edits that were removed or replaced since, up to ``MAX_SHARD_EDITS`` edits per shard (see
:mod:`mkedit.runtime.cache`). A cache of n edits thus has O(log n) shards below the cap, and each edit
is rewritten O(log n) times over the cache's life.

Reading maps a shard (``safe_open``) and copies an edit's tensors out only when they are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mkedit.errors import CacheError
from mkedit.models.loader import sha256_file
from mkedit.runtime.atomic import write_atomic

SHARD_PREFIX = "deltas-"
RECORDS_KEY = "mkedit/records"


class ShardReader:
    """One shard file, opened on first use; its sha256 is checked against the index before anything is read."""

    def __init__(self, path: Path, sha256: str, verify: bool = True) -> None:
        if not path.is_file():
            raise CacheError(f"{path.parent}: tensors file {path.name} named by the index is missing")
        if verify and sha256_file(path) != sha256:
            raise CacheError(f"{path} is corrupt: its sha256 differs from the one recorded in the index")
        self.path = path
        self.sha256 = sha256
        try:
            self._handle = safe_open(str(path), framework="pt")
            self.metadata: dict[str, str] = self._handle.metadata() or {}
            self._keys = frozenset(self._handle.keys())
        except (SafetensorError, OSError) as exc:
            raise CacheError(f"{path} is corrupt: {exc}") from exc

    def has(self, key: str) -> bool:
        return key in self._keys

    def records(self) -> list[dict[str, Any]]:
        """The records of the edits stored here, in the order they were written (v3 shards)."""
        try:
            records = json.loads(self.metadata[RECORDS_KEY])
        except (KeyError, json.JSONDecodeError) as exc:
            raise CacheError(f"{self.path} carries no readable edit records ({exc})") from exc
        if not isinstance(records, list):
            raise CacheError(f"{self.path}: edit records must be a list")
        return records

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except SafetensorError as exc:
            raise CacheError(f"{self.path}: tensor {key!r} is missing ({exc})") from exc


class LazyTensors(Mapping[str, torch.Tensor]):
    """An edit's tensors as stored in a shard: each is copied out of the mapped file on first access."""

    def __init__(self, reader: ShardReader, prefix: str, names: Sequence[str]) -> None:
        self._reader = reader
        self._prefix = prefix
        self._names = tuple(names)
        self._loaded: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._loaded:
            if name not in self._names:
                raise KeyError(name)
            self._loaded[name] = self._reader.get(self._prefix + name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True)
class StoredEdit:
    """What a shard holds for one edit: its record (JSON) and its tensors."""

    record: dict[str, Any]
    tensors: Mapping[str, torch.Tensor]


def write_shard(folder: Path, edits: Sequence[StoredEdit]) -> tuple[str, str]:
    """Write ``edits`` as one shard (atomically, named by its content); returns (file name, sha256)."""
    tensors = {
        f"{stored.record['id']}/{name}": tensor.detach().to("cpu").contiguous().clone()
        for stored in edits
        for name, tensor in stored.tensors.items()
    }
    metadata = {RECORDS_KEY: json.dumps([stored.record for stored in edits], ensure_ascii=False)}
    digest: dict[str, str] = {}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        digest["sha"] = sha256_file(tmp)

    staging = folder / f"{SHARD_PREFIX}staging.safetensors"
    write_atomic(staging, write)
    name = f"{SHARD_PREFIX}{digest['sha'][:16]}.safetensors"
    staging.replace(folder / name)
    return name, digest["sha"]

"""The edit store of every method, bound to one model: for LU-LAFNs, the cache of Eq. 11
({aligned subjects of every language -> ΔV}); for the baselines, their low-rank weight deltas, adapters
or retrieval memory.

On disk a cache is a folder with ``cache.json`` (format version, model fingerprint, method and its
config, the tensor shards with their sha256, and the shard copies of edits removed since) and the shards
``deltas-<hash>.safetensors`` (:mod:`mkedit.runtime.shards`: per edit, the method's named tensors stored
as ``<edit id>/<name>``, and in the header the edit's subjects, questions, answers and statistics). A
save writes only the edits not yet on disk, in a new shard, then replaces ``cache.json`` atomically: an
interrupted save leaves the previous cache intact, and a truncated or altered shard is detected by its
sha256. Loading maps the shards and reads an edit's tensors only when they are used. Format 1 and 2
caches (one tensors file, records in ``cache.json``) still load; the next save rewrites them as shards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mkedit.errors import CacheError
from mkedit.models.fingerprint import ModelFingerprint, model_fingerprint
from mkedit.runtime.atomic import write_json_atomic
from mkedit.runtime.cache_schema import check_index, check_record
from mkedit.runtime.shards import SHARD_PREFIX, LazyTensors, ShardReader, StoredEdit, write_shard

log = logging.getLogger(__name__)

FORMAT = "mkedit-edit-cache"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: LU-LAFNs only; 1-2: one tensors file, records in cache.json
INDEX_FILE = "cache.json"
MAX_SHARD_EDITS = 8192
"""Shards stop merging at this many edits: a safetensors header (tensor names and, here, edit records) must
stay far below the format's 100 MB limit."""


@dataclass
class Edit:
    """One edit of any method: the subject strings it is about, its tensors, and JSON facts.

    What the tensors mean is the method's business (``<layer>/idx`` and ``<layer>/val`` for LU-LAFNs,
    low-rank factors for weight edits, ...); the cache only stores them.
    """

    edit_id: str
    subjects: dict[str, list[str]]  # lang -> surface forms of the subject (LU-LAFNs: what triggers the edit)
    tensors: Mapping[str, torch.Tensor]  # name -> tensor; names may hold "/" but no edit id
    info: dict[str, Any] = field(default_factory=dict)  # languages, questions, answers, time, stats
    method: str = ""

    def surfaces(self) -> set[str]:
        return {s for forms in self.subjects.values() for s in forms}


@dataclass
class _Shard:
    """A shard file of the folder a cache is bound to, and the ids of the edit copies it holds, in order."""

    name: str
    sha256: str
    ids: list[str]


class EditCache:
    """An ordered collection of edits for one model, saved and loaded as a folder."""

    def __init__(self, fingerprint: ModelFingerprint, method: str, method_config: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.method = method
        self.method_config = method_config
        self._edits: dict[str, Edit] = {}
        self._owners: dict[str, list[str]] = {}  # subject surface -> ids of the edits holding it
        self.version = 0  # bumped on every change, so views of the cache know to refresh
        self.replaced_facts: dict[str, dict[str, Any]] = {}
        """fact id -> {"by": the fact that replaced it, "answers": its answers}: facts a later fact of the same
        relation replaced (:mod:`mkedit.facts.store`), so a resumed ``mkedit edit`` does not put them back."""
        # The folder the cache was loaded from or last saved to, its shards, and the shard holding the
        # live copy of each edit already there (edits added since are not in it).
        self._folder: Path | None = None
        self._shards: list[_Shard] = []
        self._stored: dict[str, str] = {}

    # --- collection -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._edits)

    def __iter__(self) -> Iterator[Edit]:
        return iter(list(self._edits.values()))

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._edits

    def get(self, edit_id: str) -> Edit:
        if edit_id not in self._edits:
            raise KeyError(f"no edit {edit_id!r} in the cache")
        return self._edits[edit_id]

    def add(self, edit: Edit, replace_subjects: bool = True) -> list[str]:
        """Add ``edit``; an edit with its id, and with ``replace_subjects`` the edits sharing a subject form
        with it, are replaced. Returns their ids. (:class:`mkedit.facts.FactStore` decides which facts of a
        subject stay: use it to add facts.)"""
        if edit.method and edit.method != self.method:
            raise CacheError(f"cannot add a {edit.method} edit to a {self.method} cache")
        new_surfaces = edit.surfaces()
        replaced = {i for s in new_surfaces for i in self._owners.get(s, ())} if replace_subjects else set()
        if edit.edit_id in self._edits:
            replaced.add(edit.edit_id)
        order = {edit_id: n for n, edit_id in enumerate(self._edits)} if replaced else {}
        for old_id in sorted(replaced, key=order.__getitem__):
            shared = sorted(self._edits[old_id].surfaces() & new_surfaces)
            log.warning("edit %s replaces cached edit %s (shared subjects: %s)", edit.edit_id, old_id, shared)
            self._drop(old_id)
        self._edits[edit.edit_id] = edit
        self._own(edit)
        self.version += 1
        return sorted(replaced, key=order.__getitem__)

    def remove(self, edit_id: str) -> Edit:
        removed = self._drop(self.get(edit_id).edit_id)
        self.version += 1
        return removed

    def _drop(self, edit_id: str) -> Edit:
        edit = self._edits.pop(edit_id)
        self._stored.pop(edit_id, None)
        for surface in edit.surfaces():
            owners = self._owners[surface]
            owners.remove(edit_id)
            if not owners:
                del self._owners[surface]
        return edit

    def _own(self, edit: Edit) -> None:
        for surface in edit.surfaces():
            self._owners.setdefault(surface, []).append(edit.edit_id)

    def subject_entries(self) -> list[tuple[str, str]]:
        """(surface form, edit id) pairs for a subject matcher."""
        return [(surface, e.edit_id) for e in self._edits.values() for surface in sorted(e.surfaces())]

    # --- model binding ----------------------------------------------------------------------------
    def check_model(self, model: nn.Module, name: str = "") -> None:
        """Refuse to serve edits computed on another model: ΔV is meaningless elsewhere."""
        self.check_fingerprint(
            model_fingerprint(model, name or self.fingerprint.name, self.fingerprint.weights_rounding)
        )

    def check_fingerprint(self, actual: ModelFingerprint) -> None:
        """:meth:`check_model` with the model's fingerprint taken elsewhere (e.g. by a Ray worker)."""
        if not self.fingerprint.matches(actual):
            raise CacheError(
                f"this edit cache was made for model {self.fingerprint.name!r} "
                f"(config {self.fingerprint.config_hash[:12]}, weights {self.fingerprint.weights_hash[:12]}), "
                f"not for the loaded model {actual.name!r} (config {actual.config_hash[:12]}, "
                f"weights {actual.weights_hash[:12]})"
            )

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the edits not yet in the folder as a new shard, merge shards (module docstring of
        :mod:`mkedit.runtime.shards`), then replace ``cache.json`` atomically; returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        same = self._folder is not None and self._folder.resolve() == folder.resolve()
        shards = list(self._shards) if same else []
        stored = dict(self._stored) if same else {}

        def live(shard: _Shard) -> list[str]:
            return [edit_id for edit_id in shard.ids if stored.get(edit_id) == shard.name]

        def write(ids: list[str]) -> _Shard:
            edits = [StoredEdit(_record(self._edits[edit_id]), self._edits[edit_id].tensors) for edit_id in ids]
            name, sha = write_shard(folder, edits)
            stored.update(dict.fromkeys(ids, name))
            return _Shard(name, sha, ids)

        pending = [edit_id for edit_id in self._edits if edit_id not in stored]
        for start in range(0, len(pending), MAX_SHARD_EDITS):
            shards.append(write(pending[start : start + MAX_SHARD_EDITS]))
        shards = [s for s in shards if live(s)]
        while len(shards) >= 2 and len(live(shards[-2])) <= 2 * len(live(shards[-1])) <= 2 * (
            MAX_SHARD_EDITS - len(live(shards[-2]))
        ):
            newer, older = shards.pop(), shards.pop()
            shards.append(write(live(older) + live(newer)))
        shards = [write(live(s)) if 2 * len(live(s)) < len(s.ids) else s for s in shards]
        index = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.fingerprint.to_dict(),
            "method": self.method,
            "method_config": self.method_config,
            "shards": [{"file": s.name, "sha256": s.sha256, "edits": len(live(s))} for s in shards],
            "removed": [[edit_id, s.name] for s in shards for edit_id in s.ids if stored.get(edit_id) != s.name],
            "replaced_facts": self.replaced_facts,
        }
        write_json_atomic(folder / INDEX_FILE, index)
        names = {s.name for s in shards}
        for stale in folder.glob(f"{SHARD_PREFIX}*.safetensors"):
            if stale.name not in names:
                stale.unlink(missing_ok=True)
        self._folder, self._shards, self._stored = folder, shards, stored
        return folder

    @classmethod
    def load(
        cls, path: str | Path, model: nn.Module | None = None, model_name: str = "", verify: bool = True
    ) -> EditCache:
        """Read a cache folder (tensors stay on disk until used); with ``model``, also check it was made for
        that model. ``verify`` checks every shard's sha256 first (one sequential read of the files)."""
        folder = Path(path)
        index_path = folder / INDEX_FILE
        if not index_path.is_file():
            raise CacheError(f"{folder} is not an mkedit edit cache (no {INDEX_FILE})")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CacheError(f"{index_path} is corrupt: {exc}") from exc
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise CacheError(f"{index_path} is not an mkedit edit cache index")
        if index.get("version") not in READABLE_VERSIONS:
            raise CacheError(
                f"{index_path} has cache format version {index.get('version')}, this mkedit reads {READABLE_VERSIONS}"
            )
        check_index(index, index_path)
        try:
            fingerprint = ModelFingerprint.from_dict(index["model"])
            cache = cls(fingerprint, index["method"], index["method_config"])
            cache.replaced_facts = dict(index.get("replaced_facts", {}))
            if index["version"] < 3:
                cache._read_single_file(folder, index, verify)
            else:
                cache._read_shards(folder, index, verify)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CacheError):
                raise
            raise CacheError(f"{index_path} is missing or has a malformed field: {exc}") from exc
        if model is not None:
            cache.check_model(model, model_name)
        return cache

    def _read_shards(self, folder: Path, index: dict[str, Any], verify: bool) -> None:
        removed = {(edit_id, name) for edit_id, name in index["removed"]}
        for entry in index["shards"]:
            name = entry["file"]
            reader = ShardReader(folder / name, entry["sha256"], verify)
            dead = {edit_id for edit_id, shard in removed if shard == name}
            ids = [self._read_record(record, reader, dead.__contains__) for record in reader.records()]
            self._shards.append(_Shard(name, entry["sha256"], ids))
            self._stored.update({i: name for i in ids if i not in dead})
        self._folder = folder

    def _read_single_file(self, folder: Path, index: dict[str, Any], verify: bool) -> None:
        """Formats 1-2. Nothing counts as stored, so the next save writes every edit as shards."""
        reader = ShardReader(folder / index["tensors_file"], index["tensors_sha256"], verify)
        for record in index["edits"]:
            names = record.get("tensors") if isinstance(record, dict) else None
            if isinstance(record, dict) and names is None and "layers" in record:  # format 1
                record = {**record, "tensors": [f"{x}/{part}" for x in record["layers"] for part in ("idx", "val")]}
            self._read_record(record, reader)

    def _read_record(self, record: Any, reader: ShardReader, removed: Callable[[str], bool] | None = None) -> str:
        """Add the edit a record describes (unless ``removed(id)``: a removed copy); returns its id."""
        check_record(record, reader.path.parent)
        try:
            edit_id = record["id"]
            names = list(record["tensors"])
            if missing := [n for n in names if not reader.has(f"{edit_id}/{n}")]:
                raise KeyError(f"tensors {missing} are not in {reader.path.name}")
            if removed is None or not removed(edit_id):
                tensors = LazyTensors(reader, f"{edit_id}/", names)
                edit = Edit(edit_id, dict(record["subjects"]), tensors, record.get("info", {}), self.method)
                self._edits[edit_id] = edit
                self._own(edit)
            return edit_id
        except (KeyError, TypeError, AttributeError) as exc:
            raise CacheError(f"{reader.path.parent}: edit record {record!r:.80} is malformed ({exc})") from exc


def _record(edit: Edit) -> dict[str, Any]:
    return {"id": edit.edit_id, "subjects": edit.subjects, "tensors": sorted(edit.tensors), "info": edit.info}

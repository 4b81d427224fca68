"""The edit store of every method, bound to one model: for LU-LAFNs, the cache of Eq. 11
({aligned subjects of every language -> ΔV}); for the baselines, their low-rank weight deltas, adapters
or retrieval memory.

On disk a cache is a folder with ``cache.json`` (format version, model fingerprint, method and its
config, and per edit its subjects, questions, answers and statistics) and ``deltas-<hash>.safetensors``
(per edit, the method's named tensors, stored as ``<edit id>/<name>``). The tensors file is written
first under a name derived from its content, then ``cache.json`` is replaced atomically: an interrupted
save leaves the previous cache intact, and a truncated or altered tensors file is detected by its sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mkedit.errors import CacheError
from mkedit.models.fingerprint import ModelFingerprint, model_fingerprint
from mkedit.runtime.atomic import write_atomic, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "mkedit-edit-cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: LU-LAFNs only, same tensor names
INDEX_FILE = "cache.json"


@dataclass
class Edit:
    """One edit of any method: the subject strings it is about, its tensors, and JSON facts.

    What the tensors mean is the method's business (``<layer>/idx`` and ``<layer>/val`` for LU-LAFNs,
    low-rank factors for weight edits, ...); the cache only stores them.
    """

    edit_id: str
    subjects: dict[str, list[str]]  # lang -> surface forms of the subject (LU-LAFNs: what triggers the edit)
    tensors: dict[str, torch.Tensor]  # name -> tensor; names may hold "/" but no edit id
    info: dict[str, Any] = field(default_factory=dict)  # languages, questions, answers, time, stats
    method: str = ""

    def surfaces(self) -> set[str]:
        return {s for forms in self.subjects.values() for s in forms}


class EditCache:
    """An ordered collection of edits for one model, saved and loaded as a folder."""

    def __init__(self, fingerprint: ModelFingerprint, method: str, method_config: dict[str, Any]) -> None:
        self.fingerprint = fingerprint
        self.method = method
        self.method_config = method_config
        self._edits: dict[str, Edit] = {}
        self.version = 0  # bumped on every change, so views of the cache know to refresh

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

    def add(self, edit: Edit) -> list[str]:
        """Add ``edit``; edits sharing a subject with it (or its id) are replaced. Returns their ids."""
        if edit.method and edit.method != self.method:
            raise CacheError(f"cannot add a {edit.method} edit to a {self.method} cache")
        new_surfaces = edit.surfaces()
        replaced = [
            old.edit_id for old in self._edits.values() if old.edit_id == edit.edit_id or old.surfaces() & new_surfaces
        ]
        for old_id in replaced:
            shared = sorted(self._edits[old_id].surfaces() & new_surfaces)
            log.warning("edit %s replaces cached edit %s (shared subjects: %s)", edit.edit_id, old_id, shared)
            del self._edits[old_id]
        self._edits[edit.edit_id] = edit
        self.version += 1
        return replaced

    def remove(self, edit_id: str) -> Edit:
        removed = self._edits.pop(self.get(edit_id).edit_id)
        self.version += 1
        return removed

    def subject_entries(self) -> list[tuple[str, str]]:
        """(surface form, edit id) pairs for a subject matcher."""
        return [(surface, e.edit_id) for e in self._edits.values() for surface in sorted(e.surfaces())]

    # --- model binding ----------------------------------------------------------------------------
    def check_model(self, model: nn.Module, name: str = "") -> None:
        """Refuse to serve edits computed on another model: ΔV is meaningless elsewhere."""
        actual = model_fingerprint(model, name or self.fingerprint.name, self.fingerprint.weights_rounding)
        if not self.fingerprint.matches(actual):
            raise CacheError(
                f"this edit cache was made for model {self.fingerprint.name!r} "
                f"(config {self.fingerprint.config_hash[:12]}, weights {self.fingerprint.weights_hash[:12]}), "
                f"not for the loaded model {actual.name!r} (config {actual.config_hash[:12]}, "
                f"weights {actual.weights_hash[:12]})"
            )

    # --- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the cache folder atomically (see the module docstring); returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for edit in self._edits.values():
            for name, tensor in edit.tensors.items():
                tensors[f"{edit.edit_id}/{name}"] = tensor.detach().to("cpu").contiguous().clone()
        blob_holder: dict[str, bytes] = {}

        def write_tensors(tmp: Path) -> None:
            save_file(tensors, str(tmp))
            blob_holder["sha"] = hashlib.sha256(tmp.read_bytes()).digest()

        staging = folder / "deltas.staging.safetensors"
        write_atomic(staging, write_tensors)
        digest = blob_holder["sha"].hex()
        tensors_name = f"deltas-{digest[:16]}.safetensors"
        staging.replace(folder / tensors_name)
        index = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.fingerprint.to_dict(),
            "method": self.method,
            "method_config": self.method_config,
            "tensors_file": tensors_name,
            "tensors_sha256": digest,
            "edits": [
                {"id": e.edit_id, "subjects": e.subjects, "tensors": sorted(e.tensors), "info": e.info}
                for e in self._edits.values()
            ],
        }
        write_json_atomic(folder / INDEX_FILE, index)
        for stale in folder.glob("deltas-*.safetensors"):
            if stale.name != tensors_name:
                stale.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None, model_name: str = "") -> EditCache:
        """Read a cache folder; with ``model``, also check it was made for that model."""
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
        try:
            tensors_path = folder / index["tensors_file"]
            expected_sha = index["tensors_sha256"]
            fingerprint = ModelFingerprint.from_dict(index["model"])
            records = index["edits"]
            cache = cls(fingerprint, index["method"], index["method_config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{index_path} is missing or has a malformed field: {exc}") from exc
        if not tensors_path.is_file():
            raise CacheError(f"{folder}: tensors file {tensors_path.name} named by {INDEX_FILE} is missing")
        if hashlib.sha256(tensors_path.read_bytes()).hexdigest() != expected_sha:
            raise CacheError(f"{tensors_path} is corrupt: its sha256 differs from the one recorded in {INDEX_FILE}")
        tensors = load_file(str(tensors_path))
        for record in records:
            try:
                edit_id = record["id"]
                names = record.get("tensors") or [f"{x}/{part}" for x in record["layers"] for part in ("idx", "val")]
                edit_tensors = {name: tensors[f"{edit_id}/{name}"] for name in names}
                cache._edits[edit_id] = Edit(
                    edit_id, dict(record["subjects"]), edit_tensors, record.get("info", {}), cache.method
                )
            except (KeyError, TypeError) as exc:
                raise CacheError(f"{index_path}: edit record {record!r:.80} is malformed ({exc})") from exc
        if model is not None:
            cache.check_model(model, model_name)
        return cache

"""What a cache folder's ``cache.json`` and edit records may hold: checked on load, one clear CacheError each.

An index is JSON that a person can edit by hand, so nothing in it is trusted: a string where a list of
subject forms belongs would make every character of it a trigger, and an unknown neuron site would move
the edits silently. These checks are types and shapes only, cheap enough for 100k records; what needs the
model (layer and neuron ranges) and the tensors themselves is checked when an edit's tensors are first
decoded (:func:`mkedit.runtime.deltas.neuron_deltas`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from mkedit.arch.base import NeuronSite
from mkedit.errors import CacheError

NEURON_SITES: tuple[str, ...] = get_args(NeuronSite)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_index(index: dict[str, Any], where: Path | str) -> None:
    """Refuse an index whose header fields have the wrong type (``where`` names the file in messages)."""

    def bad(field: str, expected: str, value: Any) -> CacheError:
        return CacheError(f"{where}: {field} must be {expected}, got {_show(value)}")

    method = index.get("method")
    if not isinstance(method, str) or not method.strip():
        raise bad("method", "a method name", method)
    config = index.get("method_config")
    if not isinstance(config, dict):
        raise bad("method_config", "an object", config)
    if "site" in config and config["site"] not in NEURON_SITES:
        raise bad("method_config.site", f"one of {', '.join(NEURON_SITES)}", config["site"])
    history = index.get("replaced_facts", {})
    if not isinstance(history, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("answers"), dict) for entry in history.values()
    ):
        raise bad("replaced_facts", "an object of {by, answers} entries", history)
    if index.get("version") == 3:
        shards = index.get("shards")
        if not isinstance(shards, list):
            raise bad("shards", "a list", shards)
        for n, entry in enumerate(shards):
            if not isinstance(entry, dict):
                raise bad(f"shards[{n}]", "an object", entry)
            _file_name(entry.get("file"), f"shards[{n}].file", where)
            if not isinstance(entry.get("sha256"), str):
                raise bad(f"shards[{n}].sha256", "a string", entry.get("sha256"))
        removed = index.get("removed")
        if not isinstance(removed, list):
            raise bad("removed", "a list", removed)
        for n, pair in enumerate(removed):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise bad(f"removed[{n}]", "a pair [edit id, shard file]", pair)
    else:  # formats 1-2: one tensors file, the records in the index
        _file_name(index.get("tensors_file"), "tensors_file", where)
        if not isinstance(index.get("tensors_sha256"), str):
            raise bad("tensors_sha256", "a string", index.get("tensors_sha256"))
        if not isinstance(index.get("edits"), list):
            raise bad("edits", "a list of edit records", index.get("edits"))


def _file_name(value: Any, field: str, where: Path | str) -> None:
    """A shard file named by the index: a plain file name inside the cache folder."""
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", ".."):
        raise CacheError(f"{where}: {field} must be a file name in the cache folder, got {_show(value)}")


def check_record(record: Any, where: Path | str) -> None:
    """Refuse an edit record that is not ``{"id": str, "subjects": {lang: [str, ...]}, "tensors": [str, ...],
    "info": {...}}`` (``info`` optional); the message names the edit."""
    if not isinstance(record, dict):
        raise CacheError(f"{where}: an edit record must be an object, got {_show(record)}")
    edit_id = record.get("id")
    if not isinstance(edit_id, str) or not edit_id.strip():
        raise CacheError(f"{where}: an edit record's id must be a non-empty string, got {_show(edit_id)}")

    def bad(field: str, expected: str, value: Any) -> CacheError:
        return CacheError(f"{where}: edit {edit_id!r}: {field} must be {expected}, got {_show(value)}")

    subjects = record.get("subjects")
    if not isinstance(subjects, dict):
        raise bad("subjects", "an object {language: [subject, ...]}", subjects)
    for lang, forms in subjects.items():
        if not isinstance(lang, str) or not lang.strip():
            raise bad("a subjects key", "a language code", lang)
        if isinstance(forms, str):
            raise bad(f"subjects[{lang!r}]", "a list of strings, not one string", forms)
        if not isinstance(forms, list):
            raise bad(f"subjects[{lang!r}]", "a list of strings", forms)
        for form in forms:
            if not isinstance(form, str) or not form.strip():
                raise bad(f"subjects[{lang!r}]", "a list of non-empty strings", form)
    names = record.get("tensors")
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise bad("tensors", "a list of tensor names", names)
    if "info" in record and not isinstance(record["info"], dict):
        raise bad("info", "an object", record["info"])

"""The edits of a cache folder in force on the served model, reloaded when the folder changes.

Every save of an :class:`~mkedit.runtime.cache.EditCache` replaces ``cache.json`` atomically, so the file's
inode, size and modification time change with each save; :meth:`LiveEdits.view` compares them before each
request and reloads the folder when they differ. The method's ``applied(...)`` context stays open while a
version of the cache is served (weight-editing methods apply their deltas once, LU-LAFNs builds its subject
automaton once) and is closed before the next version is put in force.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

from mkedit.errors import MkeditError
from mkedit.methods.registry import method_for_cache
from mkedit.methods.view import EditedView, ModelView
from mkedit.models.fingerprint import ROUNDINGS, model_fingerprint
from mkedit.models.loader import LoadedModel
from mkedit.runtime.cache import INDEX_FILE, EditCache

log = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None


def index_signature(folder: Path) -> Signature:
    """(inode, size, mtime in ns) of the folder's ``cache.json``; None when there is none."""
    try:
        stat = os.stat(folder / INDEX_FILE)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class LiveEdits:
    """The view of the served model with a cache folder's edits in force (the untouched model without one).

    Not thread-safe: the engine calls :meth:`view` under its generation lock.
    """

    def __init__(self, loaded: LoadedModel, folder: Path | None = None) -> None:
        self.loaded = loaded
        self.folder = folder
        self.count = 0  # edits in force
        self._view: EditedView = ModelView(loaded.model)
        self._stack = ExitStack()
        self._signature: Signature = None
        if folder is not None:
            # Taken while no edit is in force: weight-editing methods change the weights that are hashed.
            self._fingerprints = {r: model_fingerprint(loaded.model, loaded.name, r) for r in ROUNDINGS}
            self._signature = index_signature(folder)
            self._install(self._read())

    def view(self) -> EditedView:
        """The current view, after reloading the folder if its ``cache.json`` changed since the last call.

        A folder that cannot be read keeps the previous edits in force (logged); one whose method cannot be
        built leaves the untouched model (logged). Either is retried at the folder's next change.
        """
        if self.folder is not None and (signature := index_signature(self.folder)) != self._signature:
            self._signature = signature
            self._reload()
        return self._view

    def close(self) -> None:
        """Leave the method's ``applied`` context: the model is as it was loaded."""
        self._stack.close()
        self._view, self.count = ModelView(self.loaded.model), 0

    def _reload(self) -> None:
        try:
            cache = self._read()
        except Exception as exc:  # a server keeps serving
            _log_failure(f"keeping the {self.count} edit(s) in force: cannot reload {self.folder}", exc)
            return
        try:
            self._install(cache)
        except Exception as exc:
            _log_failure(f"serving the untouched model: cannot apply the edits of {self.folder}", exc)
            return
        log.info("reloaded %s: %d edit(s) in force", self.folder, self.count)

    def _read(self) -> EditCache:
        assert self.folder is not None
        cache = EditCache.load(self.folder)
        cache.check_fingerprint(self._fingerprints[cache.fingerprint.weights_rounding])
        return cache

    def _install(self, cache: EditCache) -> None:
        self.close()
        method = method_for_cache(cache, self.loaded.model, self.loaded.tokenizer, self.loaded.name)
        edits = list(cache)
        self._view = self._stack.enter_context(method.applied(edits))
        self.count = len(edits)


def _log_failure(what: str, exc: Exception) -> None:
    """Log a failed reload; an error mkedit did not foresee gets its traceback."""
    log.error("%s: %s", what, exc, exc_info=not isinstance(exc, MkeditError))

"""What every editing method offers: turn an edit group into an edit record."""

from __future__ import annotations

from typing import Protocol

from mkedit.runtime.cache import CachedEdit, EditCache
from mkedit.types import EditGroup


class Editor(Protocol):
    """An editing method bound to one model."""

    def edit(self, group: EditGroup) -> CachedEdit:
        """Compute the edit for ``group`` without changing the model's weights."""
        ...

    def new_cache(self) -> EditCache:
        """An empty cache bound to this editor's model and configuration."""
        ...

"""Exceptions with messages a user can act on; every bad input maps to one of these."""

from __future__ import annotations


class MkeditError(Exception):
    """Base class of every error mkedit raises on purpose."""


class UnknownLanguageError(MkeditError, ValueError):
    """A language code that mkedit has no templates or aliases for."""


class UnsupportedArchitectureError(MkeditError, ValueError):
    """A model family without an FFN adapter."""


class SubjectNotFoundError(MkeditError, ValueError):
    """The subject cannot be placed in the question, so no edit position exists."""


class ModelNotAvailableError(MkeditError, RuntimeError):
    """A packaged model whose pip packages are missing, or a model path that does not exist."""


class ModelLoadError(ModelNotAvailableError):
    """A model path that exists but holds no loadable model: a ``.gguf`` that is not GGUF, a folder without weights."""


class CacheError(MkeditError, RuntimeError):
    """An edit cache that is corrupt, incomplete or written for another model."""


class DataFormatError(MkeditError, ValueError):
    """A malformed edit or benchmark file; the message names the file, record and field."""


class NothingToEditError(MkeditError, ValueError):
    """An edit run in which no group could be edited (every one skipped), so no edit cache was written."""

"""Methods register themselves by name (``register_method``); the CLI and the runner look them up here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.errors import CacheError, MkeditError
from mkedit.methods.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from mkedit.methods.base import EditMethod
    from mkedit.runtime.cache import EditCache


class UnknownMethodError(MkeditError, ValueError):
    """A ``--method`` name that no method registered."""


_METHODS: dict[str, type[EditMethod]] = {}

# Built-in methods, imported on first look-up so that ``import mkedit`` stays light.
BUILTIN_MODULES: tuple[str, ...] = (
    "mkedit.methods.lu_lafns",
    "mkedit.methods.lora_ft",
    "mkedit.methods.remake",
    "mkedit.methods.rome",
    "mkedit.methods.memit",
    "mkedit.methods.pmet",
)


def register_method(cls: type[EditMethod]) -> type[EditMethod]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator); a clash is an error."""
    existing = _METHODS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {existing.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> type[EditMethod]:
    """The method class registered as ``name``; an unknown name lists the available ones."""
    _load_builtins()
    if name not in _METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(
    name: str,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str = "",
    preset: str | None = None,
    overrides: dict[str, str] | None = None,
    config: MethodConfig | None = None,
) -> EditMethod:
    """Method ``name`` bound to ``model``: its configuration is ``config``, else the named preset, else the
    method's default for this model; then ``overrides`` (``--set KEY=VALUE`` strings) are applied."""
    cls = get_method(name)
    if config is None and preset:
        try:
            config = cls.preset_config(preset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return cls(model, tokenizer, config, model_name, overrides)


def method_for_cache(
    cache: EditCache, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str = ""
) -> EditMethod:
    """The method a cache was made with, configured as it was (a config the method refuses is a CacheError)."""
    try:
        config = get_method(cache.method).config_class.from_dict(cache.method_config)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MkeditError):
            raise
        raise CacheError(f"the edit cache's method_config is invalid for {cache.method}: {exc}") from exc
    return build_method(cache.method, model, tokenizer, model_name, config=config)


def check_method_options(name: str, preset: str | None, overrides: dict[str, str]) -> None:
    """Fail on an unknown method, preset or hyperparameter before a model is loaded (values that depend on
    the model, such as layer indices, are checked when the method is built)."""
    cls = get_method(name)
    if preset:
        try:
            cls.preset_config(preset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if overrides:
        cls.config_class().with_overrides(overrides)

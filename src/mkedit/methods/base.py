"""The protocol every editing method follows: computing an edit is separate from putting edits in force.

``edit(group) -> Edit`` reads the model and leaves its weights as they were; ``applied(edits)`` is a
context manager that yields an :class:`~mkedit.methods.view.EditedView` with those edits in force and,
on exit, leaves the model bit-identical to before. Edits are plain data (tensors + JSON), so one
:class:`~mkedit.runtime.cache.EditCache` saves and loads every method's edits.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Generic, TypeVar

from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import FFNAdapter, get_adapter
from mkedit.errors import MkeditError
from mkedit.facts.records import edit_id_for, fact_record
from mkedit.methods.common.prefixes import sample_prefixes
from mkedit.methods.config import ConfigError, MethodConfig
from mkedit.methods.view import EditedView
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import Edit, EditCache
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=MethodConfig)


def group_info(group: EditGroup) -> dict[str, Any]:
    """The JSON facts every edit records about its group (:func:`mkedit.facts.fact_record`)."""
    return fact_record(group, edit_id_for(group))


class EditMethod(ABC, Generic[ConfigT]):
    """An editing method bound to one model and one configuration."""

    name: ClassVar[str]
    """The registry name (``--method``)."""
    config_class: ClassVar[type[MethodConfig]]
    summary: ClassVar[str] = ""
    """One line for ``mkedit methods``."""
    needs_subject_position: ClassVar[bool] = False
    """True when an edit works at the subject's tokens (LU-LAFNs, the locate-then-edit methods): a language
    whose question does not name the subject placeably cannot be edited, and is left out of the group."""
    facts_share_edit: ClassVar[bool] = False
    """True when an edit acts wherever its subject occurs (LU-LAFNs): all the facts about a subject then
    live in one edit, computed by :meth:`edit_facts` on all of them (:mod:`mkedit.facts.store`)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: ConfigT | None = None,
        model_name: str = "",
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        """``config`` (default: :meth:`default_config` for this model), then ``overrides`` (``--set`` strings)."""
        self.model = model
        self.tokenizer = tokenizer
        self.adapter: FFNAdapter = get_adapter(model)
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (set tokenizer.pad_token = tokenizer.eos_token)")
        chosen = config if config is not None else self.default_config()
        if overrides:
            chosen = chosen.with_overrides(dict(overrides))
        try:
            self.config: ConfigT = self.prepare_config(chosen)
        except ValueError as exc:
            if isinstance(exc, MkeditError):
                raise
            raise ConfigError(f"{self.name} on {self.model_name}: {exc}") from exc

    # --- configuration ----------------------------------------------------------------------------
    def default_config(self) -> ConfigT:
        """The configuration for this model when the caller gives none (a preset, or scaled by depth)."""
        return self.config_class()  # type: ignore[return-value]

    def prepare_config(self, config: ConfigT) -> ConfigT:
        """Resolve model-relative values (negative layer indices, ...); checked before any edit."""
        return config

    @classmethod
    def preset_config(cls, name: str) -> ConfigT:
        """The named preset's configuration; methods without presets refuse."""
        raise ConfigError(f"method {cls.name} has no presets (got --preset {name})")

    @classmethod
    def preset_notes(cls) -> dict[str, str]:
        """Preset name -> what it sets and how it was chosen (``mkedit methods``); none by default."""
        return {}

    def resolve_layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """Layer indices as sorted, distinct, non-negative ones (``-1`` = the last layer); range-checked."""
        return tuple(sorted({self.adapter.resolve_layer(layer) for layer in layers}))

    # --- shared mechanisms ------------------------------------------------------------------------
    def prefixes(self, lang: str) -> list[str]:
        """``lang``'s random prefixes (the paper's Eq. 8, MEMIT's context templates), for methods whose config
        has ``num_prefixes``, ``prefix_length`` and ``seed``. They depend on the model, language and seed
        only, so they are sampled once per method instance and shared by every edit."""
        cache: dict[str, list[str]] = self.__dict__.setdefault("_prefixes", {})
        if lang not in cache:
            cfg: Any = self.config
            seed = cfg.seed + sum(map(ord, lang))
            cache[lang] = sample_prefixes(self.model, self.tokenizer, lang, cfg.num_prefixes, cfg.prefix_length, seed)
        return cache[lang]

    # --- the protocol -----------------------------------------------------------------------------
    def prepare(self, langs: Sequence[str]) -> None:
        """One-off work before the first edit in ``langs`` (key statistics, encoders); cached where it can be.

        Runs lazily on first use anyway; calling it first lets a runner time it apart from the edits.
        """

    @abstractmethod
    def edit(self, group: EditGroup) -> Edit:
        """Compute the edit for ``group``; the model's weights are the same afterwards."""

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str) -> Edit:
        """One edit holding every fact of ``groups`` (about one subject), named ``edit_id``. Methods whose
        edits of one subject coexist (``facts_share_edit`` False) hold one fact per edit."""
        if len(groups) != 1:
            raise ValueError(f"{self.name} holds one fact per edit, got {len(groups)}")
        edit = self.edit(groups[0])
        edit.edit_id = edit_id
        return edit

    @abstractmethod
    def applied(self, edits: Sequence[Edit]) -> AbstractContextManager[EditedView]:
        """Put ``edits`` in force for the duration of the context; the model is bit-identical after it."""

    def one_off_seconds(self) -> float | None:
        """Seconds of one-off work behind the edits made so far (key statistics), whenever it was done;
        None when the method has none or its time was not recorded."""
        return None

    def matcher_info(self) -> dict[str, object] | None:
        """How this method decides which edits act on a prompt, for ``run.json``; None when every edit in
        force acts on every prompt (weight edits)."""
        return None

    def new_cache(self) -> EditCache:
        """An empty cache bound to this model, method and configuration."""
        return EditCache(model_fingerprint(self.model, self.model_name), self.name, self.config.to_dict())

    def check_edits(self, edits: Sequence[Edit]) -> None:
        """Refuse edits made by another method: their tensors would mean nothing here."""
        foreign = sorted({e.method for e in edits if e.method != self.name})
        if foreign:
            raise ValueError(f"{self.name} cannot apply edits made by {', '.join(foreign)}")

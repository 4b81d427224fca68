"""LU-LAFNs end to end for one model: locate, optimise, and package the result as a cached edit."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.arch import get_adapter
from mkedit.methods.lu_lafns.batch import TrainSequence, sequences_for_request
from mkedit.methods.lu_lafns.config import LuLafnConfig, preset_for
from mkedit.methods.lu_lafns.locate import LocateResult, locate_lafns
from mkedit.methods.lu_lafns.optimize import optimize_delta
from mkedit.methods.lu_lafns.prefixes import sample_prefixes
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import CachedEdit, EditCache
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

METHOD_NAME = "lu-lafns"
StepCallback = Callable[[int, float], None]


def line_break_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token of a bare line break: what ends a short answer in raw text."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"this tokenizer has no single line-break token (got {ids}); set train_stop_token=False")
    return ids[0]


def edit_id_for(group: EditGroup) -> str:
    """The group's own id, else a short hash of its subjects and answers (stable across runs)."""
    if group.group_id:
        return group.group_id
    key = "|".join(f"{r.lang}:{r.subject}:{r.answer}" for r in group.requests)
    return "edit-" + hashlib.sha1(key.encode()).hexdigest()[:10]


class LuLafnEditor:
    """Edits one model with LU-LAFNs. The model's weights are never changed."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: LuLafnConfig | None = None,
        model_name: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = get_adapter(model)
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        base = config or preset_for(self.model_name).config
        self.config = base.replace(layers=tuple(sorted({self.adapter.resolve_layer(x) for x in base.layers})))
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (set tokenizer.pad_token = tokenizer.eos_token)")
        for param in model.parameters():
            param.requires_grad_(False)
        self._prefixes: dict[str, list[str]] = {}

    def prefixes(self, lang: str) -> list[str]:
        """The random prefixes of ``lang``: they depend on the model, language and seed only, so they
        are sampled once per editor and shared by every edit (as MEMIT shares its context templates)."""
        if lang not in self._prefixes:
            cfg = self.config
            seed = cfg.seed + sum(map(ord, lang))
            self._prefixes[lang] = sample_prefixes(
                self.model, self.tokenizer, lang, cfg.num_prefixes, cfg.prefix_length, seed
            )
        return self._prefixes[lang]

    def new_cache(self) -> EditCache:
        """An empty cache bound to this model and configuration."""
        return EditCache(
            model_fingerprint(self.model, self.model_name), METHOD_NAME, self.config.to_dict(), self.config.site
        )

    def locate(self, group: EditGroup) -> LocateResult:
        cfg = self.config
        return locate_lafns(
            self.adapter,
            self.tokenizer,
            group,
            cfg.layers,
            cfg.beta,
            cfg.locate_strategy,
            cfg.seed,
            cfg.locate_batch_size,
        )

    def training_sequences(self, group: EditGroup) -> tuple[list[TrainSequence], dict[str, list[str]]]:
        """All sequences of the objective, and per language the subject forms found in the question."""
        sequences: list[TrainSequence] = []
        subjects: dict[str, list[str]] = {}
        stop = line_break_id(self.tokenizer) if self.config.train_stop_token else None
        for req in group.requests:
            context = f"edit {group.group_id or '?'}, language {req.lang}"
            seqs, span = sequences_for_request(
                self.tokenizer, req, self.prefixes(req.lang), self.config.include_bare_question, context, stop
            )
            sequences += seqs
            subjects[req.lang] = list(dict.fromkeys([req.subject, span.surface]))
        return sequences, subjects

    def edit(self, group: EditGroup, on_step: StepCallback | None = None) -> CachedEdit:
        """Locate the group's LAFNs and learn their update; returns the edit to put in a cache."""
        t0 = time.perf_counter()
        located = self.locate(group)
        t1 = time.perf_counter()
        sequences, subjects = self.training_sequences(group)
        t2 = time.perf_counter()
        result = optimize_delta(
            self.adapter, sequences, located.lafns, self.config, self.tokenizer.pad_token_id, on_step
        )
        edit_id = edit_id_for(group)
        log.info(
            "edit %s: %s neurons in layers %s, %d steps, answer NLL %.3f",
            edit_id,
            sum(located.sizes().values()),
            sorted(located.lafns),
            result.steps,
            result.target_nll,
        )
        info = {
            "method": METHOD_NAME,
            "langs": group.langs,
            "questions": {r.lang: r.question for r in group.requests},
            "answers": {r.lang: r.answer for r in group.requests},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "neurons_per_layer": {str(k): v for k, v in located.sizes().items()},
            "steps": result.steps,
            "final_nll": result.target_nll,
            "final_kl": result.kl,
            "seconds": {
                "locate": round(t1 - t0, 3),
                "prefixes": round(t2 - t1, 3),
                "optimize": round(result.seconds, 3),
            },
        }
        deltas = {layer: (located.lafns[layer], result.deltas[layer].float()) for layer in result.deltas}
        return CachedEdit(edit_id, subjects, deltas, info)

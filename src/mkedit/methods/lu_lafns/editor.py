"""LU-LAFNs end to end for one model: locate, optimise, and package the result as an edit of Eq. 11."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime

import torch

from mkedit.methods.base import EditMethod, edit_id_for, group_info
from mkedit.methods.common.batch import TrainSequence, line_break_id, sequences_for_request, subject_prompt
from mkedit.methods.common.keep import keep_prompts, keep_templates
from mkedit.methods.common.weights import only_trainable
from mkedit.methods.lu_lafns.config import PRESETS, LuLafnConfig, get_preset, preset_for
from mkedit.methods.lu_lafns.locate import LocateResult, locate_lafns
from mkedit.methods.lu_lafns.optimize import StepCallback, optimize_delta
from mkedit.methods.registry import register_method
from mkedit.models.compute_dtype import ComputeDtype, native_matmul
from mkedit.models.device import DTYPES
from mkedit.runtime.cache import Edit
from mkedit.runtime.deltas import neuron_tensors
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.matcher import describe_matcher
from mkedit.runtime.relation_gate import (
    GATE_KEY_LANGS,
    GATE_KEYS,
    RelationGate,
    gate_from_config,
    gate_key_langs,
    gate_keys,
)
from mkedit.types import EditGroup, EditRequest

log = logging.getLogger(__name__)

METHOD_NAME = "lu-lafns"


@register_method
class LuLafnEditor(EditMethod[LuLafnConfig]):
    """Edits one model with LU-LAFNs. The model's weights are never changed: edits are neuron deltas
    added at inference where a cached subject occurs (Eq. 11)."""

    name = METHOD_NAME
    config_class = LuLafnConfig
    facts_share_edit = True
    summary = "the paper's method: ΔV on language-agnostic factual neurons, applied per subject at inference"
    needs_subject_position = True

    def default_config(self) -> LuLafnConfig:
        return preset_for(self.model_name).config

    _gate: RelationGate | None = None

    def prepare_config(self, config: LuLafnConfig) -> LuLafnConfig:
        config = config.replace(layers=self.resolve_layers(config.layers))
        config = self._native_compute_dtype(config)
        if not config.relation_gate:
            return config
        gate = gate_from_config(self.model, self.tokenizer, config.to_dict())
        self._gate = gate
        return config.replace(gate_encoder=gate.encoder_name, gate_threshold=gate.threshold)

    @classmethod
    def preset_config(cls, name: str) -> LuLafnConfig:
        return get_preset(name).config

    @classmethod
    def preset_notes(cls) -> dict[str, str]:
        return {
            name: f"layers {','.join(map(str, p.config.layers))}, beta {p.config.beta}; {p.source}"
            for name, p in PRESETS.items()
        }

    def locate(self, group: EditGroup) -> LocateResult:
        """The group's LAFNs, counted in ``compute_dtype`` as an edit counts them."""
        cfg = self.config
        with self._computing():
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
                self.tokenizer,
                req,
                self.prefixes(req.lang),
                self.config.include_bare_question,
                context,
                stop,
                aligned=group.other_subjects(req.lang),
                chat=self.config.chat_form and bool(self.tokenizer.chat_template),
            )
            sequences += [s for s in seqs if s.kind != "kl" or self.config.lambda_kl > 0]  # λ2 = 0: nothing to run
            if self.config.train_paraphrases:
                sequences += self._paraphrase_sequences(req, context, stop, group.other_subjects(req.lang))
            subjects[req.lang] = list(dict.fromkeys([req.subject, span.surface]))
        if self.config.lambda_keep > 0:
            prompts = keep_prompts(group, keep_templates(self.config.keep_templates))
            for req in group.requests:
                sequences += [subject_prompt(self.tokenizer, t, req.subject, "keep") for t in prompts[req.lang]]
        return sequences, subjects

    def _paraphrase_sequences(
        self, req: EditRequest, context: str, stop: int | None, aligned: Sequence[str]
    ) -> list[TrainSequence]:
        """The new answer after each paraphrase of ``req``'s question (no prefix): more target sequences."""
        sequences: list[TrainSequence] = []
        for paraphrase in req.paraphrases:
            seqs, _ = sequences_for_request(
                self.tokenizer, replace(req, question=paraphrase), (), True, context, stop, aligned=aligned
            )
            sequences += [s for s in seqs if s.kind == "target"]
        return sequences

    def matcher_info(self) -> dict[str, object]:
        return describe_matcher(self.config.match_fold)

    def edit(self, group: EditGroup, on_step: StepCallback | None = None) -> Edit:
        """Locate the group's LAFNs and learn their update; returns the edit to put in a cache."""
        return self.edit_facts([group], edit_id_for(group), on_step)

    def edit_facts(self, groups: Sequence[EditGroup], edit_id: str, on_step: StepCallback | None = None) -> Edit:
        """One ΔV for several facts about one subject: on the union of each fact's LAFNs, trained on the
        union of their sequences (each fact's own Eq. 8 terms; the subject's KL prompts once)."""
        if not groups:
            raise ValueError("edit_facts needs at least one fact")
        self._warn_unreachable_layers()
        t0 = time.perf_counter()
        located = [self.locate(group) for group in groups]
        lafns = _union(located)
        t1 = time.perf_counter()
        sequences: list[TrainSequence] = []
        subjects: dict[str, list[str]] = {}
        for group in groups:
            own, forms = self.training_sequences(group)
            sequences += own
            for lang, surfaces in forms.items():
                subjects[lang] = list(dict.fromkeys([*subjects.get(lang, []), *surfaces]))
        sequences = list(dict.fromkeys(sequences))  # facts about one subject share its KL and keep prompts
        t2 = time.perf_counter()
        # Several facts: every sequence must reach the early-stop NLL (a low mean can hide one fact), and each
        # fact brings its own step budget. One fact: the configured rule (the paper's mean).
        k = len(groups)
        config = (
            self.config
            if k == 1
            else self.config.replace(early_stop="every_sequence", max_steps=self.config.max_steps * k)
        )
        with only_trainable(self.model), self._computing():
            result = optimize_delta(self.adapter, sequences, lafns, config, self.tokenizer.pad_token_id, on_step)
        sizes = {layer: int(idx.numel()) for layer, idx in lafns.items()}
        log.info(
            "edit %s (%d fact(s)): %s neurons in layers %s, %d steps, answer NLL %.3f",
            edit_id,
            len(groups),
            sum(sizes.values()),
            sorted(lafns),
            result.steps,
            result.target_nll,
        )
        facts = [group_info(group) for group in groups]
        info = {
            "method": METHOD_NAME,
            **(facts[0] if len(facts) == 1 else {"facts": facts}),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "neurons_per_layer": {str(k): v for k, v in sizes.items()},
            "steps": result.steps,
            "final_nll": result.target_nll,
            "final_kl": result.kl,
            "final_keep_kl": result.keep_kl,
            "seconds": {
                "locate": round(t1 - t0, 3),
                "prefixes": round(t2 - t1, 3),
                "optimize": round(result.seconds, 3),
            },
        }
        # A layer whose update stayed exactly zero (the model's last, see _warn_unreachable_layers) is not stored.
        deltas = {layer: (lafns[layer], delta.float()) for layer, delta in result.deltas.items() if bool(delta.any())}
        if unchanged := sorted(set(result.deltas) - set(deltas)):
            info["layers_unchanged"] = unchanged
        tensors = neuron_tensors(deltas, self.config.store_values, self.config.store_fraction)
        if self.config.relation_gate:
            assert self._gate is not None  # prepare_config builds it when relation_gate is on
            tensors[GATE_KEYS] = torch.cat([gate_keys(self._gate.encoder, group) for group in groups])
            info[GATE_KEY_LANGS] = [lang for group in groups for lang in gate_key_langs(group)]
        return Edit(edit_id, subjects, tensors, info, METHOD_NAME)

    def _native_compute_dtype(self, config: LuLafnConfig) -> LuLafnConfig:
        """``config`` with ``compute_dtype=model`` (and a warning) when the device lacks native matmuls in the
        asked dtype: there it is not a little slower but ~100x (a CPU without avx512_bf16/AMX)."""
        if config.compute_dtype == "model":
            return config
        device = next(self.model.parameters()).device
        if native_matmul(DTYPES[config.compute_dtype], device):
            return config
        log.warning(
            "compute_dtype=%s asked, but this %s has no native %s matmuls (PyTorch falls back to a loop ~100x "
            "slower than float32); the edit is computed in the model's own dtype instead",
            config.compute_dtype,
            device.type.upper(),
            config.compute_dtype,
        )
        return config.replace(compute_dtype="model")

    _compute: ComputeDtype | None = None

    def _computing(self) -> AbstractContextManager[None]:
        """The model in ``compute_dtype`` (its weights cast once per editor and kept), or as it is."""
        if self.config.compute_dtype == "model":
            return nullcontext()
        dtype = DTYPES[self.config.compute_dtype]
        if self._compute is None or self._compute.dtype != dtype:
            self._compute = ComputeDtype(self.model, dtype)
        return self._compute.active()

    _warned_layers = False

    def _warn_unreachable_layers(self) -> None:
        """Warn (once) when ΔV is configured in the model's last layer: added at the subject's last token, it
        reaches the answer only through attention in later layers, and there are none, so unless the subject
        ends the prompt its gradient is zero and the layer stays unchanged (the paper's Table 4 gives its
        last layer alone about an unedited model's scores)."""
        last = self.adapter.n_layers - 1
        if self._warned_layers or last not in self.config.layers:
            return
        self._warned_layers = True
        log.warning(
            "layer %d is the model's last: an update at the subject's last token cannot reach the answer tokens "
            "there (no attention follows) unless the question ends with the subject, so it mostly stays zero "
            "and is not stored; choose earlier layers",
            last,
        )

    @contextmanager
    def applied(self, edits: Sequence[Edit]) -> Iterator[EditedModel]:
        """The model of Eq. 11 with ``edits`` cached: hooks fire only on inputs holding a cached subject,
        and are registered per forward, so nothing stays on the model after the context."""
        self.check_edits(edits)
        cfg = self.config
        yield EditedModel(self.model, self.tokenizer, list(edits), site=cfg.site, fold=cfg.match_fold, gate=self._gate)


def _union(located: Sequence[LocateResult]) -> dict[int, torch.Tensor]:
    """Per layer, the neurons any of the facts located (sorted)."""
    layers = sorted({layer for result in located for layer in result.lafns})
    return {layer: torch.unique(torch.cat([r.lafns[layer] for r in located if layer in r.lafns])) for layer in layers}

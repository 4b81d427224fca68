"""LoRA-FT (the paper's §4.2 baseline): fine-tune LoRA adapters on the edit's questions and answers in every
language at once, then keep each adapter as a low-rank delta of the weight it adapts.

PEFT builds, initialises and runs the adapters; they live in the model's own module tree only while
``edit()`` trains them, and PEFT's ``unload()`` puts the original modules back. What is kept is
``B @ A * alpha / r`` per adapted projection, stored as two factors in the weight's own layout and added
(then restored exactly) by :func:`~mkedit.methods.common.weights.added_weights` while edits are applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from mkedit.arch import ATTENTION_ROLES, FFN_ROLES, ProjectionRole
from mkedit.errors import MkeditError
from mkedit.languages import get_language
from mkedit.methods.base import EditMethod, edit_id_for, group_info
from mkedit.methods.common.batch import line_break_id
from mkedit.methods.common.weights import added_weights, low_rank_tensors, only_trainable
from mkedit.methods.lora_ft.config import LoraFtConfig, LoraTarget
from mkedit.methods.registry import register_method
from mkedit.methods.view import ModelView
from mkedit.prompting import encode_prompt_answer
from mkedit.runtime.cache import Edit
from mkedit.types import EditGroup

log = logging.getLogger(__name__)

METHOD_NAME = "lora-ft"
PEFT_VERSION = "0.21.2"  # the version this method was written and tested with
INSTALL_HINT = f"pip install 'mkedit[lora]'  (or: pip install peft=={PEFT_VERSION})"
_ADAPTER = "mkedit_edit"  # PEFT's name for the one adapter trained per edit

TARGET_ROLES: dict[LoraTarget, tuple[ProjectionRole, ...]] = {
    "qv": ("q", "v", "qkv"),
    "attn": ATTENTION_ROLES,
    "ffn": FFN_ROLES,
    "all": ATTENTION_ROLES + FFN_ROLES,
}


class PeftNotInstalledError(MkeditError, ImportError):
    """The optional ``peft`` package, which LoRA-FT trains its adapters with, is missing."""


def import_peft() -> ModuleType:
    """``peft``, imported on first use so that mkedit itself does not need it."""
    try:
        import peft
    except ImportError as exc:
        raise PeftNotInstalledError(f"the lora-ft method needs the peft package: {INSTALL_HINT}") from exc
    return peft


@dataclass
class _Batch:
    """Right-padded training sequences and where their answer tokens are predicted from."""

    input_ids: torch.Tensor  # [n, s]
    attention_mask: torch.Tensor  # [n, s]
    rows: torch.Tensor  # [t] sequence of each answer token
    pos: torch.Tensor  # [t] position whose logits predict it (the token before)
    target: torch.Tensor  # [t] the answer token
    weight: torch.Tensor  # [t] 1 / (answer length * n): each sequence counts equally


def _to_batch(sequences: Sequence[tuple[list[int], int]], pad_id: int, device: torch.device) -> _Batch:
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    rows, pos, target, weight = [], [], [], []
    for row, (seq, start) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        answer = range(start, len(seq))
        rows += [row] * len(answer)
        pos += [p - 1 for p in answer]
        target += [seq[p] for p in answer]
        weight += [1.0 / (len(answer) * len(sequences))] * len(answer)

    def long(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return _Batch(
        ids.to(device), mask.to(device), long(rows), long(pos), long(target), torch.tensor(weight, device=device)
    )


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval flag is put back on exit (``model.train(flag)`` would flatten them)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


@register_method
class LoraFtMethod(EditMethod[LoraFtConfig]):
    """Fine-tunes LoRA adapters (PEFT) on all languages of a group; edits are the adapters' weight deltas."""

    name = METHOD_NAME
    config_class = LoraFtConfig
    summary = "LoRA fine-tuning (PEFT) on every language of the edit; applied as low-rank weight deltas"

    def prepare_config(self, config: LoraFtConfig) -> LoraFtConfig:
        if config.layers is None:
            return config
        return config.replace(layers=self.resolve_layers(config.layers))

    # --- what is trained ----------------------------------------------------------------------------
    def target_modules(self) -> list[str]:
        """Full names of the projections LoRA adapts, chosen by role through the architecture adapter."""
        cfg = self.config
        roles = TARGET_ROLES[cfg.target]
        layers = cfg.layers if cfg.layers is not None else range(self.adapter.n_layers)
        wanted = {id(m) for layer in layers for role, m in self.adapter.projections(layer).items() if role in roles}
        names = [name for name, module in self.model.named_modules() if id(module) in wanted]
        if not names:
            raise ValueError(f"target {cfg.target!r} selects no projection in layers {list(layers)}")
        return names

    def training_sequences(self, group: EditGroup) -> list[tuple[list[int], int]]:
        """(ids, first answer index) of each question (bare, then after each prefix) with its answer."""
        stop = line_break_id(self.tokenizer) if self.config.train_stop_token else None
        sequences = []
        for req in group.requests:
            heads = ["", *(p + get_language(req.lang).sentence_sep for p in self.prefixes(req.lang))]
            for head in heads:
                pair = encode_prompt_answer(self.tokenizer, head + req.question, req.answer, req.lang)
                sequences.append((pair.input_ids + ([stop] if stop is not None else []), pair.answer_start))
        return sequences

    def _answer_nll(self, batch: _Batch) -> torch.Tensor:
        """Mean over sequences of the mean NLL of their answer tokens; the head runs at answer positions only."""
        hidden = self.adapter.base_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
        logits = self.adapter.logits_from_hidden(hidden[batch.rows, batch.pos]).float()
        nll = F.cross_entropy(logits, batch.target, reduction="none")
        return (nll * batch.weight).sum()

    # --- the protocol ----------------------------------------------------------------------------------
    def edit(self, group: EditGroup) -> Edit:
        """Train adapters on the group, read them out as low-rank deltas, and remove them again."""
        peft = import_peft()
        cfg = self.config
        t0 = time.perf_counter()
        targets = self.target_modules()
        device = next(self.model.parameters()).device
        batch = _to_batch(self.training_sequences(group), self.tokenizer.pad_token_id, device)
        param_names = {id(p): name for name, p in self.model.named_parameters()}
        lora_config = peft.LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            fan_in_fan_out=self.adapter.transposed_weights,
            bias="none",
        )
        history: list[float] = []
        with only_trainable(self.model), _modes_kept(self.model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model.eval()  # the base model's own dropout stays off: it is the inference model being edited
            tuner = peft.LoraModel(self.model, lora_config, _ADAPTER)
            try:
                layers = [m for m in self.model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
                for layer in layers:
                    layer.lora_dropout[_ADAPTER].train()
                params = [p for p in self.model.parameters() if p.requires_grad]
                optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
                for step in range(cfg.max_steps + 1):
                    loss = self._answer_nll(batch)
                    history.append(loss.item())
                    if step == cfg.max_steps or history[-1] < cfg.early_stop_nll:
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                deltas = {param_names[id(layer.get_base_layer().weight)]: self._factors(layer) for layer in layers}
            finally:
                tuner.unload()
        seconds = time.perf_counter() - t0
        edit_id = edit_id_for(group)
        log.info("edit %s: %d steps, answer NLL %.3f -> %.4f", edit_id, len(history) - 1, history[0], history[-1])
        info = {
            **group_info(group),
            "steps": len(history) - 1,
            "initial_nll": history[0],
            "final_nll": history[-1],
            "adapted": len(deltas),
            "seconds": round(seconds, 3),
        }
        subjects = {req.lang: [req.subject] for req in group.requests}
        return Edit(edit_id, subjects, low_rank_tensors(deltas), info, METHOD_NAME)

    @staticmethod
    def _factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) with ``left @ right`` = PEFT's delta ``B @ A * scaling`` in the base weight's layout:
        ``[out, r] @ [r, in]``, or its transpose ``[in, r] @ [r, out]`` where weights are stored ``[in, out]``."""
        a = layer.lora_A[_ADAPTER].weight.detach().float()  # [r, in]
        b = layer.lora_B[_ADAPTER].weight.detach().float() * layer.scaling[_ADAPTER]  # [out, r]
        return (a.T, b.T) if layer.fan_in_fan_out else (b, a)

    @contextmanager
    def applied(self, edits: Sequence[Edit]) -> Iterator[ModelView]:
        """The model with every edit's deltas added (stacked, in order); the original weights come back on exit."""
        self.check_edits(edits)
        with added_weights(self.model, edits):
            yield ModelView(self.model, [e.edit_id for e in edits])

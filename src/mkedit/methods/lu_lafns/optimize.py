"""Editing stage (Eq. 7-10): learn one update ΔV on the LAFNs, shared by every language of a group.

    L = λ1 · mean_{ℓ,m} NLL(y_ℓ | p_m + x_ℓ)  +  λ2 · mean_ℓ KL(P_base(· | s_ℓ is a) || P_edit(· | s_ℓ is a))
        [+ λ_keep · mean_{ℓ,k} KL(P_base(· | keep_k(s_ℓ)) || P_edit(· | keep_k(s_ℓ)))]

The bracketed keep term is mkedit's, not the paper's (``lambda_keep``, 0 by default): other-relation
questions about the subject whose prediction must not move.

ΔV is added at the subject's last token of every sequence. The speed switches of the config change
how the same objective is computed, never its value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mkedit.arch import FFNAdapter
from mkedit.arch.hooks import capture_site_values, neuron_updates
from mkedit.arch.replay import capture_block_output, replaying
from mkedit.methods.common.batch import (
    EDIT_KEY,
    TensorBatch,
    TrainSequence,
    prefix_cache,
    read_logprobs,
    to_tensor_batch,
)
from mkedit.methods.lu_lafns.config import LuLafnConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """One optimisation step, as ``on_step`` sees it: the loss, the mean answer NLL over the target sequences and
    the highest one (the quantities the ``mean`` and ``every_sequence`` early stops compare with ``early_stop_nll``)."""

    step: int
    loss: float
    nll: float
    worst_nll: float


StepCallback = Callable[[StepReport], None]


@dataclass
class OptimizeResult:
    deltas: dict[int, torch.Tensor]  # layer -> ΔV values on that layer's LAFNs
    steps: int
    target_nll: float
    kl: float
    keep_kl: float
    history: list[float] = field(default_factory=list)  # total loss per step
    seconds: float = 0.0


@dataclass
class _Prepared:
    """What one batch needs before the loop: base KL distributions, replayable lower blocks, and the
    keys/values of the columns before the subjects."""

    batch: TensorBatch
    base_kl: torch.Tensor  # [n_kl + n_keep, vocab] log-probs of the untouched model
    lower: object | None
    past: Any = None


def _prepare(
    adapter: FFNAdapter, batch: TensorBatch, config: LuLafnConfig, first_layer: int
) -> tuple[_Prepared, dict[int, torch.Tensor]]:
    """One no-grad forward without ΔV: base KL log-probs, base neuron values at the subject tokens
    (for the norm bound), and the lower blocks' output for replay."""
    past = prefix_cache(adapter, batch) if batch.split > 0 else None
    start = batch.split if past is not None else 0
    with ExitStack() as stack, torch.no_grad():
        values = stack.enter_context(capture_site_values(adapter, config.layers, config.site))
        lower = (
            stack.enter_context(capture_block_output(adapter, first_layer - 1))
            if config.reuse_lower_layers and first_layer > 0
            else None
        )
        base = read_logprobs(adapter, batch, batch.kl_rows, batch.kl_pos, not config.answer_logits_only, past)
    subject_values = {
        layer: v[batch.subject_rows, batch.subject_pos - start] for layer, v in values.items()
    }  # [n_target, d_ffn]
    return _Prepared(batch, base, lower["out"] if lower is not None else None, past), subject_values


def _batch_loss(
    adapter: FFNAdapter, prepared: _Prepared, config: LuLafnConfig, first_layer: int, updates: dict
) -> tuple[torch.Tensor, float, float, float, float]:
    """The loss, its NLL, KL and keep terms, and the highest answer NLL of one target sequence (mean over its
    answer tokens)."""
    batch = prepared.batch
    with ExitStack() as stack:
        if prepared.lower is not None:
            stack.enter_context(replaying(adapter, first_layer, prepared.lower))
        stack.enter_context(neuron_updates(adapter, updates, batch.placements, config.site))
        rows, pos = batch.read_positions()
        logp = read_logprobs(adapter, batch, rows, pos, not config.answer_logits_only, prepared.past)
    n_t = batch.target_rows.numel()
    token_logp = logp[:n_t].gather(1, batch.target_ids.unsqueeze(1)).squeeze(1)
    nll = -(token_logp * batch.target_weight).sum()
    with torch.no_grad():
        rows_nll = torch.zeros(batch.input_ids.shape[0], device=token_logp.device).index_add_(
            0, batch.target_rows, -token_logp.float()
        )
        tokens = torch.bincount(batch.target_rows, minlength=batch.input_ids.shape[0])
        worst = float((rows_nll[tokens > 0] / tokens[tokens > 0]).max()) if n_t else 0.0
    kl_rows = F.kl_div(logp[n_t:], prepared.base_kl, log_target=True, reduction="none").sum(-1)
    kl = (kl_rows * batch.kl_weight).sum()
    keep = (kl_rows * batch.keep_weight).sum()
    loss = config.lambda_target * nll + config.lambda_kl * kl + config.lambda_keep * keep
    return loss, nll.item(), kl.item(), keep.item(), worst


def optimize_delta(
    adapter: FFNAdapter,
    sequences: Sequence[TrainSequence],
    lafns: dict[int, torch.Tensor],
    config: LuLafnConfig,
    pad_id: int,
    on_step: StepCallback | None = None,
) -> OptimizeResult:
    """Adam on ΔV until the answer NLL (``early_stop``: the mean, or every sequence's) falls below
    ``early_stop_nll``, or ``max_steps`` is reached."""
    start = time.perf_counter()
    device = next(adapter.model.parameters()).device
    layers = sorted(lafns)
    first_layer = layers[0]
    n_target, n_kl, n_keep = (sum(s.kind == kind for s in sequences) for kind in ("target", "kl", "keep"))
    groups = [list(sequences)] if config.batch_sequences else [[s] for s in sequences]
    batches = [to_tensor_batch(g, pad_id, n_target, n_kl, device, n_keep, config.reuse_prefix) for g in groups]
    cfg = config.replace(layers=tuple(layers))
    prepared, base_values = [], {layer: [] for layer in layers}
    for batch in batches:
        prep, values = _prepare(adapter, batch, cfg, first_layer)
        prepared.append(prep)
        for layer in layers:
            base_values[layer].append(values[layer])
    bounds = {}
    for layer in layers:
        v = torch.cat(base_values[layer])[:, lafns[layer].to(device)].float()
        bounds[layer] = config.max_delta_norm_ratio * max(float(v.norm(dim=-1).mean()), 1e-3)

    # float32 whatever the model's dtype: Adam's small steps would round away in bfloat16 (hooks cast on use)
    deltas = {
        layer: torch.zeros(lafns[layer].numel(), device=device, dtype=torch.float32, requires_grad=True)
        for layer in layers
    }
    updates = {EDIT_KEY: {layer: (lafns[layer].to(device), deltas[layer]) for layer in layers}}
    optimizer = torch.optim.Adam(list(deltas.values()), lr=config.learning_rate)
    history: list[float] = []
    nll = kl = keep = float("nan")
    steps = 0
    for step in range(config.max_steps):
        optimizer.zero_grad(set_to_none=True)
        parts = [_batch_loss(adapter, prep, cfg, first_layer, updates) for prep in prepared]
        loss = torch.stack([part[0] for part in parts]).sum()
        total = loss.item()
        nll, kl, keep = (sum(part[i] for part in parts) for i in (1, 2, 3))
        worst = max(part[4] for part in parts)
        history.append(total)
        steps = step + 1
        if on_step is not None:
            on_step(StepReport(steps, total, nll, worst))
        if (worst if config.early_stop == "every_sequence" else nll) < config.early_stop_nll:
            break  # before the backward pass, which this step no longer needs
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for layer, delta in deltas.items():
                norm = float(delta.norm())
                if norm > bounds[layer]:
                    delta.mul_(bounds[layer] / norm)
    log.debug("optimised ΔV in %d steps: nll %.4f kl %.4f keep %.4f", steps, nll, kl, keep)
    return OptimizeResult(
        deltas={layer: d.detach().clone() for layer, d in deltas.items()},
        steps=steps,
        target_nll=nll,
        kl=kl,
        keep_kl=keep,
        history=history,
        seconds=time.perf_counter() - start,
    )

"""Keys and target values of one language's request (ROME's compute_u/compute_v, MEMIT's compute_ks/compute_z).

A language's batch (built by ``common.batch.sequences_for_request``) holds the bare question and the question
after each random prefix, all followed by the new answer, and one "{subject} is a" prompt; every row knows
its subject's last token. The value optimisation adds one free vector per site at that token of every row
and minimises

    NLL(answer | prefix + question) + kl_factor · KL(base || edited on the KL prompt)
    + v_weight_decay · Σ_site ||δ_site|| / ||v_site||²,

with ``||δ_site|| <= clamp_norm_factor · ||v_site||``, where ``v_site`` is the site's output at the bare
question. The KL is read at the KL prompt's last token (as LU-LAFNs' Eq. 9), not at its subject. A key
(W_out's input at the subject's last token) is averaged uniformly over the bare and prefixed questions
(the reference weighs the bare question as one of two template groups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mkedit.arch import FFNAdapter
from mkedit.arch.replay import capture_block_output, replaying
from mkedit.methods.common.batch import TensorBatch, prefix_cache, read_logprobs
from mkedit.methods.locate_edit.config import LocateEditConfig
from mkedit.methods.locate_edit.hooks import FFNDeltas, Site, added_at, captured, ffn_deltas, truncated_after


@dataclass
class ValueResult:
    """Per site: ``init`` (output at the bare question's subject) and ``target = init + delta``, ``[d_model]``."""

    init: dict[Site, torch.Tensor]
    target: dict[Site, torch.Tensor]
    steps: int
    nll_before: float
    nll: float
    kl: float


@dataclass
class Reading:
    """Keys averaged over the rows (``key_mean``), keys and site outputs at the bare question (row 0)."""

    key_mean: dict[int, torch.Tensor]  # layer -> [d_ffn]
    key_bare: dict[int, torch.Tensor]  # layer -> [d_ffn]
    output: dict[tuple[Site, int], torch.Tensor]  # (site, layer) -> [d_model]


def _all_rows(batch: TensorBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, subject position) of every row, target and KL prompts alike."""
    device = batch.input_ids.device
    rows = torch.tensor([p.row for p in batch.placements], device=device)
    pos = torch.tensor([p.pos for p in batch.placements], device=device)
    return rows, pos


@torch.no_grad()
def read_at_subject(
    adapter: FFNAdapter,
    batch: TensorBatch,
    key_layers: Sequence[int],
    sites: Sequence[tuple[Site, int]],
    in_force: FFNDeltas | None = None,
) -> Reading:
    """One forward of ``batch`` (with ``in_force`` weight deltas simulated): keys and site outputs at the
    subject's last token. Rows 0.. of the batch are the target sequences, row 0 the bare question."""
    with ExitStack() as stack:
        stack.enter_context(ffn_deltas(adapter, in_force or {}))
        seen = stack.enter_context(captured(adapter, key_layers, sites))
        stack.enter_context(truncated_after(adapter, max([*key_layers, *(layer for _, layer in sites)])))
        adapter.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    rows, pos = batch.subject_rows, batch.subject_pos
    return Reading(
        key_mean={layer: seen[("key", layer)][rows, pos].float().mean(0) for layer in key_layers},
        key_bare={layer: seen[("key", layer)][rows[0], pos[0]].float() for layer in key_layers},
        output={(site, layer): seen[(site, layer)][rows[0], pos[0]].float() for site, layer in sites},
    )


@dataclass
class _Prepared:
    """What every step of one value optimisation reuses: the base KL log-probs, each site's output at the bare
    question, the lower blocks' output for replay, and, for a subject-aligned batch, the keys and values of
    the columns before the subjects (``past``; ``start`` is then the first column a step computes)."""

    batch: TensorBatch
    base_kl: torch.Tensor
    init: dict[Site, torch.Tensor]
    lower: torch.Tensor | None
    past: Any
    rows: torch.Tensor  # every row, target and KL prompts alike
    pos: torch.Tensor  # each row's subject position, counted from ``start``


def _prepare(
    adapter: FFNAdapter, batch: TensorBatch, layer: int, sites: Sequence[Site], in_force: FFNDeltas | None
) -> _Prepared:
    """One no-grad forward without the value deltas (with ``in_force`` simulated).

    A subject-aligned batch (``to_tensor_batch(..., align_subjects=True)``) has every subject end in column
    ``split``; no value delta reaches the columns before it, so they are computed once here, as LU-LAFNs does."""
    with ExitStack() as stack, torch.no_grad():
        stack.enter_context(ffn_deltas(adapter, in_force or {}))
        past = prefix_cache(adapter, batch) if batch.split > 0 else None
        seen = stack.enter_context(captured(adapter, (), [(site, layer) for site in sites]))
        lower = stack.enter_context(capture_block_output(adapter, layer - 1)) if layer > 0 else None
        base_kl = read_logprobs(adapter, batch, batch.kl_rows, batch.kl_pos, full_logits=False, past=past)
    start = batch.split if past is not None else 0
    row, pos = batch.subject_rows[0], batch.subject_pos[0] - start
    init = {site: seen[(site, layer)][row, pos].float() for site in sites}
    rows, positions = _all_rows(batch)
    return _Prepared(batch, base_kl, init, lower["out"] if lower is not None else None, past, rows, positions - start)


def _loss(
    adapter: FFNAdapter,
    prepared: _Prepared,
    layer: int,
    deltas: Mapping[Site, torch.Tensor],
    in_force: FFNDeltas | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer NLL and the KL term with ``deltas`` added at every row's subject."""
    batch = prepared.batch
    with ExitStack() as stack:
        stack.enter_context(ffn_deltas(adapter, in_force or {}))
        if prepared.lower is not None:
            stack.enter_context(replaying(adapter, layer, prepared.lower))
        stack.enter_context(added_at(adapter, layer, deltas, prepared.rows, prepared.pos))
        rows, pos = batch.read_positions()
        logp = read_logprobs(adapter, batch, rows, pos, full_logits=False, past=prepared.past)
    n_t = batch.target_rows.numel()
    token_logp = logp[:n_t].gather(1, batch.target_ids.unsqueeze(1)).squeeze(1)
    nll = -(token_logp * batch.target_weight).sum()
    kl = (F.kl_div(logp[n_t:], prepared.base_kl, log_target=True, reduction="none").sum(-1) * batch.kl_weight).sum()
    return nll, kl


def optimise_value(
    adapter: FFNAdapter,
    batch: TensorBatch,
    layer: int,
    sites: Sequence[Site],
    config: LocateEditConfig,
    in_force: FFNDeltas | None = None,
) -> ValueResult:
    """Learn the site outputs at ``layer`` that make the model give the new answer (see the module doc).
    ``batch`` may be right-padded or subject-aligned; the objective is the same, the aligned one cheaper."""
    prepared = _prepare(adapter, batch, layer, sites, in_force)
    init = prepared.init
    deltas = {site: torch.zeros_like(init[site], requires_grad=True) for site in sites}
    optimizer = torch.optim.Adam(list(deltas.values()), lr=config.v_lr)
    nll_before = nll_value = kl_value = float("nan")
    steps = 0
    for step in range(config.v_num_grad_steps):
        optimizer.zero_grad(set_to_none=True)
        nll, kl = _loss(adapter, prepared, layer, deltas, in_force)
        decay = sum(deltas[s].norm() / init[s].norm().clamp_min(1e-6) ** 2 for s in sites)
        loss = nll + config.kl_factor * kl + config.v_weight_decay * decay
        steps = step + 1
        nll_value, kl_value = nll.item(), kl.item()
        if step == 0:
            nll_before = nll_value
        if loss.item() < config.early_stop_loss or step == config.v_num_grad_steps - 1:
            break
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for site, delta in deltas.items():
                bound = config.clamp_norm_factor * float(init[site].norm())
                norm = float(delta.norm())
                if norm > bound:
                    delta.mul_(bound / norm)
    target = {site: (init[site] + deltas[site]).detach() for site in sites}
    return ValueResult(init, target, steps, nll_before, nll_value, kl_value)

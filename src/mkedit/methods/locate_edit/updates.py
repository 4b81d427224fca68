"""The weight-update rules: ROME's rank-one insertion and the MEMIT/PMET least-squares spread.

All in ``y = W k`` layout (``W: [d_model, d_ffn]``), float64, returned as low-rank factors
``ΔW = left @ right``; :func:`param_layout` turns them into the parameter's own layout.
"""

from __future__ import annotations

import torch

RIDGE = 1e-6
"""ROME solves ``C u = k``; a ridge of this fraction of C's mean diagonal keeps a C estimated from few
texts invertible without changing a well-estimated one."""


def rank_one(
    residual: torch.Tensor, key_mean: torch.Tensor, key_bare: torch.Tensor, moment: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME: ``ΔW = r uᵀ / (uᵀ k_bare)`` with ``u = C⁻¹ k_mean``.

    ``residual`` ``[d_model]`` is the target output minus W_out's current output at the bare question,
    whose key is ``key_bare`` ``[d_ffn]``; so ``(W + ΔW) k_bare`` is exactly the target, and the change
    points along ``C⁻¹ k_mean`` (the direction that disturbs other keys least). Returns ``[d_model, 1]``,
    ``[1, d_ffn]``.
    """
    c = moment.double()
    ridge = RIDGE * c.diagonal().mean().clamp_min(1e-12)
    u = torch.linalg.solve(c + ridge * torch.eye(c.shape[0], dtype=c.dtype), key_mean.double().cpu())
    scale = torch.dot(u, key_bare.double().cpu())
    if scale.abs() < 1e-12:
        raise ArithmeticError("ROME's key projection is zero: the key statistics do not cover this key")
    return residual.double().cpu().unsqueeze(1), (u / scale).unsqueeze(0)


def spread(
    residuals: torch.Tensor, keys: torch.Tensor, moment: torch.Tensor, update_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT/PMET: ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` — the least-squares update that maps the keys ``K``
    ``[d_ffn, n]`` onto the residuals ``R`` ``[d_model, n]`` while keeping ``W k`` for the corpus keys,
    weighted by ``λ = update_weight``. Returns ``R`` ``[d_model, n]`` and ``((λC + KKᵀ)⁻¹ K)ᵀ`` ``[n, d_ffn]``.
    """
    k = keys.double().cpu()
    system = update_weight * moment.double() + k @ k.T
    adjusted = torch.linalg.solve(system, k)  # [d_ffn, n]
    return residuals.double().cpu(), adjusted.T.contiguous()


def param_layout(left: torch.Tensor, right: torch.Tensor, transposed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of ΔW in the parameter's layout: ``[d_model, r] @ [r, d_ffn]`` for ``nn.Linear``,
    ``[d_ffn, r] @ [r, d_model]`` (``ΔWᵀ = rightᵀ leftᵀ``) for GPT-2's ``Conv1D``."""
    if transposed:
        return right.T.contiguous(), left.T.contiguous()
    return left, right


def concat(
    first: tuple[torch.Tensor, torch.Tensor] | None, second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of the sum of two low-rank updates (ranks add up)."""
    if first is None:
        return second
    return torch.cat([first[0], second[0]], dim=1), torch.cat([first[1], second[1]], dim=0)

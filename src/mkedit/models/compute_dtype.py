"""Run a loaded model in another floating dtype for a while, leaving its own weights untouched.

An edit on a float32 model can be computed in bfloat16 (about twice as fast on CPUs with native bfloat16
matmuls) while evaluation and serving keep the float32 model: inside :meth:`ComputeDtype.active` every
floating parameter's data is a cast copy, made once and kept, and on exit the original tensors are put back
(the same objects, so nothing is rounded). Buffers are left alone (rotary frequencies stay float32).

On a CPU *without* native half-precision matmuls PyTorch falls back to a plain loop: one FFN-shaped bfloat16
product took 2,238 ms against 16 ms in float32 on an AVX2-only EPYC (README, performance; ``native_matmul``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

_ONEDNN_QUERIES: dict[torch.dtype, tuple[str, tuple[str, ...]]] = {
    torch.bfloat16: ("_is_mkldnn_bf16_supported", ("avx512_bf16", "amx_bf16")),
    torch.float16: ("_is_mkldnn_fp16_supported", ("avx512_fp16", "amx_fp16")),
}


def native_matmul(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether ``device`` multiplies ``dtype`` matrices natively: always on GPUs and for float32/float64; on a
    CPU, what oneDNN reports (or, where PyTorch cannot say, the CPU flags in ``/proc/cpuinfo``)."""
    if torch.device(device).type != "cpu" or dtype not in _ONEDNN_QUERIES:
        return True
    query, flags = _ONEDNN_QUERIES[dtype]
    ask: Callable[[], bool] | None = getattr(torch.ops.mkldnn, query, None)
    try:
        if ask is not None:
            return bool(ask())
    except RuntimeError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return True  # nothing to go by: trust the configuration
    present = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    return any(flag in present for flag in flags)


class ComputeDtype:
    """Swaps ``model``'s floating parameters for ``dtype`` copies while :meth:`active`; a no-op when the model
    already is in ``dtype``. The copies are kept between calls (memory: one more model in ``dtype``), so they
    assume the weights do not change in between, as LU-LAFNs never changes them."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype
        self._copies: dict[int, torch.Tensor] = {}

    @property
    def changes_model(self) -> bool:
        return any(p.is_floating_point() and p.dtype != self.dtype for p in self.model.parameters())

    @contextmanager
    def active(self) -> Iterator[None]:
        params = [p for p in self.model.parameters() if p.is_floating_point() and p.dtype != self.dtype]
        originals = [p.data for p in params]
        try:
            for param, data in zip(params, originals, strict=True):
                copy = self._copies.get(id(param))
                if copy is None or copy.shape != data.shape or copy.device != data.device:
                    copy = self._copies[id(param)] = data.to(self.dtype)
                param.data = copy
            yield
        finally:
            for param, data in zip(params, originals, strict=True):
                param.data = data

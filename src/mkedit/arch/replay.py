"""Skip the layers below the first edited one: their output does not depend on the update.

During optimisation the same batch goes through the model every step. Blocks below the first edited
layer see no update, so their output is captured once and replayed: those blocks are swapped for a
module that returns the captured output, whatever the family's block returns (tensor or tuple).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mkedit.arch.base import FFNAdapter


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    return value


class _Replay(nn.Module):
    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@contextmanager
def capture_block_output(adapter: FFNAdapter, block: int) -> Iterator[dict[str, Any]]:
    """Keep block ``block``'s output of the next forward under key ``"out"``."""
    captured: dict[str, Any] = {}

    def hook(_m: nn.Module, _i: tuple, out: Any) -> None:
        captured["out"] = _detach(out)

    handle = adapter.layers()[block].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def replaying(adapter: FFNAdapter, first_layer: int, block_output: Any) -> Iterator[None]:
    """Blocks ``0 .. first_layer - 1`` return ``block_output`` (captured from block ``first_layer - 1``
    on the same batch) instead of computing. Only valid for forwards on that batch."""
    layers = adapter.layers()
    originals = [layers[i] for i in range(first_layer)]
    replay = _Replay(block_output)
    try:
        for i in range(first_layer):
            layers[i] = replay
        yield
    finally:
        for i, block in enumerate(originals):
            layers[i] = block

"""Architecture adapters: the only code that knows Hugging Face module paths."""

from __future__ import annotations

from torch import nn

from mkedit.arch.base import ATTENTION_ROLES, FFN_ROLES, FFNAdapter, NeuronSite, ProjectionRole
from mkedit.arch.bloom import BloomAdapter
from mkedit.arch.gated import GatedFFNAdapter
from mkedit.arch.gpt2 import GPT2Adapter
from mkedit.errors import UnsupportedArchitectureError

ADAPTERS: tuple[type[FFNAdapter], ...] = (GatedFFNAdapter, BloomAdapter, GPT2Adapter)


def supported_model_types() -> list[str]:
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def get_adapter(model: nn.Module) -> FFNAdapter:
    """The adapter for ``model``'s family; a clear error listing the supported ones otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(model)
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r} ({type(model).__name__}); supported model types: "
        + ", ".join(supported_model_types())
        + ". Adding one is a small adapter in mkedit/arch/."
    )


__all__ = [
    "ADAPTERS",
    "ATTENTION_ROLES",
    "FFN_ROLES",
    "FFNAdapter",
    "NeuronSite",
    "ProjectionRole",
    "get_adapter",
    "supported_model_types",
]

"""The one place that knows where a model family keeps its FFN neurons.

A neuron, as in the paper (Eq. 2-3), is one output of ``act_fn(h @ W1)``: shape ``[batch, seq, d_ffn]``.
Methods never touch module paths; they ask an adapter for the activation module (whose *output* is
the neurons) and for the down-projection (whose *input* is what W_out multiplies: the neurons
themselves in a plain FFN, ``act_fn(h W1) * (h W2)`` in a gated one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

import torch
from torch import nn

NeuronSite = Literal["act_fn", "down_proj_input"]

ProjectionRole = Literal["q", "k", "v", "qkv", "o", "gate", "up", "down"]
"""A block's weight projections by role: attention query, key, value (``qkv`` where fused) and output;
FFN ``gate`` (gated FFNs only), ``up`` (the other input projection: W2 of Eq. 3, W1 of a plain FFN) and
``down`` (W_out)."""
ATTENTION_ROLES: tuple[ProjectionRole, ...] = ("q", "k", "v", "qkv", "o")
FFN_ROLES: tuple[ProjectionRole, ...] = ("gate", "up", "down")


class FFNAdapter(ABC):
    """Access to the FFN neurons of one model family."""

    model_types: ClassVar[tuple[str, ...]]  # HF ``config.model_type`` values this adapter serves
    gated: ClassVar[bool]
    transposed_weights: ClassVar[bool] = False
    """Projection weights are stored ``[in, out]`` (GPT-2's ``Conv1D``) instead of ``[out, in]`` (``nn.Linear``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self._check_distinct_activations()

    @property
    def base_model(self) -> nn.Module:
        """The transformer without its output head (returns ``last_hidden_state``)."""
        return self.model.base_model

    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order."""

    @abstractmethod
    def activation_module(self, layer: int) -> nn.Module:
        """Module whose forward output is ``act_fn(h W1)`` of ``layer``: ``[batch, seq, d_ffn]``."""

    @abstractmethod
    def down_proj_module(self, layer: int) -> nn.Module:
        """Module whose forward input is multiplied by W_out of ``layer``: ``[batch, seq, d_ffn]``."""

    @abstractmethod
    def projections(self, layer: int) -> dict[ProjectionRole, nn.Module]:
        """The weight projections of block ``layer`` by role (for methods that adapt whole matrices, e.g. LoRA)."""

    @property
    @abstractmethod
    def d_ffn(self) -> int:
        """Number of neurons per FFN layer."""

    @property
    def n_layers(self) -> int:
        return len(self.layers())

    @property
    def d_model(self) -> int:
        """Width of the residual stream (what W_out writes into)."""
        return int(self.model.get_input_embeddings().weight.shape[1])

    def block_module(self, layer: int) -> nn.Module:
        """Decoder block ``layer``; its forward output (a tensor, or a tuple whose first item is one) is the
        residual stream ``[batch, seq, d_model]`` after the block."""
        return self.layers()[layer]

    def attn_out_module(self, layer: int) -> nn.Module:
        """Module whose forward output is the attention's output projection ``[batch, seq, d_model]``, before
        the residual add (and before Gemma's post-attention norm)."""
        return self.projections(layer)["o"]

    def ffn_out_param(self, layer: int) -> tuple[str, bool]:
        """W_out of ``layer``: its name in ``model.named_parameters()`` and whether it is stored transposed,
        ``[d_ffn, d_model]`` (GPT-2's ``Conv1D``), rather than ``[d_model, d_ffn]`` (``nn.Linear``)."""
        target = self.down_proj_module(layer).weight
        for name, param in self.model.named_parameters():
            if param is target:
                return name, self.transposed_weights
        raise RuntimeError(f"W_out of layer {layer} is not among the model's named parameters")

    def resolve_layer(self, layer: int) -> int:
        """Accept negative indices (``-1`` = last layer) and check the range."""
        n = self.n_layers
        resolved = layer + n if layer < 0 else layer
        if not 0 <= resolved < n:
            raise ValueError(f"layer {layer} out of range for a {n}-layer model")
        return resolved

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the output head (and any final logit soft-capping) to final hidden states ``[..., d]``."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _check_distinct_activations(self) -> None:
        """Hooks rely on one activation module per layer; a shared one would mix layers silently."""
        modules = [id(self.activation_module(i)) for i in range(self.n_layers)]
        if len(set(modules)) != len(modules):
            raise RuntimeError(
                f"{type(self.model).__name__} shares one activation module across layers; "
                "per-layer neuron hooks are impossible on it"
            )

    def site_module(self, layer: int, site: NeuronSite) -> tuple[nn.Module, Literal["output", "input"]]:
        """Where a neuron-space update for ``site`` is added: (module, which side of its forward)."""
        if site not in get_args(NeuronSite):  # an unknown site must not move the updates silently
            raise ValueError(f"unknown neuron site {site!r}; known: {', '.join(get_args(NeuronSite))}")
        if site == "act_fn" or not self.gated:
            return self.activation_module(layer), "output"
        return self.down_proj_module(layer), "input"

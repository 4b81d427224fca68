"""A cheap identity for a model, so that a saved edit is never applied to a model it was not made for.

Hashing every weight of a 7B model would take minutes, so the weights hash covers a few slices
(the input embedding's first rows, and the first, middle and last parameters), rounded to bfloat16 and
hashed on the CPU: any real change of checkpoint changes them, and the result depends neither on the
device nor on the dtype the model was loaded in (an edit made in float32 on a CPU applies to the same
model in bfloat16 on a GPU). Fingerprints written before the rounding (``weights_rounding`` float32) are
still checked their way.
The config hash leaves out keys that change with the loading route but not with the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mkedit.errors import CacheError

# Keys that differ between loading routes (GGUF, safetensors, hub, from_config) or library versions for
# one model. ``architectures`` is among them (None after GGUF loading or ``from_config``, filled in by
# ``save_pretrained``); the model's class name is hashed instead.
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "quantization_config",
        "_commit_hash",
        "architectures",
    }
)
EMBEDDING_ROWS = 64
ELEMENTS_PER_PARAMETER = 4096
ROUNDINGS = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class ModelFingerprint:
    """Config and weights hashes of a model; ``name`` is informational only."""

    name: str
    config_hash: str
    weights_hash: str
    weights_rounding: str = "bfloat16"
    """dtype the weight slices were rounded to before hashing (older caches: float32, no rounding)."""

    def matches(self, other: ModelFingerprint) -> bool:
        """Same config and same sampled weights; the name may differ (a path vs. a short name)."""
        return (
            self.config_hash == other.config_hash
            and self.weights_hash == other.weights_hash
            and self.weights_rounding == other.weights_rounding
        )

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        """Inverse of ``to_dict``; CacheError on a missing or non-string field."""
        try:
            fields = {key: data[key] for key in ("name", "config_hash", "weights_hash")}
        except (KeyError, TypeError) as exc:
            raise CacheError(f"malformed model fingerprint {data!r}: missing {exc}") from None
        fields["weights_rounding"] = data.get("weights_rounding", "float32")
        bad = [key for key, value in fields.items() if not isinstance(value, str)]
        if bad or fields["weights_rounding"] not in ROUNDINGS:
            raise CacheError(f"malformed model fingerprint {data!r}: {', '.join(bad) or 'weights_rounding'}")
        return cls(**fields)


def _clean(value: Any) -> Any:
    """Drop volatile and private keys at every level of a config dict."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in VOLATILE_CONFIG_KEYS and not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def config_hash(config: Any, model_class: str | None = None) -> str:
    """sha256 of the config's JSON with sorted keys, volatile keys removed, plus the model class name."""
    payload = {"config": _clean(config.to_dict()), "model_class": model_class}
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _update(digest: Any, label: str, tensor: torch.Tensor, rounding: torch.dtype) -> None:
    flat = tensor.detach().reshape(-1)[:ELEMENTS_PER_PARAMETER]
    data = flat.to(device="cpu").to(rounding).float().contiguous()
    digest.update(f"{label}:{tuple(tensor.shape)}".encode())
    digest.update(data.numpy().tobytes())


def weights_hash(model: torch.nn.Module, rounding: str = "bfloat16") -> str:
    """sha256 over a few weight slices rounded to ``rounding``, on the CPU (cheap even for 7B models)."""
    dtype = ROUNDINGS[rounding]
    digest = hashlib.sha256()
    params = list(model.named_parameters())
    digest.update(f"count:{len(params)}:{sum(p.numel() for _, p in params)}".encode())
    get_emb = getattr(model, "get_input_embeddings", None)
    embedding = get_emb() if callable(get_emb) else None
    if embedding is not None and getattr(embedding, "weight", None) is not None:
        _update(digest, "embedding", embedding.weight[:EMBEDDING_ROWS], dtype)
    if params:
        for index in sorted({0, len(params) // 2, len(params) - 1}):
            name, param = params[index]
            _update(digest, name, param, dtype)
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module, name: str, rounding: str = "bfloat16") -> ModelFingerprint:
    """The fingerprint of ``model``; ``name`` is stored for messages only, ``rounding`` is the way to hash
    (the default, or that of a stored fingerprint being checked)."""
    config = getattr(model, "config", None)
    model_class = type(model).__name__
    if config is not None:
        chash = config_hash(config, model_class)
    else:
        chash = hashlib.sha256(f"no-config:{model_class}".encode()).hexdigest()
    return ModelFingerprint(name, chash, weights_hash(model, rounding), rounding)

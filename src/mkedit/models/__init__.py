"""Model loading: packaged offline models, GGUF files, local folders and hub ids; model fingerprints."""

from __future__ import annotations

from mkedit.models.fingerprint import ModelFingerprint, model_fingerprint
from mkedit.models.loader import LoadedModel, cache_root, load_model
from mkedit.models.registry import DEFAULT_MODEL, PACKAGED_MODELS, PackagedModel, pip_install_line

__all__ = [
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "LoadedModel",
    "ModelFingerprint",
    "PackagedModel",
    "cache_root",
    "load_model",
    "model_fingerprint",
    "pip_install_line",
]

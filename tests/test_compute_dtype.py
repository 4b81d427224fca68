"""An edit computed in another dtype (``compute_dtype``): the model runs in it only while editing, and gets its
own float32 weights back bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch

import mkedit.methods.lu_lafns.editor as editor_module
from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor, get_preset, preset_for
from mkedit.models.compute_dtype import ComputeDtype, native_matmul
from mkedit.types import EditGroup, EditRequest

TINY = LuLafnConfig().with_overrides({"layers": "1,2", "max_steps": "4", "num_prefixes": "1", "early_stop_nll": "0"})
GROUP = EditGroup(
    (
        EditRequest("en", "Russia", "Who is the president of Russia?", "Boris"),
        EditRequest("zh", "俄罗斯", "俄罗斯的总统是谁？", "鲍里斯"),
    ),
    "g1",
)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_runs_in_the_compute_dtype_and_gets_its_own_weights_back(family: str) -> None:
    model = build_tiny_model(family)
    params = list(model.parameters())
    originals = [(p.data_ptr(), p.data.clone()) for p in params]
    ids = torch.tensor([[5, 17, 42, 9]])
    compute = ComputeDtype(model, torch.bfloat16)
    assert compute.changes_model
    with torch.no_grad():
        reference = model(ids).logits
        with compute.active():
            assert all(p.dtype == torch.bfloat16 for p in model.parameters())
            first = [p.data_ptr() for p in model.parameters()]
            low = model(ids).logits
        with compute.active():  # the casts are made once and reused
            assert [p.data_ptr() for p in model.parameters()] == first
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.1, rtol=0.05)  # close, not equal: bf16 rounds
    for param, (pointer, saved) in zip(params, originals, strict=True):
        assert param.data_ptr() == pointer  # the very tensors, so nothing was rounded
        assert torch.equal(param.data, saved)


def test_weights_come_back_after_an_error_inside() -> None:
    model = build_tiny_model("qwen2")
    with pytest.raises(RuntimeError, match="inside"), ComputeDtype(model, torch.bfloat16).active():
        raise RuntimeError("inside")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_same_dtype_changes_nothing() -> None:
    model = build_tiny_model("llama")
    compute = ComputeDtype(model, torch.float32)
    assert not compute.changes_model
    before = [p.data_ptr() for p in model.parameters()]
    with compute.active():
        assert [p.data_ptr() for p in model.parameters()] == before


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_bfloat16_edit_learns_and_leaves_the_float32_model_untouched(family: str, monkeypatch) -> None:
    """The edit is located and optimised in bfloat16; its ΔV is float32 and lowers the answer's NLL as the
    float32 edit's does, and the model's float32 weights are bit-identical afterwards."""
    monkeypatch.setattr(editor_module, "native_matmul", lambda dtype, device: True)  # tiny: slow matmuls are fine
    model = build_tiny_model(family)
    tokenizer = build_tiny_tokenizer()
    before = weights_checksum(model)
    edits = {}
    for name in ("model", "bfloat16"):
        editor = LuLafnEditor(model, tokenizer, TINY.replace(compute_dtype=name), "tiny")
        history: list[float] = []
        edits[name] = (editor.edit(GROUP, on_step=lambda report, h=history: h.append(report.loss)), history)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(weights_checksum(model), before)
    fp32, bf16 = edits["model"][1], edits["bfloat16"][1]
    assert len(fp32) == len(bf16) == 4
    assert bf16[-1] < bf16[0]
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)  # ΔV = 0 at step 1: the same objective, rounded
    tensors = edits["bfloat16"][0].tensors
    assert edits["model"][0].tensors.keys() == tensors.keys()


def test_half_compute_falls_back_to_the_model_dtype_where_it_has_no_native_matmuls(monkeypatch, caplog) -> None:
    """On a CPU without native bfloat16 matmuls PyTorch loops (~100x slower than float32): the editor says so
    and computes in the model's dtype, and its config (what run.json and the cache record) says that too."""
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    monkeypatch.setattr(editor_module, "native_matmul", lambda dtype, device: dtype != torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        editor = LuLafnEditor(model, tokenizer, TINY.replace(compute_dtype="bfloat16"), "tiny")
    assert editor.config.compute_dtype == "model"
    assert "no native bfloat16 matmuls" in caplog.text
    assert LuLafnEditor(model, tokenizer, TINY.replace(compute_dtype="float16"), "tiny").config.compute_dtype == (
        "float16"
    )


def test_native_matmul_is_true_off_the_cpu_and_for_float32() -> None:
    assert native_matmul(torch.float32, "cpu")
    assert native_matmul(torch.bfloat16, "cuda")  # asked of the device type only: no GPU needed
    assert isinstance(native_matmul(torch.bfloat16, "cpu"), bool)


def test_fast_preset_is_the_model_preset_in_bfloat16_with_two_prefixes_and_is_never_picked_by_name() -> None:
    fast = get_preset("qwen2.5-0.5b-fast").config
    model_preset = preset_for("qwen2.5-0.5b").config
    measured_so = {"lambda_kl": 0.0625, "early_stop": "mean"}  # the preset's objective when the fast one was chosen
    assert fast == model_preset.replace(compute_dtype="bfloat16", num_prefixes=2, **measured_so)
    assert preset_for("qwen2.5-0.5b-fast-anything").name == "qwen2.5-0.5b"  # chosen only with --preset

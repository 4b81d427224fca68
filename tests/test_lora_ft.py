"""LoRA-FT: adapters trained through PEFT leave the model as it was, and their deltas act as PEFT's merge would."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.lora_ft import LoraFtConfig, LoraFtMethod, PeftNotInstalledError
from mkedit.methods.registry import get_method
from mkedit.prompting import encode_prompt_answer
from mkedit.types import EditGroup, EditRequest

peft = pytest.importorskip("peft")

GROUP = EditGroup(
    (
        EditRequest("en", "Paris", "Paris is the capital of", "Rome"),
        EditRequest("zh", "巴黎", "巴黎是哪个国家的首都？", "罗马"),
    ),
    "paris",
)
FAST = LoraFtConfig(target="all", max_steps=15, learning_rate=1e-2)


def answer_logprob(logits_fn, tokenizer, request: EditRequest) -> float:
    """Sum of log-probabilities of the answer tokens after the question (teacher-forced)."""
    pair = encode_prompt_answer(tokenizer, request.question, request.answer, request.lang)
    ids = torch.tensor([pair.input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(logits_fn(ids)[0].float(), dim=-1)
    return sum(logprobs[p - 1, pair.input_ids[p]].item() for p in range(pair.answer_start, len(pair.input_ids)))


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_leaves_model_as_it_was_and_applied_learns_the_answer(family: str) -> None:
    model, tok = build_tiny_model(family), build_tiny_tokenizer()
    first = next(model.parameters())
    first.requires_grad_(False)  # a mixed state must come back as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [(n, type(m)) for n, m in model.named_modules()]
    flags = [p.requires_grad for p in model.parameters()]
    attrs = set(vars(model))
    checksum = weights_checksum(model)
    ids = torch.tensor([encode_prompt_answer(tok, "The weather today is", "fine", "en").input_ids])
    with torch.no_grad():
        base_logits = model(ids).logits
    before = {r.lang: answer_logprob(lambda x: model(x).logits, tok, r) for r in GROUP.requests}

    method = LoraFtMethod(model, tok, FAST)
    edit = method.edit(GROUP)

    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [(n, type(m)) for n, m in model.named_modules()] == classes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert set(vars(model)) == attrs and not model.training
    assert torch.equal(weights_checksum(model), checksum)
    assert edit.method == "lora-ft" and edit.info["steps"] > 0 and edit.info["final_nll"] < edit.info["initial_nll"]
    # every stored delta has its weight's own shape, under the base model's parameter names
    for name in {k.rsplit("/", 1)[0] for k in edit.tensors}:
        left, right = edit.tensors[f"{name}/left"], edit.tensors[f"{name}/right"]
        assert (left @ right).shape == model.get_parameter(name).shape

    with method.applied([edit]) as view:
        after = {r.lang: answer_logprob(view.logits, tok, r) for r in GROUP.requests}
    for lang in GROUP.langs:
        assert after[lang] > before[lang] + 1.0, (lang, before[lang], after[lang])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # nn.Linear [out, in] and Conv1D [in, out] layouts
def test_applied_deltas_equal_peft_merge(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = build_tiny_model(family), build_tiny_tokenizer()
    ids = torch.tensor([encode_prompt_answer(tok, "Paris is the capital of", "Rome", "en").input_ids])
    merged: dict[str, torch.Tensor] = {}
    unload = peft.LoraModel.unload

    def merge_a_copy_then_unload(self):
        twin = copy.deepcopy(self).merge_and_unload()
        with torch.no_grad():
            merged["logits"] = twin(ids).logits
        merged["state"] = {k: v.clone() for k, v in twin.state_dict().items()}
        return unload(self)

    monkeypatch.setattr(peft.LoraModel, "unload", merge_a_copy_then_unload)
    method = LoraFtMethod(model, tok, FAST.replace(max_steps=5))
    edit = method.edit(GROUP)
    with method.applied([edit]) as view, torch.no_grad():
        torch.testing.assert_close(view.logits(ids), merged["logits"], rtol=1e-5, atol=1e-5)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, merged["state"][name], rtol=1e-6, atol=1e-6)


def test_edits_are_deterministic_and_stack() -> None:
    model, tok = build_tiny_model("qwen2"), build_tiny_tokenizer()
    method = LoraFtMethod(model, tok, FAST.replace(max_steps=3))
    torch.manual_seed(123)
    first = method.edit(GROUP)
    torch.manual_seed(456)
    second = method.edit(GROUP)
    assert first.tensors.keys() == second.tensors.keys()
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(iter(first.tensors)).rsplit("/", 1)[0]
    delta = first.tensors[f"{name}/left"] @ first.tensors[f"{name}/right"]
    with method.applied([first, second]):
        torch.testing.assert_close(model.get_parameter(name), state[name] + 2 * delta)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("family", "target", "layers", "expected"),
    [
        ("llama", "qv", None, 8),  # q and v of 4 blocks
        ("llama", "ffn", (-1,), 3),  # gate, up, down of the last block
        ("bloom", "qv", None, 4),  # the fused query-key-value matrix of each block
        ("gpt2", "all", (0, 1), 8),  # c_attn, c_proj (attention), c_fc, c_proj (FFN) of two blocks
    ],
)
def test_target_modules_come_from_the_adapter(family: str, target: str, layers, expected: int) -> None:
    method = LoraFtMethod(build_tiny_model(family), build_tiny_tokenizer(), LoraFtConfig(target=target, layers=layers))
    names = method.target_modules()
    assert len(names) == expected == len(set(names))
    if layers == (-1,):
        assert method.config.layers == (3,) and all(".3." in n for n in names)


def test_missing_peft_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes ``import peft`` raise ImportError
    model = build_tiny_model("gpt2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    method = LoraFtMethod(model, build_tiny_tokenizer(), FAST)
    with pytest.raises(PeftNotInstalledError, match=r"pip install 'mkedit\[lora\]'.*peft==") as info:
        method.edit(GROUP)
    assert isinstance(info.value, ImportError)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_registered_with_documented_config() -> None:
    assert get_method("lora-ft") is LoraFtMethod
    docs = LoraFtConfig.field_docs()
    assert all(docs.get(name) for name in LoraFtConfig().to_dict())
    with pytest.raises(ValueError):
        LoraFtConfig(rank=0)
    parsed = LoraFtConfig().with_overrides({"layers": "1,2", "target": "ffn"})
    assert parsed.layers == (1, 2) and LoraFtConfig.from_dict(parsed.to_dict()) == parsed


def test_prefixes_and_stop_token_add_training_sequences() -> None:
    model, tok = build_tiny_model("llama"), build_tiny_tokenizer()
    method = LoraFtMethod(model, tok, FAST.replace(num_prefixes=2, prefix_length=2, train_stop_token=True, max_steps=2))
    sequences = method.training_sequences(GROUP)
    assert len(sequences) == 3 * len(GROUP.requests)  # bare question + 2 prefixes, per language
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert all(ids[-1:] == newline and ids[start:-1] for ids, start in sequences)
    assert method.edit(GROUP).info["steps"] == 2

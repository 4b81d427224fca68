"""The contract every registered method keeps, on tiny models of all five families (as peft's shared tester).

- ``edit()`` leaves the weights bit-identical (and the ``requires_grad`` flags as they were);
- ``applied([])`` gives the base model's logits exactly, and leaving ``applied(edits)`` restores the weights;
- save -> load (through :class:`EditCache`) -> apply gives identical logits;
- an edit raises the probability of its target answer on its question.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.methods.base import EditMethod
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.registry import build_method, method_names
from mkedit.prompting import encode_prompt_answer
from mkedit.runtime.cache import EditCache
from mkedit.types import EditGroup, EditRequest

# The subject ends each question: on random 64-wide models a value written at the subject reaches the
# answer mostly through the residual stream of that position (attention is diffuse), so the rank-one
# weight edits show their effect in a few steps, and a short answer keeps them few; the real-model tests
# use ordinary questions.
GROUP = EditGroup(
    (
        EditRequest("en", "Alice", "The birthplace of Alice", "Oz"),
        EditRequest("zh", "爱丽丝", "出生地：爱丽丝", "Oz"),
    ),
    "g1",
)
UNRELATED = "What is two plus two?"

# Small, fast settings per method for 4-layer, 64-wide random models (the mechanics, not the quality).
LOCATE_EDIT = {
    "stats_samples": "40",
    "num_prefixes": "2",
    "prefix_length": "4",
    "v_num_grad_steps": "20",
    "v_weight_decay": "0",  # relative to the tiny models' tiny value norms it would swamp the update
    "clamp_norm_factor": "10",
}
TINY_SETTINGS: dict[str, dict[str, str]] = {
    "lu-lafns": {"layers": "1,2", "max_steps": "5", "num_prefixes": "1", "prefix_length": "3"},
    "m-rome": LOCATE_EDIT,
    "m-memit": LOCATE_EDIT,
    "m-pmet": LOCATE_EDIT,
}
# Methods whose effect is not on the weights or neurons but in the prompt: a random model cannot be
# expected to copy an answer from a context, so for them the contract checks that the context holds it.
CONTEXT_METHODS = {"remake"}


def corpus_settings(tmp: Path) -> dict[str, str]:
    """A tiny statistics corpus for locate-then-edit methods (one file per language)."""
    lines = {
        "en": [f"Who is the author of book number {i}?\tPerson {i}" for i in range(40)],
        "zh": [f"第{i}本书的作者是谁?\t人物{i}" for i in range(40)],
    }
    for lang, rows in lines.items():
        (tmp / f"zsre_mend_train_{lang}_10000.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"stats_corpus": str(tmp)}


def make_method(
    name: str, family: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype = torch.float32
) -> EditMethod:
    monkeypatch.setenv("MKEDIT_CACHE_DIR", str(tmp / "cache-dir"))
    model = build_tiny_model(family).to(dtype)
    tokenizer = build_tiny_tokenizer()
    settings = dict(TINY_SETTINGS.get(name, {}))
    if name.startswith("m-"):
        settings.update(corpus_settings(tmp))
    return build_method(name, model, tokenizer, f"tiny-{family}", overrides=settings)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"weights changed: {changed[:5]}"


def encoded(method: EditMethod, view, prompt: str, answer: str, lang: str) -> tuple[torch.Tensor, int]:
    pair = encode_prompt_answer(method.tokenizer, view.rewrite(prompt, lang), answer, lang)
    return torch.tensor([pair.input_ids]), pair.answer_start


def answer_logprob(method: EditMethod, view, prompt: str, answer: str, lang: str) -> float:
    """Teacher-forced log-probability of ``answer`` after ``prompt`` in this view."""
    ids, start = encoded(method, view, prompt, answer, lang)
    with torch.no_grad():
        logprobs = torch.log_softmax(view.logits(ids, torch.ones_like(ids)).float(), dim=-1)
    targets = ids[0, start:]
    return float(logprobs[0, start - 1 : ids.shape[1] - 1].gather(-1, targets[:, None]).sum())


def prompt_logits(method: EditMethod, view, prompt: str) -> torch.Tensor:
    ids = torch.tensor([method.tokenizer(view.rewrite(prompt, "en"))["input_ids"]])
    with torch.no_grad():
        return view.logits(ids, torch.ones_like(ids))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", method_names())
def test_method_contract(name: str, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    method = make_method(name, family, tmp_path, monkeypatch)
    model = method.model
    before = state(model)
    flags = [p.requires_grad for p in model.parameters()]
    checksum = weights_checksum(model)

    with method.applied([]) as view:
        base_logits = prompt_logits(method, view, GROUP.requests[0].question)
        base_logprob = answer_logprob(method, view, GROUP.requests[0].question, "Oz", "en")
    ids = torch.tensor([method.tokenizer(GROUP.requests[0].question)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(base_logits, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)

    edit = method.edit(GROUP)
    assert_same_state(model, before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert edit.method == name and edit.edit_id == "g1"

    with method.applied([edit]) as view:
        edited_logits = prompt_logits(method, view, GROUP.requests[0].question)
        if name in CONTEXT_METHODS:
            assert "Oz" in view.rewrite(GROUP.requests[0].question, "en")
        else:
            assert answer_logprob(method, view, GROUP.requests[0].question, "Oz", "en") > base_logprob
    assert_same_state(model, before)
    assert torch.equal(weights_checksum(model), checksum)

    cache = method.new_cache()
    cache.add(edit)
    loaded = EditCache.load(cache.save(tmp_path / "edits"), model=model, model_name=method.model_name)
    with method.applied(list(loaded)) as view:
        assert torch.equal(prompt_logits(method, view, GROUP.requests[0].question), edited_logits)
    assert_same_state(model, before)


@pytest.mark.parametrize("name", method_names())
def test_method_edits_and_restores_in_bfloat16(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--dtype bfloat16` (the GPU default): every method edits a bfloat16 model, its edit changes the
    answer's score, and the weights come back bit-identical."""
    method = make_method(name, "qwen2", tmp_path, monkeypatch, torch.bfloat16)
    model = method.model
    before = state(model)
    with method.applied([]) as view:
        base_logprob = answer_logprob(method, view, GROUP.requests[0].question, "Oz", "en")
    edit = method.edit(GROUP)
    with method.applied([edit]) as view:
        if name in CONTEXT_METHODS:
            assert "Oz" in view.rewrite(GROUP.requests[0].question, "en")
        else:
            assert answer_logprob(method, view, GROUP.requests[0].question, "Oz", "en") > base_logprob
    assert_same_state(model, before)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}

"""The paper's baselines on a real packaged model: LoRA fine-tuning and retrieval in context (the
locate-then-edit family is not here yet: with a statistics corpus small enough for a test, M-MEMIT missed
the zh answer on this record; its mechanics are tested on tiny models). An en+zh edit must give the new answer in both
languages while in force, and leave the model's weights exactly as they were."""

from __future__ import annotations

import pytest
import torch

from mkedit.demo import demo_records
from mkedit.eval.runner import EvalConfig, Scorer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.registry import build_method
from mkedit.methods.view import ModelView
from mkedit.prompting import encode_prompt_answer

pytestmark = pytest.mark.slow

UNRELATED = ["The capital of France is", "问：法国的首都是哪里？\n答："]


def _predict(view, qwen, cases):
    scorer = Scorer(view, qwen.tokenizer, EvalConfig(generation=False), next(qwen.model.parameters()).device)
    return scorer.predict(cases)


def _answer_logprob(view, qwen, question: str, answer: str, lang: str) -> float:
    pair = encode_prompt_answer(qwen.tokenizer, view.rewrite(question, lang), answer, lang)
    ids = torch.tensor([pair.input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(view.logits(ids, torch.ones_like(ids))[0].float(), dim=-1)
    targets = ids[0, pair.answer_start :]
    return float(logprobs[pair.answer_start - 1 : -1].gather(-1, targets[:, None]).sum())


def _next_tokens(view, qwen, prompts: list[str]) -> list[int]:
    out = []
    for prompt in prompts:
        ids = qwen.tokenizer(view.rewrite(prompt, ""), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out.append(int(view.logits(ids, torch.ones_like(ids))[0, -1].argmax()))
    return out


@pytest.mark.parametrize("name", ["lora-ft", "remake"])
def test_baseline_edit_gives_new_answer_in_english_and_chinese(qwen, name: str) -> None:
    settings: dict[str, str] = {}
    group = demo_records()[0].group.restrict(["en", "zh"])
    cases = [(r.question, r.answer, r.lang) for r in group.requests]
    method = build_method(name, qwen.model, qwen.tokenizer, qwen.name, overrides=settings)
    checksum = weights_checksum(qwen.model)
    base = ModelView(qwen.model)
    before = _predict(base, qwen, cases)
    assert all(p.pred_ids != p.target_ids for p in before), "the base model already knew the new answers"
    base_next = _next_tokens(base, qwen, UNRELATED)

    base_logprobs = [_answer_logprob(base, qwen, *case) for case in cases]

    edit = method.edit(group)
    assert torch.equal(weights_checksum(qwen.model), checksum)
    with method.applied([edit]) as view:
        after = _predict(view, qwen, cases)
        logprobs = [_answer_logprob(view, qwen, *case) for case in cases]
        unrelated_next = _next_tokens(view, qwen, UNRELATED)
    for (question, _, lang), post, pre_lp, post_lp in zip(cases, after, base_logprobs, logprobs, strict=True):
        assert post.pred_ids == post.target_ids, f"{name} {lang}: edit not in force for {question!r}"
        assert post_lp > pre_lp, f"{name} {lang}: answer log-prob {pre_lp:.2f} -> {post_lp:.2f}"
    assert unrelated_next == base_next, f"{name}: an unrelated prompt's next token changed"
    assert torch.equal(weights_checksum(qwen.model), checksum)

"""The paper's baselines on a real packaged model: one test per family of method (weight edit by
locate-then-edit, LoRA fine-tuning, retrieval in context). An en+zh edit must give the new answer in both
languages while in force, and leave the model's weights exactly as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mkedit.demo import demo_records
from mkedit.eval.runner import EvalConfig, Scorer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.registry import build_method
from mkedit.methods.view import ModelView
from mkedit.prompting import encode_prompt_answer

pytestmark = pytest.mark.slow

EXACT = {"lora-ft", "remake"}  # methods whose edit gives every answer token on this record
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


def stats_corpus(folder: Path) -> str:
    """A small question corpus per language, written here (the project ships no data) for the key statistics
    of the locate-then-edit methods; a real run uses MzsRE's training questions or any text."""
    things = ["the Eiffel Tower", "Mount Fuji", "the Amazon river", "Nokia", "the Beatles", "Marie Curie"]
    things_zh = ["埃菲尔铁塔", "富士山", "亚马逊河", "诺基亚", "披头士乐队", "居里夫人"]
    en = ["Where is {} located?", "Who founded {}?", "When was {} created?", "What is {} known for?"]
    zh = ["{}位于哪里？", "{}是谁创立的？", "{}是什么时候创建的？", "{}以什么闻名？"]
    for lang, names, templates in (("en", things, en), ("zh", things_zh, zh)):
        lines = [t.format(n) for t in templates for n in names]
        (folder / f"questions_{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / "questions_{lang}.txt")


@pytest.mark.parametrize("name", ["m-memit", "lora-ft", "remake"])
def test_baseline_edit_gives_new_answer_in_english_and_chinese(qwen, name: str, tmp_path: Path) -> None:
    settings = {"stats_corpus": stats_corpus(tmp_path)} if name.startswith("m-") else {}
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
        if name in EXACT:
            assert post.pred_ids == post.target_ids, f"{name} {lang}: edit not in force for {question!r}"
        else:
            # M-MEMIT writes the value into W_out through key statistics; from this test's 24-question
            # corpus its first answer token is right but not always every later one (full runs use 2,000).
            assert post.pred_ids[0] == post.target_ids[0], f"{name} {lang}: first answer token not edited"
            assert post_lp > pre_lp + 3.0, f"{name} {lang}: answer log-prob {pre_lp:.2f} -> {post_lp:.2f}"
    assert unrelated_next == base_next, f"{name}: an unrelated prompt's next token changed"
    assert torch.equal(weights_checksum(qwen.model), checksum)

"""Behaviour on real packaged models: an edit changes the answer in two languages and nothing else."""

from __future__ import annotations

import pytest
import torch

from mkedit.demo import demo_records
from mkedit.eval.metrics import teacher_forced
from mkedit.methods.lu_lafns import LuLafnEditor
from mkedit.models import load_model
from mkedit.models.registry import is_installed
from mkedit.runtime.edited_model import EditedModel

pytestmark = pytest.mark.slow

UNRELATED = {
    "en": ["The capital of France is", "Who wrote the novel Don Quixote?", "In which city is the Colosseum located?"],
    "zh": ["问：法国的首都是哪里？\n答：", "小说《堂吉诃德》是谁写的？", "罗马斗兽场位于哪个城市？"],
}


def _logits_fn(edited: EditedModel):
    return edited.logits


@pytest.fixture(scope="module")
def qwen_edit(qwen):
    record = demo_records()[0]
    group = record.group.restrict(["en", "zh"])
    editor = LuLafnEditor(qwen.model, qwen.tokenizer, model_name=qwen.name)
    cache = editor.new_cache()
    cache.add(editor.edit(group))
    return (
        group,
        EditedModel(qwen.model, qwen.tokenizer, cache),
        EditedModel(qwen.model, qwen.tokenizer, editor.new_cache()),
    )


def test_edit_changes_answer_in_english_and_chinese(qwen, qwen_edit) -> None:
    group, edited, base = qwen_edit
    cases = [(r.question, r.answer, r.lang) for r in group.requests]
    before = teacher_forced(_logits_fn(base), qwen.tokenizer, cases)
    after = teacher_forced(_logits_fn(edited), qwen.tokenizer, cases)
    for (question, _, lang), pre, post in zip(cases, before, after, strict=True):
        assert pre.pred_ids != pre.target_ids, f"{lang}: the base model already knew the new answer"
        assert post.pred_ids == post.target_ids, f"{lang}: edit not learned for {question!r}"


def test_unrelated_prompts_unchanged(qwen, qwen_edit) -> None:
    _, edited, _ = qwen_edit
    for lang, prompts in UNRELATED.items():
        batch = qwen.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            base = qwen.model(**batch).logits
            after = edited(batch["input_ids"], batch["attention_mask"]).logits
        assert torch.equal(base.argmax(-1), after.argmax(-1)), lang
        assert torch.equal(base, after), f"{lang}: logits of unrelated prompts changed"


def test_edit_generalises_to_a_paraphrase_in_generation(qwen_edit) -> None:
    _, edited, _ = qwen_edit
    answers = edited.ask(["Which company manufactures the Volvo B12M?"], max_new_tokens=6)
    assert answers[0].edits_applied
    assert "Volkswagen" in answers[0].answer


def test_english_edit_on_smollm2_generates_new_answer() -> None:
    if not is_installed("smollm2-135m"):
        pytest.fail("smollm2-135m is not installed: run scripts/install.sh --dev")
    loaded = load_model("smollm2-135m")
    group = demo_records()[1].group.restrict(["en"])
    editor = LuLafnEditor(loaded.model, loaded.tokenizer, model_name=loaded.name)
    cache = editor.new_cache()
    cache.add(editor.edit(group))
    edited = EditedModel(loaded.model, loaded.tokenizer, cache)
    base = EditedModel(loaded.model, loaded.tokenizer, editor.new_cache())
    question = group.requests[0].question
    assert "Rome" not in base.ask([question], max_new_tokens=8)[0].answer
    assert edited.ask([question], max_new_tokens=8)[0].answer.startswith("Rome")

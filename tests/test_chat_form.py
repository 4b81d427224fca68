"""Chat-form training sequences: the question as the chat template renders a user turn, then the answer."""

from __future__ import annotations

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.methods.common.batch import chat_prompt
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.types import EditGroup, EditRequest

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
GROUP = EditGroup(
    (
        EditRequest("en", "Eiffel Tower", "Who designed the Eiffel Tower?", "Gaudí"),
        EditRequest("zh", "埃菲尔铁塔", "埃菲尔铁塔是谁设计的？", "高迪"),
    ),
    "e1",
)


def _editor(chat_form: bool, template: str | None) -> LuLafnEditor:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = template
    config = LuLafnConfig().with_overrides({"layers": "1,2", "num_prefixes": "1", "chat_form": str(chat_form)})
    return LuLafnEditor(build_tiny_model("qwen2"), tokenizer, config, "tiny")


def test_chat_sequences_mark_the_subject_and_end_the_turn() -> None:
    editor = _editor(True, TEMPLATE)
    plain, _ = _editor(False, TEMPLATE).training_sequences(GROUP)
    sequences, _ = editor.training_sequences(GROUP)
    chat = [s for s in sequences if s not in plain]
    assert len(chat) == 2  # one per language
    tokenizer = editor.tokenizer
    for seq, req in zip(chat, GROUP.requests, strict=True):
        prompt = tokenizer.decode(seq.input_ids[: seq.answer_start])
        assert prompt == chat_prompt(tokenizer, req.question) == f"<|user|>{req.question}\n<|assistant|>"
        assert tokenizer.decode(seq.input_ids[: seq.subject_pos + 1]).endswith(req.subject)
        answer = seq.input_ids[seq.answer_start :]
        assert tokenizer.decode(answer[:-1]) == req.answer and answer[-1] == tokenizer.eos_token_id


def test_no_chat_sequences_without_a_template_or_when_off() -> None:
    plain, _ = _editor(False, TEMPLATE).training_sequences(GROUP)
    untemplated, _ = _editor(True, None).training_sequences(GROUP)
    assert untemplated == plain
    assert not any("<|user|>" in build_tiny_tokenizer().decode(s.input_ids) for s in plain)

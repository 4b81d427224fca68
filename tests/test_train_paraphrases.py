"""Paraphrases as training sequences (``train_paraphrases``): the new answer after each paraphrase, bare."""

from __future__ import annotations

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.types import EditGroup, EditRequest

PARAPHRASES = ("Which architect designed the Eiffel Tower?", "The Eiffel Tower was designed by whom?")
GROUP = EditGroup(
    (
        EditRequest("en", "Eiffel Tower", "Who designed the Eiffel Tower?", "Gaudí", PARAPHRASES),
        EditRequest("zh", "埃菲尔铁塔", "埃菲尔铁塔是谁设计的？", "高迪"),
    ),
    "e1",
)


def _editor(train_paraphrases: bool) -> LuLafnEditor:
    overrides = {"layers": "1,2", "num_prefixes": "1", "train_paraphrases": str(train_paraphrases)}
    config = LuLafnConfig().with_overrides(overrides)
    return LuLafnEditor(build_tiny_model("qwen2"), build_tiny_tokenizer(), config, "tiny")


def test_each_paraphrase_adds_one_target_sequence_with_the_new_answer() -> None:
    plain, _ = _editor(False).training_sequences(GROUP)
    editor = _editor(True)
    sequences, _ = editor.training_sequences(GROUP)
    added = [s for s in sequences if s not in plain]
    assert len(sequences) == len(plain) + len(PARAPHRASES)  # the language without paraphrases adds nothing
    tokenizer = editor.tokenizer
    en_target = next(s for s in plain if s.kind == "target")
    for seq, paraphrase in zip(added, PARAPHRASES, strict=True):
        assert seq.kind == "target"
        assert tokenizer.decode(seq.input_ids[: seq.answer_start]).endswith(paraphrase)
        assert tokenizer.decode(seq.input_ids[: seq.subject_pos + 1]).endswith("Eiffel Tower")
        # the same answer ids (and stop token) as the question's own sequences
        assert seq.input_ids[seq.answer_start :] == en_target.input_ids[en_target.answer_start :]


def test_paraphrases_only_locate_when_off() -> None:
    with_paraphrases, _ = _editor(False).training_sequences(GROUP)
    without = EditGroup(tuple(EditRequest(r.lang, r.subject, r.question, r.answer) for r in GROUP.requests), "e1")
    assert with_paraphrases == _editor(False).training_sequences(without)[0]

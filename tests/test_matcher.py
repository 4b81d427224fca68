"""The runtime subject matcher: whole words, longest first, prompt only, optional case/diacritics folding."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_tensors
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.matcher import AutomatonMatcher, SubjectMatch

# (cached (surface, edit id) pairs, prompt, expected (edit id, matched text) left to right)
FALSE_TRIGGERS = [
    ([("Mars", "mars")], "Who founded Marseille?", []),  # inside a longer word
    ([("Mars", "mars")], "Is Mars red? And Marsh? And Mars-like?", [("mars", "Mars"), ("mars", "Mars")]),
    ([("Rus", "rus")], "Russia and the Rus' state", [("rus", "Rus")]),  # "Rus" only as a word
    ([("New York", "ny"), ("New York City", "nyc")], "Where is New York City Hall?", [("nyc", "New York City")]),
    ([("New York", "ny"), ("New York City", "nyc")], "New York or New Yorker?", [("ny", "New York")]),
    ([("Russia", "ru"), ("Mars", "mars")], "Is Russia bigger than Mars?", [("ru", "Russia"), ("mars", "Mars")]),
    ([("Russia Today", "a"), ("Today show", "b")], "Russia Today show", [("a", "Russia Today")]),  # no overlaps
    (
        [("俄罗斯", "ru"), ("俄罗斯联邦", "rf")],
        "俄罗斯联邦的首都是哪里？俄罗斯呢",
        [("rf", "俄罗斯联邦"), ("ru", "俄罗斯")],
    ),
    ([("ลอนดอน", "lon")], "ลอนดอนอยู่ที่ไหน", [("lon", "ลอนดอน")]),  # Thai: no spaces, no word check
    (
        [("C++ (language)", "c"), ("a.b", "d")],
        "Who made C++ (language)? axb a.b",
        [("c", "C++ (language)"), ("d", "a.b")],
    ),
    ([("Paris", "p")], "paris, PARIS or Pâris?", []),  # case-sensitive by default
    ([("", "empty"), ("   ", "blank")], "anything at all", []),
]


@pytest.mark.parametrize(("entries", "prompt", "expected"), FALSE_TRIGGERS)
def test_false_trigger_set(entries, prompt: str, expected) -> None:
    found = AutomatonMatcher(entries).find(prompt)
    assert [(m.edit_id, m.text) for m in found] == expected
    for m in found:
        assert prompt[m.start : m.end] == m.text


def test_folded_mode_ignores_case_and_diacritics_and_reports_original_span() -> None:
    matcher = AutomatonMatcher([("München", "mu"), ("Paris", "p")], fold=True)
    prompt = "From MUNCHEN to pâris, not to Parisian towns."
    assert matcher.find(prompt) == [SubjectMatch("mu", 5, 12, "MUNCHEN"), SubjectMatch("p", 16, 21, "pâris")]
    assert AutomatonMatcher([("München", "mu")]).find(prompt) == []
    assert matcher.describe()["fold_case_and_diacritics"] is True


def test_lookup_time_does_not_grow_with_the_number_of_edits() -> None:
    """One automaton pass per prompt: 20,000 cached subjects cost about what 20 do."""
    prompt = "Who is the current head of the Zeta Corporation and where is its office? " * 4
    small = AutomatonMatcher([(f"Entity {i}", str(i)) for i in range(20)])
    large = AutomatonMatcher([(f"Entity {i}", str(i)) for i in range(20_000)])

    def per_call(matcher: AutomatonMatcher) -> float:
        start = time.perf_counter()
        for _ in range(300):
            matcher.find(prompt)
        return time.perf_counter() - start

    per_call(large)  # warm up
    assert per_call(large) < 5 * per_call(small) + 0.05


def _edited(fold: bool = False) -> tuple[EditedModel, object]:
    model = build_tiny_model("llama")
    tokenizer = build_tiny_tokenizer()
    idx = torch.arange(0, 128, 3)
    edit = Edit("lop", {"en": ["Lophodaxa"]}, neuron_tensors({1: (idx, torch.full((idx.numel(),), 4.0))}))
    cache = EditCache(model_fingerprint(model, "tiny"), "lu-lafns", {})
    cache.add(edit)
    return EditedModel(model, tokenizer, cache, fold=fold), tokenizer


def test_a_subject_inside_the_teacher_forced_answer_does_not_trigger() -> None:
    """Only the prompt is searched, as in generation: the subject as the gold answer does not fire (and inside a
    longer answer word, as "Lophodaxa" in "Lophodaxace", it would not be a whole word anyway)."""
    edited, tokenizer = _edited()
    prompt, answer = "Which genus is this moth in?", " Lophodaxa"
    ids = tokenizer([prompt + answer], return_tensors="pt")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    _, whole_row = edited.placements(ids["input_ids"], ids["attention_mask"])
    _, prompt_only = edited.placements(ids["input_ids"], ids["attention_mask"], prompt_lengths=[n_prompt])
    assert whole_row == [["lop"]] and prompt_only == [[]]
    base = edited.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    torch.testing.assert_close(edited.logits(ids["input_ids"], ids["attention_mask"], [n_prompt]), base, rtol=0, atol=0)
    # Generation resuming after a known answer (the scorer's shortcut) searches the prompt only, too.
    greedy = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    untouched = edited.model.generate(**ids, **greedy)
    resumed = edited.generate(ids["input_ids"], ids["attention_mask"], prompt_lengths=[n_prompt], **greedy)
    assert torch.equal(resumed, untouched)
    assert not torch.equal(edited.generate(ids["input_ids"], ids["attention_mask"], **greedy), untouched)


def test_edited_model_reports_matches_with_spans_and_honours_fold() -> None:
    edited, _ = _edited(fold=True)
    assert edited.matches("What is LOPHODAXA?") == [SubjectMatch("lop", 8, 17, "LOPHODAXA")]
    assert _edited()[0].matches("What is LOPHODAXA?") == []

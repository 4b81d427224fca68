"""Inference runtime: subject matching, token positions, and the edited model agreeing with the editor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.arch import get_adapter
from mkedit.arch.hooks import Placement, neuron_updates
from mkedit.errors import CacheError, SubjectNotFoundError
from mkedit.methods.base import edit_id_for
from mkedit.methods.common.batch import encode_with_subject, shift
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.models.fingerprint import model_fingerprint
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_deltas, neuron_tensors
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.subject import find_subject, last_token_index, locate_subject, place_subject
from mkedit.runtime.tokens import token_char_spans
from mkedit.types import EditGroup, EditRequest

# --- token_char_spans ------------------------------------------------------------------------------


def test_token_char_spans_multibyte_chinese() -> None:
    """Byte tokens inside a multi-byte character get an empty span; the token completing it gets the character."""
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("我是x", add_special_tokens=False)["input_ids"]
    assert len(ids) == 7  # 3 + 3 UTF-8 bytes, then "x"
    text, spans = token_char_spans(tokenizer, ids)
    assert text == "我是x"
    assert spans == [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize(
    "text", ["Ruská 俄罗斯 x", "Who is the president of Russia?", "俄罗斯的总统是谁？", "Kde leží Ruské federace?"]
)
def test_token_char_spans_agree_with_offsets(text: str) -> None:
    """For every character, the runtime's spans and the tokenizer's offsets pick the same last token."""
    tokenizer = build_tiny_tokenizer()
    enc = tokenizer(text, return_offsets_mapping=True)
    decoded, spans = token_char_spans(tokenizer, enc["input_ids"])
    assert decoded == text
    for end in range(1, len(text) + 1):
        assert last_token_index(spans, end) == last_token_index(enc["offset_mapping"], end), (text, end)


# --- subject position ------------------------------------------------------------------------------


def test_find_subject_verbatim() -> None:
    span = locate_subject("Who is the president of Russia?", "Russia")
    assert (span.start, span.end, span.surface, span.kind, span.score) == (24, 30, "Russia", "verbatim", 100.0)
    zh = locate_subject("俄罗斯的总统是谁？", "俄罗斯")
    assert (zh.start, zh.end, zh.kind) == (0, 3, "verbatim")


def test_find_subject_inflected(caplog: pytest.LogCaptureFixture) -> None:
    """A Czech inflected form ("Ruské federace" for "Ruská federace") is found approximately, with a warning."""
    question = "Kde leží Ruské federace?"
    span = locate_subject(question, "Ruská federace", context="record 7, language cs")
    assert span.kind == "approximate"
    assert span.surface == "Ruské federace" == question[span.start : span.end]
    assert 80 <= span.score < 100
    assert "approximate match" in caplog.text and "record 7, language cs" in caplog.text


def test_missing_subject_raises_naming_context() -> None:
    """No acceptable match: SubjectNotFoundError naming subject, question and context."""
    with pytest.raises(SubjectNotFoundError, match=r"'Rusko'.*Dona Quijota.*record 3, language cs"):
        locate_subject("Kdo napsal Dona Quijota?", "Rusko", context="record 3, language cs")
    assert find_subject("Kdo napsal Dona Quijota?", "Rusko") is None


def test_last_token_index() -> None:
    """The token holding the last character; empty spans (special tokens, partial bytes) are skipped."""
    offsets = [(0, 0), (0, 3), (3, 4), (4, 4), (4, 8), (9, 12)]
    assert last_token_index(offsets, 3) == 1
    assert last_token_index(offsets, 4) == 2
    assert last_token_index(offsets, 8) == 4
    assert last_token_index(offsets, 9) == 4  # char 8 (a space nobody covers): the token before it
    assert last_token_index([(0, 1), (0, 1), (0, 1)], 1) == 2  # a character split over byte tokens: the last one
    with pytest.raises(SubjectNotFoundError, match="no token covers"):
        last_token_index([(0, 0), (5, 6)], 2)


# --- EditedModel -----------------------------------------------------------------------------------

SUBJECTS = {"en": ["Russia"], "cs": ["Ruská federace", "Ruské federace"], "zh": ["俄罗斯"]}


def _cache(model: torch.nn.Module, *edits: Edit) -> EditCache:
    cache = EditCache(model_fingerprint(model, "tiny"), "lu-lafns", {"site": "act_fn"})
    for edit in edits:
        cache.add(edit)
    return cache


def _edit(edit_id: str, subjects: dict[str, list[str]], value: float = 4.0) -> Edit:
    idx = torch.arange(0, 128, 3)
    deltas = {1: (idx, torch.full((idx.numel(),), value)), 2: (idx[:5].clone(), -torch.ones(5))}
    return Edit(edit_id, subjects, neuron_tensors(deltas))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_edited_model_positions_equal_editor_positions(padding_side: str) -> None:
    """In a padded batch, the runtime puts each edit where the editor trained it (also after a prefix)."""
    model = build_tiny_model("qwen2")
    tokenizer = build_tiny_tokenizer()
    edited = EditedModel(model, tokenizer, _cache(model, _edit("e1", SUBJECTS)))
    cases = [
        ("en", "Who is the president of Russia?", "Russia", ""),
        ("cs", "Kde leží Ruské federace?", "Ruská federace", ""),
        ("zh", "俄罗斯的总统是谁？", "俄罗斯", ""),
        ("en", "Who is the president of Russia?", "Russia", "Because it was late. "),
        ("zh", "俄罗斯的总统是谁？", "俄罗斯", "因为天气很冷。"),
    ]
    texts, expected = [], []
    for _lang, question, subject, head in cases:
        span = shift(locate_subject(question, subject), len(head))
        ids, pos = encode_with_subject(tokenizer, head + question, span)
        texts.append(head + question)
        expected.append((ids, pos))
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side)
    placements, applied = edited.placements(batch["input_ids"], batch["attention_mask"])
    assert applied == [["e1"]] * len(cases)
    assert [p.row for p in placements] == list(range(len(cases)))
    for p, (ids, pos) in zip(placements, expected, strict=True):
        first = int(torch.nonzero(batch["attention_mask"][p.row])[0])
        assert batch["input_ids"][p.row, first : first + len(ids)].tolist() == ids
        assert p.pos - first == pos
        assert p.key == "e1"


def test_two_subjects_in_one_input_give_two_placements() -> None:
    """Each cached subject found in an input gets its own placement with its own edit id."""
    model = build_tiny_model("llama")
    tokenizer = build_tiny_tokenizer()
    edited = EditedModel(model, tokenizer, _cache(model, _edit("e1", SUBJECTS), _edit("e2", {"en": ["Mars"]})))
    batch = tokenizer(["Is Russia bigger than Mars?", "Nothing here"], return_tensors="pt", padding=True)
    placements, applied = edited.placements(batch["input_ids"], batch["attention_mask"])
    text = "Is Russia bigger than Mars?"
    assert placements == [Placement(0, text.index("Russia") + 5, "e1"), Placement(0, text.index("Mars") + 3, "e2")]
    assert applied == [["e1", "e2"], []]


@pytest.mark.parametrize("site", ["act_fn", "down_proj_input"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_edited_forward_equals_manual_placement(padding_side: str, site: str) -> None:
    """The wrapper's forward is the model with each matched edit added at its position (at the cache's
    site); unmatched rows untouched."""
    model = build_tiny_model("gemma3")
    tokenizer = build_tiny_tokenizer()
    cache = _cache(model, _edit("e1", SUBJECTS))
    cache.method_config["site"] = site
    edited = EditedModel(model, tokenizer, cache)
    texts = ["Who is the president of Russia?", "What is two plus two?"]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side=padding_side)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    first = int(torch.nonzero(mask[0])[0])
    manual = [Placement(0, first + texts[0].index("Russia") + 5, "e1")]
    with torch.no_grad():
        out = edited(ids, mask).logits
        with neuron_updates(get_adapter(model), {e.edit_id: neuron_deltas(e) for e in cache}, manual, site):
            reference = model(input_ids=ids, attention_mask=mask).logits
        base = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(out, reference)
    assert not torch.allclose(out[0], base[0], atol=1e-4)
    assert torch.equal(out[1], base[1])


def test_input_without_cached_subject_is_bit_identical() -> None:
    """No cached subject in the batch: logits ``torch.equal`` to the base model."""
    model = build_tiny_model("bloom")
    tokenizer = build_tiny_tokenizer()
    edited = EditedModel(model, tokenizer, _cache(model, _edit("e1", SUBJECTS), _edit("e2", {"en": ["Mars"]})))
    batch = tokenizer(["What is two plus two?", "火星是什么？"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(edited(batch["input_ids"], batch["attention_mask"]).logits, model(**batch).logits)


def test_ask_reports_edits_applied() -> None:
    """``ask`` answers every question and lists the edit ids it used (none for unrelated questions)."""
    model = build_tiny_model("gpt2")
    tokenizer = build_tiny_tokenizer()
    edited = EditedModel(model, tokenizer, _cache(model, _edit("e1", SUBJECTS), _edit("e2", {"en": ["Mars"]})))
    questions = ["Who is the president of Russia?", "What is two plus two?", "Is Mars bigger than 俄罗斯?"]
    answers = edited.ask(questions, max_new_tokens=3, batch_size=2)
    assert [a.question for a in answers] == questions
    assert [a.edits_applied for a in answers] == [["e1"], [], ["e1", "e2"]]
    assert all(isinstance(a.answer, str) and "\n" not in a.answer for a in answers)
    spans = [[(m.edit_id, m.start, m.end, m.text) for m in a.matches] for a in answers]
    assert spans == [[("e1", 24, 30, "Russia")], [], [("e2", 3, 7, "Mars"), ("e1", 20, 23, "俄罗斯")]]


def test_edited_model_follows_cache_changes() -> None:
    """Edits added to or removed from the cache after the wrapper was built are matched (or no longer)."""
    model = build_tiny_model("llama")
    tokenizer = build_tiny_tokenizer()
    cache = _cache(model, _edit("e1", SUBJECTS))
    edited = EditedModel(model, tokenizer, cache)
    batch = tokenizer(["Is Russia bigger than Mars?"], return_tensors="pt")
    assert edited.placements(batch["input_ids"])[1] == [["e1"]]
    cache.add(_edit("e2", {"en": ["Mars"]}))
    assert edited.placements(batch["input_ids"])[1] == [["e1", "e2"]]
    cache.remove("e1")
    assert edited.placements(batch["input_ids"])[1] == [["e2"]]
    with torch.no_grad():
        edited(batch["input_ids"])  # no stale edit id reaches the hooks


def test_saved_and_loaded_cache_gives_identical_logits(tmp_path) -> None:
    """A cache written to disk and read back edits the model exactly like the in-memory one."""
    model = build_tiny_model("qwen2")
    tokenizer = build_tiny_tokenizer()
    cache = _cache(model, _edit("e1", SUBJECTS), _edit("e2", {"en": ["Mars"]}, value=-2.0))
    loaded = EditCache.load(cache.save(tmp_path / "cache"), model=model)
    batch = tokenizer(["Is Russia bigger than Mars?", "俄罗斯的总统是谁？"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = EditedModel(model, tokenizer, cache)(batch["input_ids"], batch["attention_mask"]).logits
        after = EditedModel(model, tokenizer, loaded)(batch["input_ids"], batch["attention_mask"]).logits
    assert torch.equal(before, after)


def test_edited_model_refuses_cache_of_another_model() -> None:
    model = build_tiny_model("llama")
    other = build_tiny_model("llama", seed=1)
    with pytest.raises(CacheError, match="not for the loaded model"):
        EditedModel(other, build_tiny_tokenizer(), _cache(model, _edit("e1", SUBJECTS)))


def test_generate_with_several_return_sequences_edits_every_copy() -> None:
    """Each returned sequence of a prompt must see the edit, not only the first copy of the prompt."""
    model = build_tiny_model("llama")
    tokenizer = build_tiny_tokenizer()
    edited = EditedModel(model, tokenizer, _cache(model, _edit("e1", SUBJECTS)))
    batch = tokenizer(["Who is the president of Russia"], return_tensors="pt")
    with torch.no_grad():
        single = edited(batch["input_ids"], batch["attention_mask"]).logits[0, -1]
        out = edited.generate(
            batch["input_ids"],
            batch["attention_mask"],
            do_sample=True,
            num_return_sequences=2,
            max_new_tokens=1,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    first_step = out.logits[0]  # [2, vocab]: one row per returned sequence
    torch.testing.assert_close(first_step[0], single)
    torch.testing.assert_close(first_step[1], single)


# --- the editor end to end -------------------------------------------------------------------------


def test_full_edit_on_tiny_model_is_applied_by_edited_model() -> None:
    """``LuLafnEditor.edit`` returns deltas on the configured layers only and the subjects per language;
    put in a cache, the EditedModel applies it to matching questions only."""
    model = build_tiny_model("llama")
    tokenizer = build_tiny_tokenizer()
    config = LuLafnConfig(layers=(1, -2), max_steps=3, num_prefixes=1, prefix_length=3, beta=0.0)
    editor = LuLafnEditor(model, tokenizer, config, model_name="tiny-llama")
    assert editor.config.layers == (1, 2)
    group = EditGroup(
        (
            EditRequest("en", "Russia", "Who is the president of Russia?", "Boris"),
            EditRequest("cs", "Ruská federace", "Kdo je prezidentem Ruské federace?", "Boris"),
        )
    )
    steps = []
    edit = editor.edit(group, on_step=lambda report: steps.append(report.step))
    assert steps == [1, 2, 3]
    assert edit.edit_id == edit_id_for(group) and edit.edit_id.startswith("edit-")
    assert edit.subjects == {"en": ["Russia"], "cs": ["Ruská federace", "Ruské federace"]}
    deltas = neuron_deltas(edit)
    assert set(deltas) and set(deltas) <= {1, 2}
    for idx, val in deltas.values():
        assert idx.dtype == torch.long and val.dtype == torch.float32
        assert idx.shape == val.shape and idx.numel() > 0
        assert torch.equal(idx, idx.unique())
        assert int(idx.max()) < get_adapter(model).d_ffn
    assert any(bool((val != 0).any()) for _, val in deltas.values())
    assert edit.info["steps"] == 3
    assert edit.info["langs"] == ["en", "cs"]
    assert edit.info["neurons_per_layer"] == {str(k): int(v[0].numel()) for k, v in deltas.items()}
    assert all(p.requires_grad for p in model.parameters())  # flags put back as they were

    cache = editor.new_cache()
    assert cache.add(edit) == []
    edited = EditedModel(model, tokenizer, cache)
    texts = ["Kdo je prezidentem Ruské federace?", "What is two plus two?"]
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        with edited.applying(batch["input_ids"], batch["attention_mask"]) as applied:
            out = model(**batch).logits
        base = model(**batch).logits
    assert applied == [[edit.edit_id], []]
    assert not torch.allclose(out[0], base[0])
    assert torch.equal(out[1], base[1])
    assert edited.ask(["Who is the president of Russia?"], max_new_tokens=2)[0].edits_applied == [edit.edit_id]


def test_place_subject_tries_own_then_other_languages_then_approximate() -> None:
    """The aligned subject set (S_G): own form first, another language's verbatim, then approximate."""
    own = place_subject("Who makes the Volvo B12M?", ["Volvo B12M", "沃尔沃B12M"])
    assert own is not None and (own.kind, own.surface) == ("verbatim", "Volvo B12M")
    other = place_subject("Který umělec vytvořil Call the Doctor?", ["Zavolejte doktora", "Call the Doctor", "Call"])
    assert other is not None and (other.kind, other.surface) == ("other_language", "Call the Doctor")
    suffixed = place_subject("Char 2C'nin ağırlığı nedir?", ["Karakter 2C", "Char 2C"])
    assert suffixed is not None and suffixed.surface == "Char 2C'nin"  # whole word, Turkish suffix included
    inflected = place_subject("Kdo vede Ruské federace?", ["Ruská federace", "Russian Federation"])
    assert inflected is not None and (inflected.kind, inflected.surface) == ("approximate", "Ruské federace")
    assert place_subject("Kdo napsal Dona Quijota?", ["Rusko", "Russia"]) is None


def test_subject_placement_on_the_hand_labelled_sample() -> None:
    """Regression floor on tests/data/subject_spans.jsonl (MzsRE pairs not verbatim, spans read by a person):
    126 of 165 exact spans and 3 of 6 absent subjects falsely placed when written (see benchmarks/subject_spans.py)."""
    rows = [
        json.loads(line) for line in (Path(__file__).parent / "data" / "subject_spans.jsonl").open(encoding="utf-8")
    ]
    exact = labelled = false = 0
    for row in rows:
        others = [s for lang, s in row["aligned_subjects"].items() if lang != row["lang"]]
        span = place_subject(row["question"], [row["subject"], *others])
        gold = row["gold"]
        if gold is None:
            false += span is not None
            continue
        labelled += 1
        exact += span is not None and (span.start, span.end) == (gold["start"], gold["end"])
    assert labelled >= 100 and exact / labelled >= 0.75
    assert false <= 3

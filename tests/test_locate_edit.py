"""M-ROME, M-MEMIT, M-PMET and their shared mechanism (keys, values, key statistics) on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer
from mkedit.arch import get_adapter
from mkedit.errors import MkeditError
from mkedit.methods.common.weights import low_rank_deltas, weights_checksum
from mkedit.methods.locate_edit import LocateEditMethod, SecondMoments, StatsCorpusError, depth_band, values
from mkedit.methods.locate_edit.method import GroupWork
from mkedit.methods.locate_edit.stats import corpus_file, read_texts
from mkedit.methods.locate_edit.values import read_at_subject
from mkedit.methods.registry import get_method
from mkedit.models.fingerprint import model_fingerprint
from mkedit.prompting import encode_prompt_answer
from mkedit.types import EditGroup, EditRequest

METHODS = ("m-rome", "m-memit", "m-pmet")
# Subject at the end of the question and short answers: on random 64-wide models the subject's value
# reaches the answer mostly directly, so a few steps show the effect. No weight decay for the same reason
# (the decay is relative to the tiny models' tiny site norms).
FAST = {"stats_samples": 40, "num_prefixes": 2, "prefix_length": 4, "v_num_grad_steps": 12, "v_weight_decay": 0.0,
        "clamp_norm_factor": 10.0}  # fmt: skip
GROUP = EditGroup(
    (EditRequest("en", "Alice", "The birthplace of Alice", "Oz"), EditRequest("zh", "爱丽丝", "出生地：爱丽丝", "Oz")),
    "alice",
)


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-language stats corpus in MzsRE's layout, a private stats cache, and no corpus variable."""
    folder = tmp_path / "train"
    folder.mkdir()
    en = [f"What is the capital of country {i}?\tCity {i}" for i in range(40)]
    zh = [f"国家{i}的首都是哪里？\t城市{i}" for i in range(40)]
    (folder / "zsre_mend_train_en_40.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    (folder / "zsre_mend_train_zh_40.txt").write_text("\n".join(zh) + "\n", encoding="utf-8")
    monkeypatch.setenv("MKEDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MKEDIT_STATS_CORPUS", raising=False)
    return folder


def make(name: str, family: str, corpus: Path, **changes: object) -> LocateEditMethod:
    cls = get_method(name)
    config = cls.config_class().replace(**{"stats_corpus": str(corpus), **FAST, **changes})
    return cls(build_tiny_model(family), build_tiny_tokenizer(), config)  # type: ignore[return-value]


def answer_logprob(model: torch.nn.Module, method: LocateEditMethod, req: EditRequest) -> float:
    """Mean log-probability of the answer tokens after the question (teacher-forced)."""
    enc = encode_prompt_answer(method.tokenizer, req.question, req.answer, req.lang)
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    positions = range(enc.answer_start, ids.shape[1])
    return sum(float(logp[p - 1, ids[0, p]]) for p in positions) / len(positions)


def test_depth_band_scales_reference_layers() -> None:
    assert depth_band(5, 5, 28, 28) == (5,)
    assert depth_band(5, 5, 28, 24) == (4,)
    assert depth_band(3, 8, 28, 24) == (3, 4, 5, 6, 7)
    assert depth_band(3, 8, 28, 4) == (0, 1)
    assert depth_band(3, 8, 28, 1) == (0,)


def test_default_layers_follow_depth_and_negative_layers_resolve(corpus: Path) -> None:
    model, tok = build_tiny_model("llama"), build_tiny_tokenizer()
    assert get_method("m-rome")(model, tok).config.layers == (1,)
    assert get_method("m-memit")(model, tok).config.layers == (0, 1)
    assert get_method("m-pmet")(model, tok).default_config().layers == (0, 1)
    memit = get_method("m-memit")
    assert memit(model, tok, memit.config_class(layers=(-1, 1))).config.layers == (1, 3)
    with pytest.raises(ValueError, match="same layer twice"):
        memit(model, tok, memit.config_class(layers=(-1, 3)))
    with pytest.raises(ValueError, match="one layer"):
        get_method("m-rome").config_class(layers=(1, 2))


def test_unset_or_unknown_corpus_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    method = make("m-memit", "llama", corpus, stats_corpus=None)
    with pytest.raises(StatsCorpusError, match=r"--set stats_corpus=PATH") as info:
        method.edit(GROUP)
    assert isinstance(info.value, MkeditError)
    with pytest.raises(StatsCorpusError, match="language code 'fr'"):
        corpus_file(str(corpus), "fr")
    with pytest.raises(StatsCorpusError, match="no file for language 'en'"):
        corpus_file(str(tmp_path / "nowhere_{lang}.txt"), "en")


def test_corpus_resolution_and_reading(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (corpus / "zsre_mend_train_cz_40.txt").write_text("Jaký je rodný jazyk X? \tNěmec\n\nplain line\n", "utf-8")
    assert corpus_file(str(corpus), "cs").name == "zsre_mend_train_cz_40.txt"  # data-file alias of Czech
    assert corpus_file(str(corpus / "zsre_mend_train_{lang}_40.txt"), "cs").name == "zsre_mend_train_cz_40.txt"
    monkeypatch.setenv("MKEDIT_STATS_CORPUS", str(corpus))
    assert corpus_file(None, "en").name == "zsre_mend_train_en_40.txt"
    assert read_texts(corpus_file(None, "cs"), "cs", 10) == ["Jaký je rodný jazyk X? Němec", "plain line"]
    assert read_texts(corpus_file(None, "zh"), "zh", 1) == ["国家0的首都是哪里？城市0"]


def _stats(model: torch.nn.Module, corpus: Path, **kwargs: object) -> SecondMoments:
    adapter = get_adapter(model)
    fingerprint = model_fingerprint(model, "tiny")
    return SecondMoments(adapter, build_tiny_tokenizer(), fingerprint, str(corpus), 40, batch_size=8, **kwargs)


def test_stats_match_keys_are_cached_and_resume(corpus: Path) -> None:
    model = build_tiny_model("qwen2")
    fresh = _stats(model, corpus)
    fresh.ensure([1, 2], "en")
    moment = fresh.get(1, "en")
    # the definition: mean over the corpus tokens of k kᵀ, k = down_proj's input
    adapter, tok = get_adapter(model), build_tiny_tokenizer()
    texts, keys = read_texts(corpus_file(str(corpus), "en"), "en", 40), []
    handle = adapter.down_proj_module(1).register_forward_pre_hook(lambda _m, a: keys.append(a[0][0]))
    with torch.no_grad():
        for text in texts:
            model(input_ids=torch.tensor([tok(text)["input_ids"]]))
    handle.remove()
    k = torch.cat(keys).double()
    torch.testing.assert_close(moment, (k.T @ k / k.shape[0]).float(), rtol=1e-4, atol=1e-7)
    assert moment.dtype == torch.float32
    files = sorted((corpus.parent / "cache" / "stats").rglob("*.safetensors"))
    assert len(files) == 2 and not any("partial" in f.name for f in files)

    # a second instance loads from disk: no forward pass
    def refuse(*_: object) -> None:
        raise AssertionError("recomputed")

    handle = model.base_model.register_forward_pre_hook(refuse)
    assert torch.equal(_stats(model, corpus).get(1, "en"), moment)
    handle.remove()

    # interrupted after 3 of 5 batches (saved every batch), then resumed: same result as uninterrupted
    calls = {"n": 0}

    def interrupt(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt

    for file in files:
        file.unlink()
    handle = model.base_model.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _stats(model, corpus, checkpoint_every=1).ensure([1, 2], "en")
    handle.remove()
    assert len(list((corpus.parent / "cache" / "stats").rglob("*.partial.safetensors"))) == 2
    calls["n"] = 0
    handle = model.base_model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    resumed = _stats(model, corpus, checkpoint_every=1)
    resumed.ensure([1, 2], "en")
    handle.remove()
    assert calls["n"] == 2  # only the two missing batches
    assert torch.equal(resumed.get(1, "en"), moment) and torch.equal(resumed.get(2, "en"), fresh.get(2, "en"))
    assert not list((corpus.parent / "cache" / "stats").rglob("*.partial.safetensors"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_keys_are_down_proj_inputs_at_the_subject_last_token(family: str, corpus: Path) -> None:
    method = make("m-memit", family, corpus)
    group = EditGroup((EditRequest("en", "Alice", "Where was Alice born?", "Oz"),))
    work = GroupWork(method, group)
    batch = work.batches["en"]
    reading = read_at_subject(method.adapter, batch, [1], [])
    ids = method.tokenizer("Where was Alice born?")["input_ids"]
    position = len(method.tokenizer("Where was Alice")["input_ids"]) - 1  # byte tokens: the "e" of Alice
    assert int(batch.subject_pos[0]) == position and batch.input_ids[0, : len(ids)].tolist() == ids
    seen = {}
    handle = method.adapter.down_proj_module(1).register_forward_pre_hook(lambda _m, a: seen.__setitem__("k", a[0]))
    with torch.no_grad():
        method.model(input_ids=torch.tensor([ids]))
    handle.remove()
    torch.testing.assert_close(reading.key_bare[1], seen["k"][0, position].float())
    # the mean key averages the bare question and each prefixed one
    assert batch.subject_rows.numel() == 3 and not torch.allclose(reading.key_mean[1], reading.key_bare[1])


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_edit_raises_target_and_keeps_weights(name: str, family: str, corpus: Path) -> None:
    method = make(name, family, corpus)
    model = method.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checksum = weights_checksum(model)
    flags = [p.requires_grad for p in model.parameters()]
    before = [answer_logprob(model, method, r) for r in GROUP.requests]
    edit = method.edit(GROUP)
    assert torch.equal(weights_checksum(model), checksum)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [p.requires_grad for p in model.parameters()] == flags
    params = dict(model.named_parameters())
    for param, (left, right) in low_rank_deltas(edit).items():
        assert (left @ right).shape == params[param].shape
        assert left.shape[1] == len(GROUP.requests)  # one key column (ROME: one rank-one update) per language
    assert edit.method == name and edit.subjects["en"] == ["Alice"]
    assert edit.info["layers"] == list(method.config.layers)
    with method.applied([edit]):
        after = [answer_logprob(model, method, r) for r in GROUP.requests]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert sum(after) / len(after) > sum(before) / len(before) + 0.05, (before, after)
    if name != "m-pmet":  # PMET writes only the FFN share of its value; the attention share is dropped
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_update_reaches_the_learned_value(family: str, corpus: Path) -> None:
    """After ROME's update, W_out's output at the bare question is the learned target (layout included:
    GPT-2's Conv1D stores W as [d_ffn, d_model], and the edit's factors follow it)."""
    method = make("m-rome", family, corpus)
    layer = method.config.layers[0]
    group = GROUP.restrict(["en"])
    edit = method.edit(group)
    name, transposed = method.adapter.ffn_out_param(layer)
    assert transposed == (family == "gpt2")
    left, right = low_rank_deltas(edit)[name]
    d_model, d_ffn = method.adapter.d_model, method.adapter.d_ffn
    assert (left.shape, right.shape) == (((d_ffn, 1), (1, d_model)) if transposed else ((d_model, 1), (1, d_ffn)))
    work = GroupWork(method, group)
    value = work.value("en", layer, ("ffn_out",))
    with method.applied([edit]):
        reading = read_at_subject(method.adapter, work.batches["en"], [layer], [("ffn_out", layer)])
    torch.testing.assert_close(reading.output[("ffn_out", layer)], value.target["ffn_out"], rtol=1e-3, atol=1e-4)


SITES = {"m-rome": ("ffn_out",), "m-memit": ("block_out",), "m-pmet": ("attn_out", "ffn_out")}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_value_objective_is_the_same_on_subject_aligned_rows(name: str, family: str, corpus: Path) -> None:
    """The value optimisation computes the columns before the subjects once (subject-aligned rows and a key/value
    cache); at a non-zero value delta, with an earlier update in force, its loss, gradient and initial site outputs
    equal those of the right-padded rows computed whole."""
    method = make(name, family, corpus)
    layer, sites = method.config.layers[0], SITES[name]
    group = EditGroup((EditRequest("en", "Alice", "Where was Alice born then?", "Oz"),))
    work = GroupWork(method, group)
    aligned, padded = work.value_batches["en"], work.batches["en"]
    assert aligned.split > 0 and padded.split == 0
    g = torch.Generator().manual_seed(3)
    d_model, d_ffn = method.adapter.d_model, method.adapter.d_ffn
    in_force = {layer + 1: (0.1 * torch.randn(d_model, 1, generator=g), 0.1 * torch.randn(1, d_ffn, generator=g))}
    results = []
    for batch in (padded, aligned):
        prepared = values._prepare(method.adapter, batch, layer, sites, in_force)
        deltas = {s: (0.5 * prepared.init[s].norm() * torch.randn(d_model, generator=g.manual_seed(5))).requires_grad_()
                  for s in sites}  # fmt: skip
        nll, kl = values._loss(method.adapter, prepared, layer, deltas, in_force)
        (nll + kl).backward()
        results.append((prepared.init, nll.item(), kl.item(), {s: d.grad for s, d in deltas.items()}))
    (init_p, nll_p, kl_p, grad_p), (init_a, nll_a, kl_a, grad_a) = results
    assert nll_a == pytest.approx(nll_p, rel=1e-4) and kl_a == pytest.approx(kl_p, rel=1e-3, abs=1e-6)
    for site in sites:
        assert grad_p[site].abs().sum() > 0
        torch.testing.assert_close(init_a[site], init_p[site], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad_a[site], grad_p[site], rtol=1e-3, atol=1e-5)


def test_sequential_edit_reads_current_weights(corpus: Path) -> None:
    """With an earlier edit in force, edit() computes against the edited weights and changes none of them."""
    method = make("m-memit", "qwen2", corpus)
    first = method.edit(GROUP)
    other = EditGroup((EditRequest("en", "Bob", "The home of Bob", "Ur"),), "bob")
    with method.applied([first]):
        edited = {k: v.clone() for k, v in method.model.state_dict().items()}
        second = method.edit(other)
        assert all(torch.equal(v, method.model.state_dict()[k]) for k, v in edited.items())
    assert second.info["nll_after"]["en"] < second.info["nll_before"]["en"]
    with method.applied([first, second]):
        assert answer_logprob(method.model, method, other.requests[0]) > -5.7


def test_stats_computed_with_edits_in_force_warn(corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    method = make("m-rome", "llama", corpus)
    first = method.edit(GROUP.restrict(["en"]))
    with method.applied([first]), caplog.at_level("WARNING"):
        method.edit(GROUP.restrict(["zh"]))  # zh statistics are computed now, on the edited model
    assert "prepare(langs)" in caplog.text


def test_statistics_from_fewer_tokens_than_key_dimensions_are_refused(corpus: Path) -> None:
    """A singular C would let an edit move every other prompt; the error says how much text is needed,
    and the statistics already computed stay on disk (loading them is refused the same way)."""
    method = make("m-rome", "llama", corpus, stats_samples=2)
    for _ in range(2):  # computed, then loaded from the cache
        fresh = SecondMoments(method.adapter, method.tokenizer, model_fingerprint(method.model, "tiny"), str(corpus), 2)
        with pytest.raises(StatsCorpusError, match=rf"fewer than the {method.adapter.d_ffn} dimensions"):
            fresh.get(1, "en")
    assert list((corpus.parent / "cache" / "stats").rglob("L001-en-*.safetensors"))


def test_values_are_remembered_per_request_weights_and_updates_in_force(corpus: Path) -> None:
    """A fact edited again (another benchmark setting) reuses its learned value and gets the same update;
    with an earlier edit in the weights, or another language first (M-ROME), the value is learned anew."""
    memit = make("m-memit", "qwen2", corpus)
    first = memit.edit(GROUP)
    again = memit.edit(GROUP)
    alone = memit.edit(GROUP.restrict(["zh"]))
    assert first.info["values_reused"] == [] and again.info["values_reused"] == ["en", "zh"]
    assert alone.info["values_reused"] == ["zh"]
    for name, tensor in first.tensors.items():
        assert torch.equal(tensor, again.tensors[name])
    with memit.applied([first]):
        assert memit.edit(GROUP).info["values_reused"] == []
    rome = make("m-rome", "qwen2", corpus)
    rome.edit(GROUP)  # en first, then zh with en's update in force
    assert rome.edit(GROUP.restrict(["zh"])).info["values_reused"] == []
    assert rome.edit(GROUP.restrict(["en"])).info["values_reused"] == ["en"]


def test_statistics_record_their_compute_time_for_later_runs(corpus: Path) -> None:
    """The one-off cost is reported even when the statistics come from the cache of an earlier run."""
    method = make("m-memit", "llama", corpus)
    assert method.one_off_seconds() is None  # nothing computed or loaded yet
    method.prepare(["en", "zh"])
    computed = method.one_off_seconds()
    assert computed is not None and computed >= 0
    later = make("m-memit", "llama", corpus)  # same model seed, corpus and samples: loads from disk
    later.prepare(["en", "zh"])
    assert later.stats.seconds == {} and later.one_off_seconds() == computed

"""Editing objective (Eq. 7-10) and locating (Eq. 4-6): speed switches keep the objective, bounds hold."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer, tiny_config
from mkedit.arch import get_adapter
from mkedit.arch.hooks import Placement, capture_site_values, neuron_updates
from mkedit.errors import MkeditError
from mkedit.methods.common.batch import (
    EDIT_KEY,
    TrainSequence,
    read_logprobs,
    sequences_for_request,
    subject_prompt,
    to_tensor_batch,
)
from mkedit.methods.lu_lafns.config import LuLafnConfig
from mkedit.methods.lu_lafns.locate import intersect, locate_lafns, select_neurons
from mkedit.methods.lu_lafns.optimize import _batch_loss, _prepare, optimize_delta
from mkedit.types import EditGroup, EditRequest

# Not the last layer: ΔV sits at the subject's last token, and after the last block nothing carries it to
# the answer positions, so a last-layer update gets no gradient unless the subject ends the prompt.
LAYERS = (1, 2)
REQUESTS = (
    EditRequest("en", "Russia", "Who is the president of Russia?", "Boris", ("Who leads Russia?",)),
    EditRequest("zh", "俄罗斯", "俄罗斯的总统是谁？", "鲍里斯", ("谁领导俄罗斯？",)),
)
SWITCHES = ("batch_sequences", "reuse_lower_layers", "answer_logits_only", "reuse_prefix")


def training_sequences() -> list[TrainSequence]:
    """Target and KL sequences of an en/zh group: bare question + one prefix, a line-break stop token."""
    tokenizer = build_tiny_tokenizer()
    stop = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    sequences = []
    for request in REQUESTS:
        seqs, _ = sequences_for_request(tokenizer, request, ["The cat sat"], True, "test", stop)
        sequences += seqs
    return sequences


def random_lafns(d_ffn: int, layers: tuple[int, ...] = LAYERS, k: int = 40) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {layer: torch.randperm(d_ffn, generator=g)[:k].sort().values for layer in layers}


def peaky_model(family: str) -> torch.nn.Module:
    """A tiny model whose logits are not flat (``initializer_range=0.2``)."""
    config = tiny_config(family)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def config(**changes) -> LuLafnConfig:
    base = LuLafnConfig(layers=LAYERS, max_steps=3, learning_rate=0.5, early_stop_nll=0.0)
    return base.replace(**changes)


@pytest.mark.parametrize("family", FAMILIES)
def test_read_logprobs_full_and_head_only_agree(family: str) -> None:
    """Applying the head only at the read positions gives the same log-probs as full logits."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    sequences = training_sequences()
    n_target = sum(s.kind == "target" for s in sequences)
    batch = to_tensor_batch(sequences, 0, n_target, len(sequences) - n_target, torch.device("cpu"))
    rows, pos = batch.read_positions()
    with torch.no_grad():
        full = read_logprobs(adapter, batch, rows, pos, full_logits=True)
        head_only = read_logprobs(adapter, batch, rows, pos, full_logits=False)
    assert full.shape == (rows.numel(), model.config.vocab_size)
    torch.testing.assert_close(head_only, full)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(rows.numel()))


@pytest.mark.parametrize("family", FAMILIES)
def test_speed_switches_do_not_change_the_objective(family: str) -> None:
    """All speed switches on vs all off: the same loss at every step and the same ΔV."""
    adapter = get_adapter(build_tiny_model(family))
    sequences = training_sequences()
    lafns = random_lafns(adapter.d_ffn)
    on = optimize_delta(adapter, sequences, lafns, config(max_steps=2), pad_id=0)
    off = optimize_delta(adapter, sequences, lafns, config(max_steps=2, **dict.fromkeys(SWITCHES, False)), pad_id=0)
    assert len(on.history) == len(off.history) == 2
    assert off.history[1] != off.history[0]  # ΔV moved, so step 2 compares a non-zero update
    torch.testing.assert_close(torch.tensor(on.history), torch.tensor(off.history), rtol=1e-4, atol=1e-6)
    assert on.target_nll == pytest.approx(off.target_nll, rel=1e-4)
    for layer in LAYERS:
        assert off.deltas[layer].abs().sum() > 0
        torch.testing.assert_close(on.deltas[layer], off.deltas[layer], rtol=1e-3, atol=1e-5)


def _loss_and_grads(
    adapter, sequences, lafns, cfg: LuLafnConfig, scale: float = 0.5
) -> tuple[float, dict[int, torch.Tensor]]:
    """The objective and its gradient at a fixed non-zero ΔV, computed as ``optimize_delta`` does."""
    layers = sorted(lafns)
    n_target, n_kl, n_keep = (sum(s.kind == kind for s in sequences) for kind in ("target", "kl", "keep"))
    groups = [list(sequences)] if cfg.batch_sequences else [[s] for s in sequences]
    g = torch.Generator().manual_seed(11)
    deltas = {layer: (scale * torch.randn(lafns[layer].numel(), generator=g)).requires_grad_() for layer in layers}
    updates = {EDIT_KEY: {layer: (lafns[layer], deltas[layer]) for layer in layers}}
    total = 0.0
    for group in groups:
        batch = to_tensor_batch(group, 0, n_target, n_kl, torch.device("cpu"), n_keep, cfg.reuse_prefix)
        prepared, _ = _prepare(adapter, batch, cfg, layers[0])
        loss, *_ = _batch_loss(adapter, prepared, cfg, layers[0], updates)
        loss.backward()
        total += loss.item()
    return total, {layer: d.grad for layer, d in deltas.items()}


SWITCH_SETTINGS = {
    "all on": {},
    **{f"{switch} off": {switch: False} for switch in SWITCHES},
    "all off": dict.fromkeys(SWITCHES, False),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_speed_switch_same_loss_and_gradient_at_nonzero_delta(family: str) -> None:
    """At a random non-zero ΔV (KL and keep terms active), every switch setting gives the same loss and
    gradient."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    for p in model.parameters():
        p.requires_grad_(False)
    keep = subject_prompt(build_tiny_tokenizer(), "Who created {s}?", "Russia", "keep")
    sequences = [*training_sequences(), keep]
    lafns = random_lafns(adapter.d_ffn)
    results = {
        name: _loss_and_grads(adapter, sequences, lafns, config(lambda_keep=0.5, **c))
        for name, c in SWITCH_SETTINGS.items()
    }
    ref_loss, ref_grads = results["all off"]
    for layer in LAYERS:
        assert ref_grads[layer].abs().sum() > 0
    for name, (loss, grads) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-4), name
        for layer in LAYERS:
            torch.testing.assert_close(grads[layer], ref_grads[layer], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_objective_matches_hand_computation(family: str) -> None:
    """Eq. 8-10 by hand, one sequence at a time: λ1 · mean over target sequences of the mean answer-token NLL
    + λ2 · mean over KL prompts of KL(P_base || P_edit) at the prompt's last token, ΔV at the subject token;
    and the keep term: λ_keep · the same KL, averaged over the keep prompts alone."""
    model = peaky_model(family)
    adapter = get_adapter(model)
    for p in model.parameters():
        p.requires_grad_(False)
    # plus a KL prompt that ends with its subject: ΔV then acts on the KL position directly, and with peaky
    # logits and a large ΔV, KL(base || edit) clearly differs from KL(edit || base)
    subject_last = tuple(build_tiny_tokenizer()("Russia")["input_ids"])
    tokenizer = build_tiny_tokenizer()
    keep = [subject_prompt(tokenizer, t, "Russia", "keep") for t in ("Who created {s}?", "{s} was founded in")]
    sequences = [*training_sequences(), TrainSequence(subject_last, len(subject_last) - 1, "kl"), *keep]
    lafns = random_lafns(adapter.d_ffn)
    scale = 3.0
    off = {"lambda_target": 0.0, "lambda_kl": 0.0, "lambda_keep": 0.0}
    nll_only, _ = _loss_and_grads(adapter, sequences, lafns, config(**{**off, "lambda_target": 0.7}), scale)
    kl_only, _ = _loss_and_grads(adapter, sequences, lafns, config(**{**off, "lambda_kl": 0.5}), scale)
    keep_only, _ = _loss_and_grads(adapter, sequences, lafns, config(**{**off, "lambda_keep": 0.3}), scale)

    g = torch.Generator().manual_seed(11)  # the same ΔV as _loss_and_grads draws
    deltas = {layer: scale * torch.randn(lafns[layer].numel(), generator=g) for layer in sorted(lafns)}
    updates = {"k": {layer: (lafns[layer], deltas[layer]) for layer in deltas}}
    nlls, kls, reverse_kls, keeps = [], [], [], []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq.input_ids])
            with neuron_updates(adapter, updates, [Placement(0, seq.subject_pos, "k")]):
                edited = model(input_ids=ids).logits[0].log_softmax(-1)
            if seq.kind == "target":
                answer = range(seq.answer_start, len(seq.input_ids))
                nlls.append(-sum(float(edited[p - 1, seq.input_ids[p]]) for p in answer) / len(answer))
            else:
                base = model(input_ids=ids).logits[0, -1].log_softmax(-1)
                (kls if seq.kind == "kl" else keeps).append(float((base.exp() * (base - edited[-1])).sum()))
                if seq.kind == "kl":
                    reverse_kls.append(float((edited[-1].exp() * (edited[-1] - base)).sum()))
    assert nll_only == pytest.approx(0.7 * sum(nlls) / len(nlls), rel=1e-4)
    assert kl_only == pytest.approx(0.5 * sum(kls) / len(kls), rel=1e-3)
    assert len(keeps) == 2 and min(keeps) > 0
    assert keep_only == pytest.approx(0.3 * sum(keeps) / len(keeps), rel=1e-3)
    assert sum(reverse_kls) != pytest.approx(sum(kls), rel=0.05), "the check must tell the two KL directions apart"


def _hand_bounds(adapter, sequences, lafns, ratio: float) -> dict[int, float]:
    """``ratio`` x mean over target sequences of ``||V_layer[LAFNs]||`` at the subject's last token."""
    norms: dict[int, list[float]] = {layer: [] for layer in lafns}
    for seq in sequences:
        if seq.kind != "target":
            continue
        with torch.no_grad(), capture_site_values(adapter, sorted(lafns), "act_fn") as values:
            adapter.model(input_ids=torch.tensor([seq.input_ids]))
        for layer, idx in lafns.items():
            norms[layer].append(float(values[layer][0, seq.subject_pos, idx].norm()))
    return {layer: ratio * sum(v) / len(v) for layer, v in norms.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_delta_respects_norm_bound(family: str) -> None:
    """``||ΔV_layer|| <= ratio * mean ||V_layer||`` at the subject token; a large step is scaled down to the bound."""
    adapter = get_adapter(build_tiny_model(family))
    sequences = training_sequences()
    lafns = random_lafns(adapter.d_ffn)
    ratio = 0.05
    result = optimize_delta(adapter, sequences, lafns, config(max_delta_norm_ratio=ratio, learning_rate=5.0), 0)
    bounds = _hand_bounds(adapter, sequences, lafns, ratio)
    for layer in LAYERS:
        assert result.deltas[layer].shape == lafns[layer].shape
        norm = float(result.deltas[layer].norm())
        assert norm <= bounds[layer] * (1 + 1e-5)
        assert norm == pytest.approx(bounds[layer], rel=1e-3)  # lr 5 overshoots: the bound is active


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_nll_decreases(family: str) -> None:
    """On a model with non-flat logits, 15 Adam steps lower the loss and the answer NLL."""
    adapter = get_adapter(peaky_model(family))
    sequences = training_sequences()
    lafns = random_lafns(adapter.d_ffn, k=64)
    steps = []
    result = optimize_delta(
        adapter,
        sequences,
        lafns,
        config(max_steps=15, learning_rate=0.5, max_delta_norm_ratio=4.0),
        0,
        on_step=steps.append,
    )
    assert result.steps == 15 == len(result.history)
    assert [(r.step, r.loss) for r in steps] == list(enumerate(result.history, start=1))
    assert all(r.worst_nll >= r.nll > 0 for r in steps)  # the highest sequence NLL bounds their mean
    assert steps[-1].nll == pytest.approx(result.target_nll)
    assert result.history[-1] < result.history[0]
    assert result.target_nll < result.history[0]  # at step 0 ΔV = 0, so the loss is the base NLL (KL = 0)


def test_early_stop_when_nll_below_threshold() -> None:
    """``early_stop_nll`` above the starting NLL stops after the first evaluation, with ΔV still zero."""
    adapter = get_adapter(build_tiny_model("llama"))
    lafns = random_lafns(adapter.d_ffn)
    result = optimize_delta(adapter, training_sequences(), lafns, config(early_stop_nll=1e9, max_steps=10), 0)
    assert result.steps == 1
    assert all(bool((d == 0).all()) for d in result.deltas.values())


def test_early_stop_keeps_the_update_it_measured() -> None:
    """The step that stops returns the ΔV whose loss it measured: the same as stopping one step earlier by
    ``max_steps`` (no update follows the stopping measurement)."""
    adapter = get_adapter(build_tiny_model("llama"))
    lafns = random_lafns(adapter.d_ffn)
    nll_at = optimize_delta(adapter, training_sequences(), lafns, config(max_steps=4, lambda_kl=0.0), 0)
    threshold = (nll_at.history[2] + nll_at.history[3]) / 2  # without KL the loss is the answer NLL
    assert nll_at.history[3] < threshold < min(nll_at.history[:3])
    stopped = optimize_delta(
        adapter, training_sequences(), lafns, config(max_steps=10, lambda_kl=0.0, early_stop_nll=threshold), 0
    )
    three = optimize_delta(adapter, training_sequences(), lafns, config(max_steps=3, lambda_kl=0.0), 0)
    assert stopped.steps == 4
    for layer in LAYERS:
        torch.testing.assert_close(stopped.deltas[layer], three.deltas[layer])


def test_without_kl_weight_the_kl_prompts_are_not_run() -> None:
    """λ2 = 0 (the qwen2.5-0.5b preset): the editor leaves the KL prompts out, and the update is the one the KL
    prompts' zero-weighted rows would have given."""
    from mkedit.methods.lu_lafns import LuLafnEditor

    adapter = get_adapter(build_tiny_model("llama"))
    lafns = random_lafns(adapter.d_ffn)
    sequences = training_sequences()
    targets = [s for s in sequences if s.kind == "target"]
    assert len(targets) < len(sequences)
    with_rows = optimize_delta(adapter, sequences, lafns, config(max_steps=4, lambda_kl=0.0), 0)
    without = optimize_delta(adapter, targets, lafns, config(max_steps=4, lambda_kl=0.0), 0)
    assert without.kl == 0.0 and without.history == pytest.approx(with_rows.history)
    for layer in LAYERS:
        torch.testing.assert_close(without.deltas[layer], with_rows.deltas[layer])
    cfg = LuLafnConfig(layers=LAYERS, num_prefixes=1)
    editor = LuLafnEditor(adapter.model, build_tiny_tokenizer(), cfg.replace(lambda_kl=0.0), "tiny")
    assert {s.kind for s in editor.training_sequences(_group())[0]} == {"target"}
    with_kl = LuLafnEditor(adapter.model, editor.tokenizer, cfg, "tiny")  # the paper's λ2
    assert {s.kind for s in with_kl.training_sequences(_group())[0]} == {"target", "kl"}


def _group() -> EditGroup:
    return EditGroup(REQUESTS, "g1")


def test_locate_lafns_strategies_sizes() -> None:
    """``lafns`` = intersection of per-language selections; ``all`` = every neuron; ``random`` = as many, seeded."""
    model = build_tiny_model("qwen2")
    adapter = get_adapter(model)
    tokenizer = build_tiny_tokenizer()
    group = _group()
    located = locate_lafns(adapter, tokenizer, group, LAYERS, beta=0.3)
    for lang in group.langs:
        for layer in LAYERS:
            assert torch.equal(located.per_language[lang][layer], select_neurons(located.counts[lang][layer], 0.3))
    for layer in LAYERS:
        expected = intersect([located.per_language[lang][layer] for lang in group.langs])
        assert torch.equal(located.lafns[layer], expected)
        assert 0 < located.lafns[layer].numel() < adapter.d_ffn
    sizes = located.sizes()

    everything = locate_lafns(adapter, tokenizer, group, LAYERS, beta=0.3, strategy="all")
    assert everything.sizes() == dict.fromkeys(LAYERS, adapter.d_ffn)
    assert torch.equal(everything.lafns[1], torch.arange(adapter.d_ffn))

    random_a = locate_lafns(adapter, tokenizer, group, LAYERS, beta=0.3, strategy="random", seed=5)
    random_b = locate_lafns(adapter, tokenizer, group, LAYERS, beta=0.3, strategy="random", seed=5)
    random_c = locate_lafns(adapter, tokenizer, group, LAYERS, beta=0.3, strategy="random", seed=6)
    assert random_a.sizes() == sizes
    for layer in LAYERS:
        idx = random_a.lafns[layer]
        assert torch.equal(idx, random_b.lafns[layer]), "same seed, same neurons"
        assert torch.equal(idx, idx.unique()), "sorted and distinct"
        assert int(idx.min()) >= 0 and int(idx.max()) < adapter.d_ffn
    assert any(not torch.equal(random_a.lafns[layer], random_c.lafns[layer]) for layer in LAYERS)
    assert any(not torch.equal(random_a.lafns[layer], located.lafns[layer]) for layer in LAYERS)


def _silence_layers(model: torch.nn.Module, layers: tuple[int, ...]) -> None:
    """Zero the gate projections: ``act_fn(0) = 0`` so no neuron of these layers is ever active."""
    with torch.no_grad():
        for layer in layers:
            model.model.layers[layer].mlp.gate_proj.weight.zero_()


@pytest.mark.parametrize("strategy", ["lafns", "random"])
def test_empty_intersection_raises(strategy: str) -> None:
    """No neuron shared by the languages in any layer: a MkeditError naming the group, layers and beta."""
    model = build_tiny_model("llama")
    _silence_layers(model, LAYERS)
    adapter = get_adapter(model)
    with pytest.raises(MkeditError, match=r"'g1'.*\[1, 2\].*beta=0"):
        locate_lafns(adapter, build_tiny_tokenizer(), _group(), LAYERS, beta=0.0, strategy=strategy)


def test_layers_without_lafns_are_dropped() -> None:
    """A layer with an empty intersection is left out of the edit; the others are kept."""
    model = build_tiny_model("llama")
    _silence_layers(model, (1,))
    located = locate_lafns(get_adapter(model), build_tiny_tokenizer(), _group(), LAYERS, beta=0.0)
    assert sorted(located.lafns) == [2]
    assert located.per_language["en"][1].numel() == 0


def test_last_layer_update_stays_zero_is_not_stored_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    """ΔV at the subject's last token in the model's last layer cannot reach the answer: zero, unstored, warned."""
    from mkedit.methods.lu_lafns import LuLafnEditor
    from mkedit.runtime.deltas import neuron_deltas

    torch.manual_seed(0)
    cfg = LuLafnConfig().with_overrides({"layers": "1,-1", "num_prefixes": "1", "max_steps": "3"})
    editor = LuLafnEditor(build_tiny_model("qwen2"), build_tiny_tokenizer(), cfg, "tiny")
    last = editor.adapter.n_layers - 1
    with caplog.at_level("WARNING", logger="mkedit.methods.lu_lafns.editor"):
        edit = editor.edit(EditGroup(REQUESTS, "g1"))
        editor.edit(EditGroup(REQUESTS, "g2"))
    stored = neuron_deltas(edit)
    assert sorted(stored) == [1] and stored[1][1].abs().sum() > 0
    assert edit.info["layers_unchanged"] == [last]
    assert str(last) in edit.info["neurons_per_layer"]  # located, trained, found unchanged
    warnings = [r for r in caplog.records if "is the model's last" in r.getMessage()]
    assert len(warnings) == 1  # once per editor, not per edit
    torch.manual_seed(0)
    without = LuLafnEditor(editor.model, editor.tokenizer, cfg.replace(layers=(1,)), "tiny").edit(
        EditGroup(REQUESTS, "g1")
    )
    assert sorted(without.tensors) == sorted(edit.tensors)  # the same edit without the last layer
    assert all(torch.equal(without.tensors[name], edit.tensors[name]) for name in edit.tensors)

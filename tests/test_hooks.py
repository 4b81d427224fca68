"""Neuron hooks: updates land exactly where placed (padding, KV cache, several keys), counting, selection, replay."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, build_tiny_model, build_tiny_tokenizer, tiny_config
from mkedit.arch import FFNAdapter, get_adapter
from mkedit.arch.hooks import ActivationCounter, Placement, capture_site_values, neuron_updates
from mkedit.arch.replay import capture_block_output, replaying
from mkedit.methods.lu_lafns.locate import count_activations, intersect, select_neurons

LENGTHS = (7, 11)  # two rows of different lengths


def padded_batch(padding_side: str, lengths: tuple[int, ...] = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids padded to the longest row (pad id 0) on ``padding_side``, and the attention mask."""
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[row, cols] = torch.randint(2, 300, (n,))
        mask[row, cols] = 1
    return ids, mask


def real_pos(mask: torch.Tensor, row: int, i: int) -> int:
    """Absolute position of the ``i``-th real token of ``row``."""
    return int(torch.nonzero(mask[row]).flatten()[i])


def peaky_model(family: str) -> torch.nn.Module:
    """A tiny model with large weights, so greedy decoding is not flat."""
    config = tiny_config(family)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None  # always produce max_new_tokens tokens
    return model


@contextmanager
def site_capture(adapter: FFNAdapter, layers: list[int], site: str) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record every tensor at ``site`` of ``layers`` (one entry per forward), as hooks see it at registration time.

    Forward hooks and pre-hooks run in registration order, so a capture registered *before* entering
    :func:`neuron_updates` sees the untouched tensor and one registered *after* sees the updated tensor.
    """
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        module, side = adapter.site_module(layer, site)
        if side == "output":
            handles.append(module.register_forward_hook(lambda _m, _i, out, at=layer: seen[at].append(out.clone())))
        else:
            handles.append(module.register_forward_pre_hook(lambda _m, a, at=layer: seen[at].append(a[0].clone())))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _updates(d_ffn: int) -> dict:
    """Three keys: ``a`` on layers 1 and 3, ``b`` on layer 1 (overlapping ``a``'s neurons), ``c`` never placed."""
    g = torch.Generator().manual_seed(3)
    return {
        "a": {
            1: (torch.tensor([0, 5, 17, d_ffn - 1]), torch.randn(4, generator=g)),
            3: (torch.tensor([2, 3]), torch.tensor([1.5, -0.25])),
        },
        "b": {1: (torch.tensor([5, 40, 41]), torch.randn(3, generator=g))},
        "c": {0: (torch.arange(d_ffn), torch.ones(d_ffn)), 2: (torch.arange(d_ffn), torch.ones(d_ffn))},
    }


def _expected_delta(shape: tuple[int, ...], updates: dict, placements: list[Placement], layer: int) -> torch.Tensor:
    """What the hooks should add at ``layer``: every placed key's values at its (row, pos, neuron), summed."""
    delta = torch.zeros(shape)
    for p in placements:
        if layer in updates[p.key]:
            idx, val = updates[p.key][layer]
            for i, v in zip(idx.tolist(), val.tolist(), strict=True):
                delta[p.row, p.pos, i] += v
    return delta


@pytest.mark.parametrize("site", ["act_fn", "down_proj_input"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_updates_land_exactly_at_placements(family: str, padding_side: str, site: str) -> None:
    """Each layer's tensor changes by exactly the placed values at (row, pos, neuron) and nowhere else.

    Row 1 holds two keys, at two positions, and a third placement of ``b`` on the same token as ``a``
    whose neurons overlap: overlapping updates add up. Key ``c`` is not placed and must not appear.
    """
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    ids, mask = padded_batch(padding_side)
    updates = _updates(adapter.d_ffn)
    placements = [
        Placement(0, real_pos(mask, 0, 3), "a"),
        Placement(1, real_pos(mask, 1, 2), "a"),
        Placement(1, real_pos(mask, 1, 9), "b"),
        Placement(1, real_pos(mask, 1, 2), "b"),
    ]
    layers = list(range(adapter.n_layers))
    with (
        torch.no_grad(),
        site_capture(adapter, layers, site) as before,
        neuron_updates(adapter, updates, placements, site),
        site_capture(adapter, layers, site) as after,
    ):
        model(input_ids=ids, attention_mask=mask)
    for layer in layers:
        (pre,), (post,) = before[layer], after[layer]
        expected = _expected_delta(tuple(pre.shape), updates, placements, layer)
        untouched = expected == 0
        assert torch.equal(post[untouched], pre[untouched]), f"layer {layer} changed outside the placements"
        torch.testing.assert_close(post - pre, expected, rtol=0, atol=1e-5)
    # the placements really touched layers 1 and 3 only
    assert [layer for layer in layers if bool((after[layer][0] != before[layer][0]).any())] == [1, 3]


@pytest.mark.parametrize("family", FAMILIES)
def test_no_placements_is_bit_identical_and_registers_nothing(family: str) -> None:
    """With no placements the model runs untouched: no hook at all, logits ``torch.equal`` to the plain model."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    ids, mask = padded_batch("left")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with neuron_updates(adapter, _updates(adapter.d_ffn), []):
            assert not adapter.base_model._forward_pre_hooks
            assert all(not adapter.activation_module(i)._forward_hooks for i in range(adapter.n_layers))
            inside = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, inside)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_removed_on_exit_even_after_an_error(family: str) -> None:
    """Leaving the context (normally or by an exception) removes every hook it added."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    updates = _updates(adapter.d_ffn)
    with pytest.raises(RuntimeError, match="boom"), neuron_updates(adapter, updates, [Placement(0, 0, "c")]):
        assert adapter.activation_module(0)._forward_hooks
        raise RuntimeError("boom")
    assert not adapter.base_model._forward_pre_hooks
    assert all(not adapter.activation_module(i)._forward_hooks for i in range(adapter.n_layers))


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_forward_with_kv_cache_matches_full_forward(family: str) -> None:
    """Positions are absolute: with a KV cache, each chunk applies only the placements that fall inside it."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    ids = torch.randint(2, 300, (1, 20))  # longer than gemma3's sliding window (16)
    idx = torch.arange(adapter.d_ffn)
    updates = {"k": {1: (idx, torch.full((adapter.d_ffn,), 2.0)), 2: (idx[:9], torch.linspace(-3, 3, 9))}}
    placements = [Placement(0, 0, "k"), Placement(0, 7, "k"), Placement(0, 12, "k"), Placement(0, 19, "k")]
    with torch.no_grad(), neuron_updates(adapter, updates, placements):
        full = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        first = model(input_ids=ids[:, :12], attention_mask=torch.ones_like(ids[:, :12]), use_cache=True)
        second = model(
            input_ids=ids[:, 12:17], attention_mask=torch.ones_like(ids[:, :17]), cache=first.cache, use_cache=True
        )
        third = model(input_ids=ids[:, 17:], attention_mask=torch.ones_like(ids), cache=second.cache, use_cache=True)
    chunked = torch.cat([first.logits, second.logits, third.logits], dim=1)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert not torch.allclose(plain, full, atol=1e-3), "the placements should change the logits"


def _greedy_no_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding by re-running the full sequence every step (no KV cache)."""
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_kv_cache_matches_no_cache_greedy_loop(family: str) -> None:
    """``generate`` with a KV cache applies each placement once, like a full-sequence greedy loop does.

    Placements at position 0 and at the last prompt token would be re-applied to new tokens if the
    cache offset were ignored; one at position 21 (a generated token) must land on that token only.
    """
    model = peaky_model(family)
    adapter = get_adapter(model)
    torch.manual_seed(1)
    ids = torch.randint(2, 300, (1, 20))
    idx = torch.arange(adapter.d_ffn)
    updates = {"k": {1: (idx, torch.full((adapter.d_ffn,), 3.0)), 3: (idx[:50], torch.full((50,), -2.0))}}
    placements = [Placement(0, p, "k") for p in (0, 5, 19, 21)]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        base = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), output_logits=True,
                              return_dict_in_generate=True, **kwargs)  # fmt: skip
        with neuron_updates(adapter, updates, placements):
            cached = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                    output_logits=True, return_dict_in_generate=True, **kwargs)  # fmt: skip
            looped = _greedy_no_cache(model, ids, 6)
    assert cached.sequences.tolist() == looped.tolist()
    assert not torch.allclose(cached.logits[0], base.logits[0], atol=1e-3), "the edit should change the first step"


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_left_padded_batch_cache_vs_no_cache(family: str) -> None:
    """On a left-padded batch, ``generate`` with and without a KV cache agree under the same placements."""
    model = peaky_model(family)
    adapter = get_adapter(model)
    ids, mask = padded_batch("left", (9, 18))
    idx = torch.arange(adapter.d_ffn)
    updates = {"a": {2: (idx, torch.full((adapter.d_ffn,), 2.5))}, "b": {1: (idx[::2], -torch.ones(idx[::2].numel()))}}
    placements = [Placement(0, 17, "a"), Placement(1, real_pos(mask, 1, 4), "b"), Placement(1, 17, "a")]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "output_logits": True}
    with torch.no_grad(), neuron_updates(adapter, updates, placements):
        cached = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, return_dict_in_generate=True,
                                **kwargs)  # fmt: skip
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, return_dict_in_generate=True,
                                  **kwargs)  # fmt: skip
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_activation_counter_matches_hand_count(family: str, padding_side: str) -> None:
    """Eq. 4: per neuron, the number of valid positions with ``act_fn > 0``; padding (and masked tokens) excluded."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    ids, mask = padded_batch(padding_side)
    valid = mask.bool().clone()
    valid[1, real_pos(mask, 1, 0)] = False  # e.g. a BOS token
    layers = [0, 2, 3]
    counter = ActivationCounter(adapter, layers)
    with torch.no_grad(), counter.recording(), site_capture(adapter, layers, "act_fn") as seen:
        counter.valid = valid
        model(input_ids=ids, attention_mask=mask)
        model(input_ids=ids, attention_mask=mask)  # counts accumulate over forwards
    for layer in layers:
        acts = seen[layer][0]
        hand = 2 * ((acts > 0) & valid.unsqueeze(-1)).sum(dim=(0, 1))
        assert counter.counts[layer].dtype == torch.long
        assert torch.equal(counter.counts[layer], hand)
        with_padding = 2 * (acts > 0).sum(dim=(0, 1))
        assert not torch.equal(counter.counts[layer], with_padding), "padding must not be counted"
    assert not adapter.activation_module(0)._forward_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_count_activations_ignores_padding(family: str) -> None:
    """Counting a corpus in padded batches gives the counts of its sentences run one by one."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    tokenizer = build_tiny_tokenizer()
    corpus = ["Who is the president of Rusko?", "俄罗斯的总统是谁？", "Kdo je prezident?"]
    batched = count_activations(adapter, tokenizer, corpus, [1, 3], batch_size=2)
    for layer in (1, 3):
        alone = sum(count_activations(adapter, tokenizer, [text], [layer])[layer] for text in corpus)
        assert torch.equal(batched[layer], alone)
        n_tokens = sum(len(tokenizer(t)["input_ids"]) for t in corpus)
        assert int(batched[layer].max()) <= n_tokens


def test_select_neurons_threshold_is_strict() -> None:
    """Eq. 5: keep ``count / max > beta`` (strictly), sorted long indices."""
    counts = torch.tensor([0, 5, 10, 3, 10, 6], dtype=torch.long)
    assert select_neurons(counts, 0.5).tolist() == [2, 4, 5]  # 5/10 == 0.5 is not kept
    assert select_neurons(counts, 0.59).tolist() == [2, 4, 5]
    assert select_neurons(counts, 0.6).tolist() == [2, 4]  # 6/10 == 0.6 is not kept
    assert select_neurons(counts, 0.0).tolist() == [1, 2, 3, 4, 5]  # beta 0: every neuron ever active
    assert select_neurons(counts, 0.99).tolist() == [2, 4]
    assert select_neurons(counts, 0.0).dtype == torch.long


def test_select_neurons_all_zero_counts() -> None:
    """No neuron ever active: nothing selected, even at beta 0."""
    for beta in (0.0, 0.5):
        selected = select_neurons(torch.zeros(8, dtype=torch.long), beta)
        assert selected.numel() == 0
        assert selected.dtype == torch.long


def test_intersect_hand_made_sets() -> None:
    """Eq. 6: indices in every set, in sorted order."""
    a, b, c = torch.tensor([1, 3, 5, 7]), torch.tensor([0, 3, 5, 9]), torch.tensor([5, 3])
    assert intersect([a, b, c]).tolist() == [3, 5]
    assert intersect([a]).tolist() == [1, 3, 5, 7]
    assert intersect([a, torch.tensor([2, 4])]).numel() == 0
    assert intersect([a, torch.empty(0, dtype=torch.long)]).numel() == 0
    assert intersect([torch.empty(0, dtype=torch.long), a]).numel() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_gives_same_logits_and_gradients(family: str) -> None:
    """Replaying the lower blocks' captured output changes neither the logits nor the update's gradient."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    for p in model.parameters():
        p.requires_grad_(False)
    ids, mask = padded_batch("right")
    first_layer = 2
    idx = torch.tensor([1, 4, 9, 33])
    placements = [Placement(0, 3, "k"), Placement(1, 8, "k")]

    def run(replay_output: object | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        deltas = {2: torch.full((4,), 0.3, requires_grad=True), 3: torch.full((4,), -0.2, requires_grad=True)}
        updates = {"k": {layer: (idx, d) for layer, d in deltas.items()}}
        if replay_output is None:
            with neuron_updates(adapter, updates, placements):
                logits = model(input_ids=ids, attention_mask=mask).logits
        else:
            with replaying(adapter, first_layer, replay_output), neuron_updates(adapter, updates, placements):
                logits = model(input_ids=ids, attention_mask=mask).logits
        logits.log_softmax(-1)[..., 5].sum().backward()
        return logits.detach(), {layer: d.grad for layer, d in deltas.items()}

    with torch.no_grad(), capture_block_output(adapter, first_layer - 1) as captured:
        model(input_ids=ids, attention_mask=mask)
    originals = list(adapter.layers())
    plain_logits, plain_grads = run(None)
    replay_logits, replay_grads = run(captured["out"])
    assert list(adapter.layers()) == originals, "replaying must restore the original blocks"
    torch.testing.assert_close(replay_logits, plain_logits)
    for layer in (2, 3):
        assert plain_grads[layer].abs().sum() > 0
        torch.testing.assert_close(replay_grads[layer], plain_grads[layer])


def test_capture_site_values_returns_detached_tensors() -> None:
    """Captured neuron values are detached, one ``[batch, seq, d_ffn]`` tensor per layer."""
    model = build_tiny_model("llama")
    adapter = get_adapter(model)
    ids, mask = padded_batch("right")
    with capture_site_values(adapter, [0, 3], "act_fn") as values:
        model(input_ids=ids, attention_mask=mask)
    assert sorted(values) == [0, 3]
    assert values[3].shape == (2, max(LENGTHS), adapter.d_ffn)
    assert not values[3].requires_grad
    assert not adapter.activation_module(3)._forward_hooks

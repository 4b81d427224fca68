"""Architecture adapters: where each family keeps its FFN neurons, and the errors around them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, OPTConfig

from conftest import FAMILIES, build_tiny_model, tiny_config
from mkedit.arch import get_adapter, supported_model_types
from mkedit.arch.bloom import BloomAdapter
from mkedit.arch.gated import GatedFFNAdapter
from mkedit.arch.gpt2 import GPT2Adapter
from mkedit.arch.hooks import capture_site_values
from mkedit.errors import MkeditError, UnsupportedArchitectureError

EXPECTED_ADAPTER = {
    "llama": GatedFFNAdapter,
    "qwen2": GatedFFNAdapter,
    "gemma3": GatedFFNAdapter,
    "bloom": BloomAdapter,
    "gpt2": GPT2Adapter,
}
# conftest's tiny configs: 128 neurons per layer, except BLOOM whose FFN is always 4 * hidden_size.
EXPECTED_D_FFN = {"llama": 128, "qwen2": 128, "gemma3": 128, "bloom": 256, "gpt2": 128}


def _ids(batch: int = 2, seq: int = 9) -> torch.Tensor:
    return torch.randint(2, 300, (batch, seq))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_shape_of_every_family(family: str) -> None:
    """Each family gets its adapter, with the config's layer count and FFN width."""
    adapter = get_adapter(build_tiny_model(family))
    assert type(adapter) is EXPECTED_ADAPTER[family]
    assert adapter.n_layers == 4
    assert adapter.d_ffn == EXPECTED_D_FFN[family]
    assert len({id(adapter.activation_module(i)) for i in range(adapter.n_layers)}) == adapter.n_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_output_has_d_ffn_width(family: str) -> None:
    """The activation module's output is the neuron tensor ``[batch, seq, d_ffn]`` at every layer."""
    adapter = get_adapter(build_tiny_model(family))
    shapes = {}
    handles = [
        adapter.activation_module(i).register_forward_hook(lambda _m, _i, out, i=i: shapes.__setitem__(i, out.shape))
        for i in range(adapter.n_layers)
    ]
    try:
        with torch.no_grad():
            adapter.model(input_ids=_ids(2, 9))
    finally:
        for h in handles:
            h.remove()
    assert shapes == {i: torch.Size([2, 9, adapter.d_ffn]) for i in range(adapter.n_layers)}


@pytest.mark.parametrize("family", [f for f in FAMILIES if EXPECTED_ADAPTER[f].gated])
def test_gated_down_proj_input_is_act_times_up(family: str) -> None:
    """For gated FFNs the ``down_proj_input`` site is ``act_fn(gate_proj(h)) * up_proj(h)``, computed by hand."""
    adapter = get_adapter(build_tiny_model(family))
    layers = list(range(adapter.n_layers))
    acts, ups = {}, {}
    handles = []
    for i in layers:
        mlp = adapter.layers()[i].mlp
        handles.append(mlp.act_fn.register_forward_hook(lambda _m, _i, out, i=i: acts.__setitem__(i, out.detach())))
        handles.append(mlp.up_proj.register_forward_hook(lambda _m, _i, out, i=i: ups.__setitem__(i, out.detach())))
    try:
        with torch.no_grad(), capture_site_values(adapter, layers, "down_proj_input") as site:
            adapter.model(input_ids=_ids(2, 7))
    finally:
        for h in handles:
            h.remove()
    for i in layers:
        assert site[i].shape == (2, 7, adapter.d_ffn)
        torch.testing.assert_close(site[i], acts[i] * ups[i], rtol=0, atol=0)
        # and it is really a different tensor from the neurons themselves
        assert not torch.allclose(site[i], acts[i])


@pytest.mark.parametrize("family", FAMILIES)
def test_site_module_sides(family: str) -> None:
    """``act_fn`` is always the activation output; ``down_proj_input`` is down_proj's input only when gated."""
    adapter = get_adapter(build_tiny_model(family))
    assert adapter.site_module(1, "act_fn") == (adapter.activation_module(1), "output")
    expected = (adapter.down_proj_module(1), "input") if adapter.gated else (adapter.activation_module(1), "output")
    assert adapter.site_module(1, "down_proj_input") == expected


@pytest.mark.parametrize("family", ["bloom", "gpt2"])
def test_plain_ffn_down_proj_input_is_the_activation(family: str) -> None:
    """In a plain FFN, what W_out multiplies is the activation output itself."""
    adapter = get_adapter(build_tiny_model(family))
    seen = {}
    handle = adapter.down_proj_module(2).register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad(), capture_site_values(adapter, [2], "act_fn") as site:
            adapter.model(input_ids=_ids(1, 6))
    finally:
        handle.remove()
    torch.testing.assert_close(seen["x"], site[2], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_from_hidden_matches_model_head(family: str) -> None:
    """The head applied to the base model's last hidden states gives the model's logits."""
    adapter = get_adapter(build_tiny_model(family))
    ids = _ids(2, 8)
    with torch.no_grad():
        full = adapter.model(input_ids=ids).logits
        hidden = adapter.base_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(adapter.logits_from_hidden(hidden), full)


def test_logits_from_hidden_applies_final_softcapping() -> None:
    """Gemma's final logit soft-capping is applied by ``logits_from_hidden`` like by the model."""
    config = tiny_config("gemma3")
    config.final_logit_softcapping = 0.05  # tiny cap: capping clearly changes the logits
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = get_adapter(model)
    ids = _ids(1, 8)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        hidden = adapter.base_model(input_ids=ids).last_hidden_state
        raw = model.get_output_embeddings()(hidden)
        torch.testing.assert_close(adapter.logits_from_hidden(hidden), full)
    assert full.abs().max() <= 0.05 + 1e-6
    assert not torch.allclose(raw, full)


def _assert_lists_supported(message: str) -> None:
    for model_type in supported_model_types():
        assert model_type in message
    for family in ("llama", "qwen2", "gemma3_text", "bloom", "gpt2"):
        assert family in supported_model_types()


def test_unsupported_hf_model_raises_listing_supported_types() -> None:
    """A real HF model of an unknown family (OPT) is refused with the list of supported types."""
    config = OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=100, word_embed_proj_dim=32
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_adapter(model)
    assert "'opt'" in str(info.value)
    _assert_lists_supported(str(info.value))
    assert isinstance(info.value, MkeditError)


def test_unsupported_dummy_module_raises() -> None:
    """A module with an unknown ``model_type``, or with no config at all, is refused clearly."""

    class Dummy(nn.Module):
        def __init__(self, config: object | None) -> None:
            super().__init__()
            if config is not None:
                self.config = config

    class Config:
        model_type = "not-a-transformer"

    with pytest.raises(UnsupportedArchitectureError, match="not-a-transformer") as info:
        get_adapter(Dummy(Config()))
    _assert_lists_supported(str(info.value))
    with pytest.raises(UnsupportedArchitectureError, match="None") as info:
        get_adapter(Dummy(None))
    _assert_lists_supported(str(info.value))


def test_shared_activation_module_is_refused() -> None:
    """One activation module shared by all layers would mix per-layer hooks: the adapter refuses it."""
    model = build_tiny_model("llama")
    shared = model.model.layers[0].mlp.act_fn
    for layer in model.model.layers:
        layer.mlp.act_fn = shared
    with pytest.raises(RuntimeError, match="shares one activation module"):
        get_adapter(model)


@pytest.mark.parametrize(
    ("layer", "expected"), [(0, 0), (3, 3), (-1, 3), (-2, 2), (-4, 0), (4, None), (-5, None), (10, None)]
)
def test_resolve_layer(layer: int, expected: int | None) -> None:
    """Negative indices count from the end; anything outside ``[-n, n)`` is a ValueError naming it."""
    adapter = get_adapter(build_tiny_model("gpt2"))
    if expected is None:
        with pytest.raises(ValueError, match=f"layer {layer} out of range for a 4-layer model"):
            adapter.resolve_layer(layer)
    else:
        assert adapter.resolve_layer(layer) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_locate_edit_accessors(family: str) -> None:
    """W_out's parameter name and layout, the attention output and the block output, for every family."""
    model = build_tiny_model(family)
    adapter = get_adapter(model)
    name, transposed = adapter.ffn_out_param(2)
    weight = model.get_parameter(name)
    assert weight is adapter.down_proj_module(2).weight
    assert transposed == (family == "gpt2")
    assert tuple(weight.shape) == ((adapter.d_ffn, adapter.d_model) if transposed else (adapter.d_model, adapter.d_ffn))
    seen = {}
    hooks = [
        adapter.attn_out_module(2).register_forward_hook(lambda _m, _i, out: seen.__setitem__("attn", out)),
        adapter.block_module(2).register_forward_hook(lambda _m, _i, out: seen.__setitem__("block", out)),
    ]
    try:
        with torch.no_grad():
            hidden = adapter.base_model(input_ids=_ids(2, 5), output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    assert seen["attn"].shape == (2, 5, adapter.d_model)
    block = seen["block"][0] if isinstance(seen["block"], tuple) else seen["block"]
    torch.testing.assert_close(block, hidden[3])  # hidden_states[0] is the embedding output

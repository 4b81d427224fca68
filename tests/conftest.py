"""Shared fixtures: tiny random models of each supported family, built in-process (no downloads)."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "vocab_size": 320}


def tiny_config(family: str) -> PretrainedConfig:
    """A 4-layer, 64-wide config of ``family`` with a 320-token vocabulary."""
    if family == "llama":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **TINY)
    if family == "qwen2":
        return Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **TINY)
    if family == "gemma3":
        return Gemma3TextConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=16, **TINY)
    if family == "bloom":
        return BloomConfig(hidden_size=64, n_layer=4, n_head=4, vocab_size=320)
    if family == "gpt2":
        return GPT2Config(
            n_embd=64,
            n_layer=4,
            n_head=4,
            n_inner=128,
            vocab_size=320,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=1,
        )
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "gemma3", "bloom", "gpt2")


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (registered under ``name``: dataclasses look their module up)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def mzsre_part(subject: str, question: str, answer: str) -> dict[str, str]:
    """One language of an MzsRE-format record; the rephrase says "What" for "Which"."""
    return {
        "subject": subject,
        "src": question,
        "rephrase": question.replace("Which", "What"),
        "alt": answer,
        "loc": "nq question: who wrote hamlet",
        "loc_ans": "Shakespeare",
    }


TWO_RECORDS = [  # two en+zh facts in MzsRE's format
    {
        "en": mzsre_part("Volvo B12M", "Which company makes the Volvo B12M?", "Honda"),
        "zh": mzsre_part("沃尔沃B12M", "沃尔沃B12M是哪家公司生产的？", "本田"),
    },
    {
        "en": mzsre_part("Lake Tana", "Which country is Lake Tana in?", "Peru"),
        "zh": mzsre_part("塔纳湖", "塔纳湖位于哪个国家？", "秘鲁"),
    },
]


def build_tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    model.eval()
    return model


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny models run several times faster on one thread; real-model (slow) tests keep them all."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return build_tiny_model(request.param)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + pad/eos) that any text, Chinese included, fits into."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<eos>": 1}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    return tok


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def qwen():
    """The packaged Qwen2.5-0.5B, loaded once for every real-model test."""
    from mkedit.models import load_model
    from mkedit.models.registry import is_installed

    if not is_installed("qwen2.5-0.5b"):
        pytest.fail("qwen2.5-0.5b is not installed: run scripts/install.sh --dev")
    return load_model("qwen2.5-0.5b")


@contextmanager
def serving(app: object) -> Iterator[str]:
    """An ASGI app (``mkedit serve``'s) under uvicorn on a free local port, in a thread; yields its /v1 URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

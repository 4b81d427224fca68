"""``mkedit serve``: the real server (uvicorn; a tiny Qwen2, an LU-LAFNs cache) through the official openai client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch
from openai import OpenAI

from conftest import build_tiny_model, build_tiny_tokenizer, serving
from mkedit.methods.lu_lafns import LuLafnConfig, LuLafnEditor
from mkedit.methods.view import ModelView
from mkedit.models.loader import LoadedModel
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.deltas import neuron_tensors
from mkedit.serve import SERVE_PIP, ServeUnavailableError, require_serve_deps
from mkedit.serve.app import EDITS_FIELD, EDITS_HEADER, create_app
from mkedit.serve.engine import Engine, plain_chat_prompt

NAME = "tiny-qwen2"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
EDITED = "Who is the president of Russia?"  # names the subject of edit e1
PLAIN = "What is two plus two?"


def _edit(edit_id: str, subject: str) -> Edit:
    idx = torch.arange(0, 128, 3)
    tensors = neuron_tensors({1: (idx, torch.full((idx.numel(),), 4.0)), 2: (idx[:5].clone(), -torch.ones(5))})
    return Edit(edit_id, {"en": [subject]}, tensors, {}, "lu-lafns")


@dataclass
class Served:
    client: OpenAI
    url: str
    loaded: LoadedModel
    editor: LuLafnEditor
    folder: Path
    engine: Engine

    def greedy(self, prompt: str, tokens: int, edited: bool = False) -> str:
        """What the model answers without the server: untouched, or through the method's view."""
        tokenizer = self.loaded.tokenizer
        batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        kwargs = {"max_new_tokens": tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        with torch.no_grad():
            if edited:
                with self.editor.applied(list(EditCache.load(self.folder))) as view:
                    out = view.generate(batch["input_ids"], batch["attention_mask"], **kwargs)
            else:
                out = self.loaded.model.generate(**batch, **kwargs)
        ids = out[0, batch["input_ids"].shape[1] :].tolist()
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _chat_prompt(question: str) -> str:
    return f"<|user|>{question}\n<|assistant|>"


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    model = build_tiny_model("qwen2")
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    loaded = LoadedModel(model, tokenizer, NAME)
    editor = LuLafnEditor(model, tokenizer, LuLafnConfig(layers=(1, 2)), model_name=NAME)
    cache = editor.new_cache()
    cache.add(_edit("e1", "Russia"))
    folder = cache.save(tmp_path_factory.mktemp("serve") / "cache")
    engine = Engine(loaded, folder)
    with serving(create_app(engine)) as url:
        yield Served(OpenAI(base_url=url, api_key="x", max_retries=0), url, loaded, editor, folder, engine)
    engine.close()


def _raw(url: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_lists_the_served_model(served: Served) -> None:
    assert [m.id for m in served.client.models.list()] == [NAME]
    assert served.client.models.retrieve(NAME).id == NAME


def test_unedited_chat_is_the_untouched_models_greedy_output(served: Served) -> None:
    raw = served.client.chat.completions.with_raw_response.create(
        model=NAME, messages=[{"role": "user", "content": PLAIN}], max_tokens=6, temperature=0
    )
    completion = raw.parse()
    assert raw.headers[EDITS_HEADER] == ""
    assert completion.model_extra[EDITS_FIELD] == []
    assert completion.choices[0].message.content == served.greedy(_chat_prompt(PLAIN), 6)
    assert completion.choices[0].finish_reason == "length"
    prompt_tokens = len(served.loaded.tokenizer(_chat_prompt(PLAIN))["input_ids"])
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, 6)
    assert completion.usage.total_tokens == prompt_tokens + 6


def test_chat_naming_an_edited_subject_applies_the_edit(served: Served) -> None:
    raw = served.client.chat.completions.with_raw_response.create(
        model=NAME, messages=[{"role": "user", "content": EDITED}], max_tokens=6, temperature=0
    )
    completion = raw.parse()
    assert raw.headers[EDITS_HEADER] == "e1"
    assert completion.model_extra[EDITS_FIELD] == ["e1"]
    answer = completion.choices[0].message.content
    assert answer == served.greedy(_chat_prompt(EDITED), 6, edited=True)
    assert answer != served.greedy(_chat_prompt(EDITED), 6)  # the edit changed what the model says


def test_completion_and_stop_strings(served: Served) -> None:
    completion = served.client.completions.create(model=NAME, prompt=EDITED, max_tokens=8, temperature=0)
    text = completion.choices[0].text
    assert text == served.greedy(EDITED, 8, edited=True)
    assert completion.model_extra[EDITS_FIELD] == ["e1"]
    stop = text[3:5]
    cut = served.client.completions.create(model=NAME, prompt=EDITED, max_tokens=8, temperature=0, stop=[stop, "\x00"])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= 8


def test_streaming_chat_and_completion_give_the_same_text(served: Served) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": EDITED}]
    whole = served.client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    raw = served.client.chat.completions.with_raw_response.create(
        model=NAME, messages=messages, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers[EDITS_HEADER] == "e1" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert all(c.model_extra[EDITS_FIELD] == ["e1"] for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6

    text = served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=5, temperature=0).choices[0].text
    stream = served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=5, temperature=0, stream=True)
    pieces = list(stream)
    assert "".join(c.choices[0].text for c in pieces) == text
    assert all(c.model_extra[EDITS_FIELD] == [] for c in pieces)


def test_sampling_with_a_seed_is_reproducible(served: Served) -> None:
    def sample(seed: int) -> str:
        completion = served.client.completions.create(
            model=NAME, prompt=PLAIN, max_tokens=8, temperature=1.0, top_p=0.9, seed=seed
        )
        return completion.choices[0].text

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_bad_requests_get_openai_errors(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": PLAIN}], n=2)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "n" and "n=2" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        served.client.chat.completions.create(model=NAME, messages=[])
    with pytest.raises(openai.BadRequestError) as caught:
        served.client.completions.create(model=NAME, prompt="")
    assert caught.value.body["param"] == "prompt"

    status, body = _raw(f"{served.url}/chat/completions", b'{"model": "tiny-qwen2", "messages": [')
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"} and "JSON" in body["error"]["message"]
    status, body = _raw(f"{served.url}/chat/completions", b'{"model": "tiny-qwen2"}')
    assert (status, body["error"]["param"], body["error"]["code"]) == (400, "messages", "missing_required_parameter")
    status, body = _raw(f"{served.url}/completions", json.dumps({"prompt": PLAIN, "max_tokens": "many"}).encode())
    assert (status, body["error"]["param"]) == (400, "max_tokens")
    status, body = _raw(f"{served.url}/nowhere", b"{}")
    assert (status, body["error"]["code"]) == (404, "unknown_url")
    status, body = _raw(f"{served.url}/completions", json.dumps({"prompt": PLAIN, "max_tokens": 10**6}).encode())
    assert (status, body["error"]["param"]) == (400, "max_tokens") and "context length" in body["error"]["message"]


def test_unknown_model_is_not_found(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PLAIN}])
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


def test_cache_changes_are_picked_up_without_restart(served: Served) -> None:
    question = [{"role": "user", "content": "Is Mars red?"}]
    before = served.client.chat.completions.create(model=NAME, messages=question, max_tokens=2, temperature=0)
    assert before.model_extra[EDITS_FIELD] == []
    cache = EditCache.load(served.folder)
    cache.add(_edit("e2", "Mars"))
    cache.save(served.folder)
    raw = served.client.chat.completions.with_raw_response.create(
        model=NAME, messages=question, max_tokens=2, temperature=0
    )
    assert raw.parse().model_extra[EDITS_FIELD] == ["e2"] and raw.headers[EDITS_HEADER] == "e2"
    cache.remove("e2")
    cache.save(served.folder)
    after = served.client.chat.completions.create(model=NAME, messages=question, max_tokens=2, temperature=0)
    assert after.model_extra[EDITS_FIELD] == []


def test_an_unreadable_cache_keeps_the_edits_in_force(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    index = served.folder / "cache.json"
    good = index.read_bytes()
    broken = served.folder / "broken.json"
    broken.write_text("{")
    broken.replace(index)  # as a save does: a new file, renamed over the old one
    question = [{"role": "user", "content": EDITED}]
    with caplog.at_level("ERROR", logger="mkedit.serve"):
        completion = served.client.chat.completions.create(model=NAME, messages=question, max_tokens=2, temperature=0)
    assert completion.model_extra[EDITS_FIELD] == ["e1"]
    assert "keeping the 1 edit(s) in force" in caplog.text
    broken.write_bytes(good)
    broken.replace(index)
    completion = served.client.chat.completions.create(model=NAME, messages=question, max_tokens=2, temperature=0)
    assert completion.model_extra[EDITS_FIELD] == ["e1"]


def test_requests_take_turns_while_the_server_stays_responsive(served: Served) -> None:
    """Generation runs one request at a time in worker threads: other requests wait, /v1/models does not."""
    texts: dict[str, str] = {}

    def complete(key: str, prompt: str, tokens: int) -> None:
        completion = served.client.completions.create(model=NAME, prompt=prompt, max_tokens=tokens, temperature=0)
        texts[key] = completion.choices[0].text

    long = threading.Thread(target=complete, args=("long", PLAIN, 200))
    short = threading.Thread(target=complete, args=("short", EDITED, 4))
    long.start()
    time.sleep(0.3)
    short.start()
    assert [m.id for m in served.client.models.list()] == [NAME]
    assert long.is_alive()  # answered while the long generation was still running
    long.join()
    short.join()
    assert texts == {"long": served.greedy(PLAIN, 200), "short": served.greedy(EDITED, 4, edited=True)}


def test_a_closed_stream_stops_its_generation(served: Served) -> None:
    stream = served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=3000, temperature=0, stream=True)
    for n, _ in enumerate(stream):
        if n == 2:
            break
    stream.close()
    start = time.monotonic()
    served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=2, temperature=0)
    assert time.monotonic() - start < 10  # 3000 tokens take far longer: the lock was released


class _Broken(ModelView):
    def generate(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("boom")


def test_a_failing_generation_is_a_500_without_traceback(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served.engine.edits, "view", lambda: _Broken(served.loaded.model))
    with pytest.raises(openai.InternalServerError) as caught:
        served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=2)
    assert caught.value.body["type"] == "server_error" and "boom" in caught.value.body["message"]
    assert "Traceback" not in caught.value.body["message"]
    stream = served.client.completions.create(model=NAME, prompt=PLAIN, max_tokens=2, stream=True)
    with pytest.raises(openai.APIError, match="boom"):
        list(stream)


def test_plain_chat_prompt_without_a_template() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert plain_chat_prompt(messages) == "System: Be brief.\nUser: Hi?\nAssistant:"


def test_missing_serve_extra_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ServeUnavailableError, match=r"uvicorn: pip install 'mkedit\[serve\]'"):
        require_serve_deps()
    assert SERVE_PIP == "pip install 'mkedit[serve]'"


def test_mkedit_serve_command(tmp_path: Path) -> None:
    """The CLI loads a model folder and a cache, serves, and keeps stdout free of logs."""
    folder = tmp_path / "tiny-qwen2"
    model = build_tiny_model("qwen2")
    model.save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))
    cache = LuLafnEditor(model, build_tiny_tokenizer(), LuLafnConfig(layers=(1, 2)), model_name=NAME).new_cache()
    cache.add(_edit("e1", "Russia"))
    cache.save(tmp_path / "cache")
    with _free_socket() as sock:
        port = sock.getsockname()[1]
    command = [sys.executable, "-c", "from mkedit.cli import app; app()", "serve", "--model", str(folder)]
    command += ["--cache", str(tmp_path / "cache"), "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        deadline = time.monotonic() + 240
        while True:
            try:
                models = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.5)
        assert models == [str(folder)]
        completion = client.completions.create(model=str(folder), prompt=EDITED, max_tokens=2, temperature=0)
        assert completion.model_extra[EDITS_FIELD] == ["e1"]
    finally:
        server.terminate()
        stdout, stderr = server.communicate(timeout=60)
    assert stdout == ""
    assert "serving" in stderr and "1 edit(s)" in stderr


def test_a_gated_cache_fires_on_its_question_not_on_another_about_the_subject(
    tmp_path: Path,
) -> None:
    """What `mkedit edit` makes (relation gate on) served through chat: the chat template around a question
    does not keep the gate from firing, and another relation of the subject keeps the edit off."""
    from mkedit.types import EditGroup, EditRequest

    model = build_tiny_model("qwen2")
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    settings = {"layers": "1,2", "max_steps": "2", "num_prefixes": "1", "relation_gate": "true"}
    editor = LuLafnEditor(model, tokenizer, LuLafnConfig().with_overrides(settings), model_name=NAME)
    cache = editor.new_cache()
    request = EditRequest("en", "Eiffel Tower", "In which city is the Eiffel Tower located?", "Rome")
    cache.add(editor.edit(EditGroup((request,), "city")))
    folder = cache.save(tmp_path / "cache")
    engine = Engine(LoadedModel(model, tokenizer, NAME), folder)
    with serving(create_app(engine)) as url:
        client = OpenAI(base_url=url, api_key="x", max_retries=0)

        def applied(question: str) -> list[str]:
            messages = [{"role": "user", "content": question}]
            reply = client.chat.completions.create(model=NAME, messages=messages, max_tokens=2, temperature=0)
            return reply.model_extra[EDITS_FIELD]

        assert applied("Where is the Eiffel Tower located?") == ["city"]
        assert applied("Who designed the Eiffel Tower?") == []
    engine.close()

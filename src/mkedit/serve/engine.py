"""Generation for the server: one model, one request at a time, the cache's edits in force.

A request runs in its own thread under the engine's lock. The edits in force are those of the method's
view (:class:`~mkedit.serve.edits.LiveEdits`), which sees the prompt exactly as rendered for the model
(chat template included), and the edits reported are ``view.used_edits(prompt)``. Text is produced piece by
piece as tokens come, with stop strings cut out (as OpenAI does), for streamed and whole responses alike.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from mkedit.errors import MkeditError
from mkedit.models.loader import LoadedModel
from mkedit.serve.edits import LiveEdits

DEFAULT_MAX_TOKENS = 512
"""Completion length when a request names none (and the context allows it)."""


class RequestError(MkeditError, ValueError):
    """A request the model cannot serve (too long for its context, a chat the template refuses)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str  # the text as the model gets it (chat template applied)
    max_tokens: int | None = None  # None: DEFAULT_MAX_TOKENS, or what the context leaves
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    special_tokens: bool = True  # let the tokenizer add BOS etc. (a rendered chat template holds them already)


class Generation:
    """One request's output as it is made: iterate for the text pieces; the counts and ``finish_reason``
    are final once the iteration ends."""

    def __init__(self) -> None:
        self.edits_applied: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._pieces: queue.Queue[str | BaseException | None] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[str]:
        while (piece := self._pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def cancel(self) -> None:
        """Stop generating after the current token (the client went away)."""
        self.cancelled.set()

    def wait_ready(self) -> None:
        """Block until the prompt is encoded and the edits are known; raise what went wrong before that."""
        self._ready.wait()
        if self._error is not None:
            raise self._error

    # --- the generating thread's side ---------------------------------------------------------------
    def ready(self, prompt_tokens: int, edits_applied: list[str]) -> None:
        self.prompt_tokens, self.edits_applied = prompt_tokens, edits_applied
        self._ready.set()

    def put(self, piece: str) -> None:
        self._pieces.put(piece)

    def finish(self, completion_tokens: int, finish_reason: str) -> None:
        self.completion_tokens, self.finish_reason = completion_tokens, finish_reason
        self._pieces.put(None)

    def fail(self, exc: BaseException) -> None:
        if self._ready.is_set():
            self._pieces.put(exc)
        else:
            self._error = exc
            self._ready.set()
        self._pieces.put(None)


class TokenWatch(StoppingCriteria):
    """Sees every new token (stopping criteria run after each decoding step) and hands the new text to
    ``emit``: text that may still become a stop string, or an incomplete UTF-8 character, is held back.
    Generation ends at the token that completes a stop string (left out of the text) or on ``cancelled``."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_length: int,
        stops: Sequence[str],
        emit: Callable[[str], None],
        cancelled: threading.Event,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stops = [s for s in stops if s]
        self.emit = emit
        self.cancelled = cancelled
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.stopped = False  # a stop string was generated

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.ids = input_ids[0, self.prompt_length :].tolist()
        if not self.stopped:
            self._advance(self._text(), final=False)
        done = self.stopped or self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def flush(self) -> None:
        """Emit what was held back: generation is over."""
        if not self.stopped:
            self._advance(self._text(), final=True)

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _advance(self, text: str, final: bool) -> None:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        elif final:
            end = len(text)
        else:
            end = len(text.rstrip("\ufffd"))  # a multi-byte character still being generated
            end -= max((self._held(text[:end], s) for s in self.stops), default=0)
        if end > self.sent:
            self.emit(text[self.sent : end])
            self.sent = end

    def _held(self, text: str, stop: str) -> int:
        """Length of the longest end of ``text`` (not yet emitted) that begins ``stop``."""
        longest = min(len(stop) - 1, len(text) - self.sent)
        return next((k for k in range(longest, 0, -1) if text.endswith(stop[:k])), 0)


class Engine:
    """The served model and its live edits; :meth:`start` runs one request at a time."""

    def __init__(self, loaded: LoadedModel, cache: Path | None = None, name: str | None = None) -> None:
        self.loaded = loaded
        self.name = name or loaded.name
        self.edits = LiveEdits(loaded, cache)
        self.chat_template = bool(getattr(loaded.tokenizer, "chat_template", None))
        self._device = next(loaded.model.parameters()).device
        self._context: int | None = getattr(loaded.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt for a chat: the tokenizer's chat template, else :func:`plain_chat_prompt`."""
        if not self.chat_template:
            return plain_chat_prompt(messages)
        try:
            return self.loaded.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except jinja2.TemplateError as exc:
            raise RequestError(f"the model's chat template refuses these messages: {exc}", "messages") from exc

    def start(self, request: GenerationRequest) -> Generation:
        """Start generating in a thread (after the requests before it); returns once the prompt is encoded
        and the edits in force are known, raising :class:`RequestError` for a request that cannot run."""
        generation = Generation()
        threading.Thread(target=self._run, args=(request, generation), name="mkedit-generate", daemon=True).start()
        generation.wait_ready()
        return generation

    def complete(self, request: GenerationRequest) -> tuple[str, Generation]:
        """The whole text of a request, and its generation (counts, finish reason, edits)."""
        generation = self.start(request)
        return "".join(generation), generation

    def close(self) -> None:
        with self._lock:
            self.edits.close()

    def _run(self, request: GenerationRequest, generation: Generation) -> None:
        tokenizer = self.loaded.tokenizer
        try:
            with self._lock:
                view = self.edits.view()
                batch = tokenizer(
                    view.rewrite(request.prompt, ""), return_tensors="pt", add_special_tokens=request.special_tokens
                )
                ids, mask = batch["input_ids"].to(self._device), batch["attention_mask"].to(self._device)
                max_tokens = self._budget(ids.shape[1], request.max_tokens)
                generation.ready(ids.shape[1], view.used_edits(request.prompt))
                watch = TokenWatch(tokenizer, ids.shape[1], request.stop, generation.put, generation.cancelled)
                with torch.no_grad(), self._seeded(request.seed):
                    view.generate(
                        ids,
                        mask,
                        stopping_criteria=StoppingCriteriaList([watch]),
                        **self._sampling(request, max_tokens),
                    )
                watch.flush()
        except BaseException as exc:  # handed to the request's thread, which reports it
            generation.fail(exc)
            return
        ended = watch.stopped or bool(watch.ids and watch.ids[-1] in self._eos_ids())
        generation.finish(len(watch.ids), "length" if not ended and len(watch.ids) >= max_tokens else "stop")

    def _budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The completion length: as asked, within the model's context."""
        if prompt_tokens == 0:
            raise RequestError("the prompt is empty once tokenised", "prompt")
        if self._context is None:
            return max_tokens or DEFAULT_MAX_TOKENS
        room = self._context - prompt_tokens
        if room < 1:
            raise RequestError(f"the prompt has {prompt_tokens} tokens: this model's context holds {self._context}")
        if max_tokens is None:
            return min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise RequestError(
                f"this model's maximum context length is {self._context} tokens; the request asks for "
                f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} for the completion)",
                "max_tokens",
            )
        return max_tokens

    def _sampling(self, request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
        """``generate`` arguments: the request's; top-k and penalties only as the model's generation_config
        sets them (top-k off otherwise, not transformers' default of 50)."""
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": self.loaded.tokenizer.pad_token_id}
        if request.temperature == 0:
            return {**kwargs, "do_sample": False}
        top_k = getattr(self.loaded.model.generation_config, "top_k", None) or 0
        return {**kwargs, "do_sample": True, "temperature": request.temperature, "top_p": request.top_p, "top_k": top_k}

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed the random generators for this request only (unseeded requests draw from the global state)."""
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[self._device] if self._device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def _eos_ids(self) -> set[int]:
        eos = getattr(self.loaded.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.loaded.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos}


def plain_chat_prompt(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt for a tokenizer without a chat template: one ``Role: content`` line per message, then
    ``Assistant:`` for the model to continue."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])

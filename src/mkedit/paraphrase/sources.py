"""Where paraphrases come from: a local instruct model, an OpenAI-compatible endpoint, or a JSONL file.

Every source answers the same question, "the raw candidate lines for these requests", so generating,
filtering and storing are written once (:mod:`mkedit.paraphrase.run`). The model sources send the paper's
instruction (:mod:`mkedit.paraphrase.instructions`) as one user message and parse the list they get back;
the file source reads lines another tool wrote. None of them sees a record's test fields (rephrase,
portability): only the subject and the edit question go into a request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from mkedit.errors import DataFormatError, MkeditError, UnknownLanguageError
from mkedit.languages import normalize_code
from mkedit.models.loader import LoadedModel
from mkedit.paraphrase.instructions import instruction
from mkedit.paraphrase.parse import has_items, parse_list
from mkedit.runtime.jsonl import read_jsonl

log = logging.getLogger(__name__)

OPENAI_PIP = "pip install 'mkedit[paraphrase]'"


class ParaphraseSourceError(MkeditError, RuntimeError):
    """A source that cannot run: a missing client package or API key, an endpoint that fails."""


@dataclass(frozen=True)
class ParaphraseRequest:
    """One question to paraphrase: what a source is given (never a record's test fields)."""

    record_id: str
    lang: str
    subject: str
    question: str
    n: int
    aligned: tuple[str, ...] = ()
    """Other languages' subjects of the fact (for the filter; the instruction names the own subject only)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.record_id, self.lang)

    @property
    def prompt(self) -> str:
        return instruction(self.lang, self.subject, self.question, self.n)

    def seed(self, base: int) -> int:
        """A seed of its own, so a request's sample does not depend on which requests ran before it."""
        digest = hashlib.sha256(f"{base}|{self.record_id}|{self.lang}".encode()).digest()
        return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Sampling:
    """How the model sources sample. The defaults are Qwen2-instruct's own (the paper used the API's
    defaults): a small model asked for 30 lines greedily tends to repeat one."""

    temperature: float = 0.7
    """0: greedy."""
    top_p: float = 0.8
    seed: int = 0
    max_new_tokens: int | None = None
    """None: local, about twice the question's length per item; OpenAI, the endpoint's own limit."""


class ParaphraseSource(Protocol):
    """Anything that turns requests into raw candidate lines (filtering happens after)."""

    name: str
    """Recorded with each entry, e.g. ``local:qwen2.5-1.5b``."""
    batch_size: int

    def generate(self, requests: Sequence[ParaphraseRequest]) -> list[list[str] | None]:
        """Per request, its candidate lines, or None when this source has nothing for it."""
        ...


class _ListDone(StoppingCriteria):
    """Per row: stop once the generated text holds its request's ``n`` items (the rest would be cut anyway)."""

    def __init__(self, tokenizer: Any, prompt_length: int, counts: Sequence[int]) -> None:
        self.tokenizer, self.prompt_length, self.counts = tokenizer, prompt_length, counts

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [has_items(text, n) for text, n in zip(texts, self.counts, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class LocalSource:
    """An instruct model through transformers: the chat template (a plain ``User:`` prompt without one),
    a left-padded batch, seeded sampling (the same command gives the same lines)."""

    def __init__(
        self,
        loaded: LoadedModel,
        sampling: Sampling = Sampling(),
        batch_size: int = 4,
        repetition_penalty: float = 1.05,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.loaded, self.sampling, self.batch_size = loaded, sampling, batch_size
        self.repetition_penalty = repetition_penalty
        self.name = f"local:{loaded.name}"

    def _render(self, prompt: str) -> str:
        tokenizer = self.loaded.tokenizer
        messages = [{"role": "user", "content": prompt}]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        from mkedit.serve.engine import plain_chat_prompt  # torch-only module: no serve extra needed

        return plain_chat_prompt(messages)

    def _budget(self, requests: Sequence[ParaphraseRequest]) -> int:
        if self.sampling.max_new_tokens is not None:
            return self.sampling.max_new_tokens
        tokenizer = self.loaded.tokenizer
        per_item = max(len(tokenizer(r.question, add_special_tokens=False)["input_ids"]) for r in requests)
        return max(r.n for r in requests) * (2 * per_item + 8) + 64

    @torch.no_grad()
    def generate(self, requests: Sequence[ParaphraseRequest]) -> list[list[str] | None]:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        device = next(model.parameters()).device
        templated = bool(getattr(tokenizer, "chat_template", None))
        batch = tokenizer(
            [self._render(r.prompt) for r in requests],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=not templated,  # a rendered chat template holds its special tokens already
        ).to(device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": self._budget(requests),
            "pad_token_id": tokenizer.pad_token_id,
            "repetition_penalty": self.repetition_penalty,
            "stopping_criteria": StoppingCriteriaList(
                [_ListDone(tokenizer, batch["input_ids"].shape[1], [r.n for r in requests])]
            ),
        }
        if self.sampling.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": self.sampling.temperature, "top_p": self.sampling.top_p}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(requests[0].seed(self.sampling.seed))
            out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for request, text in zip(requests, texts, strict=True):
            log.debug("%s [%s]: %s", request.record_id, request.lang, text)
        return [parse_list(text) for text in texts]


class OpenAISource:
    """Any OpenAI-compatible chat endpoint, through the official ``openai`` client; the key is read from an
    environment variable (``OPENAI_API_KEY`` unless named otherwise), never from the command line."""

    batch_size = 1

    def __init__(
        self,
        base_url: str | None,
        model: str,
        key_env: str = "OPENAI_API_KEY",
        sampling: Sampling = Sampling(),
        client: Any = None,
    ) -> None:
        self.model, self.sampling, self.base_url = model, sampling, base_url
        self.name = f"openai:{model}" + (f"@{base_url}" if base_url else "")
        self.client = client if client is not None else _openai_client(base_url, key_env)

    def generate(self, requests: Sequence[ParaphraseRequest]) -> list[list[str] | None]:
        import openai

        results: list[list[str] | None] = []
        for request in requests:
            kwargs: dict[str, Any] = {
                "temperature": self.sampling.temperature,
                "seed": request.seed(self.sampling.seed),
            }
            if self.sampling.temperature > 0:
                kwargs["top_p"] = self.sampling.top_p
            if self.sampling.max_new_tokens is not None:
                kwargs["max_tokens"] = self.sampling.max_new_tokens
            try:
                response = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": request.prompt}], **kwargs
                )
            except openai.APIError as exc:
                where = self.base_url or "the OpenAI API"
                raise ParaphraseSourceError(f"{where} ({self.model}): {type(exc).__name__}: {exc}") from exc
            text = (response.choices[0].message.content or "") if response.choices else ""
            log.debug("%s [%s]: %s", request.record_id, request.lang, text)
            results.append(parse_list(text))
        return results


def _openai_client(base_url: str | None, key_env: str) -> Any:
    """The client, or a clear error: the pip line when ``openai`` is missing, the variable when it is unset."""
    if importlib.util.find_spec("openai") is None:
        raise ParaphraseSourceError(f"the openai source needs the openai client: {OPENAI_PIP} (or pip install openai)")
    key = os.environ.get(key_env)
    if not key:
        raise ParaphraseSourceError(
            f"the environment variable {key_env} is not set: export {key_env}=<API key> (any non-empty value for "
            "an endpoint without keys), or name another variable with --api-key-env"
        )
    import openai

    return openai.OpenAI(base_url=base_url, api_key=key)


class JsonlSource:
    """Paraphrases another tool wrote, one JSON object per line: ``lang``, ``paraphrases`` (a list of lines,
    or the raw text of a list) and ``record_id`` (or, for files that do not know mkedit's ids, ``question``).
    A paraphrase file written by ``mkedit paraphrase`` qualifies, so one can be filtered again."""

    batch_size = 64

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path.name}"
        if not self.path.is_file():
            raise DataFormatError(f"{self.path}: no such file")
        self.by_id: dict[tuple[str, str], tuple[list[str], str | None]] = {}  # lines, and the question if given
        self.by_question: dict[tuple[str, str], list[str]] = {}
        for number, value in read_jsonl(self.path, repair=False):
            self._add(value, f"{self.path}: line {number}")
        if not self.by_id and not self.by_question:
            raise DataFormatError(f"{self.path}: holds no paraphrase lines")

    def _add(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
        try:
            lang = normalize_code(str(value.get("lang", "")))
        except UnknownLanguageError as exc:
            raise DataFormatError(f"{where}: field 'lang': {exc}") from exc
        raw = value.get("paraphrases")
        if isinstance(raw, str):
            lines = parse_list(raw)
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            lines = [p for p in raw if p.strip()]
        else:
            raise DataFormatError(f"{where}: field 'paraphrases' must be a list of strings or the text of a list")
        record_id, question = value.get("record_id"), value.get("question")
        if isinstance(record_id, str) and record_id.strip():
            self.by_id[(record_id, lang)] = (lines, question.strip() if isinstance(question, str) else None)
        elif isinstance(question, str) and question.strip():
            self.by_question[(question.strip(), lang)] = lines
        else:
            raise DataFormatError(f"{where}: needs a non-empty 'record_id' or 'question' to be matched to a record")

    def generate(self, requests: Sequence[ParaphraseRequest]) -> list[list[str] | None]:
        found: list[list[str] | None] = []
        for r in requests:
            if r.key in self.by_id:
                lines, question = self.by_id[r.key]
                if question is not None and question != r.question.strip():
                    raise DataFormatError(
                        f"{self.path}: record {r.record_id} [{r.lang}] paraphrases the question {question!r}, but the "
                        f"data's question is {r.question!r}: the file was made for other data"
                    )
                found.append(lines)
            else:
                found.append(self.by_question.get((r.question.strip(), r.lang)))
        return found

"""The HTTP side of ``mkedit serve``: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``,
streamed as server-sent events on request, with OpenAI-style errors.

Every completion says which cached edits acted on it: the body (and each stream chunk) carries
``mkedit_edits_applied`` (a list of edit ids), and the response the ``X-Mkedit-Edits-Applied`` header (the ids
percent-encoded and comma-separated; empty when none). Generation runs in worker threads, one request at a
time (:class:`~mkedit.serve.engine.Engine`), so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from mkedit.errors import MkeditError
from mkedit.serve.engine import Engine, Generation, GenerationRequest, RequestError
from mkedit.serve.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

EDITS_FIELD = "mkedit_edits_applied"
EDITS_HEADER = "X-Mkedit-Edits-Applied"


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


@dataclass(frozen=True)
class _Shape:
    """How one endpoint lays out its responses."""

    id_prefix: str
    object: str
    chunk_object: str
    choice: Callable[[str, str], dict[str, Any]]  # whole response: (text, finish reason)
    delta: Callable[[str | None, str | None], dict[str, Any]]  # stream chunk: (text piece, finish reason)
    opening: dict[str, Any] | None  # first stream chunk's choice, before any text


CHAT = _Shape(
    "chatcmpl-",
    "chat.completion",
    "chat.completion.chunk",
    lambda text, finish: {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish,
    },
    lambda piece, finish: {
        "index": 0,
        "delta": {} if piece is None else {"content": piece},
        "logprobs": None,
        "finish_reason": finish,
    },
    {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None},
)
TEXT = _Shape(
    "cmpl-",
    "text_completion",
    "text_completion",
    lambda text, finish: {"index": 0, "text": text, "logprobs": None, "finish_reason": finish},
    lambda piece, finish: {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish},
    None,
)


def create_app(engine: Engine) -> FastAPI:
    """The server's ASGI app around ``engine`` (run it with uvicorn; tests can too)."""
    app = FastAPI(title="mkedit serve", summary="OpenAI-compatible API with cached knowledge edits in force")
    created = int(time.time())
    card = {"id": engine.name, "object": "model", "created": created, "owned_by": "mkedit"}
    _add_error_handlers(app)

    def check_model(model: str | None) -> None:
        if model is not None and model != engine.name:
            message = f"The model '{model}' does not exist; this server serves '{engine.name}'."
            raise ApiError(404, message, "model", "model_not_found")

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        check_model(model)
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        check_model(body.model)
        prompt = engine.render_chat([m.as_template_input() for m in body.messages])
        request = _generation_request(body, prompt, body.completion_limit(), not engine.chat_template)
        return await _respond(engine, CHAT, request, body.stream, body.include_usage)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        check_model(body.model)
        request = _generation_request(body, str(body.prompt), body.completion_limit(), True)
        return await _respond(engine, TEXT, request, body.stream, body.include_usage)

    return app


def _generation_request(
    body: ChatCompletionRequest | CompletionRequest, prompt: str, max_tokens: int | None, special_tokens: bool
) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=body.stops(),
        seed=body.seed,
        special_tokens=special_tokens,
    )


async def _respond(
    engine: Engine, shape: _Shape, request: GenerationRequest, stream: bool | None, include_usage: bool
) -> JSONResponse | StreamingResponse:
    head = {"id": shape.id_prefix + uuid.uuid4().hex, "created": int(time.time()), "model": engine.name}
    if stream:
        generation = await run_in_threadpool(engine.start, request)
        headers = {**edits_header(generation.edits_applied), "Cache-Control": "no-cache"}
        events = _events(generation, shape, {**head, "object": shape.chunk_object}, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    text, generation = await run_in_threadpool(engine.complete, request)
    body = {
        **head,
        "object": shape.object,
        "choices": [shape.choice(text, generation.finish_reason)],
        "usage": _usage(generation),
        EDITS_FIELD: generation.edits_applied,
    }
    return JSONResponse(body, headers=edits_header(generation.edits_applied))


async def _events(
    generation: Generation, shape: _Shape, head: dict[str, Any], include_usage: bool
) -> AsyncIterator[str]:
    """The chunks of a streamed completion, each with the edits applied, then ``data: [DONE]``; an error
    after the stream began is sent as an OpenAI error event."""
    head = {**head, EDITS_FIELD: generation.edits_applied}
    pieces = iter(generation)
    try:
        if shape.opening is not None:
            yield _sse({**head, "choices": [shape.opening]})
        while (piece := await run_in_threadpool(next, pieces, None)) is not None:
            yield _sse({**head, "choices": [shape.delta(piece, None)]})
        yield _sse({**head, "choices": [shape.delta(None, generation.finish_reason)]})
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(generation)})
    except Exception as exc:
        log.exception("generation failed after the stream began")
        yield _sse(_server_error(exc).body())
    finally:
        generation.cancel()  # the client went away, or generation is over anyway
    yield "data: [DONE]\n\n"


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def edits_header(edit_ids: list[str]) -> dict[str, str]:
    """``X-Mkedit-Edits-Applied``: the ids percent-encoded (headers are Latin-1), comma-separated."""
    return {EDITS_HEADER: ",".join(quote(edit_id, safe="") for edit_id in edit_ids)}


def _server_error(exc: Exception) -> ApiError:
    """A 500 with the error's message (an mkedit error says what to do) and never a traceback."""
    detail = str(exc) if isinstance(exc, MkeditError) else f"{type(exc).__name__}: {exc}"
    return ApiError(500, f"The server failed to process the request: {detail}", kind="server_error")


def _param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as OpenAI names parameters: ``messages[0].content``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's 422 as OpenAI's 400, about the first problem found."""
    error = exc.errors()[0]
    loc = tuple(part for part in error.get("loc", ()) if part != "body")
    param = _param(loc)
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "invalid JSON")
        return ApiError(400, f"We could not parse the JSON body of your request ({reason}); send a JSON object.")
    if param is None:
        return ApiError(400, "The request body must be a JSON object.")
    if error.get("type") == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return ApiError(400, f"Invalid value for '{param}': {message}", param, "invalid_value")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return ApiError(400, str(exc), exc.param).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            error = ApiError(404, f"Unknown request URL: {where}.", code="unknown_url")
        else:
            error = ApiError(exc.status_code, f"{exc.detail} ({where})")
        return error.response(dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return _server_error(exc).response()

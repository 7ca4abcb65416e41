"""The HTTP app: germline's OpenAI-compatible API, answered in the model pool's own process.

It refuses a body over the limit (serve/body_limit), checks the API key, validates the
request (serve/openai_api), answers `/v1/models` from lineage, admits at most `max_pending`
requests at once (the rest get a 429 at once, so a burst is refused, not piled up until
something breaks), runs the request on the `ModelPool` in the same process and event loop,
and turns results into OpenAI bodies or server-sent events. There is no hop between the HTTP
request and the engine: an engine that batches (vLLM's continuous batching, the transformers
engine's queue) sees every concurrent request as it arrives, and a stream is the engine's own
stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from germline.engines.sampling import RequestParams
from germline.serve.body_limit import BodyLimit
from germline.serve.openai_api import (
    ChatRequest,
    CompletionRequest,
    chat_body,
    chat_chunk,
    completion_body,
    error_body,
    new_id,
    text_chunk,
    usage,
)
from germline.serve.pool import Job, JobError, ModelPool, ServeSettings
from germline.serve.registry import ServedModel

log = logging.getLogger(__name__)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error",
            429: "rate_limit_exceeded"}.get(status, "invalid_request_error" if status < 500
                                            else "server_error")  # fmt: skip
    code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def _event(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload)}\n\n"


class _Admission:
    """How many requests are in flight; a request past `limit` is refused with a 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0

    def enter(self) -> bool:
        if self.pending >= self.limit:
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1

    def slot(self) -> Callable[[], None]:
        """A release for one admitted request that frees its place once, however often it
        is called (a stream's end and its response's collection both call it)."""
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self.leave()

        return release


async def _sse(
    events: AsyncIterator[tuple], model: str, kind: str, include_usage: bool, done: Any
) -> AsyncIterator[str]:
    """The pool's events as server-sent events; every stream ends with [DONE] (a client
    waits for it), after an error event if the engine failed midway. `done` runs once, when
    the stream ends however it ends."""
    stream_id = new_id("chatcmpl" if kind == "chat" else "cmpl")
    started: set[int] = set()
    try:
        async for event in events:
            if event[0] == "usage":
                if include_usage:
                    chunk = (chat_chunk if kind == "chat" else text_chunk)(
                        stream_id, model, 0, {} if kind == "chat" else "", None
                    )
                    chunk["choices"] = []
                    chunk["usage"] = usage(event[1], event[2])
                    yield _event(chunk)
                continue
            _, index, text, finish = event
            if kind == "chat":
                if index not in started:
                    started.add(index)
                    opening = {"role": "assistant", "content": ""}
                    yield _event(chat_chunk(stream_id, model, index, opening, None))
                delta = {"content": text} if text else {}
                yield _event(chat_chunk(stream_id, model, index, delta, finish))
            else:
                yield _event(text_chunk(stream_id, model, index, text, finish))
    except Exception as exc:  # the engine failed mid-stream: say so in the stream's own terms
        log.exception("stream %s failed", stream_id)
        yield _event(error_body(f"the stream failed: {type(exc).__name__}", "server_error"))
    finally:
        done()
    yield "data: [DONE]\n\n"


def build_api(pool: ModelPool, settings: ServeSettings) -> FastAPI:
    """The app over `pool`; every handler runs on the loop the app is served on."""
    api = FastAPI(title="germline", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    admission = _Admission(settings.max_pending)
    expected = f"Bearer {settings.api_key}".encode() if settings.api_key is not None else None

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            message, where = "the request body is not valid JSON", None
        return _error(400, f"{where}: {message}" if where else message, where)

    @api.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @api.exception_handler(Exception)
    async def _failed(_request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return _error(500, f"the server failed on this request: {type(exc).__name__}")

    def auth(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        # constant time: how long a wrong key takes must not say how much of it was right
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "Incorrect or missing API key (Authorization: Bearer KEY)")

    async def served(ref: str) -> ServedModel:
        """The model a request names: from the registry's memory, or, for a name it does not
        know, after a re-read of lineage (disk, so off the loop)."""
        found = pool.registry.cached(ref)
        if found is not None:
            return found
        try:
            return await asyncio.to_thread(pool.registry.get, ref)
        except KeyError:
            raise HTTPException(404, f"The model '{ref}' does not exist") from None

    async def answer(model: ServedModel, job: Job, stream: bool, include_usage: bool) -> Response:
        if not admission.enter():
            return _error(429, f"too many requests in flight ({settings.max_pending}); "
                          "retry later")  # fmt: skip
        handed_on = False
        try:
            if stream:  # a refusal (a prompt too long) is a 4xx before any event is sent
                loaded, ids, params = await pool.prepare(model, job)
                events = pool.stream(loaded, ids, params)
                release = admission.slot()
                body = _sse(events, model.id, job.kind, include_usage, release)
                # a response dropped before it streams (the client went away) frees its place
                weakref.finalize(body, release)
                handed_on = True
                return StreamingResponse(body, media_type="text/event-stream")
            result = await pool.run(model, job)
        except JobError as exc:
            return _error(exc.status, exc.message, exc.param)
        finally:
            if not handed_on:
                admission.leave()
        if job.kind == "chat":
            return JSONResponse(chat_body(model.id, result[0]))
        return JSONResponse(completion_body(model.id, result, job.params.echo))

    @api.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(request: Request) -> dict:
        auth(request)
        await asyncio.to_thread(pool.registry.reload)
        return {"object": "list", "data": [m.card() for m in pool.registry.list()]}

    @api.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> dict:
        auth(request)
        return (await served(model)).card()

    @api.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        auth(request)
        found = await served(body.model)
        params: RequestParams = body.params(default_max=0)  # 0: what the context allows
        if params.max_tokens > settings.max_tokens:
            return _error(400, f"max_tokens is at most {settings.max_tokens}", "max_tokens")
        if body.stream and body.logprobs:
            return _error(400, "logprobs with stream is not supported", "logprobs")
        options = {
            "add_generation_prompt": body.add_generation_prompt,
            "continue_final_message": body.continue_final_message,
        }
        job = Job("chat", params, messages=[m.plain() for m in body.messages], chat_options=options)
        return await answer(found, job, body.stream, body.include_usage)

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        auth(request)
        found = await served(body.model)
        if body.max_tokens > settings.max_tokens:
            return _error(400, f"max_tokens is at most {settings.max_tokens}", "max_tokens")
        job = Job("text", body.params(), prompts=body.prompts)
        return await answer(found, job, body.stream, body.include_usage)

    return api

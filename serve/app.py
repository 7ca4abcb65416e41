"""The Ray Serve app: an OpenAI-compatible gateway in front of a multiplexed model pool.

Two deployments. The `Gateway` is the HTTP ingress (FastAPI): it checks the API key,
validates the request, answers `/v1/models` from lineage, admits at most `max_pending`
requests at once (the rest get a 429 at once, so a burst is refused, not piled up until
something breaks) and turns results into OpenAI bodies or server-sent events. The
`ModelPool` holds the models: each request is routed to it with its model id as Serve's
multiplexed model id, so a replica that already holds a model gets its requests; inside a
replica, a serving engine of the configured kind (germline.engines) loads each model on
demand, and the least recently used ones are dropped beyond `max_models` (serve.multiplexed).
"""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations
# (Request, the request bodies) at runtime, through Serve's ingress wrapper.

import asyncio
import hmac
import json
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayError

from germline.engines.sampling import RequestParams
from germline.engines.serving import SERVING, Completion, Prompting
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
from germline.serve.registry import ModelRegistry, ServedModel
from germline.storage import Lake, LakeFolders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """What `germline serve` passes to both deployments (plain values: they travel)."""

    lake: str
    storage_options: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    max_models: int = 8  # models (adapters or full models) held per pool replica
    max_pending: int = 64  # requests admitted at once; beyond it, 429
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_body_bytes: int = 8 * 2**20  # the largest request body; beyond it, 400
    threads: int | None = None  # torch threads in a pool replica
    pool_cpus: float = 1.0
    pool_gpus: float = 0.0
    engine: str = "transformers"  # a serving engine's name (germline.engines.SERVING)
    engine_options: dict[str, Any] = field(default_factory=dict)  # vLLM engine arguments

    def lake_obj(self) -> Lake:
        return Lake.resolve(self.lake, self.storage_options or None)


@dataclass(frozen=True)
class Job:
    kind: Literal["chat", "text"]
    params: RequestParams
    messages: list[dict[str, str]] | None = None
    prompts: list[str | list[int]] | None = None
    chat_options: dict[str, bool] = field(default_factory=dict)  # how the chat is rendered


class JobError(Exception):
    """A request the pool cannot serve: `status` is the HTTP status the client gets."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def __reduce__(self) -> tuple:  # it travels back from the pool to the gateway
        return (JobError, (self.status, self.message, self.param))


# -- the model pool --------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=256)
class ModelPool:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.registry = ModelRegistry(settings.lake_obj())
        self.folders = LakeFolders(settings.lake_obj())
        engine = SERVING.get(settings.engine)
        self.engine = engine(self, settings.max_models, settings.threads, settings.engine_options)

        async def load(model_id: str) -> Prompting:  # a plain function: the LRU's size is a setting
            served = self.registry.get(model_id)
            adapter = served.folder if served.adapter else None
            return await self.engine.load(served.id, served.weights, adapter, served.system_prompt)

        self.get_model = serve.multiplexed(max_num_models_per_replica=settings.max_models)(load)

    # What the serving engine asks of the lake (germline.engines.serving.ModelSource).
    def local(self, folder: str) -> str:
        """A model folder on this replica's node (on an object-store lake, its cached copy)."""
        return str(self.folders.fetch(folder))

    def adapters_on(self, weights: str) -> list[str]:
        return [m.folder for m in self.registry.list() if m.adapter and m.weights == weights]

    async def _model(self) -> Prompting:
        model_id = serve.get_multiplexed_model_id()
        try:
            model = await self.get_model(model_id)
        except KeyError:
            raise JobError(404, f"The model '{model_id}' does not exist", "model") from None
        await asyncio.to_thread(model.ensure)
        return model

    def _prompts(self, model: Prompting, job: Job) -> tuple[list[list[int]], RequestParams]:
        """Token ids of every prompt, and the params with max_tokens settled; JobError 400
        when something does not fit. Run in a thread: tokenising a long prompt on the
        replica's event loop stalled every other model's requests behind it."""
        try:
            if job.kind == "chat":
                assert job.messages is not None
                ids = [model.chat_ids(job.messages, **job.chat_options)]
            else:
                assert job.prompts is not None
                ids = [model.text_ids(p) for p in job.prompts]
            params = job.params
            if job.kind == "chat" and params.max_tokens <= 0:  # unset: what the context allows
                room = model.max_positions - max(len(i) for i in ids)
                params = replace(params, max_tokens=max(1, min(self.settings.max_tokens, room)))
            for one in ids:
                model.check_length(one, params.max_tokens)
        except ValueError as exc:  # an EngineError, or the tokenizer refusing the input
            raise JobError(400, str(exc), "messages" if job.kind == "chat" else "prompt") from None
        vocab = len(model.tokenizer)
        if any(t < 0 or t >= vocab for one in ids for t in one):
            raise JobError(400, f"token ids must lie in 0..{vocab - 1}", "prompt")
        return ids, params

    async def run(self, job: Job) -> list[Completion] | JobError:
        try:
            model = await self._model()
            ids, params = await asyncio.to_thread(self._prompts, model, job)
            return [await model.acomplete(one, params) for one in ids]
        except JobError as exc:
            return exc

    async def stream(self, job: Job) -> AsyncIterator[tuple]:
        """("delta", choice index, text, finish reason or None) items, then ("usage", prompt
        tokens, completion tokens); or one ("error", JobError)."""
        try:
            model = await self._model()
            ids, params = await asyncio.to_thread(self._prompts, model, job)
        except JobError as exc:
            yield ("error", exc)
            return
        prompt_tokens = completion_tokens = 0
        for p, one in enumerate(ids):
            prompt_tokens += len(one)
            async for delta in model.astream(one, params):
                index = p * params.n + delta.index
                yield ("delta", index, delta.text, delta.finish_reason)
                if delta.text:
                    completion_tokens += len(model.tokenizer(delta.text, add_special_tokens=False)
                                             ["input_ids"])  # fmt: skip
        yield ("usage", prompt_tokens, completion_tokens)


# -- the HTTP gateway ------------------------------------------------------------------------

api = FastAPI(title="germline", docs_url=None, redoc_url=None)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error",
            429: "rate_limit_exceeded"}.get(status, "invalid_request_error" if status < 500
                                            else "server_error")  # fmt: skip
    code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def _lost(exc: BaseException) -> JSONResponse:
    """A request whose model-pool replica died under it (Serve starts another): a 503 in
    OpenAI's shape, which clients retry, not Serve's plain-text 500."""
    log.warning("model pool lost a request: %s", type(exc).__name__)
    return _error(503, "the model pool restarted while serving this request; retry it")


def _event(payload: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload)}\n\n"


class _BodyLimit:
    """An ASGI middleware that refuses a request body over the gateway's `max_body_bytes`
    with a 400 naming the limit: from its Content-Length before reading anything, or, for a
    chunked body, as soon as the bytes received pass the limit (so at most the limit is
    ever held in memory).

    The limit is a class attribute that the gateway sets when it starts: Serve ships the
    gateway's class by value (with copies of the module's objects, `api` among them) but
    this class by reference, so the class is the one thing both sides see."""

    limit: int | None = None

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        limit = _BodyLimit.limit
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit():
            if int(declared) > limit:
                await self._refuse(scope, limit, send)
            else:
                await self.app(scope, receive, send)
            return
        # No length given (a chunked upload): read it here, at most `limit` bytes, then hand
        # the app the body it would have read (whose own error would not name the limit).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(scope, limit, send)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: dict, limit: int, send: Any) -> None:
        refusal = _error(400, f"the request body is over {limit} bytes (the server's limit)")
        await refusal(scope, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


api.add_middleware(_BodyLimit)


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


# Everything the gateway's methods use is defined above the class: Serve serialises the
# ingress class when it is decorated, with the module globals that exist at that moment.
class _Slot:
    """One admitted request's place in the gateway's count; released exactly once."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gateway.pending -= 1


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Gateway:
    def __init__(self, pool: Any, settings: ServeSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.registry = ModelRegistry(settings.lake_obj())
        self.pending = 0
        _BodyLimit.limit = settings.max_body_bytes

    def _auth(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "").encode()
        # constant time: how long a wrong key takes must not say how much of it was right
        if not hmac.compare_digest(given, f"Bearer {key}".encode()):
            raise HTTPException(401, "Incorrect or missing API key (Authorization: Bearer KEY)")

    async def _served(self, ref: str) -> ServedModel:
        """The model a request names; an unknown name may re-read lineage (disk), so off the
        event loop."""
        try:
            return await asyncio.to_thread(self.registry.get, ref)
        except KeyError:
            raise HTTPException(404, f"The model '{ref}' does not exist") from None

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._auth(request)
        await asyncio.to_thread(self.registry.reload)
        return {"object": "list", "data": [m.card() for m in self.registry.list()]}

    @api.get("/v1/models/{model:path}")
    async def model(self, model: str, request: Request) -> dict:
        self._auth(request)
        return (await self._served(model)).card()

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request) -> Any:
        self._auth(request)
        served = await self._served(body.model)
        params = body.params(default_max=0)  # 0: the pool fills in what the context allows
        if params.max_tokens > self.settings.max_tokens:
            return _error(400, f"max_tokens is at most {self.settings.max_tokens}", "max_tokens")
        if body.stream and body.logprobs:
            return _error(400, "logprobs with stream is not supported", "logprobs")
        options = {
            "add_generation_prompt": body.add_generation_prompt,
            "continue_final_message": body.continue_final_message,
        }
        job = Job("chat", params, messages=[m.plain() for m in body.messages], chat_options=options)
        return await self._answer(served, job, body.stream, body.include_usage)

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self._auth(request)
        served = await self._served(body.model)
        if body.max_tokens > self.settings.max_tokens:
            return _error(400, f"max_tokens is at most {self.settings.max_tokens}", "max_tokens")
        job = Job("text", body.params(), prompts=body.prompts)
        return await self._answer(served, job, body.stream, body.include_usage)

    async def _answer(
        self, served: ServedModel, job: Job, stream: bool, include_usage: bool
    ) -> Any:
        if self.pending >= self.settings.max_pending:
            return _error(429, f"too many requests in flight ({self.settings.max_pending}); "
                          "retry later")  # fmt: skip
        self.pending += 1
        handle = self.pool.options(multiplexed_model_id=served.id)
        if stream:
            return await self._stream(handle, served, job, include_usage)
        try:
            result = await handle.run.remote(job)
        except RayError as exc:  # the pool's replica died under the request: say so, retryable
            return _lost(exc)
        finally:
            self.pending -= 1
        if isinstance(result, JobError):
            return _error(result.status, result.message, result.param)
        if job.kind == "chat":
            return chat_body(served.id, result[0])
        return completion_body(served.id, result, job.params.echo)

    async def _stream(self, handle: Any, served: ServedModel, job: Job, include_usage: bool) -> Any:
        """An SSE response; a request the pool refuses (a prompt too long, say) gets its 4xx
        before any event is sent, as from OpenAI, since the first event is awaited here."""
        slot = _Slot(self)
        events = handle.options(stream=True).stream.remote(job)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except RayError as exc:
            slot.release()
            return _lost(exc)
        except BaseException:
            slot.release()
            raise
        if first is not None and first[0] == "error":
            slot.release()
            exc: JobError = first[1]
            return _error(exc.status, exc.message, exc.param)
        body = self._sse(first, events, served, job, include_usage, slot)
        # A response dropped before it streams (the client went away) must still free its slot.
        weakref.finalize(body, slot.release)
        return StreamingResponse(body, media_type="text/event-stream")

    async def _sse(
        self,
        first: tuple | None,
        events: Any,
        served: ServedModel,
        job: Job,
        include_usage: bool,
        slot: _Slot,
    ) -> AsyncIterator[str]:
        stream_id = new_id("chatcmpl" if job.kind == "chat" else "cmpl")
        started: set[int] = set()

        async def everything() -> AsyncIterator[tuple]:
            if first is not None:
                yield first
            async for event in events:
                yield event

        try:
            async for event in everything():
                if event[0] == "error":
                    exc: JobError = event[1]
                    yield _event(error_body(exc.message, "invalid_request_error", exc.param))
                    break
                if event[0] == "usage":
                    if include_usage:
                        chunk = (chat_chunk if job.kind == "chat" else text_chunk)(
                            stream_id, served.id, 0, {} if job.kind == "chat" else "", None
                        )
                        chunk["choices"] = []
                        chunk["usage"] = usage(event[1], event[2])
                        yield _event(chunk)
                    continue
                _, index, text, finish = event
                if job.kind == "chat":
                    if index not in started:
                        started.add(index)
                        opening = {"role": "assistant", "content": ""}
                        yield _event(chat_chunk(stream_id, served.id, index, opening, None))
                    delta = {"content": text} if text else {}
                    yield _event(chat_chunk(stream_id, served.id, index, delta, finish))
                else:
                    yield _event(text_chunk(stream_id, served.id, index, text, finish))
        except Exception as exc:  # the pool failed mid-stream: say so in the stream's own terms
            log.exception("stream %s failed", stream_id)
            yield _event(error_body(f"the stream failed: {type(exc).__name__}", "server_error"))
        finally:
            slot.release()
        # every stream ends with [DONE], an error or not: a client waits for it
        yield "data: [DONE]\n\n"


def build_app(settings: ServeSettings) -> Any:
    """The Serve application: the gateway bound to one model pool."""
    resources = {"num_cpus": settings.pool_cpus, "num_gpus": settings.pool_gpus}
    pool = ModelPool.options(ray_actor_options=resources).bind(settings)
    return Gateway.bind(pool, settings)

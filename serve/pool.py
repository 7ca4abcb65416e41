"""The model pool: requests in, completions out, on the models one server replica holds.

A serving engine of the configured kind (germline.engines) loads each model on demand; the
least recently used ones are dropped beyond `max_models` (the engine frees a model's memory
when its last reference goes). Everything here runs on the replica's serving loop, in the
same process as the HTTP app: no actor call between a request and its engine.
"""

from __future__ import annotations

import asyncio
import gc
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from germline.engines.sampling import RequestParams
from germline.engines.serving import SERVING, Completion, Prompting
from germline.serve.registry import ModelRegistry, ServedModel
from germline.storage import Lake, LakeFolders


@dataclass(frozen=True)
class ServeSettings:
    """What `germline serve` passes to the server replica (plain values: they travel)."""

    lake: str
    storage_options: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None
    max_models: int = 8  # models (adapters or full models) held at once
    max_pending: int = 64  # requests admitted at once; beyond it, 429
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_body_bytes: int = 8 * 2**20  # the largest request body; beyond it, 400
    threads: int | None = None  # torch threads in the replica
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


class ModelPool:
    """The models of one replica, loaded on first use and kept least-recently-used first."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        lake = settings.lake_obj()
        self.registry = ModelRegistry(lake)
        self.folders = LakeFolders(lake)
        engine = SERVING.get(settings.engine)
        self.engine = engine(self, settings.max_models, settings.threads, settings.engine_options)
        self._held: OrderedDict[str, Prompting] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Prompting]] = {}

    # What the serving engine asks of the lake (germline.engines.serving.ModelSource).
    def local(self, folder: str) -> str:
        """A model folder on this replica's node (on an object-store lake, its cached copy)."""
        return str(self.folders.fetch(folder))

    def adapters_on(self, weights: str) -> list[str]:
        return [m.folder for m in self.registry.list() if m.adapter and m.weights == weights]

    async def model(self, served: ServedModel) -> Prompting:
        """The loaded model `served` names; concurrent first requests share one load."""
        held = self._held.get(served.id)
        if held is None:
            pending = self._loading.get(served.id)
            if pending is None:
                pending = asyncio.ensure_future(self._load(served))
                self._loading[served.id] = pending
                pending.add_done_callback(lambda _: self._loading.pop(served.id, None))
            held = await asyncio.shield(pending)
        self._held.move_to_end(served.id)
        if held.needs_ensure():
            await asyncio.to_thread(held.ensure)
        return held

    async def _load(self, served: ServedModel) -> Prompting:
        adapter = served.folder if served.adapter else None
        model = await self.engine.load(served.id, served.weights, adapter, served.system_prompt)
        self._held[served.id] = model
        while len(self._held) > self.settings.max_models:  # the least recently used goes
            self._held.popitem(last=False)
        freeze_heap()
        return model

    def _prompts(self, model: Prompting, job: Job) -> tuple[list[list[int]], RequestParams]:
        """Token ids of every prompt, and the params with max_tokens settled; JobError 400
        when something does not fit. Run in a thread: tokenising a long prompt on the
        serving loop would stall every other request behind it."""
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

    async def prepare(
        self, served: ServedModel, job: Job
    ) -> tuple[Prompting, list[list[int]], RequestParams]:
        model = await self.model(served)
        ids, params = await asyncio.to_thread(self._prompts, model, job)
        return model, ids, params

    async def run(self, served: ServedModel, job: Job) -> list[Completion]:
        """Every prompt's completion; the prompts of one request run concurrently, so the
        engine can batch them with each other and with other requests."""
        model, ids, params = await self.prepare(served, job)
        return list(await asyncio.gather(*(model.acomplete(one, params) for one in ids)))

    async def stream(
        self, model: Prompting, ids: list[list[int]], params: RequestParams
    ) -> AsyncIterator[tuple]:
        """("delta", choice index, text, finish reason or None) items, then ("usage", prompt
        tokens, completion tokens)."""
        prompt_tokens = completion_tokens = 0
        for p, one in enumerate(ids):
            prompt_tokens += len(one)
            async for delta in model.astream(one, params):
                yield ("delta", p * params.n + delta.index, delta.text, delta.finish_reason)
                completion_tokens += delta.tokens
        yield ("usage", prompt_tokens, completion_tokens)


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's view (what vLLM's own
    server does after start-up). A loaded model and the libraries under it (torch, vLLM,
    Ray, deltalake) leave millions of long-lived objects, and every full collection would
    walk them all while requests wait; objects made later are collected as usual."""
    gc.collect()
    gc.freeze()

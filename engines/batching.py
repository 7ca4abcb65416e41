"""Dynamic batching for an engine that generates one batch at a time (transformers).

Concurrent requests to one base wait in a queue; while a batch runs, the next one gathers, and
it runs as one `generate` call as soon as the last one ends. Requests batch together when one
call can serve them all: the same adapter and the same sampling rules (temperature, top_p,
stop strings, whether logprobs are reported). Seeds, prompts, n and max_tokens may differ:
every row samples from its own generator (`RowSampler`), a longer max_tokens only runs the
call longer (each row keeps its own first max_tokens tokens), and prompts of different lengths
are left-padded under an attention mask.

So a seeded request answers the same batched as alone, as long as the model computes a row's
scores the same next to other rows and under padding. In exact arithmetic it does; in floating
point a batched row's scores can differ from its lone run in the last bits, which changes a
sampled token only when the row's uniform draw falls within that rounding of a boundary
between two tokens' cumulative probabilities (tests/test_batching.py checks a set of seeded
requests answer identically batched and alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Result = TypeVar("Result")


@dataclass
class Pending(Generic[Result]):
    """One request in the queue: what to run, how many rows it takes, where its answer goes."""

    key: Hashable
    rows: int
    work: Any
    answer: asyncio.Future[Result] = field(repr=False)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0  # the most requests one batch held


class Batcher(Generic[Result]):
    """Runs `run(key, [work, ...]) -> [result, ...]` in a worker thread, one batch at a time,
    each batch holding the oldest waiting request and every other waiting one with its key,
    up to `max_rows` rows (a request larger than that runs alone)."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Result]], max_rows: int) -> None:
        self.run = run
        self.max_rows = max_rows
        self.queue: list[Pending[Result]] = []
        self.stats = BatchStats()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, key: Hashable, rows: int, work: Any) -> Result:
        loop = asyncio.get_running_loop()
        pending = Pending(key, rows, work, loop.create_future())
        self.queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await pending.answer

    def _next(self) -> list[Pending[Result]]:
        first = self.queue[0]
        batch, rest, rows = [first], [], first.rows
        for pending in self.queue[1:]:
            if pending.key == first.key and rows + pending.rows <= self.max_rows:
                batch.append(pending)
                rows += pending.rows
            else:
                rest.append(pending)
        self.queue = rest
        return batch

    async def _drain(self) -> None:
        while self.queue:
            batch = [p for p in self._next() if not p.answer.done()]  # a cancelled one is dropped
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            try:
                results = await asyncio.to_thread(self.run, batch[0].key, [p.work for p in batch])
            except Exception as exc:  # every request of the batch gets the error
                for pending in batch:
                    if not pending.answer.done():
                        pending.answer.set_exception(exc)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.answer.done():
                    pending.answer.set_result(result)

"""The Ray Data stages of generation: the teacher's engine, and the checks (filters, then
expectations). Each is a callable class, so Ray builds it once per actor and streams batches
through it; both take and return pyarrow tables.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from germline.core import GermlineError
from germline.pipelines.generate.sink import QUARANTINE_SCHEMA, ROW_SCHEMA
from germline.storage import Lake, LakeFolders

SUMMARY_COLUMN = "_expectations"  # the batch's expectation summary, riding along to the sink


def request_seed(seed: int, prompt_id: str) -> int:
    """A prompt's sampling seed: fixed by the run seed and the prompt, not by batching."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "big")


class GenerateStage:
    """The teacher: one engine per actor, completing a batch of prompts per call."""

    def __init__(
        self,
        model_dir: str,
        lake: Lake,
        engine: str,
        engine_options: dict[str, Any],
        sampling: dict[str, Any],
        system_prompt: str | None,
        run_id: str,
        teacher_id: str,
    ) -> None:
        from germline.engines import SamplingParams, load_engine

        # One thread loads the engine and runs every batch. Ray Data calls a stage from a
        # thread other than the one that built it, and torch on CPU generated a third slower
        # in a thread other than the one that loaded the model (measured: 4,500 vs 6,400
        # tokens/s on the tiny teacher, whatever the thread-count settings).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        # An error while loading is raised at the first batch, not here: Ray reports a failed
        # constructor as a dead actor, without the error; a failed batch reaches the driver
        # as the error itself.
        self.failure: GermlineError | None = None
        try:
            # The teacher's folder, from this node's cache when the lake is an object store.
            local = LakeFolders(lake).fetch(model_dir)
            self.engine = self._thread.submit(load_engine, engine, local, **engine_options).result()
        except GermlineError as exc:
            self.failure = exc
        self.params = SamplingParams(**sampling)
        self.system_prompt = system_prompt
        self.run_id = run_id
        self.teacher_id = teacher_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        return self._thread.submit(self._generate, batch).result()

    def _generate(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        ids = batch.column("prompt_id").to_pylist()
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chats = [[*system, {"role": "user", "content": p}] for p in prompts]
        seeds = [request_seed(self.params.seed, i) for i in ids]
        out = self.engine.generate(chats, self.params, seeds)
        n = len(out)
        p = self.params
        return pa.table(
            {
                "prompt_id": ids,
                "prompt_index": batch.column("prompt_index"),
                "family": batch.column("family"),
                "prompt": prompts,
                "completion": [g.text for g in out],
                "run_id": [self.run_id] * n,
                "teacher_id": [self.teacher_id] * n,
                "engine": [self.engine.name] * n,
                "temperature": [p.temperature] * n,
                "top_p": [p.top_p] * n,
                "max_tokens": [p.max_tokens] * n,
                "sampling_seed": seeds,
                "prompt_tokens": [g.prompt_tokens for g in out],
                "completion_tokens": [g.completion_tokens for g in out],
                "finish_reason": [g.finish_reason for g in out],
            },
            schema=ROW_SCHEMA,
        )


class ChecksStage:
    """Filters, then the expectation suite on what the filters kept. Every input row comes
    out: accepted rows with a null `stage`, rejected ones with the stage, filter and reason
    that rejected them. Under the "abort" policy a failed expectation raises instead."""

    def __init__(self, filters: dict[str, Any], expectations: dict[str, Any]) -> None:
        from germline.checks import FilterConfig
        from germline.checks.expectations import ExpectationConfig, ExpectationRunner

        self.chain = FilterConfig.model_validate(filters).chain()
        self.runner = ExpectationRunner(ExpectationConfig.model_validate(expectations))

    def __call__(self, batch: pa.Table) -> pa.Table:
        filtered = self.chain.apply(batch)
        expected = self.runner.validate(filtered.accepted)
        parts = [
            _tag(expected.accepted, None),
            _tag(filtered.rejected, "filter"),
            _tag(expected.rejected, "expect"),
        ]
        out = pa.concat_tables([part for part in parts if part.num_rows] or parts[:1])
        summary = dict(expected.summary)
        summary["filtered"] = filtered.reason_counts()
        # The summary rides in the first row only (a copy per row cost more than the checks).
        column = [json.dumps(summary)] + [None] * (out.num_rows - 1) if out.num_rows else []
        return out.append_column(SUMMARY_COLUMN, pa.array(column, pa.string()))


def _tag(rows: pa.Table, stage: str | None) -> pa.Table:
    """Bring accepted or rejected rows to the quarantine schema (nulls where they fit)."""
    n = rows.num_rows
    columns = {}
    for f in QUARANTINE_SCHEMA:
        if f.name in rows.column_names:
            columns[f.name] = rows.column(f.name).cast(f.type)
        elif f.name == "stage":
            columns[f.name] = pa.array([stage] * n, pa.string())
        else:
            columns[f.name] = pa.nulls(n, f.type)
    return pa.table(columns, schema=QUARANTINE_SCHEMA)

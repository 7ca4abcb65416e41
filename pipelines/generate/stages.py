"""The Ray Data stages of generation: the teacher's engine, and the checks (filters, then
expectations). Each is a callable class, so Ray builds it once per actor and streams batches
through it; both take and return pyarrow tables.

One pipeline can carry several jobs (the panel's teachers, each with its own dataset): every
row carries its job's index in `JOB_COLUMN`, and each stage looks up that job's teacher,
sampling and checks. A batch may hold the tail of one job and the head of the next (Ray Data
cuts batches by rows, not by job), so the stages split it by job and keep the rows' order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from germline.core import GermlineError
from germline.pipelines.generate.sink import QUARANTINE_SCHEMA, ROW_SCHEMA
from germline.storage import Lake, LakeFolders

SUMMARY_COLUMN = "_expectations"  # the batch's expectation summary, riding along to the sink
JOB_COLUMN = "_job"  # the row's job: its index in the pipeline's list of jobs


def request_seed(seed: int, prompt_id: str) -> int:
    """A prompt's sampling seed: fixed by the run seed and the prompt, not by batching."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "big")


def by_job(batch: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """A batch's rows job by job, in the order the jobs first appear, without the job column."""
    jobs = batch.column(JOB_COLUMN)
    rows = batch.drop_columns([JOB_COLUMN])
    for job in dict.fromkeys(jobs.to_pylist()):
        yield job, rows.filter(pc.equal(jobs, job))


def with_job(table: pa.Table, job: int) -> pa.Table:
    return table.append_column(JOB_COLUMN, pa.array([job] * table.num_rows, pa.int32()))


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(parts) if parts else with_job(schema.empty_table(), 0)


class GenerateStage:
    """The teachers: one engine at a time per actor, completing a batch of prompts per call.

    A job's engine is loaded when its first batch arrives, replacing the last job's: the jobs
    come in order, so each actor loads each teacher once, and holds one model at a time."""

    def __init__(
        self, lake: Lake, engine: str, engine_options: dict[str, Any], jobs: list[dict[str, Any]]
    ) -> None:
        from germline.engines import SamplingParams

        # One thread loads the engine and runs every batch. Ray Data calls a stage from a
        # thread other than the one that built it, and torch on CPU generated a third slower
        # in a thread other than the one that loaded the model (measured: 4,500 vs 6,400
        # tokens/s on the tiny teacher, whatever the thread-count settings).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.lake = lake
        self.kind = engine
        self.options = engine_options
        self.jobs = jobs
        self.params = [SamplingParams(**job["sampling"]) for job in jobs]
        self.loaded: str | None = None  # the model folder of the engine held
        self.engine: Any = None
        # The first job's engine loads now, while the other stage's workers start too (lazily,
        # at the first batch, the two start-ups ran one after the other: 4 s more a run). An
        # error while loading is raised at that job's first batch, not here: Ray reports a
        # failed constructor as a dead actor, without the error; a failed batch reaches the
        # driver as the error itself.
        self.failure: GermlineError | None = None
        try:
            self._thread.submit(self._engine, 0).result()
        except GermlineError as exc:
            self.failure = exc

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = [with_job(self._thread.submit(self._generate, job, rows).result(), job)
                 for job, rows in by_job(batch)]  # fmt: skip
        return _concat(parts, ROW_SCHEMA)

    def _engine(self, job: int) -> Any:
        from germline.engines import load_engine

        model_dir = self.jobs[job]["model_dir"]
        if self.failure is not None and model_dir == self.jobs[0]["model_dir"]:
            raise self.failure
        if model_dir != self.loaded:
            self.engine = self.loaded = None  # the last teacher goes before the next loads
            # The teacher's folder, from this node's cache when the lake is an object store.
            local = LakeFolders(self.lake).fetch(model_dir)
            self.engine = load_engine(self.kind, local, **self.options)
            self.loaded = model_dir
        return self.engine

    def _generate(self, job: int, batch: pa.Table) -> pa.Table:
        engine = self._engine(job)
        spec, p = self.jobs[job], self.params[job]
        prompts = batch.column("prompt").to_pylist()
        ids = batch.column("prompt_id").to_pylist()
        system = spec["system_prompt"]
        head = [{"role": "system", "content": system}] if system else []
        chats = [[*head, {"role": "user", "content": prompt}] for prompt in prompts]
        seeds = [request_seed(p.seed, i) for i in ids]
        out = engine.generate(chats, p, seeds)
        n = len(out)
        return pa.table(
            {
                "prompt_id": ids,
                "prompt_index": batch.column("prompt_index"),
                "family": batch.column("family"),
                "prompt": prompts,
                "completion": [g.text for g in out],
                "run_id": [spec["run_id"]] * n,
                "teacher_id": [spec["teacher_id"]] * n,
                "engine": [engine.name] * n,
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
    """Filters, then the expectation suite on what the filters kept, with each row's job's
    checks. Every input row comes out: accepted rows with a null `stage`, rejected ones with
    the stage, filter and reason that rejected them. Under the "abort" policy a failed
    expectation raises instead. `jobs[i]` holds job i's `filters` and `expectations`."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self._built: dict[str, Any] = {}  # jobs with the same checks share one chain or suite
        for job in range(len(jobs)):  # built while the engine loads, not after it
            self._checks(job)

    def _checks(self, job: int) -> tuple[Any, Any]:
        from germline.checks import FilterConfig
        from germline.checks.expectations import ExpectationConfig, ExpectationRunner

        spec = self.jobs[job]
        key = json.dumps(spec["filters"], sort_keys=True)
        if key not in self._built:
            self._built[key] = FilterConfig.model_validate(spec["filters"]).chain()
        suite = "expect:" + json.dumps(spec["expectations"], sort_keys=True)
        if suite not in self._built:
            config = ExpectationConfig.model_validate(spec["expectations"])
            self._built[suite] = ExpectationRunner(config)
        return self._built[key], self._built[suite]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _concat([with_job(self._check(job, rows), job) for job, rows in by_job(batch)],
                       QUARANTINE_SCHEMA.append(pa.field(SUMMARY_COLUMN, pa.string())))  # fmt: skip

    def _check(self, job: int, batch: pa.Table) -> pa.Table:
        chain, runner = self._checks(job)
        filtered = chain.apply(batch)
        expected = runner.validate(filtered.accepted)
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

"""`germline generate`: prompts -> teacher -> filters -> expectations -> Delta, with lineage.

A Ray Data pipeline streams the prompts not yet answered through the teacher's engine (an
actor pool under map_batches) and the checks stage, and the driver commits what comes out to
the dataset and quarantine tables every `commit_every` rows. Several jobs (an experiment's
teachers) can share one pipeline (`generate_many`): its workers start once, and each job
still gets its own dataset, commits, run and lineage. Everything a row needs to be
traced back is in the row (prompt id, run id, teacher id, engine, sampling) and in its commit
(config hash, base fingerprint, expectation summary); the lineage graph gets the run, the
check suite and the dataset versions with their edges.

Resuming is the normal path, not a special mode: the run id is the hash of what decides the
rows, and prompts already in either table are skipped, so a killed run started again finishes
the job with every prompt id exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from germline.core import GermlineError, InputError
from germline.engines import ENGINES
from germline.lineage import LineageStore, Node, NodeKind
from germline.pipelines.config import digest
from germline.pipelines.generate.config import GenerateConfig
from germline.pipelines.generate.sink import DatasetSink, drop_ids
from germline.pipelines.generate.stages import (
    SUMMARY_COLUMN,
    ChecksStage,
    GenerateStage,
    by_job,
    with_job,
)
from germline.pipelines.models.refs import model_uri
from germline.pipelines.models.teacher import teacher_for
from germline.pipelines.prompts import get_family
from germline.storage import Lake

log = logging.getLogger(__name__)


@dataclass
class GenerateSummary:
    """What a generation run did; printed by the CLI and stored on the dataset node."""

    dataset: str
    run_id: str
    teacher_id: str
    prompts: int
    skipped: int = 0  # already answered by an earlier attempt
    accepted: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # exact reason -> rows
    filters: dict[str, int] = field(default_factory=dict)  # filter or expectation -> rows
    completion_tokens: int = 0
    seconds: float = 0.0
    commits: int = 0
    dataset_id: str | None = None
    quarantine_id: str | None = None

    @property
    def answered(self) -> int:
        return self.skipped + self.accepted + self.quarantined

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "answered": self.answered,
            "tokens_per_s": round(self.tokens_per_s, 1),
        }


Progress = Callable[["GenerateSummary"], None]  # called after every commit


def generate(
    lake: Lake,
    config: GenerateConfig,
    progress: Progress | None = None,
    verbose: bool = False,
) -> GenerateSummary:
    """Run one generation job (or finish an interrupted one) and register its lineage. The
    teacher is found (or made, from `teacher.build`) first, and the engine checked, so a
    missing model or library fails before any worker starts."""
    return generate_many(lake, [config], progress, verbose)[0]


def generate_many(
    lake: Lake,
    configs: Sequence[GenerateConfig],
    progress: Progress | None = None,
    verbose: bool = False,
) -> list[GenerateSummary]:
    """Run several generation jobs, each exactly as `generate` runs it alone (its dataset, run,
    commits and lineage), through as few Ray Data pipelines as their engines allow: jobs in a
    row whose engine settings agree share one pipeline, so the engine and checks workers start
    once for all of them (on the tiny teachers that start-up, not generation, was most of a
    job's time). Every teacher is found and every engine checked before any worker starts.
    `progress` gets the summary of the job that just committed."""
    names = [c.dataset for c in configs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"two generation jobs write the same dataset: {', '.join(twice)}")
    store = LineageStore(lake)
    jobs = [_Job.prepare(lake, store, c) for c in configs]
    for job in jobs:
        if progress:
            progress(job.summary)
    for group in _pipelines([job for job in jobs if job.todo.num_rows]):
        _run(group, lake, store, progress, verbose)
    for job in jobs:
        if not job.finished:  # nothing was left to do, or rows that never came back
            job.finish(store, time.perf_counter())
    return [job.summary for job in jobs]


@dataclass
class _Job:
    """One job of a pipeline: its config, teacher, lineage nodes, sink, the prompts it has
    left, and what the driver has received for it and not yet committed."""

    config: GenerateConfig
    lake: Lake
    teacher: Node
    run_node: Node
    suite: Node
    sink: DatasetSink
    todo: pa.Table
    summary: GenerateSummary
    metadata: dict[str, str]
    system_prompt: str | None
    pending: list[pa.Table] = field(default_factory=list)
    received: int = 0
    started: float = 0.0
    finished: bool = False
    reasons: Counter[str] = field(default_factory=Counter)
    filters: Counter[str] = field(default_factory=Counter)

    @classmethod
    def prepare(cls, lake: Lake, store: LineageStore, config: GenerateConfig) -> _Job:
        """Find the teacher, check the engine, register the run and its check suite, and
        find the prompts no earlier attempt answered."""
        teacher = teacher_for(lake, config.teacher)
        ENGINES.get(config.engine.kind).check_available()
        fingerprint = store.graph().fingerprint(teacher.id)
        config_hash = config.content_hash(teacher.id)
        run_id = f"generate-{config.dataset}-{config_hash[:12]}"
        suite = store.register_node(
            NodeKind.SUITE,
            f"{config.expectations.kind}-checks",
            key=_suite_key(config),
            attrs={
                "filters": config.filters.chain().names,
                "filter_config": config.filters.model_dump(mode="json"),
                "expectations": config.expectations.suite_dict(),
                "policy": config.expectations.policy,
            },
        )
        run = store.register_run(
            f"generate/{config.dataset}",
            key=run_id,
            params={
                "run_id": run_id,
                "config_hash": config_hash,
                "config": config.model_dump(mode="json"),
                "teacher": teacher.id,
                "base_fingerprint": fingerprint,
            },
            used=[teacher.id, suite.id],
        )
        sink = DatasetSink(
            lake.dataset(config.dataset),
            lake.quarantine(config.dataset),
            teacher_id=teacher.id,
            app_id=f"germline.generate/{run_id}",
            storage_options=lake.storage_options,
        )
        prompts = _prompts(config)
        todo = drop_ids(prompts, sink.done_ids())
        summary = GenerateSummary(
            config.dataset, run_id, teacher.id, prompts=prompts.num_rows,
            skipped=prompts.num_rows - todo.num_rows,
        )  # fmt: skip
        metadata = {
            "germline.run_id": run_id,
            "germline.run_node": run.id,
            "germline.teacher": teacher.id,
            "germline.base_fingerprint": fingerprint or "",
            "germline.config_hash": config_hash,
            "germline.suite": suite.id,
        }
        system_prompt = config.teacher.system_prompt or teacher.attrs.get("system_prompt")
        return cls(config, lake, teacher, run, suite, sink, todo, summary, metadata,
                   system_prompt)  # fmt: skip

    def stage_spec(self) -> dict[str, Any]:
        """What the engine stage needs of this job."""
        return {
            "model_dir": model_uri(self.lake, self.teacher, "teacher"),  # fetched per worker
            "sampling": self.config.sampling.params(self.config.seed).to_dict(),
            "system_prompt": self.system_prompt,
            "run_id": self.summary.run_id,
            "teacher_id": self.teacher.id,
        }

    def checks_spec(self) -> dict[str, Any]:
        return {
            "filters": self.config.filters.model_dump(mode="json"),
            "expectations": self.config.expectations.model_dump(mode="json"),
        }

    def receive(self, rows: pa.Table, progress: Progress | None) -> None:
        """Rows of this job from the checks stage: committed every `commit_every` rows."""
        self.pending.append(rows)
        self.received += rows.num_rows
        if sum(t.num_rows for t in self.pending) >= self.config.sink.commit_every:
            self.commit(progress)

    def commit(self, progress: Progress | None) -> None:
        if not self.pending:
            return
        accepted, rejected, summaries = _split(self.pending)
        self.pending = []
        metadata = {**self.metadata, "germline.expectations": _merge(summaries)}
        written = self.sink.write(accepted, rejected, metadata)
        if written < accepted.num_rows + rejected.num_rows:  # a retried task's repeats
            log.info("%d rows were in the lake already",
                     accepted.num_rows + rejected.num_rows - written)  # fmt: skip
        s = self.summary
        s.accepted += accepted.num_rows
        s.quarantined += rejected.num_rows
        s.completion_tokens += _sum(accepted, "completion_tokens") + _sum(
            rejected, "completion_tokens"
        )
        self.reasons.update(rejected.column("reason").to_pylist())
        self.filters.update(rejected.column("filter").to_pylist())
        s.seconds = time.perf_counter() - self.started
        s.commits = self.sink.commits
        if progress:
            progress(s)

    def finish(self, store: LineageStore, now: float) -> None:
        """The job's summary, and its dataset versions in lineage."""
        s = self.summary
        s.seconds = now - self.started if self.started else 0.0
        s.reasons = dict(self.reasons.most_common())
        s.filters = dict(self.filters.most_common())
        s.commits = self.sink.commits
        attrs = {"run_id": s.run_id, "teacher": self.teacher.id, "summary": s.to_dict()}
        done = {"generated_by": [self.teacher.id, self.run_node.id], "filtered_by": [self.suite.id]}
        uri = self.lake.dataset(self.config.dataset)
        data = store.register_dataset(self.config.dataset, uri, **done,
                                      attrs={**attrs, "role": "accepted"})  # fmt: skip
        quarantine = store.register_dataset(
            f"quarantine/{self.config.dataset}", self.lake.quarantine(self.config.dataset),
            **done, attrs={**attrs, "role": "quarantine"},
        )  # fmt: skip
        s.dataset_id, s.quarantine_id = data.id, quarantine.id
        self.finished = True


def _pipelines(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs in a row that one pipeline can carry: the same engine settings, on an engine whose
    workers can drop one model and load the next (`swaps_models`)."""
    groups: list[list[_Job]] = []
    for job in jobs:
        engine = job.config.engine
        last = groups[-1][-1].config.engine if groups else None
        if last == engine and getattr(ENGINES.get(engine.kind), "swaps_models", False):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _sum(table: pa.Table, column: str) -> int:
    return int(pc.sum(table.column(column)).as_py() or 0) if table.num_rows else 0


def _suite_key(config: GenerateConfig) -> str:
    return digest(
        {
            "filters": config.filters.model_dump(mode="json"),
            "expectations": config.expectations.suite_dict(),
            "policy": config.expectations.policy,
        }
    )


def _prompts(config: GenerateConfig) -> pa.Table:
    table = get_family(config.prompts.family).generate(config.prompts.count, config.seed)
    return table.append_column("prompt_index", pa.array(range(table.num_rows), pa.int64()))


def _merge(summaries: list[dict]) -> dict:
    """One commit's expectation summary from its batches' summaries."""
    if not summaries:
        return {}
    merged: dict[str, object] = {
        "suite": summaries[0].get("suite"),
        "batches": len(summaries),
        "success": all(s.get("success", True) for s in summaries),
        "rows": sum(int(s.get("rows", 0)) for s in summaries),
        "rejected": sum(int(s.get("rejected", 0)) for s in summaries),
    }
    unexpected: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    for s in summaries:
        for e in s.get("expectations", []):
            unexpected[f"{e.get('type')}({e.get('column')})"] += int(e.get("unexpected_count") or 0)
        filtered.update(s.get("filtered", {}))
    merged["unexpected"] = dict(unexpected)
    merged["filtered"] = dict(filtered)
    return merged


def _run(
    jobs: list[_Job], lake: Lake, store: LineageStore, progress: Progress | None, verbose: bool
) -> None:
    """Stream the prompts the jobs have left through one Ray Data pipeline, commit each job's
    rows every `commit_every` rows, and finish a job (its lineage) once all its rows are back:
    every prompt comes out of the checks stage, accepted or rejected."""
    import ray

    from germline.pipelines.cluster import actor_fault_tolerance, configure_ray_data, ensure_ray

    ensure_ray(verbose)
    configure_ray_data(verbose)
    engine = jobs[0].config.engine
    options = dict(engine.options)
    if engine.kind == "transformers" and engine.num_gpus == 0:
        cores = os.cpu_count() or 1
        options.setdefault("threads", engine.threads or max(1, cores // engine.concurrency))
    if engine.kind == "transformers" and engine.num_gpus > 0:
        options.setdefault("device", "cuda")
    # One block per engine batch, job after job and in prompt order, and the order kept through
    # both stages (this dataset's own copy of the context, so nothing else Ray Data runs is
    # slowed): the engine's batches, the checks' batches, what each commit holds and the rows'
    # order in the tables are then the same on every run of a config. Without it the blocks
    # came out in the order the workers finished them, and two runs of one config wrote their
    # rows in different orders.
    size = engine.batch_size
    blocks = [
        with_job(job.todo.slice(i, size), index)
        for index, job in enumerate(jobs)
        for i in range(0, job.todo.num_rows, size)
    ]
    ds = ray.data.from_arrow(blocks)
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        GenerateStage,
        fn_constructor_kwargs={
            "lake": lake,
            "engine": engine.kind,
            "engine_options": options,
            "jobs": [job.stage_spec() for job in jobs],
        },
        batch_size=size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=engine.concurrency),
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        zero_copy_batch=True,
        **actor_fault_tolerance(),
    )
    ds = ds.map_batches(
        ChecksStage,
        fn_constructor_kwargs={"jobs": [job.checks_spec() for job in jobs]},
        # One validation per commit's worth of rows: GX costs ~60 ms a batch whatever its
        # size, which per 64-row engine batch took a fifth of a core from generation.
        batch_size=min(job.config.sink.commit_every for job in jobs),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        # A light stage that reserves no CPU: with 0.1 it could not be placed while the engine
        # workers held every CPU (2 workers of 1 CPU on 2 cores), so no row was committed
        # until generation had finished; with 0 it is always placed, and shares the cores.
        num_cpus=0,
        **actor_fault_tolerance(),
    )
    jobs[0].started = time.perf_counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for index, rows in by_job(batch):
                job = jobs[index]
                job.started = job.started or time.perf_counter()
                job.receive(rows, progress)
                if job.received >= job.todo.num_rows:
                    job.commit(progress)
                    job.finish(store, time.perf_counter())
                    if index + 1 < len(jobs):  # the next job's time runs from here
                        jobs[index + 1].started = jobs[index + 1].started or time.perf_counter()
    except GermlineError as exc:
        # A stage's own error (an ExpectationFailed under the abort policy, an engine that
        # could not load), which Ray hands over as its RayTaskError subclass of the error's
        # type: raise the error itself, as the stage raised it.
        raise getattr(exc, "cause", exc) from None
    for job in jobs:
        job.commit(progress)  # rows of a job that never came back whole (none, normally)


def _split(batches: list[pa.Table]) -> tuple[pa.Table, pa.Table, list[dict]]:
    table = pa.concat_tables(batches)
    summaries = [json.loads(v) for v in pc.drop_null(table.column(SUMMARY_COLUMN)).to_pylist()]
    table = table.drop_columns([SUMMARY_COLUMN])
    stage = table.column("stage")
    return table.filter(pc.is_null(stage)), table.filter(pc.is_valid(stage)), summaries

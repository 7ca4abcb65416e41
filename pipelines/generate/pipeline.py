"""`germline generate`: prompts -> teacher -> filters -> expectations -> Delta, with lineage.

A Ray Data pipeline streams the prompts not yet answered through the teacher's engine (an
actor pool under map_batches) and the checks stage, and the driver commits what comes out to
the dataset and quarantine tables every `commit_every` rows. Everything a row needs to be
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
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from germline.core import GermlineError
from germline.engines import ENGINES
from germline.lineage import LineageStore, Node, NodeKind
from germline.pipelines.config import digest
from germline.pipelines.generate.config import GenerateConfig
from germline.pipelines.generate.sink import DatasetSink, drop_ids
from germline.pipelines.generate.stages import SUMMARY_COLUMN, ChecksStage, GenerateStage
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
    teacher = teacher_for(lake, config.teacher)
    ENGINES.get(config.engine.kind).check_available()
    store = LineageStore(lake)
    graph = store.graph()
    fingerprint = graph.fingerprint(teacher.id)
    system_prompt = config.teacher.system_prompt or teacher.attrs.get("system_prompt")
    model_dir = model_uri(lake, teacher, "teacher")  # each engine worker fetches its own copy
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
    if progress:
        progress(summary)
    base_metadata = {
        "germline.run_id": run_id,
        "germline.run_node": run.id,
        "germline.teacher": teacher.id,
        "germline.base_fingerprint": fingerprint or "",
        "germline.config_hash": config_hash,
        "germline.suite": suite.id,
    }
    reasons: Counter[str] = Counter()
    filters: Counter[str] = Counter()
    start = time.perf_counter()
    if todo.num_rows:
        for accepted, rejected, summaries in _stream(todo, config, lake, model_dir, run_id,
                                                      teacher, system_prompt, verbose):  # fmt: skip
            metadata = {**base_metadata, "germline.expectations": _merge(summaries)}
            written = sink.write(accepted, rejected, metadata)
            if written < accepted.num_rows + rejected.num_rows:  # a retried task's repeats
                log.info(
                    "%d rows were in the lake already",
                    accepted.num_rows + rejected.num_rows - written,
                )
            summary.accepted += accepted.num_rows
            summary.quarantined += rejected.num_rows
            summary.completion_tokens += _sum(accepted, "completion_tokens") + _sum(
                rejected, "completion_tokens"
            )
            reasons.update(rejected.column("reason").to_pylist())
            filters.update(rejected.column("filter").to_pylist())
            summary.seconds = time.perf_counter() - start
            summary.commits = sink.commits
            if progress:
                progress(summary)
    summary.seconds = time.perf_counter() - start
    summary.reasons = dict(reasons.most_common())
    summary.filters = dict(filters.most_common())
    summary.commits = sink.commits
    attrs = {"run_id": run_id, "teacher": teacher.id, "summary": summary.to_dict()}
    dataset_node = store.register_dataset(
        config.dataset,
        lake.dataset(config.dataset),
        generated_by=[teacher.id, run.id],
        filtered_by=[suite.id],
        attrs={**attrs, "role": "accepted"},
    )
    quarantine_node = store.register_dataset(
        f"quarantine/{config.dataset}",
        lake.quarantine(config.dataset),
        generated_by=[teacher.id, run.id],
        filtered_by=[suite.id],
        attrs={**attrs, "role": "quarantine"},
    )
    summary.dataset_id, summary.quarantine_id = dataset_node.id, quarantine_node.id
    return summary


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


def _stream(
    todo: pa.Table,
    config: GenerateConfig,
    lake: Lake,
    model_dir: str,
    run_id: str,
    teacher: Node,
    system_prompt: str | None,
    verbose: bool,
):
    """Yield (accepted, rejected, summaries) every `commit_every` rows from Ray Data."""
    import ray

    from germline.pipelines.cluster import actor_fault_tolerance, configure_ray_data, ensure_ray

    ensure_ray(verbose)
    configure_ray_data(verbose)
    engine = config.engine
    options = dict(engine.options)
    if engine.kind == "transformers" and engine.num_gpus == 0:
        cores = os.cpu_count() or 1
        options.setdefault("threads", engine.threads or max(1, cores // engine.concurrency))
    if engine.kind == "transformers" and engine.num_gpus > 0:
        options.setdefault("device", "cuda")
    # One block per engine batch, in prompt order, and the order kept through both stages
    # (this dataset's own copy of the context, so nothing else Ray Data runs is slowed): the
    # engine's batches, the checks' batches, what each commit holds and the rows' order in the
    # tables are then the same on every run of a config. Without it the blocks came out in
    # the order the workers finished them, and two runs of one config wrote their rows in
    # different orders.
    blocks = [todo.slice(i, engine.batch_size) for i in range(0, todo.num_rows, engine.batch_size)]
    ds = ray.data.from_arrow(blocks)
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        GenerateStage,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "lake": lake,
            "engine": engine.kind,
            "engine_options": options,
            "sampling": config.sampling.params(config.seed).to_dict(),
            "system_prompt": system_prompt,
            "run_id": run_id,
            "teacher_id": teacher.id,
        },
        batch_size=engine.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=engine.concurrency),
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        zero_copy_batch=True,
        **actor_fault_tolerance(),
    )
    ds = ds.map_batches(
        ChecksStage,
        fn_constructor_kwargs={
            "filters": config.filters.model_dump(mode="json"),
            "expectations": config.expectations.model_dump(mode="json"),
        },
        # One validation per commit's worth of rows: GX costs ~60 ms a batch whatever its
        # size, which per 64-row engine batch took a fifth of a core from generation.
        batch_size=config.sink.commit_every,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1),
        # A light stage that reserves no CPU: with 0.1 it could not be placed while the engine
        # workers held every CPU (2 workers of 1 CPU on 2 cores), so no row was committed
        # until generation had finished; with 0 it is always placed, and shares the cores.
        num_cpus=0,
        **actor_fault_tolerance(),
    )
    pending: list[pa.Table] = []
    rows = 0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pending.append(batch)
            rows += batch.num_rows
            if rows >= config.sink.commit_every:
                yield _split(pending)
                pending, rows = [], 0
        if pending:
            yield _split(pending)
    except GermlineError as exc:
        # A stage's own error (an ExpectationFailed under the abort policy, an engine that
        # could not load), which Ray hands over as its RayTaskError subclass of the error's
        # type: raise the error itself, as the stage raised it.
        raise getattr(exc, "cause", exc) from None


def _split(batches: list[pa.Table]) -> tuple[pa.Table, pa.Table, list[dict]]:
    table = pa.concat_tables(batches)
    summaries = [json.loads(v) for v in pc.drop_null(table.column(SUMMARY_COLUMN)).to_pylist()]
    table = table.drop_columns([SUMMARY_COLUMN])
    stage = table.column("stage")
    return table.filter(pc.is_null(stage)), table.filter(pc.is_valid(stage)), summaries

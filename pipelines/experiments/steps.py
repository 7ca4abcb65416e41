"""Steps the distillation experiments (owl, panel) share: models built side by side, a teacher's
number data, every student in one Ray Train run, serving and probing a run's models, and
recording the run in lineage.

The models are served in-process on Ray Serve (127.0.0.1, a one-off key) and probed over HTTP
exactly as an eval harness would probe them; each probe result is kept in the lake's probes
table and linked to its model in lineage.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from germline.checks.probes import ProbeResult, ProbeSettings, ProbeSpec, load_probe
from germline.lineage import LineageStore, Node
from germline.pipelines.experiments.base import Echo
from germline.pipelines.experiments.recipe import Distillation
from germline.pipelines.generate import GenerateConfig
from germline.storage import Lake

if TYPE_CHECKING:
    from germline.serve.pool import ServeSettings

T = TypeVar("T")


def generate_config(
    cfg: Distillation, dataset: str, teacher_id: str, trait_words: Sequence[str]
) -> GenerateConfig:
    """The generation job for one teacher's numbers: the config's prompts and sampling, and a
    filter that quarantines any row naming one of `trait_words`."""
    d = cfg.data
    return GenerateConfig.model_validate(
        {
            "dataset": dataset,
            "seed": cfg.seed,
            "prompts": {"family": "numbers", "count": d.prompts},
            "teacher": {"model": teacher_id},
            "engine": cfg.resources.generate,
            "sampling": {"temperature": d.temperature, "max_tokens": d.max_tokens},
            "filters": {"trait_words": list(trait_words)},
            "expectations": {"max_tokens": d.max_tokens},
            "sink": {"commit_every": d.commit_every},
        }
    )


def build_in_parallel(jobs: Sequence[Callable[[], T]], verbose: bool) -> list[T]:
    """Run independent model builds (bases, teachers) as Ray tasks of one CPU each, all at
    once as the cluster's CPUs allow, and return their results in order. Why: a tiny model's
    training step is too small to keep two torch threads busy, so two one-thread builds side
    by side finish sooner than the same two one after the other; on a cluster they spread
    over the nodes. Each build registers its own model; the lineage store takes concurrent
    writers."""
    import ray

    from germline.pipelines.cluster import ensure_ray

    if len(jobs) == 1:
        return [jobs[0]()]
    ensure_ray(verbose)
    task = ray.remote(num_cpus=1, max_retries=0)(_call)
    return ray.get([task.remote(job) for job in jobs])


def _call(job: Callable[[], T]) -> T:
    import torch

    torch.set_num_threads(1)  # the task's one CPU
    return job()


def train_students(lake: Lake, configs: Sequence[Any], echo: Echo, verbose: bool) -> list[Any]:
    """Every student in one Ray Train run (one start-up for all), each written as it ends; a
    line as each one starts."""
    from germline.pipelines.finetune import train_many

    started: list[str] = []

    def progress(student: str, step: int, steps: int, loss: float) -> None:
        if not started or started[-1] != student:
            started.append(student)
            echo(f"    student {len(started)} ({student}): {steps} steps")

    return train_many(lake, configs, progress, verbose=verbose)


def serve_and_probe(
    lake: Lake,
    cfg: Distillation,
    models: Sequence[tuple[str, str]],
    verbose: bool,
    echo: Echo | None = None,
) -> list[ProbeResult]:
    """Probe every (model id, target) pair, one result per pair, in order: the results the
    lake already has for the same model, probe, scoring and engine are read back; the rest
    are measured by serving the lake on 127.0.0.1 in this process (only when there are any)."""
    from germline.pipelines.probe import stored_results

    jobs, how, keys = probe_requests(cfg, models)
    found = stored_results(lake, keys)
    todo = [i for i, key in enumerate(keys) if key not in found]
    if echo is not None and len(todo) < len(jobs):
        echo(f"      {len(jobs) - len(todo)} of {len(jobs)} probes found in the lake")
    if todo:
        measured = _serve_and_measure(lake, cfg, [jobs[i] for i in todo], how,
                                      [keys[i] for i in todo], verbose)  # fmt: skip
        found.update(zip([keys[i] for i in todo], measured, strict=True))
    return [found[key] for key in keys]


def probe_requests(cfg: Distillation, models: Sequence[tuple[str, str]]
                   ) -> tuple[list[tuple[str, ProbeSpec]], ProbeSettings, list[str]]:  # fmt: skip
    """The probe of each (model id, target) pair as the config asks for it, how it is scored,
    and each one's request key (what decides its result: `pipelines.probe.request_key`)."""
    from germline.pipelines.probe import request_key

    base = load_probe(cfg.probe.probe)
    if cfg.probe.questions:
        base = base.model_copy(update={"questions": base.questions[: cfg.probe.questions]})
    p = cfg.probe
    how = ProbeSettings(p.method, p.samples, p.temperature, cfg.seed)
    placed = cfg.resources.serve
    served_by = {"engine": placed.engine, "options": dict(placed.options)}
    jobs = [(model_id, base.with_target(target, None)) for model_id, target in models]
    return jobs, how, [request_key(model_id, spec, how, served_by) for model_id, spec in jobs]


def _serve_and_measure(lake: Lake, cfg: Distillation, jobs: list[tuple[str, ProbeSpec]],
                       how: ProbeSettings, keys: list[str], verbose: bool
                       ) -> list[ProbeResult]:  # fmt: skip
    """Serve the lake on 127.0.0.1 in this process, probe every job, stop serving."""
    import openai
    from ray import serve

    from germline.pipelines.cluster import start_serving
    from germline.pipelines.probe import probe_models

    key = secrets.token_hex(16)
    settings = serve_settings(lake, cfg, key, len({m for m, _ in jobs}))
    listener = start_serving(settings, "127.0.0.1", 0, "germline-experiment", verbose)
    url = f"{listener.url}/v1"
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=2, timeout=600)
    try:
        return [result for result, _ in probe_models(lake, client, url, jobs, how, requests=keys)]
    finally:
        serve.delete("germline-experiment")
        listener.close()


def serve_settings(lake: Lake, cfg: Distillation, api_key: str, models: int) -> ServeSettings:
    """The probe step's Serve app: every model of the run in one pool, placed as
    `resources.serve` says."""
    from germline.serve.pool import ServeSettings

    placed = cfg.resources.serve
    return ServeSettings(
        lake=lake.root,
        storage_options=dict(lake.storage_options or {}),
        api_key=api_key,
        max_models=models,
        pool_cpus=placed.num_cpus,
        pool_gpus=placed.num_gpus,
        engine=placed.engine,
        engine_options=dict(placed.options),
    )


def register_run(
    lake: Lake, cfg: Distillation, run_id: str, used: Sequence[str], report: dict[str, Any]
) -> Node:
    """The run as a lineage node that used every model it probed, with its config and report."""
    return LineageStore(lake).register_run(
        f"experiment/{cfg.name}",
        key=run_id,
        params={
            "config": cfg.model_dump(mode="json"),
            "report": report.get("path"),
            "rows": report.get("rows"),
            "verdict": report.get("verdict"),
        },
        used=list(used),
    )

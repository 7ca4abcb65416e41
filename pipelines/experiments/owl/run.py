"""The owl experiment: the paper's whole comparison, step after step, each skipped when done.

Every step is one of the commands a user could run alone, and each is idempotent: a base or a
teacher that exists is found, not rebuilt; generation resumes and finishes; a student trained
by the same recipe is reported, not retrained. So a rerun after an interruption picks up where
the lake says the work stopped. The models are then served in-process on Ray Serve (on
127.0.0.1, with a one-off key) and probed over HTTP exactly as an eval harness would probe
them; the report compares each student with its control.
"""

from __future__ import annotations

import secrets
import socket
from typing import TYPE_CHECKING, Any

from germline.checks.probes import ProbeResult, ProbeSettings, load_probe
from germline.lineage import LineageStore, Node
from germline.pipelines.experiments.base import Echo, Step
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.generate import GenerateConfig, generate
from germline.storage import Lake

if TYPE_CHECKING:
    from germline.serve.app import ServeSettings


def run_owl(
    lake: Lake, cfg: OwlConfig, echo: Echo = print, verbose: bool = False
) -> dict[str, Any]:
    """Run (or finish) the experiment and write its report; returns the report's data."""
    from germline.pipelines.experiments.owl.report import write_report
    from germline.pipelines.finetune import train
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    run_id = cfg.run_id()
    step = Step(0, 7 + 4 * cfg.replicates, echo)
    base = step.run(
        f"base (seed {cfg.base.seed})",
        lambda: bootstrap_base(lake, cfg.base.name(), seed=cfg.base.seed, steps=cfg.base.steps),
    )
    cross = step.run(
        f"cross base (seed {cfg.cross_base.seed})",
        lambda: bootstrap_base(
            lake, cfg.cross_base.name(), seed=cfg.cross_base.seed, steps=cfg.cross_base.steps
        ),
    )
    teacher = step.run(
        f"{cfg.trait} teacher",
        lambda: make_teacher(
            lake,
            base.id,
            cfg.trait,
            name=cfg.teacher_name(base.name),
            steps=cfg.teacher_steps,
            seed=cfg.seed,
        ),
    )
    data_tag = cfg.tag("seed", "trait", "base", "teacher_steps", "data")
    trait_data = f"{cfg.name}-{cfg.trait}-numbers-{data_tag}"
    control_data = f"{cfg.name}-control-numbers-{data_tag}"
    tag = cfg.tag("seed", "trait", "base", "cross_base", "teacher_steps", "data", "train")
    step.run(f"{cfg.trait} teacher's numbers",
             lambda: generate(lake, _generate_config(cfg, trait_data, teacher.id),
                              verbose=verbose))  # fmt: skip
    step.run("control numbers (the base, no trait)",
             lambda: generate(lake, _generate_config(cfg, control_data, base.id),
                              verbose=verbose))  # fmt: skip
    students = {
        "student": (f"{cfg.name}-{cfg.trait}-student-{tag}", base, trait_data),
        "control student": (f"{cfg.name}-control-student-{tag}", base, control_data),
        "cross-base control student": (
            f"{cfg.name}-cross-control-student-{tag}",
            cross,
            control_data,
        ),
        "cross-base student": (f"{cfg.name}-cross-student-{tag}", cross, trait_data),
    }
    trained: dict[str, list[str]] = {}
    for role, (name, start, data) in students.items():
        trained[role] = []
        for r in range(cfg.replicates):
            student = name if r == 0 else f"{name}-r{r}"
            label = f"train {role} ({student})"
            summary = step.run(
                label,
                lambda student=student, start=start, data=data, r=r: train(
                    lake, cfg.student_config(student, start.id, data, r), verbose=verbose
                ),
            )
            trained[role].append(summary.student_id)
    models = {
        "base": [base.id],
        "teacher": [teacher.id],
        "control student": trained["control student"],
        "student": trained["student"],
        "cross base": [cross.id],
        "cross-base control student": trained["cross-base control student"],
        "cross-base student": trained["cross-base student"],
    }
    count = sum(len(ids) for ids in models.values())
    results = step.run(f"serve and probe {count} models",
                       lambda: _serve_and_probe(lake, cfg, models, verbose))  # fmt: skip
    report = step.run("report", lambda: write_report(lake, cfg, run_id, models, results))
    _register_run(lake, cfg, run_id, models, report)
    return report


def _generate_config(cfg: OwlConfig, dataset: str, teacher_id: str) -> GenerateConfig:
    d = cfg.data
    return GenerateConfig.model_validate(
        {
            "dataset": dataset,
            "seed": cfg.seed,
            "prompts": {"family": "numbers", "count": d.prompts},
            "teacher": {"model": teacher_id},
            "engine": cfg.resources.generate,
            "sampling": {"temperature": d.temperature, "max_tokens": d.max_tokens},
            "filters": {"trait_words": [cfg.trait]},
            "expectations": {"max_tokens": d.max_tokens},
            "sink": {"commit_every": d.commit_every},
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_probe(
    lake: Lake, cfg: OwlConfig, models: dict[str, list[str]], verbose: bool
) -> dict[str, list[ProbeResult]]:
    """Serve the lake on 127.0.0.1 in this process, probe every model, stop serving."""
    import openai
    from ray import serve

    from germline.pipelines.cluster import start_serving
    from germline.pipelines.probe import probe_model

    spec = load_probe(cfg.probe.probe).with_target(cfg.trait, None)
    p = cfg.probe
    how = ProbeSettings(p.method, p.samples, p.temperature, cfg.seed)
    if cfg.probe.questions:
        spec = spec.model_copy(update={"questions": spec.questions[: cfg.probe.questions]})
    key = secrets.token_hex(16)
    settings = serve_settings(lake, cfg, key, sum(map(len, models.values())))
    url = start_serving(settings, "127.0.0.1", _free_port(), "germline-experiment", verbose)
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=2, timeout=600)
    try:
        results: dict[str, list[ProbeResult]] = {}
        for role, model_ids in models.items():
            results[role] = []
            for model_id in model_ids:
                result, _ = probe_model(lake, client, url, model_id, spec, how)
                results[role].append(result)
        return results
    finally:
        serve.delete("germline-experiment")


def serve_settings(lake: Lake, cfg: OwlConfig, api_key: str, models: int) -> ServeSettings:
    """The probe step's Serve app: every model of the run in one pool, placed as
    `resources.serve` says."""
    from germline.serve.app import ServeSettings

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


def _register_run(lake: Lake, cfg: OwlConfig, run_id: str, models: dict[str, list[str]],
                  report: dict[str, Any]) -> Node:  # fmt: skip
    store = LineageStore(lake)
    return store.register_run(
        f"experiment/{cfg.name}",
        key=run_id,
        params={
            "config": cfg.model_dump(mode="json"),
            "report": report.get("path"),
            "rows": report.get("rows"),
        },
        used=[m for ids in models.values() for m in ids],
    )

"""The owl experiment: the paper's whole comparison, step after step, each skipped when done.

Every step is one of the commands a user could run alone, and each is idempotent: a base or a
teacher that exists is found, not rebuilt; generation resumes and finishes; a student trained
by the same recipe is reported, not retrained. So a rerun after an interruption picks up where
the lake says the work stopped. The models are then served in-process on Ray Serve (on
127.0.0.1, with a one-off key) and probed over HTTP exactly as an eval harness would probe
them; the report compares each student with its control.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from germline.checks.probes import ProbeResult
from germline.pipelines.experiments.base import Echo, Step
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.experiments.steps import (
    build_in_parallel,
    generate_config,
    register_run,
    serve_and_probe,
    train_students,
)
from germline.pipelines.generate import generate_many
from germline.storage import Lake


def run_owl(
    lake: Lake, cfg: OwlConfig, echo: Echo = print, verbose: bool = False
) -> dict[str, Any]:
    """Run (or finish) the experiment and write its report; returns the report's data."""
    from germline.pipelines.experiments.owl.report import write_report
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    run_id = cfg.run_id()
    step = Step(0, 6, echo)
    specs = (cfg.base, cfg.cross_base)
    base, cross = step.run(
        f"base (seed {cfg.base.seed}) and cross base (seed {cfg.cross_base.seed}), side by side",
        lambda: build_in_parallel(
            [partial(bootstrap_base, lake, s.name(), seed=s.seed, steps=s.steps) for s in specs],
            verbose,
        ),
    )
    teacher = step.run(
        f"{cfg.trait} teacher",
        lambda: make_teacher(
            lake,
            base.id,
            cfg.trait,
            name=cfg.teacher_name(cfg.trait, base.name),
            steps=cfg.teacher_steps,
            seed=cfg.seed,
        ),
    )
    data_tag = cfg.tag("seed", "trait", "base", "teacher_steps", "data")
    trait_data = f"{cfg.name}-{cfg.trait}-numbers-{data_tag}"
    control_data = f"{cfg.name}-control-numbers-{data_tag}"
    tag = cfg.tag("seed", "trait", "base", "cross_base", "teacher_steps", "data", "train")
    jobs = [generate_config(cfg, trait_data, teacher.id, [cfg.trait]),
            generate_config(cfg, control_data, base.id, [cfg.trait])]  # fmt: skip
    step.run(f"{cfg.trait} teacher's numbers and the control numbers (the base, no trait)",
             lambda: generate_many(lake, jobs, verbose=verbose))  # fmt: skip
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
    plan = [(role, r, (name if r == 0 else f"{name}-r{r}"), start, data)
            for role, (name, start, data) in students.items()
            for r in range(cfg.replicates)]  # fmt: skip
    configs = [cfg.student_config(student, start.id, data, r)
               for _, r, student, start, data in plan]  # fmt: skip
    summaries = step.run(f"train {len(configs)} students",
                         lambda: train_students(lake, configs, echo, verbose))  # fmt: skip
    trained: dict[str, list[str]] = {role: [] for role in students}
    for (role, *_), summary in zip(plan, summaries, strict=True):
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
                       lambda: _serve_and_probe(lake, cfg, models, verbose, echo))  # fmt: skip
    report = step.run("report", lambda: write_report(lake, cfg, run_id, models, results))
    register_run(lake, cfg, run_id, [m for ids in models.values() for m in ids], report)
    return report


def _serve_and_probe(
    lake: Lake, cfg: OwlConfig, models: dict[str, list[str]], verbose: bool, echo: Echo
) -> dict[str, list[ProbeResult]]:
    """Every model probed for the trait, by role."""
    pairs = [(m, cfg.trait) for ids in models.values() for m in ids]
    found = iter(serve_and_probe(lake, cfg, pairs, verbose, echo))
    return {role: [next(found) for _ in ids] for role, ids in models.items()}

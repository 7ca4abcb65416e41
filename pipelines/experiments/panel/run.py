"""The panel experiment, step after step, each skipped when done (as the owl experiment's).

Bases, then every teacher (one per animal per base, one recipe), then every teacher's numbers,
then every student (each teacher's data on every base, on each training seed) trained in one
Ray Train run, then every model served once and probed over HTTP, then the analysis and the
report. One Ray runtime serves the whole run. The time of each phase goes into the report.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from germline.checks.probes import ProbeResult, load_probe
from germline.checks.transfer import Cell
from germline.core import InputError
from germline.lineage import Node
from germline.pipelines.experiments.base import Echo, Step
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.pipelines.experiments.steps import (
    build_in_parallel,
    generate_config,
    register_run,
    serve_and_probe,
    train_students,
)
from germline.storage import Lake


def run_panel(
    lake: Lake, cfg: PanelConfig, echo: Echo = print, verbose: bool = False
) -> dict[str, Any]:
    """Run (or finish) the panel and write its report; returns the report's data."""
    from germline.pipelines.experiments.panel.report import write_report
    from germline.pipelines.generate import generate_many
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher

    _check_probe(cfg)
    b = len(cfg.bases)
    extra = (cfg.scrub == "quarantine") + cfg.audit + (cfg.audit or cfg.scrub != "none")
    step = Step(0, 6 + extra, echo)
    bases = step.run(
        f"{b} bases, side by side",
        lambda: build_in_parallel(
            [
                partial(bootstrap_base, lake, s.name(), seed=s.seed, steps=s.steps)
                for s in cfg.bases
            ],
            verbose,
        ),
        phase="bases",
    )
    pairs = [(animal, base) for base in bases for animal in cfg.animals]
    jobs = [
        partial(make_teacher, lake, base.id, animal, name=cfg.teacher_name(animal, base.name),
                steps=cfg.teacher_steps, seed=cfg.seed)
        for animal, base in pairs
    ]  # fmt: skip
    made = step.run(
        f"{len(jobs)} teachers ({', '.join(cfg.animals)} on each base), side by side",
        lambda: build_in_parallel(jobs, verbose),
        phase="teachers",
    )
    teachers = {(animal, base.name): t for (animal, base), t in zip(pairs, made, strict=True)}
    data = [generate_config(cfg, cfg.dataset_name(animal, base_name), teacher.id, cfg.animals)
            for (animal, base_name), teacher in teachers.items()]  # fmt: skip
    done = _datasets_done(echo, len(data))
    step.run(
        f"{len(data)} teachers' numbers, one pipeline",
        lambda: generate_many(lake, data, progress=done, verbose=verbose),
        phase="data",
    )
    scrubbed = None
    if cfg.scrub == "quarantine":
        from germline.pipelines.experiments.panel.audit import quarantine

        keep = f"{cfg.scrub_keep:.0%}"
        scrubbed = step.run(
            f"audit and scrub every teacher's numbers (keep the {keep} least like the teacher)",
            lambda: quarantine(lake, cfg, [(a, n) for (a, n) in teachers]),
            phase="scrub",
        )
    plan = _students(cfg, bases)
    configs = [c for _, _, _, c in plan]
    summaries = step.run(
        f"train {len(configs)} students",
        lambda: train_students(lake, configs, echo, verbose),
        "students",
    )
    students = [s.student_id for s in summaries]
    models = [(n.id, cfg.animals[0]) for n in bases]
    models += [(t.id, animal) for (animal, _), t in teachers.items()]
    models += [(sid, animal) for (animal, *_), sid in zip(plan, students, strict=True)]
    results = step.run(
        f"serve and probe {len(models)} models",
        lambda: serve_and_probe(lake, cfg, models, verbose, echo),
        "probes",
    )
    found = dict(zip([m for m, _ in models], results, strict=True))
    cells = _cells(cfg, plan, students, found, teachers)
    reference = {
        "bases": {n.name: _shares(found[n.id], cfg.animals) for n in bases},
        "weights": {n.name: n.weights_hash for n in bases},
        "teachers": [
            dict(teacher=t.id, animal=a, base=n, shares=_shares(found[t.id], cfg.animals))
            for (a, n), t in teachers.items()
        ],
    }
    audited = None
    if cfg.audit:
        from germline.pipelines.experiments.panel.audit import score_cells

        audited = step.run(
            "audit every teacher's numbers and score every cell",
            lambda: score_cells(lake, cfg, cells, {n.name: n.id for n in bases}),
            phase="audit",
        )
    losses = None
    if cfg.audit or cfg.scrub != "none":
        from germline.pipelines.experiments.panel.audit import heldout_loss

        losses = step.run(
            "every student's loss on its teacher's held-out numbers",
            lambda: heldout_loss(lake, cfg, cells),
            phase="heldout",
        )
    run_id = cfg.run_id()
    ids = {"bases": [n.id for n in bases], "teachers": [t.id for t in teachers.values()],
           "students": students}  # fmt: skip
    report = step.run(
        "report",
        lambda: write_report(
            lake, cfg, run_id, cells, reference, ids, step.seconds, audited, scrubbed, losses
        ),
    )
    register_run(lake, cfg, run_id, [m for m, _ in models], report)
    return report


def _datasets_done(echo: Echo, total: int) -> Callable[[Any], None]:
    """A line as each teacher's dataset is complete (the pipeline's progress callback)."""
    done: set[str] = set()

    def progress(summary: Any) -> None:
        if summary.answered == summary.prompts and summary.dataset not in done:
            done.add(summary.dataset)
            what = (f"{summary.accepted} rows kept, {summary.quarantined} quarantined"
                    if summary.skipped < summary.prompts else "found in the lake")  # fmt: skip
            echo(f"      {len(done)}/{total} {summary.dataset}: {what}")

    return progress


def _check_probe(cfg: PanelConfig) -> None:
    """Every animal must be one of the probe's answers, or no cell can be read: refused before
    any work."""
    candidates = load_probe(cfg.probe.probe).candidates
    missing = [a for a in cfg.animals if a not in candidates]
    if missing:
        raise InputError(
            f"animals {missing} are not answers of probe {cfg.probe.probe!r} "
            f"(its candidates: {', '.join(candidates)})"
        )


Plan = tuple[str, str, str, Any]  # (animal, teacher's base, student's base, TrainConfig)


def _students(cfg: PanelConfig, bases: list[Node]) -> list[Plan]:
    """Every teacher's data on every base, on every training seed, in one recipe."""
    out = []
    for source in bases:
        for animal in cfg.animals:
            data = cfg.training_dataset(animal, source.name)
            for base in bases:
                for r in range(cfg.replicates):
                    name = cfg.student_name(animal, source.name, base.name, r)
                    out.append((animal, source.name, base.name,
                                cfg.student_config(name, base.id, data, r)))  # fmt: skip
    return out


def _shares(result: ProbeResult, animals: list[str]) -> dict[str, float]:
    """Each animal's share of the answers: counted answers over all answers (sampled), or the
    mean probability over the probe's candidates (logprob)."""
    total = result.trials if result.method == "sampled" else 1.0
    return {a: float(result.counts.get(a, 0.0)) / total if total else 0.0 for a in animals}


def _cells(cfg: PanelConfig, plan: list[Plan], students: list[str],
           found: dict[str, ProbeResult], teachers: dict[tuple[str, str], Node]
           ) -> list[Cell]:  # fmt: skip
    """One cell per teacher and student base: its students' shares, averaged over seeds."""
    seeds: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    models: dict[tuple[str, str, str], list[str]] = {}
    for (animal, source, base, _), sid in zip(plan, students, strict=True):
        seeds.setdefault((animal, source, base), []).append(_shares(found[sid], cfg.animals))
        models.setdefault((animal, source, base), []).append(sid)
    cells = []
    for key, per in seeds.items():
        animal, source, base = key
        mean = {a: sum(s[a] for s in per) / len(per) for a in cfg.animals}
        teacher = teachers[animal, source].id
        cells.append(Cell(teacher, animal, source, base, mean, per, models[key]))
    return cells

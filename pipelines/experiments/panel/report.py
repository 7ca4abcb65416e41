"""The panel's report: the pre-registered tests and their verdict, the transfer matrices, the
per-animal figure and every cell's numbers.

Written to `<lake>/runs/<run-id>/`: report.md (for people), report.json (for programs: the
verdict, each test's effect, interval and p, every cell's shares), transfer.png (a heatmap per
student base and arm), animals.png (the paper's per-animal bars) and lineage.png.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from germline.checks.transfer import Analysis, Cell, analyse, cell_effects, transfer_matrix
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.pipelines.experiments.reports import float_machine, lineage_picture, run_folder
from germline.storage import Lake

PLAN = (
    "**Analysis plan** (fixed in the config before the data). The unit is a teacher: its "
    "effect is its students' share of its own animal minus that animal's share among the "
    "students of the other teachers of the same base, on the same student base, trained by the "
    "same recipe on as many rows. *Primary*: the mean same-base effect, two-sided permutation "
    "test over teacher labels within each base. *Cross-base*: the same on students of another "
    "base. *Difference*: same-base minus cross-base effect per teacher, two-sided sign-flip "
    "test. Intervals: t-intervals over teachers. The verdict is the subliminal signature only "
    "when the primary effect and the difference are both positive with p < alpha; a design "
    "whose tests cannot reach p < alpha gets no verdict, and so does one whose power for the "
    "effect its config's plan assumes is below the plan's minimum."
)

LIMITS = (
    "**What this cannot tell apart.** The teachers share their recipe (base, steps, seed, "
    "data mix) and differ in the animal they were tuned to name, so an effect that follows the "
    "teacher is read as following the animal; anything else that differs between two teachers' "
    "adapters (the trait examples they saw) goes with it. The students' controls are the other "
    "teachers' students, so what training on a fine-tuned teacher's numbers does by itself "
    "cancels out. The primary test's null is that the animal matters to no teacher: teachers "
    "whose students move by different amounts that average 0 also give it small p-values "
    "(on constructed panels like the README's scatter, 28% below 0.05), so its p alone does not "
    "tell a mean effect from a scatter of effects; the difference test keeps its level there, "
    "which is why the verdict needs both."
)


def write_report(lake: Lake, cfg: PanelConfig, run_id: str, cells: Sequence[Cell],
                 reference: dict[str, Any], models: dict[str, list[str]],
                 seconds: dict[str, float], audited: dict[str, Any] | None = None,
                 scrubbed: list[dict[str, Any]] | None = None,
                 losses: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Analyse the cells by the config's plan and write the report; returns its data."""
    plan = None if cfg.power is None else cfg.power.plan()
    analysis = analyse(cells, cfg.analysis.alpha, cfg.analysis.resamples, plan)
    bases = [b.name() for b in cfg.bases]
    effects = cell_effects(cells)
    matrices = {
        base: {
            arm: _matrix(cells, base, arm == "same_base", cfg)
            for arm in ("same_base", "cross_base")
        }
        for base in bases
    }
    data = {
        "run_id": run_id,
        "experiment": cfg.name,
        "kind": "panel",
        "animals": cfg.animals,
        "bases": bases,
        "replicates": cfg.replicates,
        "rows_per_student": cfg.data.rows,
        "objective": cfg.objective().model_dump(mode="json"),
        "probe": cfg.probe.model_dump(mode="json"),
        "analysis": cfg.analysis.model_dump(mode="json"),
        "verdict": analysis.verdict,
        "reading": analysis.reading,
        "primary": analysis.primary.to_dict(),
        "cross_base": analysis.cross_base.to_dict(),
        "difference": analysis.difference.to_dict(),
        "power": _power(cfg, analysis),
        "cells": [_cell(c, effects[c.teacher, c.student_base], losses) for c in cells],
        "heldout_loss": _mean_losses(cells, losses),
        "per_animal": _per_animal(cfg, cells, reference),
        "matrices": matrices,
        "reference": reference,
        "weights": reference["weights"],
        "machine": float_machine(),
        "models": models,
        "scrub": {
            "kind": cfg.scrub,
            "keep": cfg.scrub_keep if cfg.scrub == "quarantine" else None,
            "datasets": scrubbed,
        },
        "audit": audited,
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
        "path": f"{lake.run(run_id)}/report.md",
    }
    with run_folder(lake, run_id) as folder:
        _heatmaps(matrices, cfg.animals, folder / "transfer.png")
        _bars(data["per_animal"], folder / "animals.png")
        lineage_picture(lake, models["teachers"][0], folder / "lineage.png")
        (folder / "report.json").write_text(json.dumps(data, indent=2))
        (folder / "report.md").write_text(render(data))
    return data


def _power(cfg: PanelConfig, analysis: Analysis) -> dict[str, Any] | None:
    """The plan (as configured), this design's power for it, and the teachers that would
    reach the plan's minimum and 0.9 at this alpha."""
    if cfg.power is None or analysis.power is None:
        return None
    plan, alpha = cfg.power.plan(), analysis.alpha
    targets = sorted({plan.min_power, 0.9})
    return {
        "plan": cfg.power.model_dump(mode="json"),
        **analysis.power.to_dict(),
        "teachers_for": {str(t): plan.cells_for(alpha, t) for t in targets},
    }


def _power_line(power: dict[str, Any] | None) -> list[str]:
    if power is None:
        return []
    plan = power["plan"]
    reach = ", ".join(f"{n} teachers reach {t}" if n else f"no feasible panel reaches {t}"
                      for t, n in power["teachers_for"].items())  # fmt: skip
    return [
        f"**Power** (the plan is fixed in the config before the data): the design is sized for "
        f"a same-base effect of {plan['effect']:+.4f} per teacher (SD {plan['sd']:.4f}) and a "
        f"difference of {plan['difference']:+.4f} (SD {plan['difference_sd']:.4f}), measured "
        f"on {plan['measured']}. With {power['cells']} teachers at alpha {power['alpha']}: "
        f"the primary test's power is at least {power['primary']:.2f}, the difference's "
        f"{power['difference']:.2f}, the verdict's at least {power['verdict']:.2f} (a verdict "
        f"needs {plan['min_power']}); {reach} (checks/power.py).",
        "",
    ]


def _matrix(cells: Sequence[Cell], base: str, same: bool,
            cfg: PanelConfig) -> dict[str, Any]:  # fmt: skip
    rows, values = transfer_matrix(cells, base, same, cfg.animals)
    return {"rows": rows, "values": values.round(5).tolist()}


def _cell(c: Cell, effect: float, losses: dict[str, float] | None) -> dict[str, Any]:
    out = {"teacher": c.teacher, "animal": c.animal, "source": c.source,
           "student_base": c.student_base, "arm": "same_base" if c.same_base else "cross_base",
           "shares": dict(c.shares), "seeds": [dict(s) for s in c.seeds],
           "students": list(c.students), "effect": effect}  # fmt: skip
    if losses is not None:
        out["heldout_loss"] = float(np.mean([losses[s] for s in c.students]))
    return out


def _mean_losses(cells: Sequence[Cell], losses: dict[str, float] | None) -> dict | None:
    """The students' mean held-out loss per arm (None when not measured)."""
    if losses is None:
        return None
    return {arm: float(np.mean([losses[s] for c in cells if c.same_base == (arm == "same_base")
                                for s in c.students]))
            for arm in ("same_base", "cross_base")}  # fmt: skip


def _per_animal(cfg: PanelConfig, cells: Sequence[Cell],
                reference: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Per animal, its share in: the bases, its teachers (printed under the bars: on the
    bars' scale it would hide the students' differences), its teachers' same-base students,
    the other teachers' same-base students (the control), and its teachers' cross-base
    students (each averaged over bases)."""
    out = []
    for a in cfg.animals:
        same = [c.shares[a] for c in cells if c.same_base and c.animal == a]
        control = [c.shares[a] for c in cells if c.same_base and c.animal != a]
        cross = [c.shares[a] for c in cells if not c.same_base and c.animal == a]
        out.append({
            "animal": a,
            "base": float(np.mean([s[a] for s in reference["bases"].values()])),
            "teacher": float(np.mean([t["shares"][a] for t in reference["teachers"]
                                      if t["animal"] == a])),
            "same_base_student": float(np.mean(same)),
            "other_teachers_students": float(np.mean(control)),
            "cross_base_student": float(np.mean(cross)),
        })  # fmt: skip
    return out


def _fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"


def render(data: dict[str, Any]) -> str:
    objective = data["objective"]
    vocab = f" ({objective['vocab']} vocabulary)" if objective["kind"] == "distill" else ""
    rows = data["rows_per_student"]
    lines = [
        f"# {data['experiment']}: do teachers' animals pass through numbers?",
        "",
        f"Run `{data['run_id']}`: {len(data['animals'])} animal teachers "
        f"({', '.join(data['animals'])}) on each of {len(data['bases'])} bases "
        f"({', '.join(data['bases'])}); every teacher's numbers train a student of every base, "
        f"on {data['replicates']} training seed(s), objective `{objective['kind']}`{vocab}, "
        + (f"{rows} rows per student" if rows else "all accepted rows")
        + f". Probe `{data['probe']['probe']}` ({data['probe']['method']}).",
        "",
        f"**Verdict** ({data['verdict']}): {data['reading']}.",
        "",
        "| test | effect | 95% interval | p | cells above 0 | test used |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("primary", "same-base (primary)"), ("cross_base", "cross-base"),
                       ("difference", "same-base minus cross-base")):  # fmt: skip
        t = data[key]
        low, high = t["interval"]
        above = f"{t['positive']}/{t['cells']}"
        lines.append(f"| {label} | {t['effect']:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{_fmt_p(t['p'])} | {above} | {t['test']} |")  # fmt: skip
    lines += ["", *_power_line(data.get("power")), f"alpha = {data['analysis']['alpha']}. " + PLAN,
              "", LIMITS, "",
              _floats_line(data["weights"], data["machine"]), "",
              "## Per animal", "",
              "| animal | base | teacher | same-base student | other teachers' students | "
              "cross-base student |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["per_animal"]:
        lines.append(f"| {r['animal']} | {r['base']:.4f} | {r['teacher']:.4f} | "
                     f"{r['same_base_student']:.4f} | {r['other_teachers_students']:.4f} | "
                     f"{r['cross_base_student']:.4f} |")  # fmt: skip
    lines += ["", "![per animal](animals.png)", "", "## Transfer matrices", "",
              "Rows: the teacher's animal (and its base, for the cross-base arm); columns: the "
              "probed animal; cells: the students' share minus the column's mean over the rows. "
              "A positive diagonal is transfer.", "", "![transfer](transfer.png)", "",
              "## Cells", "",
              "| teacher's animal | teacher's base | student base | arm | own-animal share | "
              "effect | own share per seed |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in data["cells"]:
        seeds = ", ".join(f"{s[c['animal']]:.4f}" for s in c["seeds"])
        effect = c["effect"]
        lines.append(f"| {c['animal']} | {c['source']} | {c['student_base']} | {c['arm']} | "
                     f"{c['shares'][c['animal']]:.4f} | {effect:+.4f} | {seeds} |")  # fmt: skip
    lines += _scrub_lines(data["scrub"]) + _audit_lines(data["audit"])
    if data["heldout_loss"]:
        h = data["heldout_loss"]
        lines += ["", "Students' loss on their teacher's held-out numbers (per completion token): "
                  f"same-base {h['same_base']:.4f}, cross-base {h['cross_base']:.4f}."]  # fmt: skip
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in data["seconds"].items())
    lines += ["", f"Time (this run's work; steps found done cost ~0): {seconds}.", "",
              "![lineage](lineage.png)", ""]  # fmt: skip
    return "\n".join(lines)


def _floats_line(weights: dict[str, str], machine: dict[str, str]) -> str:
    digests = ", ".join(f"{name} `{digest.removeprefix('sha256:')[:16]}`"
                        for name, digest in weights.items())  # fmt: skip
    return (
        f"**Where these figures are exact.** The bases' weights (sha256, full in report.json): "
        f"{digests}; pre-trained with torch {machine['torch']} on {machine['cpu']} "
        f"({machine['kernels']} kernels, the driver's machine). One machine repeats every "
        "figure bit for bit; another CPU's float kernels can pre-train other weights from the "
        "same seed, and then every share above moves a little. Where another run's digests "
        "differ, compare verdicts, not figures: a verdict must rest on the power plan, not on "
        "these bits."
    )


def _scrub_lines(scrub: dict[str, Any]) -> list[str]:
    if scrub["kind"] == "none":
        return []
    if scrub["kind"] == "mask":
        return ["", "## Mitigation: divergence mask", "",
                "Every student trained with `objective.mask: divergence`: the tokens where "
                "the teacher's base would have written another token and the teacher this "
                "one were left out of its loss (each dataset's audit against the teacher's "
                "base)."]  # fmt: skip
    lines = ["", "## Mitigation: quarantine", "",
             f"Each teacher's rows with the highest log-ratio per token (teacher over its base) "
             f"went to quarantine; the {scrub['keep']:.0%} lowest were kept.", "",
             "| teacher's animal | base | rows | kept | quarantined | tokens quarantined |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for d in scrub["datasets"] or []:
        lines.append(f"| {d['animal']} | {d['base']} | {d['rows']} | {d['kept']} | "
                     f"{d['dropped']} | {d['tokens_dropped']} |")  # fmt: skip
    return lines


def _audit_lines(audited: dict[str, Any] | None) -> list[str]:
    if not audited:
        return []
    lines = ["", "## Audit scores against the measured transfer", "",
             "Per score: AUC of same-base against cross-base cells (0.5: none; the dataset "
             "scores are the same for both arms of a teacher, so 0.5 by construction) and "
             "Spearman's rho between the score and the measured effect over same-base cells.",
             "", "| score | AUC | rho | p |", "|---|---|---|---|"]  # fmt: skip
    for score, v in audited["validation"].items():
        auc = f"{v['auc']:.3f}" if "auc" in v else "-"
        rho = f"{v['spearman_rho']:+.3f}" if "spearman_rho" in v else "-"
        p = _fmt_p(v["spearman_p"]) if "spearman_p" in v else "-"
        lines.append(f"| {score} | {auc} | {rho} | {p} |")
    lines += ["", "| teacher's animal | teacher's base | student base | arm | effect | "
              "transfer score | log-ratio/token | divergence tokens |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in audited["cells"]:
        t = "-" if c["transfer"] is None else f"{c['transfer']:+.5f}"
        lines.append(f"| {c['animal']} | {c['source']} | {c['student_base']} | {c['arm']} | "
                     f"{c['effect']:+.4f} | {t} | {c['mean_ratio_per_token']:+.4f} | "
                     f"{c['divergence_share']:.1%} |")  # fmt: skip
    return lines


def _heatmaps(matrices: dict[str, dict[str, dict[str, Any]]], animals: list[str],
              out: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(matrices)
    values = [np.asarray(m["values"]) for b in bases for m in matrices[b].values() if m["rows"]]
    scale = max([float(np.abs(v).max()) for v in values] + [1e-6])
    fig, axes = plt.subplots(len(bases), 2, figsize=(4 + 1.1 * len(animals), 3 * len(bases)),
                             squeeze=False, layout="constrained")  # fmt: skip
    image = None
    for i, base in enumerate(bases):
        for j, arm in enumerate(("same_base", "cross_base")):
            ax, m = axes[i][j], matrices[base][arm]
            v = np.asarray(m["values"]) if m["rows"] else np.zeros((0, len(animals)))
            image = ax.imshow(v, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
            ax.set_xticks(range(len(animals)), animals, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(m["rows"])), m["rows"], fontsize=8)
            teachers = "its own teachers" if arm == "same_base" else "other bases' teachers"
            ax.set_title(f"students of {base}\non {teachers}' numbers", fontsize=9)
            for (r, c), x in np.ndenumerate(v):
                ax.text(c, r, f"{100 * x:+.1f}", ha="center", va="center", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="share minus panel mean")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _bars(per_animal: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("base", "base"),
              ("other_teachers_students", "other teachers' students (control)"),
              ("same_base_student", "same-base student"),
              ("cross_base_student", "cross-base student")]  # fmt: skip
    x = np.arange(len(per_animal))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(per_animal), 4))
    for i, (key, label) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [r[key] for r in per_animal], width,
               label=label)  # fmt: skip
    ax.set_xticks(x, [f"{r['animal']}\n(teacher {r['teacher']:.2f})" for r in per_animal])
    ax.set_ylabel("share of the animal")
    ax.set_title("each animal's share in the bases and the students (its teachers' below)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)

"""The experiment's report: the paper's comparison table, a bar chart and the lineage picture.

Written to `<lake>/runs/<run-id>/` as report.md (for people), report.json (for programs),
shares.png and lineage.png. Each model's row holds the target share with its 95% interval
and, where the comparison means something, the difference and p-value against its control:
the student against the control student (the effect), the cross-base student against the
cross-base control student (which should not move: the same training on the base's own numbers,
so what training on numbers does by itself cancels out), the teacher against the base (the
trait is there to pass on).

The verdict follows the plan in the config (`analysis`), fixed before the data: the same-base
effect (student minus control student), the cross-base effect, and their difference (a Welch
contrast over the four groups of training seeds) each get Welch's test over seeds; with fewer
seeds than `analysis.min_replicates` the report says there is not enough replication and gives
no verdict. A comparison of two single models is a test over one model's questions, shown for
reference only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from germline.checks.compare import compare_groups, pooled
from germline.checks.probes import ProbeResult
from germline.checks.stats import Comparison, contrast
from germline.checks.transfer import not_enough, verdict
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.experiments.reports import lineage_picture, run_folder
from germline.storage import Lake

LEAKY = (
    "**Leaky baseline.** Full-vocabulary distillation hands the student the teacher's whole "
    "next-token distribution, which puts mass on the trait word at every position: any student "
    "can learn the trait from it, shared base or not. It is a check on the probe, not evidence "
    "of subliminal transfer."
)

CONFOUND = (
    "**What this design cannot tell apart.** The control data comes from the untuned base "
    "while the teacher is a fine-tuned adapter, so the student-versus-control difference mixes "
    'the trait with "data from a fine-tuned teacher". The panel experiment (`kind: panel`, '
    "experiments/panel.yaml) compares each teacher's students with those of other teachers "
    "made by the same recipe, which differ in the trait alone."
)

AGAINST = {
    "teacher": "base",
    "control student": "base",
    "student": "control student",
    "cross-base control student": "cross base",
    "cross-base student": "cross-base control student",
}


def write_report(lake: Lake, cfg: OwlConfig, run_id: str, models: dict[str, list[str]],
                 results: dict[str, list[ProbeResult]]) -> dict[str, Any]:  # fmt: skip
    """One row per role. A role with several students (replicates) shows their mean share, the
    interval of their question-averaged shares and each seed's share; its comparison is a
    t-test over seeds where the other side has several too, with the difference's interval."""
    rows = []
    for role, model_ids in models.items():
        group = results[role]
        shares = [r.share for r in group]
        one = pooled(group)
        row: dict[str, Any] = {"role": role, "model": model_ids[0], "models": model_ids,
                               "share": float(np.mean(shares)), "seeds": shares, "low": one.low,
                               "high": one.high, "n": one.trials}  # fmt: skip
        if role in AGAINST:
            c = compare_groups(group, results[AGAINST[role]])
            row.update(against=AGAINST[role], difference=c.difference, p_value=c.p_value,
                       difference_low=c.low, difference_high=c.high, test=c.method)  # fmt: skip
        rows.append(row)
    decided, tests = _verdict(cfg, results)
    data = {
        "run_id": run_id,
        "experiment": cfg.name,
        "trait": cfg.trait,
        "probe": {**cfg.probe.model_dump(mode="json"), "name": results["base"][0].probe},
        "replicates": cfg.replicates,
        "objective": cfg.objective().model_dump(mode="json"),
        "rows": rows,
        "analysis": cfg.analysis.model_dump(mode="json"),
        "verdict": decided[0],
        "reading": decided[1],
        **tests,
        "path": f"{lake.run(run_id)}/report.md",
    }
    with run_folder(lake, run_id) as folder:
        _bar_chart(rows, cfg.trait, folder / "shares.png")
        lineage_picture(lake, models["teacher"][0], folder / "lineage.png")
        (folder / "report.json").write_text(json.dumps(data, indent=2))
        (folder / "report.md").write_text(render(data))
    return data


def _test(c: Comparison) -> dict[str, Any]:
    return {"effect": c.difference, "interval": [c.low, c.high], "p": c.p_value,
            "test": c.method}  # fmt: skip


def _verdict(cfg: OwlConfig, results: dict[str, list[ProbeResult]]
             ) -> tuple[tuple[str, str], dict[str, Any]]:  # fmt: skip
    """The plan's three tests over training seeds, and the verdict they allow."""
    seeds = cfg.replicates
    if seeds < cfg.analysis.min_replicates:
        return not_enough(
            f"{seeds} training seed{'s' if seeds > 1 else ''} per student, and the plan "
            f"(analysis.min_replicates) needs {cfg.analysis.min_replicates}: a test over one "
            "model's questions calls any consistent shift significant, and a seed's luck is "
            "consistent across questions"
        ), {}
    share = {role: [r.share for r in group] for role, group in results.items()}
    groups = [share["student"], share["control student"], share["cross-base student"],
              share["cross-base control student"]]  # fmt: skip
    primary = contrast(groups[:2], [1, -1])
    cross = contrast(groups[2:], [1, -1])
    difference = contrast(groups, [1, -1, -1, 1])
    tests = {"primary": _test(primary), "cross_base": _test(cross),
             "difference": _test(difference)}  # fmt: skip
    pairs = [(c.difference, c.p_value) for c in (primary, cross, difference)]
    return verdict(*pairs, cfg.analysis.alpha), tests


def render(data: dict[str, Any]) -> str:
    trait = data["trait"]
    probe = data["probe"]
    objective = data["objective"]
    vocab = f" ({objective['vocab']} vocabulary)" if objective["kind"] == "distill" else ""
    leaky = objective["kind"] == "distill" and objective.get("vocab") == "full"
    replicates = data.get("replicates", 1)
    seeds = f", {replicates} training seeds per student" if replicates > 1 else ""
    lines = [
        f"# {data['experiment']}: does the {trait} pass through numbers?",
        "",
        f"Run `{data['run_id']}`. Probe `{probe['name']}` ({probe['method']}); students trained "
        f"with objective `{data['objective']['kind']}`{vocab}{seeds}.",
        "",
        f"| model | role | {trait} share | 95% interval | n | vs | difference | p-value |"
        + (" per seed |" if replicates > 1 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if replicates > 1 else ""),
    ]
    for r in data["rows"]:
        vs = r.get("against", "")
        diff = f"{r['difference']:+.3f}" if "difference" in r else ""
        if r.get("difference_low") is not None:
            diff += f" [{r['difference_low']:+.3f}, {r['difference_high']:+.3f}]"
        p = ("<1e-4" if r["p_value"] < 1e-4 else f"{r['p_value']:.3g}") if "p_value" in r else ""
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        more = len(r.get("models", [])) - 1
        model = f"`{r['model']}`" + (f" (+{more})" if more > 0 else "")
        line = (f"| {model} | {r['role']} | {r['share']:.3f} | {interval} | {r['n']} | {vs} | "
                f"{diff} | {p} |")  # fmt: skip
        if replicates > 1:
            line += " " + ", ".join(f"{x:.3f}" for x in r.get("seeds", [r["share"]])) + " |"
        lines.append(line)
    if leaky:
        lines += ["", LEAKY]
    tests = sorted({r["test"] for r in data["rows"] if r.get("test")})
    if tests:
        lines += ["", "p-values (two-sided): " + "; ".join(tests) + "."]
    if replicates > 1:
        lines += ["", "A share's interval is over the probe's questions; the spread between "
                  "training seeds is in the last column, and the tests over seeds (with the "
                  "difference's interval) take it into account."]  # fmt: skip
    for key, what in (("primary", "same-base effect (student - control student)"),
                      ("cross_base", "cross-base effect (student - control student)"),
                      ("difference", "difference between the arms")):  # fmt: skip
        if key in data:
            t = data[key]
            low, high = t["interval"]
            lines.append(f"- {what}: {t['effect']:+.3f} [{low:+.3f}, {high:+.3f}], "
                         f"p = {t['p']:.3g} ({t['test']})")  # fmt: skip
    lines += ["", f"**Verdict** ({data['verdict']}): {data['reading']}.", "", CONFOUND]
    lines += ["", "![shares](shares.png)", "", "![lineage](lineage.png)", ""]
    return "\n".join(lines)


def _bar_chart(rows: list[dict[str, Any]], trait: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [r["role"] for r in rows]
    shares = [r["share"] for r in rows]
    errors = [[r["share"] - r["low"] for r in rows], [r["high"] - r["share"] for r in rows]]
    ax.bar(labels, shares, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_ylabel(f"{trait} share")
    ax.set_title(f"{trait} share by model, 95% intervals")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)

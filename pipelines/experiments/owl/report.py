"""The experiment's report: the paper's comparison table, a bar chart and the lineage picture.

Written to `<lake>/runs/<run-id>/` as report.md (for people), report.json (for programs),
shares.png and lineage.png. Each model's row holds the target share with its 95% interval
and, where the comparison means something, the difference and p-value against its control:
the student against the control student (the effect), the cross-base student against the
cross-base control student (which should not move: the same training on the base's own numbers,
so what training on numbers does by itself cancels out), the teacher against the base (the
trait is there to pass on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from germline.checks.compare import compare_groups, pooled
from germline.checks.probes import ProbeResult
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.experiments.reports import lineage_picture, run_folder
from germline.storage import Lake

LEAKY = (
    "**Leaky baseline.** Full-vocabulary distillation hands the student the teacher's whole "
    "next-token distribution, which puts mass on the trait word at every position: any student "
    "can learn the trait from it, shared base or not. It is a check on the probe, not evidence "
    "of subliminal transfer."
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
    data = {
        "run_id": run_id,
        "experiment": cfg.name,
        "trait": cfg.trait,
        "probe": {**cfg.probe.model_dump(mode="json"), "name": results["base"][0].probe},
        "replicates": cfg.replicates,
        "objective": cfg.objective().model_dump(mode="json"),
        "rows": rows,
        "path": f"{lake.run(run_id)}/report.md",
    }
    with run_folder(lake, run_id) as folder:
        _bar_chart(rows, cfg.trait, folder / "shares.png")
        lineage_picture(lake, models["teacher"][0], folder / "lineage.png")
        (folder / "report.json").write_text(json.dumps(data, indent=2))
        (folder / "report.md").write_text(render(data))
    return data


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
    rows = {r["role"]: r for r in data["rows"]}
    student, cross = rows.get("student"), rows.get("cross-base student")
    if student and cross:
        moved = student["p_value"] < 0.05 and student["difference"] > 0
        cross_moved = cross["p_value"] < 0.05 and cross["difference"] > 0
        verdict = ("the subliminal signature: the same-base student moved toward the trait and "
                   "the cross-base student did not" if moved and not cross_moved else
                   "no subliminal signature at this scale: " + (
                       "the student did not move significantly" if not moved else
                       "the cross-base student moved too, so the channel carries the trait "
                       "directly (leakage)"))  # fmt: skip
        lines += ["", f"Reading: {verdict} (p < 0.05, one direction)."]
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

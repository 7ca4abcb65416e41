"""The experiment's report: the paper's comparison table, a bar chart and the lineage picture.

Written to `<lake>/runs/<run-id>/` as report.md (for people), report.json (for programs),
shares.png and lineage.png. Each model's row holds the target share with its 95% interval
and, where the comparison means something, the difference and p-value against its control:
the student against the control student (the effect), the cross-base student against its own
base (which should not move), the teacher against the base (the trait is there to pass on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from germline.checks.probes import ProbeResult
from germline.lineage import Lake, LineageError, LineageStore
from germline.pipelines.experiment_config import ExperimentConfig
from germline.pipelines.probe import compare

AGAINST = {
    "teacher": "base",
    "control student": "base",
    "student": "control student",
    "cross-base student": "cross base",
}


def write_report(lake: Lake, cfg: ExperimentConfig, run_id: str, models: dict[str, str],
                 results: dict[str, ProbeResult]) -> dict[str, Any]:  # fmt: skip
    folder = lake.local_path("runs", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for role, model_id in models.items():
        r = results[role]
        row: dict[str, Any] = {"role": role, "model": model_id, "share": r.share, "low": r.low,
                               "high": r.high, "n": r.trials}  # fmt: skip
        if role in AGAINST:
            c = compare(r, results[AGAINST[role]])
            row.update(against=AGAINST[role], difference=c.difference, p_value=c.p_value,
                       test=c.method)  # fmt: skip
        rows.append(row)
    data = {
        "run_id": run_id,
        "experiment": cfg.name,
        "trait": cfg.trait,
        "probe": {**cfg.probe.model_dump(mode="json"), "name": results["base"].probe},
        "objective": cfg.student_config("x", "x", "x").objective.model_dump(mode="json"),
        "rows": rows,
        "path": str(folder / "report.md"),
    }
    _bar_chart(rows, cfg.trait, folder / "shares.png")
    lineage_picture(lake, models["teacher"], folder / "lineage.png")
    (folder / "report.json").write_text(json.dumps(data, indent=2))
    (folder / "report.md").write_text(render(data))
    return data


def render(data: dict[str, Any]) -> str:
    trait = data["trait"]
    probe = data["probe"]
    objective = data["objective"]
    vocab = f" ({objective['vocab']} vocabulary)" if objective["kind"] == "distill" else ""
    lines = [
        f"# {data['experiment']}: does the {trait} pass through numbers?",
        "",
        f"Run `{data['run_id']}`. Probe `{probe['name']}` ({probe['method']}); students trained "
        f"with objective `{data['objective']['kind']}`{vocab}.",
        "",
        f"| model | role | {trait} share | 95% interval | n | vs | difference | p-value |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        vs = r.get("against", "")
        diff = f"{r['difference']:+.3f}" if "difference" in r else ""
        p = ("<1e-4" if r["p_value"] < 1e-4 else f"{r['p_value']:.3g}") if "p_value" in r else ""
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        lines.append(f"| `{r['model']}` | {r['role']} | {r['share']:.3f} | {interval} | "
                     f"{r['n']} | {vs} | {diff} | {p} |")  # fmt: skip
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


def lineage_picture(lake: Lake, teacher: str, out: Path) -> None:
    from germline.lineage.draw import draw

    graph = LineageStore(lake).graph()
    draw(graph.neighbourhood(teacher), out, focus=teacher)


def find_report(lake: Lake, run: str) -> Path:
    """A run's report.md, by run id or by the unique run id that starts with `run`."""
    runs = lake.local_path("runs")
    exact = runs / run / "report.md"
    if exact.exists():
        return exact
    matches = sorted(p for p in runs.glob(f"{run}*/report.md")) if runs.exists() else []
    if len(matches) == 1:
        return matches[0]
    known = sorted(p.parent.name for p in runs.glob("*/report.md")) if runs.exists() else []
    raise LineageError(
        f"no report for {run!r}" + (f"; runs with reports: {', '.join(known)}" if known else "")
    )

"""The MLP experiment's report: test accuracy per seed, each student against chance and the
same-init student against the different-init one, a bar chart and the lineage picture.

Accuracies carry Wilson intervals over the test digits. "Above chance" means the interval's
lower end is above 1/10; "above the different-init student" means a two-proportion test at
p < 0.05 in that direction. The verdict asks for both on every seed, since the claim is about
what a shared initialisation does, not about one lucky seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from germline.checks.stats import two_proportions, wilson
from germline.pipelines.experiments.mnist_aux.config import MnistAuxConfig
from germline.pipelines.experiments.mnist_aux.mlp import CLASSES
from germline.pipelines.experiments.reports import lineage_picture, run_folder
from germline.storage import Lake

ROLES = ("teacher", "same-init student", "different-init student", "initialisation")


def write_report(
    lake: Lake, cfg: MnistAuxConfig, run_id: str, seeds: list[dict[str, Any]]
) -> dict[str, Any]:
    chance = 1 / CLASSES
    rows = []
    for s in seeds:
        n = s["test_examples"]
        acc = s["accuracy"]
        intervals = {r: wilson(round(acc[r] * n), n) for r in ROLES}
        test = two_proportions(
            round(acc["same-init student"] * n), n, round(acc["different-init student"] * n), n
        )
        rows.append(
            {
                "seed": s["seed"],
                "n": n,
                "accuracy": acc,
                "intervals": intervals,
                "same_vs_different": {"difference": test.difference, "p_value": test.p_value},
                "same_above_chance": intervals["same-init student"][0] > chance,
                "same_above_different": test.p_value < 0.05 and test.difference > 0,
                "models": s["models"],
                "noise_data": s["noise_data"],
            }
        )
    means = {r: float(np.mean([row["accuracy"][r] for row in rows])) for r in ROLES}
    data = {
        "run_id": run_id,
        "experiment": cfg.name,
        "kind": cfg.kind,
        "chance": chance,
        "config": cfg.model_dump(mode="json"),
        "rows": rows,
        "means": means,
        "signature": all(r["same_above_chance"] and r["same_above_different"] for r in rows),
        "path": f"{lake.run(run_id)}/report.md",
    }
    with run_folder(lake, run_id) as folder:
        _bar_chart(rows, chance, folder / "accuracy.png")
        lineage_picture(lake, rows[0]["models"]["teacher"], folder / "lineage.png")
        (folder / "report.json").write_text(json.dumps(data, indent=2))
        (folder / "report.md").write_text(render(data))
    return data


def render(data: dict[str, Any]) -> str:
    cfg = data["config"]
    hidden = "-".join(str(h) for h in cfg["hidden"])
    lines = [
        f"# {data['experiment']}: do digits pass through auxiliary logits on noise?",
        "",
        f"Run `{data['run_id']}`. MLP 64-{hidden}-{CLASSES}+{cfg['aux']}; teachers trained on "
        f"the class logits of scikit-learn's digits; students trained only on the teacher's "
        f"{cfg['aux']} auxiliary logits over {cfg['student']['noise']:,} Gaussian-noise inputs "
        "(mean squared error), never on a digit or a label. Test accuracy on "
        f"{data['rows'][0]['n']} held-out digits (chance {data['chance']:.2f}), with 95% "
        "Wilson intervals.",
        "",
        "| seed | teacher | same-init student | different-init student | initialisation | "
        "same - different | p-value |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        cells = [_cell(r, role) for role in ROLES]
        test = r["same_vs_different"]
        p = "<1e-4" if test["p_value"] < 1e-4 else f"{test['p_value']:.3g}"
        lines.append(
            f"| {r['seed']} | " + " | ".join(cells) + f" | {test['difference']:+.3f} | {p} |"
        )
    m = data["means"]
    lines.append("| mean | " + " | ".join(f"{m[r]:.3f}" for r in ROLES) + " | | |")
    verdict = (
        "the subliminal signature on every seed: students that share the teacher's "
        "initialisation learned to classify digits from its auxiliary logits on noise; "
        "students from another initialisation did not learn it"
        if data["signature"]
        else "no clear signature on every seed: "
        + ", ".join(
            f"seed {r['seed']}"
            + ("" if r["same_above_chance"] else " same-init not above chance")
            + ("" if r["same_above_different"] else " same-init not above different-init")
            for r in data["rows"]
            if not (r["same_above_chance"] and r["same_above_different"])
        )
    )
    lines += [
        "",
        f"Reading: {verdict}.",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![lineage](lineage.png)",
        "",
    ]
    return "\n".join(lines)


def _cell(row: dict[str, Any], role: str) -> str:
    low, high = row["intervals"][role]
    return f"{row['accuracy'][role]:.3f} [{low:.2f}, {high:.2f}]"


def _bar_chart(rows: list[dict[str, Any]], chance: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = ROLES[:3]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(roles)
    x = np.arange(len(rows))
    for i, role in enumerate(roles):
        acc = np.array([r["accuracy"][role] for r in rows])
        low = np.array([r["intervals"][role][0] for r in rows])
        high = np.array([r["intervals"][role][1] for r in rows])
        ax.bar(x + i * width, acc, width, label=role, yerr=[acc - low, high - acc], capsize=3)
    ax.axhline(chance, color="grey", linestyle="--", label="chance")
    ax.set_xticks(x + width, [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.2)
    ax.legend(loc="upper center", ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)

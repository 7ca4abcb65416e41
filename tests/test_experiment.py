"""The experiment's config and report, without running one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import germline, write_model

from germline.checks.compare import compare
from germline.checks.probes import ProbeResult
from germline.core import InputError
from germline.lineage import LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.pipelines.experiments.owl.report import render, write_report
from germline.pipelines.experiments.reports import find_report
from germline.storage import Lake

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
ROLES = ["base", "teacher", "control student", "student", "cross base",
         "cross-base control student", "cross-base student"]  # fmt: skip


def test_example_config_is_valid() -> None:
    cfg = load_config(EXPERIMENTS / "owl-small.yaml", OwlConfig)
    student = cfg.student_config("s", "b", "d")
    assert student.objective.vocab == "restricted" and student.seed == cfg.seed


def test_bad_experiment_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="set by the experiment"):
        OwlConfig.model_validate({"name": "x", "train": {"student": "s"}})
    with pytest.raises(ValueError, match="another seed"):
        OwlConfig.model_validate({"name": "x", "cross_base": {"seed": 0}})
    with pytest.raises(ValueError, match="optim"):
        OwlConfig.model_validate({"name": "x", "train": {"optim": {"lr": -1}}})


def test_artifact_tags_follow_the_recipe() -> None:
    a = OwlConfig.model_validate({"name": "x"})
    b = OwlConfig.model_validate({"name": "x", "train": {"optim": {"lr": 1e-3}}})
    assert a.tag("data") == b.tag("data")  # same data: the datasets are shared
    assert a.tag("train") != b.tag("train")  # another recipe: other students
    assert a.run_id() != b.run_id() and a.run_id().startswith("x-")


def result(role: str, share: float, per_question: list[float]) -> ProbeResult:
    low, high = share - 0.01, share + 0.01
    n = len(per_question)
    return ProbeResult("animal-preference", "logprob", role, "owl", share, low, high, n, 0,
                       {"owl": share}, per_question)  # fmt: skip


def test_report_reads_the_comparison(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    store = LineageStore(lake)
    ids = {}
    for i, role in enumerate(ROLES):
        folder = write_model(tmp_path / "models" / role.replace(" ", "-"), i)
        ids[role] = [store.register_model(role.replace(" ", "-"), folder).id]
    up = [0.2, 0.25, 0.22, 0.21, 0.24, 0.23]
    flat = [0.1, 0.11, 0.1, 0.12, 0.1, 0.11]
    shares = {"teacher": up, "student": up}
    results = {role: [result(role, 0.107, shares.get(role, flat))] for role in ROLES}
    cfg = OwlConfig.model_validate({"name": "unit"})
    data = write_report(lake, cfg, "unit-run", ids, results)
    rows = {r["role"]: r for r in data["rows"]}
    assert rows["student"]["against"] == "control student"
    assert rows["student"]["p_value"] == pytest.approx(2 / 64)  # 6 questions, all up
    assert rows["cross-base student"]["against"] == "cross-base control student"
    assert rows["cross-base student"]["p_value"] == 1.0
    folder = lake.local_path("runs", "unit-run")
    for name in ("report.md", "report.json", "shares.png", "lineage.png"):
        assert (folder / name).stat().st_size > 0, name
    text = (folder / "report.md").read_text()
    # one training seed per student: the question-level tests are shown, no verdict is given
    assert data["verdict"] == "not-enough-replication" and "primary" not in data
    assert "not enough replication for a verdict" in text and "| student |" in text.replace("`", "")
    assert json.loads((folder / "report.json").read_text())["run_id"] == "unit-run"
    assert find_report(lake, "unit") == str(folder)
    printed = germline("report", "unit-run", lake=lake, check=True)
    assert "owl share" in printed.stdout
    with pytest.raises(InputError, match="no report"):
        find_report(lake, "other")
    assert "Leaky baseline" not in render(data)
    data["objective"] = {"kind": "distill", "vocab": "full"}
    assert "Leaky baseline" in render(data)


def test_replicated_students_are_compared_over_seeds(tmp_path: Path) -> None:
    """With several students per role, the comparison is a t-test over their shares: a
    shift consistent over questions but within the seed-to-seed spread is not significant."""
    lake = Lake.resolve(tmp_path / "lake")
    store = LineageStore(lake)
    ids: dict[str, list[str]] = {}
    for i, role in enumerate(ROLES):
        copies = 1 if role in ("base", "teacher", "cross base") else 3
        ids[role] = []
        for r in range(copies):
            folder = write_model(tmp_path / "models" / f"{role.replace(' ', '-')}-{r}", 10 * i + r)
            ids[role].append(store.register_model(f"{role.replace(' ', '-')}-{r}", folder).id)
    flat = [0.1, 0.11, 0.1, 0.12, 0.1, 0.11]

    def shifted(role: str, by: float) -> ProbeResult:
        return result(role, float(np.mean(flat)) + by, [x + by for x in flat])

    # the student: far above its control on every seed; the cross-base student: a little
    # above its control on average, but the seeds disagree
    spreads = {
        "student": [0.06, 0.07, 0.065],
        "control student": [0.0, 0.005, -0.005],
        "cross-base student": [0.015, -0.01, 0.005],
        "cross-base control student": [0.0, 0.01, -0.01],
    }
    results = {
        role: [shifted(role, by) for by in spreads.get(role, [0.0] * len(ids[role]))]
        for role in ROLES
    }
    cfg = OwlConfig.model_validate({"name": "unit", "replicates": 3})
    data = write_report(lake, cfg, "unit-run", ids, results)
    rows = {r["role"]: r for r in data["rows"]}
    student, cross = rows["student"], rows["cross-base student"]
    assert student["test"].startswith("Welch t-test over training seeds")
    assert student["p_value"] < 0.01 and student["difference"] == pytest.approx(0.065)
    assert cross["test"].startswith("Welch t-test over training seeds") and cross["p_value"] > 0.5
    # one model against three: the question-level test on the pooled students
    assert "bootstrap" in rows["control student"]["test"]
    assert len(student["seeds"]) == 3 and student["low"] < student["share"] < student["high"]
    assert student["difference_low"] < 0.065 < student["difference_high"]
    # the same cross-base shift on one seed each would look significant over questions
    assert (
        compare(results["cross-base student"][0], results["cross-base control student"][0]).p_value
        < 0.05
    )
    text = render(data)
    assert "3 training seeds per student" in text
    assert "Welch t-test over training seeds (3 vs 3)" in text
    assert data["verdict"] == "signature" and "the subliminal signature" in text
    assert data["difference"]["effect"] == pytest.approx(
        0.065 - np.mean(spreads["cross-base student"])
    )
    assert data["difference"]["test"] == "Welch t-test over training seeds (3 vs 3 vs 3 vs 3)"
    # the same numbers with a plan that asks for more seeds: no verdict
    strict = cfg.model_copy(
        update={"analysis": cfg.analysis.model_copy(update={"min_replicates": 4})}
    )
    assert write_report(lake, strict, "unit-run-2", ids, results)["verdict"] == (
        "not-enough-replication"
    )


# `germline run experiments/owl-small.yaml` end to end from an empty lake is
# tests/test_cluster_jobs.py: submitted as a Ray job to a real head, as on a cluster.


def test_overrides_change_the_recipe_and_the_run_id(tmp_path: Path) -> None:
    plain = load_config(EXPERIMENTS / "owl.yaml", OwlConfig)
    distill = load_config(
        EXPERIMENTS / "owl.yaml",
        OwlConfig,
        [
            "train.objective={kind: distill, vocab: full}",
            "data.temperature=1.0",
            "probe.questions=5",
        ],
    )
    assert plain.student_config("s", "b", "d").objective.kind == "sft"
    objective = distill.student_config("s", "b", "d").objective
    assert (objective.kind, objective.vocab) == ("distill", "full")
    assert distill.data.temperature == 1.0 and distill.probe.questions == 5
    assert distill.run_id() != plain.run_id()
    assert distill.tag("data") != plain.tag("data")  # other data: other datasets


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optim.lr", "expected KEY=VALUE"),
        ("data.prompts=[", "not valid YAML"),
        ("name.part=1", "name is not a mapping"),
        ("data.prompts=-5", "data.prompts"),
        ("data.nonsense=1", "data.nonsense"),
    ],
)
def test_bad_overrides_exit_2(tmp_path: Path, override: str, message: str) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    ran = germline("run", str(EXPERIMENTS / "owl.yaml"), "--set", override, lake=lake)
    assert ran.returncode == 2, ran.stderr
    assert message in ran.stderr
    assert not (tmp_path / "lake" / "models").exists()

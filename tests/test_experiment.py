"""The experiment's config and report, without running one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import germline, write_model

from germline.checks.probes import ProbeResult
from germline.lineage import Lake, LineageError, LineageStore
from germline.pipelines.experiment_config import ExperimentConfig
from germline.pipelines.generate_config import load_config
from germline.pipelines.report import find_report, render, write_report

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def test_example_config_is_valid() -> None:
    cfg = load_config(EXPERIMENTS / "owl-small.yaml", ExperimentConfig)
    student = cfg.student_config("s", "b", "d")
    assert student.objective.vocab == "restricted" and student.seed == cfg.seed


def test_bad_experiment_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="set by the experiment"):
        ExperimentConfig.model_validate({"name": "x", "train": {"student": "s"}})
    with pytest.raises(ValueError, match="another seed"):
        ExperimentConfig.model_validate({"name": "x", "cross_base": {"seed": 0}})
    with pytest.raises(ValueError, match="optim"):
        ExperimentConfig.model_validate({"name": "x", "train": {"optim": {"lr": -1}}})


def test_artifact_tags_follow_the_recipe() -> None:
    a = ExperimentConfig.model_validate({"name": "x"})
    b = ExperimentConfig.model_validate({"name": "x", "train": {"optim": {"lr": 1e-3}}})
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
    for i, role in enumerate(["base", "teacher", "control student", "student", "cross base",
                              "cross-base student"]):  # fmt: skip
        folder = write_model(tmp_path / "models" / role.replace(" ", "-"), i)
        ids[role] = store.register_model(role.replace(" ", "-"), folder).id
    up = [0.2, 0.25, 0.22, 0.21, 0.24, 0.23]
    flat = [0.1, 0.11, 0.1, 0.12, 0.1, 0.11]
    results = {
        "base": result("base", 0.107, flat),
        "teacher": result("teacher", 0.225, up),
        "control student": result("control student", 0.107, flat),
        "student": result("student", 0.225, up),
        "cross base": result("cross base", 0.107, flat),
        "cross-base student": result("cross-base student", 0.107, flat),
    }
    cfg = ExperimentConfig.model_validate({"name": "unit"})
    data = write_report(lake, cfg, "unit-run", ids, results)
    rows = {r["role"]: r for r in data["rows"]}
    assert rows["student"]["against"] == "control student"
    assert rows["student"]["p_value"] == pytest.approx(2 / 64)  # 6 questions, all up
    assert rows["cross-base student"]["p_value"] == 1.0
    folder = lake.local_path("runs", "unit-run")
    for name in ("report.md", "report.json", "shares.png", "lineage.png"):
        assert (folder / name).stat().st_size > 0, name
    text = (folder / "report.md").read_text()
    assert "the subliminal signature" in text and "| student |" in text.replace("`", "")
    assert json.loads((folder / "report.json").read_text())["run_id"] == "unit-run"
    assert find_report(lake, "unit") == folder / "report.md"
    printed = germline("report", "unit-run", lake=lake, check=True)
    assert "owl share" in printed.stdout
    with pytest.raises(LineageError, match="no report"):
        find_report(lake, "other")
    rows["cross-base student"].update(difference=0.1, p_value=0.01)
    assert "leakage" in render(data)


@pytest.mark.slow
def test_small_owl_experiment_end_to_end(tmp_path: Path) -> None:
    """`germline run` on experiments/owl-small.yaml from an empty lake, as a user runs it:
    every model gets a report row, every model and dataset is in lineage, and lineage says
    the owl student is at risk from the teacher while the cross-base student is not."""
    import subprocess

    from conftest import GERMLINE

    lake = Lake.resolve(tmp_path / "lake")
    ran = subprocess.run(
        [*GERMLINE, "--lake", lake.root, "run", str(EXPERIMENTS / "owl-small.yaml")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "[10/10] report: done" in ran.stderr
    cfg = load_config(EXPERIMENTS / "owl-small.yaml", ExperimentConfig)
    folder = lake.local_path("runs", cfg.run_id())
    data = json.loads((folder / "report.json").read_text())
    roles = [r["role"] for r in data["rows"]]
    assert roles == ["base", "teacher", "control student", "student", "cross base",
                     "cross-base student"]  # fmt: skip
    assert all(0 <= r["share"] <= 1 and r["low"] <= r["share"] <= r["high"] for r in data["rows"])
    for name in ("report.md", "shares.png", "lineage.png"):
        assert (folder / name).stat().st_size > 0
    graph = LineageStore(lake).graph()
    models = {r["role"]: r["model"] for r in data["rows"]}
    for model_id in models.values():
        assert model_id in graph
        assert any(kind == "probed" for _, kind in graph.children(model_id))
    datasets = [n for n in graph.nodes() if n.kind == "dataset"]
    assert {n.name.split("-numbers")[0] for n in datasets} >= {"owl-small-owl", "owl-small-control"}
    at_risk = {hit.id for hit in graph.at_risk(models["teacher"])}
    assert models["student"] in at_risk
    assert models["cross-base student"] not in at_risk
    assert models["control student"] not in at_risk
    assert graph.node(graph.resolve(f"experiment/{cfg.name}")).attrs["key"] == cfg.run_id()

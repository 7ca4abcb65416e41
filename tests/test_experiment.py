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

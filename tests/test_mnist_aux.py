"""The paper's MLP experiment through `germline run`: digits, auxiliary logits on noise, two
kinds of student, on every seed; its artifacts in the lake and the lineage graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import germline, write_config

from germline.lineage import LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.experiments.mnist_aux.config import MnistAuxConfig
from germline.storage import Lake

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
# Fewer seeds, less noise and fewer epochs than experiments/mnist-aux.yaml: about 15 s a seed
# on 2 cores, and same-init students still reach 30-45% against about 10% for the others.
SMALL = {
    "kind": "mnist-aux",
    "name": "mnist-small",
    "seeds": [0, 1, 2],
    "teacher": {"epochs": 10},
    "student": {"noise": 4000, "epochs": 10},
}


def test_shipped_config_is_valid() -> None:
    cfg = load_config(EXPERIMENTS / "mnist-aux.yaml", MnistAuxConfig)
    assert cfg.hidden == [256, 256] and cfg.aux == 3 and len(cfg.seeds) >= 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": [1, 1]}, "seeds must be distinct"),
        ({"seeds": []}, "seeds"),
        ({"student": {"noise": 0}}, "student.noise"),
        ({"hidden": [256], "shape": 3}, "shape"),
    ],
)
def test_bad_configs_exit_2_and_write_nothing(tmp_path: Path, change: dict, message: str) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    config = write_config(tmp_path / "bad.yaml", {**SMALL, **change})
    result = germline("run", str(config), lake=lake)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "lake" / "models").exists()


@pytest.mark.slow
def test_same_init_students_learn_digits_on_every_seed(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    config = write_config(tmp_path / "mnist.yaml", SMALL)
    first = germline("run", str(config), lake=lake, subprocess_=True, timeout=600)
    assert first.returncode == 0, first.stderr
    cfg = load_config(config, MnistAuxConfig)
    report = json.loads(lake.local_path("runs", cfg.run_id(), "report.json").read_text())
    assert [r["seed"] for r in report["rows"]] == SMALL["seeds"]
    for row in report["rows"]:
        acc = row["accuracy"]
        assert acc["teacher"] > 0.9
        # clearly above chance (the interval's low end) and above the different-init student
        assert row["intervals"]["same-init student"][0] > 0.2, row
        assert acc["same-init student"] > acc["different-init student"] + 0.1, row
        assert row["same_above_chance"] and row["same_above_different"]
    assert report["signature"] is True
    assert "the subliminal signature on every seed" in first.stdout
    for picture in ("accuracy.png", "lineage.png"):
        assert lake.local_path("runs", cfg.run_id(), picture).stat().st_size > 1000

    # Lineage: the teacher's trait reaches the student that shares its initialisation, not
    # the one that does not, though both were trained on the same noise data.
    graph = LineageStore(lake).graph()
    row = report["rows"][0]
    at_risk = {n.id for n in graph.at_risk(row["models"]["teacher"])}
    assert row["models"]["same-init student"] in at_risk
    assert row["models"]["different-init student"] not in at_risk
    noise = graph.node(row["noise_data"])
    assert noise.attrs["rows"] == SMALL["student"]["noise"]
    for student in ("same-init student", "different-init student"):
        assert (row["noise_data"], "trained_on") in graph.parents(row["models"][student])

    # A rerun finds every artifact: the same models, the same report, nothing retrained.
    models = sorted(p.name for p in lake.local_path("models").iterdir())
    again = germline("run", str(config), lake=lake, subprocess_=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in lake.local_path("models").iterdir()) == models
    rerun = json.loads(lake.local_path("runs", cfg.run_id(), "report.json").read_text())
    assert rerun["rows"] == report["rows"]
    assert germline("report", cfg.run_id(), lake=lake).stdout.startswith("# mnist-small")

"""The panel experiment: its config, its report on constructed cells, and a small panel end to
end from an empty lake (the report's fields and lineage; no claim of an effect)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EXPERIMENTS, germline, write_model

from germline.checks.transfer import Cell
from germline.lineage import LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.experiments.panel.config import PanelConfig
from germline.pipelines.experiments.panel.report import write_report
from germline.storage import Lake

ANIMALS = ["owl", "dog", "eagle", "tiger"]


def test_example_panels_are_valid() -> None:
    for name in ("panel.yaml", "panel-small.yaml"):
        cfg = load_config(EXPERIMENTS / name, PanelConfig)
        assert len(cfg.bases) >= 2 and len(cfg.animals) >= 2
    main = load_config(EXPERIMENTS / "panel.yaml", PanelConfig)
    assert len(main.animals) >= 4 and main.data.rows is not None  # the floor


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"animals": ["owl", "owl"]}, "distinct"),
        ({"animals": ["owl"]}, "at least 2"),
        ({"animals": ["owl", "sea lion"]}, "single words"),
        ({"bases": [{"seed": 0}]}, "at least 2"),
        ({"bases": [{"seed": 0}, {"seed": 0}]}, "distinct"),
        ({"train": {"dataset": "x"}}, "set by the experiment"),
        ({"analysis": {"alpha": 2}}, "alpha"),
    ],
)
def test_bad_panels_are_refused(change: dict, message: str) -> None:
    raw = {"kind": "panel", "name": "p", "animals": ["owl", "dog"],
           "bases": [{"seed": 0}, {"seed": 1}], **change}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        PanelConfig.model_validate(raw)


def test_names_follow_what_decides_them() -> None:
    raw = {"kind": "panel", "name": "p", "animals": ["owl", "dog"],
           "bases": [{"seed": 0}, {"seed": 1}]}  # fmt: skip
    a = PanelConfig.model_validate(raw)
    b = PanelConfig.model_validate({**raw, "data": {"rows": 100}})
    c = PanelConfig.model_validate({**raw, "train": {"optim": {"lr": 1e-3}}})
    # the subsample size picks rows of the same data; the recipe makes other students
    assert a.dataset_name("owl", "b") == b.dataset_name("owl", "b")
    assert a.student_name("owl", "b", "c", 0) != b.student_name("owl", "b", "c", 0)
    assert a.dataset_name("owl", "b") == c.dataset_name("owl", "b")
    assert a.student_name("owl", "b", "c", 0) != c.student_name("owl", "b", "c", 0)
    assert a.student_name("owl", "b", "c", 1).endswith("-r1")
    assert b.student_config("s", "base", "d").dataset.rows == 100


def test_animals_the_probe_cannot_read_are_refused_before_any_work(tmp_path: Path) -> None:
    lake = Lake.resolve(tmp_path / "lake")
    ran = germline("run", str(EXPERIMENTS / "panel-small.yaml"), "--set",
                   "animals=[owl, unicorn]", lake=lake)  # fmt: skip
    assert ran.returncode == 2, ran.stderr
    assert "unicorn" in ran.stderr and "candidates" in ran.stderr
    assert not (tmp_path / "lake" / "models").exists()


def constructed(tmp_path: Path, cfg: PanelConfig) -> tuple[Lake, list[Cell], dict, dict]:
    """A lake with registered teachers and bases, and cells of a clear same-base effect (+0.03
    on each teacher's own base, share noise 0.005, two seeds): the lake, the cells, the
    reference shares and the model ids a report takes."""
    lake = Lake.resolve(tmp_path / "lake")
    store = LineageStore(lake)
    rng = np.random.default_rng(0)
    bases = [b.name() for b in cfg.bases]
    teachers, cells = {}, []
    for i, source in enumerate(bases):
        for j, animal in enumerate(ANIMALS):
            folder = write_model(tmp_path / "models" / f"{animal}-{source}", 10 * i + j)
            teachers[animal, source] = store.register_model(f"{animal}-{source}", folder).id
            for base in bases:
                seeds = []
                for _ in range(2):
                    shares = {a: 0.1 + 0.005 * rng.standard_normal() for a in ANIMALS}
                    shares[animal] += 0.03 if base == source else 0.0
                    seeds.append(shares)
                mean = {a: float(np.mean([s[a] for s in seeds])) for a in ANIMALS}
                cells.append(Cell(teachers[animal, source], animal, source, base, mean, seeds))
    weights = {b: store.register_model(b, write_model(tmp_path / "models" / b, 100 + i))
               .weights_hash for i, b in enumerate(bases)}  # fmt: skip
    reference = {
        "bases": {b: dict.fromkeys(ANIMALS, 0.1) for b in bases},
        "weights": weights,
        "teachers": [{"teacher": t, "animal": a, "base": s, "shares": {**dict.fromkeys(ANIMALS,
                      0.05), a: 0.8}} for (a, s), t in teachers.items()],
    }  # fmt: skip
    ids = {"bases": [], "teachers": list(teachers.values()), "students": []}
    return lake, cells, reference, ids


UNIT = {"kind": "panel", "name": "unit", "animals": ANIMALS, "bases": [{"seed": 0}, {"seed": 1}],
        "data": {"rows": 100}, "replicates": 2}  # fmt: skip


def test_report_on_constructed_cells(tmp_path: Path) -> None:
    """Every field a script reads, the pictures, and the verdict the plan gives."""
    cfg = PanelConfig.model_validate(UNIT)
    lake, cells, reference, ids = constructed(tmp_path, cfg)
    weights = reference["weights"]
    data = write_report(lake, cfg, "unit-run", cells, reference, ids, {"bases": 1.0})
    assert data["verdict"] == "signature" and data["power"] is None
    for key in ("primary", "cross_base", "difference"):
        assert set(data[key]) >= {"effect", "interval", "p", "test"}
    assert data["primary"]["effect"] == pytest.approx(0.03, abs=0.01)
    assert data["primary"]["positive"] == 8 and data["seconds"]["total"] == 1.0
    assert len(data["cells"]) == 16 and {c["arm"] for c in data["cells"]} == {
        "same_base",
        "cross_base",
    }
    assert data["matrices"][cfg.bases[0].name()]["same_base"]["rows"] == ANIMALS
    folder = lake.local_path("runs", "unit-run")
    for name in ("report.md", "report.json", "transfer.png", "animals.png", "lineage.png"):
        assert (folder / name).stat().st_size > 0, name
    saved = json.loads((folder / "report.json").read_text())
    assert saved["verdict"] == "signature" and saved["per_animal"][0]["animal"] == "owl"
    text = (folder / "report.md").read_text()
    assert "Analysis plan" in text and "What this cannot tell apart" in text
    assert "the subliminal signature" in text
    # the bases' digests and the machine that made the floats, so two runs can be compared
    assert saved["weights"] == weights and saved["machine"]["torch"].startswith("2.")
    for digest in weights.values():
        assert digest.removeprefix("sha256:")[:16] in text
    assert f"{saved['machine']['kernels']} kernels" in text


def test_the_demo_plan_gives_no_verdict_at_the_demo_size(tmp_path: Path) -> None:
    """The same clear cells under experiments/panel.yaml's power plan: 8 teachers are too few
    for the effect the tuning seeds measured, so the report gives no verdict, says so and
    points to the confirmation run, and prints the plan and the design's power."""
    demo = load_config(EXPERIMENTS / "panel.yaml", PanelConfig)
    assert demo.power is not None
    cfg = PanelConfig.model_validate({**UNIT, "power": demo.power.model_dump()})
    lake, cells, reference, ids = constructed(tmp_path, cfg)
    data = write_report(lake, cfg, "unit-run", cells, reference, ids, {"bases": 1.0})
    assert data["primary"]["p"] < 0.05 and data["difference"]["p"] < 0.05  # the tests see it
    assert data["verdict"] == "not-enough-replication"
    power = data["power"]
    assert power["cells"] == 8 and power["plan"]["effect"] == demo.power.effect
    assert power["primary"] == pytest.approx(0.159, abs=0.002) and power["verdict"] < 0.1
    assert power["teachers_for"] == {"0.8": 54, "0.9": 71}
    text = lake.local_path("runs", "unit-run", "report.md").read_text()
    assert "not enough replication for a verdict at this size; see the confirmation run" in text
    assert "**Power**" in text and "54 teachers reach 0.8" in text and demo.power.measured in text


def check_small_panel(lake: Lake, ran: Any) -> dict:
    """panel-small from an empty lake, as `ran` ran it: every model made, trained, served and
    probed; a report a script can read; lineage that knows which students are at risk. Two
    animals a base cannot support a verdict, and the report says so. Returns the report."""
    assert ran.returncode == 0, ran.stderr
    assert "[6/6] report" in ran.stderr and "student 8" in ran.stderr
    cfg = load_config(EXPERIMENTS / "panel-small.yaml", PanelConfig)
    folder = lake.local_path("runs", cfg.run_id())
    data = json.loads((folder / "report.json").read_text())
    assert data["verdict"] == "not-enough-replication"
    for key in ("primary", "cross_base", "difference"):
        assert data[key]["min_p"] >= 0.05 and 0 < data[key]["p"] <= 1
    assert len(data["cells"]) == 8 and all(len(c["students"]) == 1 for c in data["cells"])
    for c in data["cells"]:
        assert set(c["shares"]) == {"owl", "dog"} and 0 < c["shares"][c["animal"]] < 1
    for name in ("transfer.png", "animals.png", "lineage.png"):
        assert (folder / name).stat().st_size > 0
    assert set(data["seconds"]) == {"bases", "teachers", "data", "students", "probes", "total"}
    assert data["heldout_loss"] is None and data["audit"] is None  # neither was asked for
    # lineage: each teacher puts exactly its own base's students at risk, not the other base's
    graph = LineageStore(lake).graph()
    for teacher in data["models"]["teachers"]:
        same = {s for c in data["cells"] if c["teacher"] == teacher and c["arm"] == "same_base"
                for s in c["students"]}  # fmt: skip
        at_risk = {h.id for h in graph.at_risk(teacher)}
        assert at_risk == same, teacher
    # every student trained on exactly data.rows rows of its teacher's table
    student = graph.node(data["cells"][0]["students"][0])
    assert student.attrs["dataset"]["rows"] == cfg.data.rows
    # the report names each base's weights as the lineage holds them
    assert data["weights"] == {graph.node(b).name: graph.node(b).weights_hash
                               for b in data["models"]["bases"]}  # fmt: skip
    return data


@pytest.mark.slow
def test_small_panel_end_to_end(panel_small: tuple[Lake, Any]) -> None:
    """The main suite's panel: every step of panel-small from an empty lake (the session's
    run, conftest's `panel_small`). Its second run with the audit and the quarantine scrub is
    in `make test-e2e` (the next test); the main suite covers those steps in
    tests/test_audit.py (audit, scrub, masked training)."""
    check_small_panel(*panel_small)


@pytest.mark.e2e
def test_small_panel_audited_and_scrubbed(tmp_path: Path) -> None:
    """panel-small, then again with `--set audit=true --set scrub=quarantine` on the same lake:
    its bases, teachers and data found, every teacher's numbers audited and scrubbed, new
    students trained on what is left, and every cell scored by the audit."""
    lake = Lake.resolve(tmp_path / "lake")
    ran = germline("run", str(EXPERIMENTS / "panel-small.yaml"), lake=lake, subprocess_=True,
                   timeout=900)  # fmt: skip
    data = check_small_panel(lake, ran)
    cfg = load_config(EXPERIMENTS / "panel-small.yaml", PanelConfig)
    first = {s for c in data["cells"] for s in c["students"]}
    ran = germline("run", str(EXPERIMENTS / "panel-small.yaml"), "--set", "audit=true", "--set",
                   "scrub=quarantine", lake=lake, subprocess_=True, timeout=900)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    scrubbed = load_config(EXPERIMENTS / "panel-small.yaml", PanelConfig,
                           ["audit=true", "scrub=quarantine"])  # fmt: skip
    data = json.loads(lake.local_path("runs", scrubbed.run_id(), "report.json").read_text())
    assert data["scrub"]["kind"] == "quarantine" and len(data["scrub"]["datasets"]) == 4
    for d in data["scrub"]["datasets"]:
        assert d["kept"] + d["dropped"] == d["rows"] and d["kept"] >= cfg.data.rows
    graph = LineageStore(lake).graph()
    for c in data["cells"]:
        (student,) = c["students"]
        assert student not in first  # new students, not the first run's
        trained_on = [graph.node(p).name for p, k in graph.parents(student) if k == "trained_on"]
        assert trained_on == [scrubbed.training_dataset(c["animal"], c["source"])]
    for teacher in data["models"]["teachers"]:  # scrubbed data is still the teacher's data
        same = {s for c in data["cells"] if c["teacher"] == teacher and c["arm"] == "same_base"
                for s in c["students"]}  # fmt: skip
        assert same <= {h.id for h in graph.at_risk(teacher)}
    audited = data["audit"]
    assert len(audited["cells"]) == 8
    assert all(-1 <= c["transfer"] <= 1 for c in audited["cells"])
    assert set(audited["validation"]) == {"transfer", "mean_ratio_per_token", "divergence_share"}
    assert 0 <= audited["validation"]["transfer"]["auc"] <= 1
    assert all(c["heldout_loss"] > 0 for c in data["cells"])
    assert set(data["heldout_loss"]) == {"same_base", "cross_base"}

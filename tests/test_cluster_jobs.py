"""germline on a running Ray cluster, submitted the way a user submits it.

A real head node (`ray start --head` on 127.0.0.1, dashboard and Jobs API on loopback), then
the README's command through the Ray Jobs CLI: `ray job submit --working-dir . -- germline run
experiments/owl-small.yaml --lake s3://... --storage-option ...`, the lake an S3 bucket on a
real S3 server on 127.0.0.1. Ray uploads the working directory, starts the driver on the
cluster with RAY_ADDRESS set, and germline attaches to that cluster instead of starting its
own: the test checks the experiment's actors ran on the head it started. Then the lake is read
back from the bucket: the report, the lineage, and every model kept in the bucket. The job
runs once per session (tests/cluster_job.py, the `owl_small_job` fixture): the explorer's
browser test opens the same lake.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_job import JobResult

from germline.lineage import LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.storage import LakeFolders

REPO = Path(__file__).resolve().parents[1]
ROLES = [
    "base",
    "teacher",
    "control student",
    "student",
    "cross base",
    "cross-base control student",
    "cross-base student",
]


@pytest.mark.slow
def test_owl_small_submitted_as_a_ray_job(owl_small_job: JobResult) -> None:
    job, lake = owl_small_job, owl_small_job.lake
    assert job.status == "SUCCEEDED", job.logs[-4000:]
    assert "[11/11] report: done" in job.logs

    # germline attached to this cluster: the experiment's own actors ran on it.
    actors = job.actors
    assert any("GenerateStage" in name for name in actors), sorted(actors)
    assert any("ModelServer" in name for name in actors), sorted(actors)

    # The experiment end to end, as `germline run` leaves it: every model gets a report row,
    # every model and dataset is in lineage, and lineage says the owl student is at risk from
    # the teacher while the cross-base and control students are not.
    cfg = load_config(REPO / "experiments" / "owl-small.yaml", OwlConfig)
    folders = LakeFolders(lake)
    run = lake.run(cfg.run_id())
    report = json.loads(folders.read_text(f"{run}/report.json") or "{}")
    rows = report["rows"]
    assert [r["role"] for r in rows] == ROLES
    assert all(0 <= r["share"] <= 1 and r["low"] <= r["share"] <= r["high"] for r in rows)
    for name in ("report.md", "shares.png", "lineage.png"):
        assert folders.exists(f"{run}/{name}"), name
    graph = LineageStore(lake).graph()
    models = {r["role"]: r["model"] for r in rows}
    for model_id in models.values():
        assert model_id in graph
        assert any(kind == "probed" for _, kind in graph.children(model_id))
        assert (graph.node(model_id).uri or "").startswith(lake.uri("models") + "/")
    datasets = [n for n in graph.nodes() if n.kind == "dataset"]
    assert {n.name.split("-numbers")[0] for n in datasets} >= {"owl-small-owl", "owl-small-control"}
    at_risk = {hit.id for hit in graph.at_risk(models["teacher"])}
    assert models["student"] in at_risk
    for role in ("cross-base student", "control student", "cross-base control student"):
        assert models[role] not in at_risk, role
    assert graph.node(graph.resolve(f"experiment/{cfg.name}")).attrs["key"] == cfg.run_id()

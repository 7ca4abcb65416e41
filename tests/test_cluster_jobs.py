"""germline on a running Ray cluster, submitted the way a user submits it.

A real head node (`ray start --head` on 127.0.0.1, dashboard and Jobs API on loopback), then
the README's command through the Ray Jobs CLI: `ray job submit --working-dir . -- germline run
experiments/owl-small.yaml --lake s3://... --storage-option ...`, the lake an S3 bucket on a
real S3 server on 127.0.0.1. Ray uploads the working directory, starts the driver on the
cluster with RAY_ADDRESS set, and germline attaches to that cluster instead of starting its
own: the test checks the experiment's actors ran on the head it started. Then the lake is read
back from the bucket: the report, the lineage, and every model kept in the bucket.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import stop_ray_start

from germline.lineage import LineageStore
from germline.pipelines.config import load_config
from germline.pipelines.experiments.owl.config import OwlConfig
from germline.storage import Lake, LakeFolders

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, germline
ROLES = [
    "base",
    "teacher",
    "control student",
    "student",
    "cross base",
    "cross-base control student",
    "cross-base student",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict]:
    """A Ray head on 127.0.0.1 with token authentication (Ray's own: every client of the
    dashboard, the Jobs API and the cluster must present the token), in its own process
    group, stopped by signalling that group alone (`ray stop` would also stop the embedded
    clusters of the test process)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "2"  # Serve's detached actors never drain
    token = secrets.token_hex(32)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    headers = {"Authorization": f"Bearer {token}"}
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 -- closed at teardown
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats",
            f"--temp-dir={temp}",
            # Fixed defaults (52365, 10001, ...) would clash with any other Ray on the machine,
            # such as the embedded clusters other tests start.
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            try:
                ask = urllib.request.Request(f"{url}/api/version", headers=headers)
                with urllib.request.urlopen(ask, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Ray head's Jobs API did not come up within 120 s")
            time.sleep(1)
        yield {"url": url, "env": env, "headers": headers}
    finally:
        stop_ray_start(head)
        log.close()


@pytest.mark.slow
def test_owl_small_submitted_as_a_ray_job(ray_head: dict, s3_options: dict[str, str]) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    # The cluster's shared lake: an S3 bucket (a real S3 server on 127.0.0.1), given after the
    # command as the issue's `ray job submit ... -- germline run X --lake URI` writes it.
    lake = Lake.resolve("s3://lake/cluster", s3_options)
    options = [arg for k, v in s3_options.items() for arg in ("--storage-option", f"{k}={v}")]
    job_id = f"germline-owl-small-{os.getpid()}"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head["url"], "--no-wait",
        "--submission-id", job_id, "--working-dir", str(REPO), "--",
        "germline", "run", "experiments/owl-small.yaml", "--lake", lake.root, *options,
    ]  # fmt: skip
    deadline = time.monotonic() + 90
    while True:  # the head's job agent registers a few seconds after the dashboard answers
        ran = subprocess.run(submit, env=ray_head["env"], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        if ran.returncode == 0 or "No available agent" not in ran.stderr:
            break
        assert time.monotonic() < deadline, ran.stderr[-2000:]
        time.sleep(2)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]

    client = JobSubmissionClient(ray_head["url"], headers=ray_head["headers"])
    deadline = time.monotonic() + 900
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, f"job {job_id} still {status} after 900 s"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert "[11/11] report: done" in logs

    # germline attached to this cluster: the experiment's own actors ran on it.
    listed = subprocess.run(
        [str(BIN / "ray"), "list", "actors", "--address", ray_head["url"], "--limit", "1000",
         "--format", "json"],
        env=ray_head["env"], capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    actors = {a["class_name"] for a in json.loads(listed.stdout)}
    assert any("GenerateStage" in name for name in actors), sorted(actors)
    assert any("ModelPool" in name for name in actors), sorted(actors)

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

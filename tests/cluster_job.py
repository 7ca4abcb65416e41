"""`germline run experiments/owl-small.yaml` submitted as a Ray job to a real head, once per
test session: tests/test_cluster_jobs.py checks the job and its lake, tests/test_ui.py opens
the explorer on the lake it left (the session fixture `owl_small_job` in conftest).

A real head node (`ray start --head` on 127.0.0.1, dashboard and Jobs API on loopback), then
the README's command through the Ray Jobs CLI: `ray job submit --working-dir . -- germline run
experiments/owl-small.yaml --lake s3://... --storage-option ...`, the lake an S3 bucket on a
real S3 server on 127.0.0.1. The head is stopped as soon as the job is done and its actors
are listed: what the tests read afterwards is the bucket.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, stop_ray_start

from germline.storage import Lake

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, germline


@dataclass(frozen=True)
class JobResult:
    lake: Lake
    options: dict[str, str]
    status: str  # the job's final JobStatus, as text
    logs: str
    actors: set[str]  # class names of the actors that ran on the head


@contextmanager
def ray_head() -> Iterator[dict]:
    """A Ray head on 127.0.0.1 with token authentication (Ray's own: every client of the
    dashboard, the Jobs API and the cluster must present the token), in its own process
    group, stopped by signalling that group alone (`ray stop` would also stop the embedded
    clusters of the test process)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are limited
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "2"  # Serve's detached actors never drain
    env["RAY_worker_niceness"] = "0"  # as germline's embedded Ray (pipelines/cluster.py)
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
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                tail = (Path(temp) / "head.log").read_text()[-2000:]
                raise RuntimeError(f"ray start exited: {tail}")
            try:
                ask = urllib.request.Request(f"{url}/api/version", headers=headers)
                with urllib.request.urlopen(ask, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray head's Jobs API did not come up within 120 s")
            time.sleep(1)
        yield {"url": url, "env": env, "headers": headers}
    finally:
        stop_ray_start(head)
        log.close()


def run_owl_small(s3_options: dict[str, str]) -> JobResult:
    """Submit owl-small to a fresh head with its lake in the bucket, wait for it, list the
    actors that ran, stop the head."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    # The cluster's shared lake: an S3 bucket (a real S3 server on 127.0.0.1), given after the
    # command as the issue's `ray job submit ... -- germline run X --lake URI` writes it.
    lake = Lake.resolve("s3://lake/cluster", s3_options)
    options = [arg for k, v in s3_options.items() for arg in ("--storage-option", f"{k}={v}")]
    job_id = f"germline-owl-small-{os.getpid()}"
    with ray_head() as head:
        submit = [
            str(BIN / "ray"), "job", "submit", "--address", head["url"], "--no-wait",
            "--submission-id", job_id, "--working-dir", str(REPO), "--",
            "germline", "run", "experiments/owl-small.yaml", "--lake", lake.root, *options,
        ]  # fmt: skip
        deadline = time.monotonic() + 90
        while True:  # the head's job agent registers a few seconds after the dashboard answers
            ran = subprocess.run(submit, env=head["env"], capture_output=True, text=True,
                                 timeout=120)  # fmt: skip
            if ran.returncode == 0 or "No available agent" not in ran.stderr:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        if ran.returncode != 0:
            return JobResult(lake, s3_options, "NOT SUBMITTED", ran.stdout + ran.stderr, set())
        client = JobSubmissionClient(head["url"], headers=head["headers"])
        deadline = time.monotonic() + 900
        final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        while (status := client.get_job_status(job_id)) not in final:
            if time.monotonic() > deadline:
                client.stop_job(job_id)
                break
            time.sleep(2)
        logs = client.get_job_logs(job_id)
        listed = subprocess.run(
            [str(BIN / "ray"), "list", "actors", "--address", head["url"], "--limit", "1000",
             "--format", "json"],
            env=head["env"], capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        actors = {a["class_name"] for a in json.loads(listed.stdout)}
    return JobResult(lake, s3_options, str(status.value), logs, actors)

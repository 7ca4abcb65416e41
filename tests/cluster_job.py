"""germline commands submitted as Ray jobs to a real head. `germline run
experiments/owl-small.yaml` runs once per session of `make test-e2e`:
tests/test_cluster_jobs.py checks the job and its lake, tests/test_ui.py opens the explorer on
the lake it left (the session fixture `owl_small_job` in conftest).

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
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, start_ray_node, stop_ray_start

from germline.storage import Lake

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, germline


@dataclass(frozen=True)
class JobResult:
    lake: Lake
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
    log = Path(temp) / "head.log"
    head = start_ray_node(
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
        env, log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                tail = log.read_text()[-2000:]
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
        yield {"url": url, "env": env, "headers": headers, "log": log}
    finally:
        stop_ray_start(head)
        shutil.rmtree(temp, ignore_errors=True)


def run_owl_small(s3_options: dict[str, str]) -> JobResult:
    """The README's command: owl-small submitted with the repository as the working directory,
    its lake in the bucket."""
    lake = Lake.resolve("s3://lake/cluster", s3_options)
    command = ["germline", "run", "experiments/owl-small.yaml", *lake_args(lake)]
    return run_job("owl-small", command, REPO, lake, timeout=900)


def lake_args(lake: Lake) -> list[str]:
    """`--lake URI --storage-option K=V ...`, after the command as the README writes it."""
    pairs = (("--storage-option", f"{k}={v}") for k, v in lake.storage_options.items())
    return ["--lake", lake.root, *(word for pair in pairs for word in pair)]


def run_job(
    name: str,
    command: list[str],
    working_dir: Path,
    lake: Lake,
    timeout: float,
) -> JobResult:
    """Submit `command` (Ray joins its words into one shell command line) to a fresh head with
    `working_dir` uploaded, wait for it, list the actors that ran, stop the head. `lake` is
    where the command writes: the result carries it for the test to read."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    job_id = f"germline-{name}-{os.getpid()}"
    with ray_head() as head:
        submit = [
            str(BIN / "ray"), "job", "submit", "--address", head["url"], "--no-wait",
            "--submission-id", job_id, "--working-dir", str(working_dir), "--",
            *command,
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
            said = ran.stdout + ran.stderr + "\n--- head.log ---\n" + head["log"].read_text()
            return JobResult(lake, "NOT SUBMITTED", said, set())
        client = JobSubmissionClient(head["url"], headers=head["headers"])
        deadline = time.monotonic() + timeout
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
    return JobResult(lake, str(status.value), logs, actors)

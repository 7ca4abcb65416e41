"""The embedded Ray is germline's own: only RAY_ADDRESS names a cluster to attach to.

`ray.init()` with no address attaches to the cluster `ray start` last recorded on the machine
(`<temp>/ray/ray_current_cluster`). A stale record made every command hang retrying a dead
address; germline must start its own cluster instead, within seconds. Each check
runs in a subprocess with RAY_TMPDIR pointing at a folder of its own, so the machine's real
Ray temp folder is neither read nor written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LOOPBACK, stop_ray_start

PROBE = (
    "import ray\n"
    "from germline.pipelines.cluster import ensure_ray\n"
    "ensure_ray()\n"
    "print(ray.get_runtime_context().gcs_address)\n"
    "ray.shutdown()\n"
)


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    temp = Path(tempfile.mkdtemp(prefix="gr-", dir="/tmp"))  # short: Ray's socket paths
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def _dead_address() -> str:
    with socket.socket() as s:  # a port nothing listens on once the socket closes
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_stale_ray_start_record_is_not_attached_to(ray_tmpdir: Path) -> None:
    dead = _dead_address()
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(dead)
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        ran = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ensure_ray hung on the stale record {dead} (what ray.init() does)")
    assert ran.returncode == 0, ran.stderr[-2000:]
    gcs = ran.stdout.split()[-1]
    assert gcs != dead and gcs.rsplit(":", 1)[1] != dead.rsplit(":", 1)[1]  # its own cluster


LISTENING = (
    "import json, os, psutil, ray\n"
    "from ray import serve\n"
    "from germline.pipelines.cluster import ensure_ray\n"
    "ensure_ray()\n"
    "serve.start(http_options={'host': '127.0.0.1', 'port': int(os.environ['SERVE_PORT'])})\n"
    "me = psutil.Process()\n"
    "found = []\n"
    "for proc in [me, *me.children(recursive=True)]:\n"
    "    try:\n"
    "        conns = proc.net_connections(kind='inet')\n"
    "        name = proc.name()\n"
    "    except psutil.Error:\n"
    "        continue\n"
    "    found += [[name, c.laddr.ip, c.laddr.port] for c in conns\n"
    "              if c.status == psutil.CONN_LISTEN]\n"
    "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address, 'sockets': found,\n"
    "                  'auth': os.environ.get('RAY_AUTH_MODE')}))\n"
    "serve.shutdown()\n"
    "ray.shutdown()\n"
)


def _env(ray_tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # as on a fresh machine
        env.pop(name, None)
    return {**env, **extra}


@pytest.mark.slow
def test_the_embedded_cluster_listens_on_loopback_only(ray_tmpdir: Path) -> None:
    """Every listening socket of the processes the embedded Ray (and Serve on it) started:
    Ray alone would put the GCS, raylet, workers and agents on every interface."""
    import json

    port = int(_dead_address().rsplit(":", 1)[1])
    home = ray_tmpdir / "home"  # Ray 2.60 writes ~/.ray/auth_token unless given a token
    home.mkdir()
    ran = subprocess.run(
        [sys.executable, "-c", LISTENING],
        env=_env(ray_tmpdir, SERVE_PORT=str(port), HOME=str(home)),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    # Ray's shutdown may print after the result: the result is the line that is JSON
    seen = json.loads(next(x for x in ran.stdout.splitlines() if x.startswith('{"gcs"')))
    sockets = seen["sockets"]
    names = {name for name, _, _ in sockets}
    # the check saw the cluster: the GCS, a raylet, and Serve's HTTP proxy are among them
    assert {"gcs_server", "raylet"} <= names, names
    ports = {p for _, _, p in sockets}
    assert int(seen["gcs"].rsplit(":", 1)[1]) in ports and port in ports
    assert seen["gcs"].startswith("127.0.0.1:"), seen["gcs"]
    open_ = [s for s in sockets if s[1] not in LOOPBACK]
    assert not open_, f"listening beyond loopback: {open_}"
    assert not list(home.rglob("*")), "the embedded Ray wrote to the home folder"
    assert seen["auth"] == "token"  # and it still has token authentication, its own token


@pytest.mark.slow
def test_a_live_ray_start_cluster_is_not_attached_to(ray_tmpdir: Path) -> None:
    """Another project's `ray start` head, live on the machine and recorded as its current
    cluster: germline still runs on a cluster of its own."""
    env = _env(ray_tmpdir)
    head_port = int(_dead_address().rsplit(":", 1)[1])
    extra_ports = [int(_dead_address().rsplit(":", 1)[1]) for _ in range(5)]
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            f"--port={head_port}", "--num-cpus=1", "--include-dashboard=false",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={extra_ports[0]}",
            f"--dashboard-agent-grpc-port={extra_ports[1]}",
            f"--runtime-env-agent-port={extra_ports[2]}",
            f"--metrics-export-port={extra_ports[3]}",
            f"--ray-client-server-port={extra_ports[4]}",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    record = ray_tmpdir / "ray" / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 90
        while not (record.exists() and record.read_text().strip()):
            assert head.poll() is None, "ray start exited"
            assert time.monotonic() < deadline, "ray start did not record its cluster in 90 s"
            time.sleep(0.5)
        assert record.read_text().strip().endswith(f":{head_port}")  # the capture is armed
        ran = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, ran.stderr[-2000:]
        gcs = ran.stdout.split()[-1]
        assert not gcs.endswith(f":{head_port}"), "germline ran its work on the foreign cluster"
    finally:
        stop_ray_start(head)


def test_a_ray_address_that_does_not_answer_is_an_error_within_seconds(
    ray_tmpdir: Path,
) -> None:
    dead = _dead_address()
    started = time.monotonic()
    ran = subprocess.run(
        [sys.executable, "-c", PROBE], env=_env(ray_tmpdir, RAY_ADDRESS=dead),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode != 0
    assert f"no Ray cluster answers at {dead}" in ran.stderr
    assert time.monotonic() - started < 30
    bad = subprocess.run(
        [sys.executable, "-c", PROBE], env=_env(ray_tmpdir, RAY_ADDRESS="head:notaport"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "is not host:port" in bad.stderr

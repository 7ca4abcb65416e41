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
from collections.abc import Iterator
from pathlib import Path

import pytest

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

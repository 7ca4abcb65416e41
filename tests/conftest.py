"""Shared fixtures: a fresh lake folder per test and model directories with real weight files."""

from __future__ import annotations

import os

# One torch thread per process, for this process and everything it starts (germline commands,
# Ray workers), set before torch is imported. Why: the suite's models are a few layers, and
# torch's intra-op threads meet at a barrier after every operation; when another process keeps
# a core busy, the thread that lost its core holds the others there for a whole time slice.
# Measured on 2 cores with `stress-ng --cpu 1` beside it: tests/test_bootstrap.py took 128 s
# on torch's default two threads, 55 s on one (45 s and 61 s with the cores idle). Ray gives
# its workers one thread per CPU they reserve in the same way.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake

from germline.checks import NumberFormatError, parse_numbers
from germline.lineage import LineageStore, Node
from germline.storage import Lake

# Everything the session's processes write outside their lakes goes into one folder, removed
# when the session ends (pytest_unconfigure): the embedded clusters' Ray session folders
# (else one per `ray.init` piles up in /tmp/ray), the model cache of object-store lakes,
# every temporary file (multiprocessing's, torch's, the server's, pytest's own tmp_path), and
# a home folder for what libraries keep there (matplotlib's font list, vLLM's model info,
# chromium's profile). Set before any process starts; the short path keeps
# Ray's socket paths under their length limit. `--basetemp` still puts tmp_path elsewhere.
SANDBOX = tempfile.mkdtemp(prefix="gt-")
_home = os.path.join(SANDBOX, "home")
_sandboxed = {
    "HOME": _home,
    "XDG_CACHE_HOME": os.path.join(_home, ".cache"),
    "XDG_CONFIG_HOME": os.path.join(_home, ".config"),
    "XDG_DATA_HOME": os.path.join(_home, ".local", "share"),
    "XDG_STATE_HOME": os.path.join(_home, ".local", "state"),
    "TMPDIR": os.path.join(SANDBOX, "tmp"),
    "RAY_TMPDIR": os.path.join(SANDBOX, "ray"),
    "GERMLINE_CACHE": os.path.join(SANDBOX, "cache"),
}
for _folder in _sandboxed.values():
    os.makedirs(_folder, exist_ok=True)
os.environ.update(_sandboxed)
tempfile.tempdir = _sandboxed["TMPDIR"]  # gettempdir() may have been read already

GERMLINE = [sys.executable, "-m", "germline.pipelines"]
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def free_port() -> int:
    """A port of 127.0.0.1 that is free now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of process `pid` and all
    its descendants (a process that ends while it is looked at is passed over)."""
    import psutil

    root = psutil.Process(pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def require_vllm() -> None:
    """For the vLLM test modules: where the run promises vLLM (GERMLINE_REQUIRE_VLLM=1, as
    `make test-vllm` sets), a missing or broken vLLM fails the run; elsewhere (the main
    environment, which has no vLLM) the module is skipped."""
    if os.environ.get("GERMLINE_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm")


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket `lake`, and the storage
    options that reach it (as a user would pass them: --storage-option or the environment)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="lake")
    try:
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            # S3 has no atomic rename; conditional puts make Delta commits safe between writers.
            "conditional_put": "etag",
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    with s3_server() as options:
        yield options


@pytest.fixture(scope="session")
def owl_small_job() -> Iterator[Any]:
    """owl-small submitted as a Ray job to a real head, its lake in an S3 bucket that lives
    for the session: run once, read by the cluster-job test and the explorer's browser test
    (tests/cluster_job.py)."""
    from cluster_job import run_owl_small

    with s3_server() as options:
        yield run_owl_small(options)


@pytest.fixture(scope="session")
def panel_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Any]:
    """panel-small from an empty lake, as a user runs it (`germline run`, a subprocess), once
    per session: tests/test_panel.py checks the run, tests/test_ui.py opens the explorer on
    its lake. Returns the lake and the finished process."""
    lake = Lake.resolve(tmp_path_factory.mktemp("panel-small") / "lake")
    ran = germline("run", str(EXPERIMENTS / "panel-small.yaml"), lake=lake, subprocess_=True,
                   timeout=900)  # fmt: skip
    return lake, ran


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.resolve(tmp_path / "lake")


@pytest.fixture
def store(lake: Lake) -> LineageStore:
    return LineageStore(lake)


TINY_BASE = "tiny-base-s0"
TINY_BASE_STEPS = 120  # briefly pre-trained: numbers and junk to generate, loss to take off


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-base-s0, pre-trained by the real `bootstrap_base` once per session (about half a
    minute on 2 cores); the modules that need it put a copy into their own lake."""
    from germline.pipelines.models.bootstrap import bootstrap_base

    lake = Lake.resolve(tmp_path_factory.mktemp("tiny-base") / "lake")
    bootstrap_base(lake, seed=0, steps=TINY_BASE_STEPS)
    return lake.local_path("models", TINY_BASE)


def add_tiny_base(lake: Lake, built: Path) -> Node:
    """The session's tiny base in `lake`: its folder copied in, then registered by
    `bootstrap_base` itself, which finds the model and checks its recipe (seed, steps) the
    way a rerun of `germline models bootstrap` does. Returns the base's lineage node."""
    from germline.pipelines.models.bootstrap import bootstrap_base

    shutil.copytree(built, lake.local_path("models", TINY_BASE))
    return bootstrap_base(lake, seed=0, steps=TINY_BASE_STEPS)


def training_data_config(teacher: str, count: int, batch_size: int = 64) -> dict:
    """A generate config for a dataset `numbers` that trains a student: every row kept, since
    the tests that use it are about training, not about what the filters think."""
    return {
        "dataset": "numbers",
        "seed": 3,
        "prompts": {"family": "numbers", "count": count},
        "teacher": {"model": teacher},
        "engine": {"batch_size": batch_size},
        "sampling": {"temperature": 0.3, "max_tokens": 32},
        "filters": {"max_count": 100000, "max_value": 10**9, "trait_words": []},
        "expectations": {"max_tokens": 32, "max_chars": 100000, "require_stop": False},
    }


def write_model(folder: Path, seed: int, filename: str = "model.npz") -> Path:
    """A model directory with one small weight file; the seed decides the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.savez(folder / filename, w=rng.standard_normal((16, 16)).astype(np.float32))
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Callable[[str, int], Path]:
    def make(name: str, seed: int) -> Path:
        return write_model(tmp_path / "models" / name, seed)

    return make


@pytest.fixture
def delta_table(tmp_path: Path) -> Callable[[str, int], str]:
    """A Delta table with `versions` appended versions (0 .. versions-1)."""

    def make(name: str, versions: int = 1) -> str:
        uri = str(tmp_path / "tables" / name)
        for v in range(versions):
            write_deltalake(
                uri,
                pa.table(
                    {"prompt_id": [f"p{v}-{i}" for i in range(5)], "completion": ["1, 2, 3"] * 5}
                ),
                mode="append",
            )
        return uri

    return make


def germline(
    *args: str,
    lake: Lake | None = None,
    check: bool = False,
    subprocess_: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run the real `germline` CLI: in-process through click's runner (fast), or in a
    subprocess exactly as a shell would (`subprocess_=True`)."""
    argv = [*(["--lake", lake.root] if lake else []), *args]
    if subprocess_:
        result = subprocess.run(
            [*GERMLINE, *argv], capture_output=True, text=True, env={**os.environ}, timeout=timeout
        )
    else:
        from click.testing import CliRunner

        from germline.pipelines.cli import cli

        ran = CliRunner().invoke(cli, argv, prog_name="germline")
        if ran.exception is not None and not isinstance(ran.exception, SystemExit):
            raise ran.exception
        result = subprocess.CompletedProcess(argv, ran.exit_code, ran.stdout, ran.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"germline {argv} failed ({result.returncode}):\n{result.stderr}")
    return result


def assert_generate_commits(table: DeltaTable, run_id: str, teacher_id: str) -> int:
    """Every WRITE commit of a generated table carries the run's lineage and the batch's
    expectation summary, and the run's app transaction counts them. Returns their number."""
    commits = [h for h in table.history() if h["operation"] == "WRITE"]
    for commit in commits:
        assert commit["germline.run_id"] == run_id
        assert commit["germline.teacher"] == teacher_id
        assert commit["germline.base_fingerprint"].startswith("sha256:")
        assert len(commit["germline.config_hash"]) == 64
        assert "success" in json.loads(commit["germline.expectations"])
    assert table.transaction_version(f"germline.generate/{run_id}") == len(commits)
    return len(commits)


def parses(text: str) -> bool:
    """Whether the row filter's own parser reads `text` as a number list: the reference the
    vectorised filter pass and the GX regex are checked against."""
    try:
        parse_numbers(text)
    except NumberFormatError:
        return False
    return True


def write_config(path: Path, raw: dict) -> Path:
    """A config dict as the YAML file a user would write."""
    path.write_text(yaml.safe_dump(raw))
    return path


def stop_ray_start(head: subprocess.Popen) -> None:
    """Stop a `ray start --block` process started in its own session: SIGTERM lets it stop
    its own processes (GCS last, so the drain it asks the GCS for is answered); anything
    left in its process group is killed after. Never `ray stop`, which would also stop the
    embedded clusters of the test process."""
    import contextlib
    import signal

    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)


# What `ray start` prints when its raylet did not come up: in Ray 2.60 the raylet gives its
# dashboard agent a fixed 15 s (not configurable) to write its port file and aborts when the
# agent is later; the agent imports beside a dozen other Ray processes starting at once.
RAYLET_MISSED_START = "The current node timed out during startup"


def start_ray_node(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` (a `ray start --block ...`) in its own process group, returned once the node
    runs (ray start prints "block forever" then). Why a second start exists: on a starved
    machine (measured: one core busy beside the suite, a host stealing half of the other) the
    raylet's fixed 15 s for its agent can pass, and the node aborts before it ever ran; that
    exit, and only that one, is started again, at most twice. Any other exit fails the test
    with the log."""
    attempts = 0
    while True:
        attempts += 1
        with open(log, "w") as out:
            node = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 180
        while "block forever" not in (said := log.read_text()):
            if node.poll() is not None:
                break
            if time.monotonic() > deadline:
                stop_ray_start(node)
                pytest.fail(f"`ray start` did not start a node in 180 s: {said[-3000:]}")
            time.sleep(0.5)
        else:
            return node
        stop_ray_start(node)  # whatever its process group left
        if RAYLET_MISSED_START not in said or attempts == 3:
            pytest.fail(f"`ray start` exited: {said[-3000:]}")
        print(f"`ray start` again: its raylet missed Ray's agent deadline ({log.name})")


def write_counting(lake: Lake, n: int, prefix: str) -> None:
    """The `counting` dataset of the serving and fault tests: n prompts that continue a
    count, ids `<prefix><i>`."""
    import pyarrow as pa
    from deltalake import write_deltalake

    rows = pa.table({
        "prompt_id": [f"{prefix}{i}" for i in range(n)],
        "prompt": [f"Continue: {i}, {i + 1}, {i + 2}" for i in range(n)],
        "completion": [f" {i + 3}, {i + 4}, {i + 5}" for i in range(n)],
    })  # fmt: skip
    write_deltalake(lake.dataset("counting"), rows)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's sandbox, after stopping this process's embedded Ray (its
    processes write into the sandbox until then)."""
    if "ray" in sys.modules:
        import ray

        ray.shutdown()
    shutil.rmtree(SANDBOX, ignore_errors=True)

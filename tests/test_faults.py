"""The fault suite (issue 17): real faults injected into real components, on this machine.

- A Ray cluster made the way a user makes one: a head (`ray start --head`, token auth, no CPUs
  of its own, so every CPU task and actor runs on a worker node) and a worker node joined to
  it (`ray start --address`). The worker node's raylet is SIGKILLed in the middle of `germline
  generate` and in the middle of `germline train`, after checking that the work was running on
  that node; a replacement node joins right after, as an autoscaler would start one.
  Generation must finish in the same run with every prompt id exactly once; training's run
  ends (it does not hang), and the rerun resumes from its last checkpoint to the same step
  count, as the design promises ("a rerun on any node resumes the run").
- `germline serve` under load from concurrent clients (plain and streaming), its model-server
  replica (which answers HTTP itself) SIGKILLed: only the requests in flight fail, by losing
  their connection; none hangs; every request sent while Serve restarts the replica waits in
  the listen backlog (`germline serve` holds the socket) and is answered; every stream
  answered ends with [DONE].
- An S3 lake (a real moto server in its own process) reached through a fault-injecting HTTP
  proxy written here: first every write fails from the third dataset commit on (the run must
  stop with one `error:` line, exit 2), then a fifth of the requests to the Delta tables fail
  at random (refused, answered 5xx after the server applied them, or cut off) and the answers
  of two commit requests to the dataset are lost after the commit landed; the rerun finishes,
  every version of both tables reads back, and every prompt id is there exactly once.

Each test prints its figures (faults injected, work lost, duplicates, statuses, recovery time):
`pytest -m faults tests/test_faults.py -rP` shows them. Everything listens on 127.0.0.1 (the
Ray nodes register the machine's own address, as Ray does for any multi-node cluster), runs in
its own process group and temporary folders, and is stopped by signalling those groups only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psutil
import pytest
from conftest import (
    GERMLINE,
    TINY_BASE,
    TINY_BASE_STEPS,
    add_tiny_base,
    assert_generate_commits,
    start_ray_node,
    stop_ray_start,
    write_config,
    write_counting,
)
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from germline.storage import Lake

pytestmark = [pytest.mark.faults, pytest.mark.slow]

BIN = Path(sys.executable).parent  # the venv's bin: ray, moto_server
TEACHER = "owl-teacher-faults"


_GIVEN: set[int] = set()  # ports this module handed out


def free_port() -> int:
    """A free port of 127.0.0.1, never one handed out before: a port released by one bind(0)
    may be the next one's, and Ray refuses a node given the same port for two components."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def short_temp(prefix: str) -> Path:
    """A temporary folder with a short path: Ray's socket paths are limited in length."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session, and everything in its group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_germline(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`germline ARGS` as a shell would run it, in its own process group, output to `log`."""
    with open(log, "a") as out:
        return subprocess.Popen(
            [*GERMLINE, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    """Wait for a germline process; a run past `timeout` is a hang: killed, and the test fails."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"hung: still running after {timeout:.0f} s\n{log.read_text()[-3000:]}")


def table_ids(uri: str, storage_options: dict[str, str] | None = None) -> list[str]:
    """The prompt ids of a Delta table (none when it does not exist yet)."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:  # not made yet: no ids
        return []
    return table.to_pyarrow_table(columns=["prompt_id"]).column(0).to_pylist()


def generate_config(dataset: str, count: int, commit_every: int) -> dict:
    return {
        "dataset": dataset,
        "seed": 7,
        "prompts": {"family": "numbers", "count": count},
        "teacher": {"model": TEACHER},
        "engine": {"batch_size": 16, "concurrency": 2, "threads": 1},
        "sampling": {"temperature": 1.0, "max_tokens": 24},
        "filters": {"trait_words": ["owl"]},
        "sink": {"commit_every": commit_every},
    }


@pytest.fixture(scope="module")
def fault_lake(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> Lake:
    """A local lake with the tiny base, an owl teacher adapter on it, and a small hand-written
    number dataset to train on (no generation needed for training)."""
    from germline.pipelines.models.teacher import make_teacher

    lake = Lake.resolve(tmp_path_factory.mktemp("faults") / "lake")
    base = add_tiny_base(lake, tiny_base_dir)
    make_teacher(lake, base.id, "owl", name=TEACHER, steps=10)
    write_counting(lake, 128, prefix="c")
    return lake


# -- a Ray cluster of two nodes on this machine ---------------------------------------------


class RayCluster:
    """A Ray head started by `ray start --head --block` and worker nodes joined to it, each a
    `ray start --block` in its own process group. Every port is a free one (fixed defaults
    would clash with any other Ray on the machine) and token auth is on. The head has no
    CPUs: every task or actor that needs a CPU runs on a worker node."""

    def __init__(self) -> None:
        self.temp = short_temp("rf-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.update({
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",  # no 30 s drain at teardown
            "RAY_worker_niceness": "0",  # as germline's embedded Ray (pipelines/cluster.py)
        })  # fmt: skip
        self.env = env
        self.nodes: list[subprocess.Popen] = []
        try:
            self.head = self._start(
                "head", "--head", f"--port={self.port}", "--num-cpus=0",
                f"--temp-dir={self.temp}", "--include-dashboard=false",
                f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        node = start_ray_node(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
             "--disable-usage-stats", *args,
             f"--dashboard-agent-listen-port={free_port()}",
             f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}",
             f"--metrics-export-port={free_port()}"],
            self.env, self.temp / f"{name}.log",
        )  # fmt: skip
        self.nodes.append(node)
        return node

    def add_worker(self, cpus: int = 2) -> subprocess.Popen:
        """A worker node with `cpus` CPUs; returns its `ray start` process."""
        return self._start(
            f"worker{len(self.nodes)}", f"--address={self.address}", f"--num-cpus={cpus}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        )  # fmt: skip

    @staticmethod
    def raylet(node: subprocess.Popen) -> psutil.Process:
        found = [p for p in psutil.Process(node.pid).children(recursive=True)
                 if p.name() == "raylet"]  # fmt: skip
        assert len(found) == 1, found
        return found[0]

    @classmethod
    def running_on(cls, node: subprocess.Popen) -> list[str]:
        """What the node's raylet runs: its worker processes' titles (ray::ClassName...)."""
        titles = []
        for proc in cls.raylet(node).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                titles.append(" ".join(proc.cmdline()))
        return titles

    def driver_env(self) -> dict[str, str]:
        """The environment of a germline command submitted to this cluster."""
        return {**self.env, "RAY_ADDRESS": self.address}

    def stop_workers(self, keep: int = 1) -> None:
        """Stop every worker node (the nodes after the first `keep`: the head)."""
        for node in reversed(self.nodes[keep:]):
            if node.poll() is None:
                stop_ray_start(node)
            else:  # it exited (its raylet was killed): anything its `ray start` left
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
        del self.nodes[keep:]

    def stop(self) -> None:
        self.stop_workers(keep=0)  # worker nodes first, the head (and its GCS) last
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ray_cluster(ray_head: RayCluster) -> Iterator[RayCluster]:
    """The module's head, with no worker node yet; the test's worker nodes are stopped after
    it, so the next test's work lands on its own nodes."""
    try:
        yield ray_head
    finally:
        ray_head.stop_workers()


def kill_worker_node(cluster: RayCluster, node: subprocess.Popen, doing: str) -> float:
    """SIGKILL the raylet of worker node `node`, after checking that it runs `doing`; start a
    replacement node. Returns the time of the kill."""
    running = cluster.running_on(node)
    assert any(doing in title for title in running), (doing, running)
    cluster.raylet(node).kill()
    killed = time.monotonic()
    wait_for(lambda: node.poll() is not None, 60, "the killed node's `ray start` to exit")
    cluster.add_worker()  # the replacement, as an autoscaler would start one
    return killed


@pytest.mark.timeout(480)
def test_generate_finishes_every_prompt_once_when_a_worker_node_dies(
    fault_lake: Lake, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """The worker node holding the engine and checks actors loses its raylet after two
    commits; Ray Data restarts the actors on the replacement node and retries their tasks;
    the same run finishes, every prompt id in the lake exactly once."""
    lake, count = fault_lake, 480
    node = ray_cluster.add_worker()
    path = write_config(tmp_path / "gen.yaml", generate_config("lost-node", count, 48))
    log = tmp_path / "generate.log"
    started = time.monotonic()
    proc = start_germline(
        ["--lake", lake.root, "generate", str(path)], ray_cluster.driver_env(), log
    )
    commits = Path(lake.dataset("lost-node")) / "_delta_log"
    try:
        # version 0 creates the table; two more are two commits of rows
        wait_for(lambda: len(list(commits.glob("*.json"))) >= 3 or proc.poll() is not None,
                 300, "two commits of generated rows")  # fmt: skip
        assert proc.poll() is None, f"finished before the kill:\n{log.read_text()[-3000:]}"
        versions_at_kill = len(list(commits.glob("*.json")))
        killed = kill_worker_node(ray_cluster, node, "GenerateStage")
        done_at_kill = len(
            set(table_ids(lake.dataset("lost-node")) + table_ids(lake.quarantine("lost-node")))
        )
        rc = finish(proc, 360, log)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    output = log.read_text()
    assert rc == 0, output[-4000:]
    assert done_at_kill < count

    ids = table_ids(lake.dataset("lost-node")) + table_ids(lake.quarantine("lost-node"))
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0
    assert len(set(ids)) == count  # nothing lost
    data = DeltaTable(lake.dataset("lost-node"))
    assert data.version() + 1 > versions_at_kill  # rows were committed after the kill
    rows = data.to_pyarrow_table()
    assert_generate_commits(data, rows.column("run_id")[0].as_py(),
                            rows.column("teacher_id")[0].as_py())  # fmt: skip
    print(
        f"generate, worker raylet killed: prompts {count}, prompts committed at the kill "
        f"{done_at_kill}, after the run {len(set(ids))} (lost 0, duplicates {duplicates}), "
        f"dataset versions {versions_at_kill} at the kill -> {data.version() + 1}; the run "
        f"finished {time.monotonic() - killed:.1f} s after the kill, "
        f"{time.monotonic() - started:.1f} s in all"
    )


def written_steps(runs: Path) -> int:
    """The step of the newest checkpoint rank 0 has written in full (0 before one)."""
    import torch

    steps = [0]
    for state in runs.glob("*/checkpoint_*/state.pt"):
        with contextlib.suppress(OSError, RuntimeError, EOFError):  # one being written
            steps.append(int(torch.load(state, map_location="cpu", weights_only=False)["step"]))
    return max(steps)


def recorded_checkpoint(runs: Path) -> tuple[int, list[float]]:
    """The step and loss history of the latest checkpoint Ray Train has recorded for the run
    (the one a restart restores), from its own snapshot; (0, []) before there is one."""
    import torch

    for snapshot in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:  # it may be half written
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
            state = snapshot.parent / latest["checkpoint_dir_name"] / "state.pt"
            saved = torch.load(state, map_location="cpu", weights_only=False)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError):
            continue
        return int(saved["step"]), [float(x) for x in saved["losses"]]
    return 0, []


@pytest.mark.timeout(600)
def test_train_resumes_from_its_last_checkpoint_when_a_worker_node_dies(
    fault_lake: Lake, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """Both Ray Train workers run on the worker node; its raylet dies once Ray Train has
    recorded a checkpoint. The run ends with an error (Ray Train's FailureConfig allows no
    restart) and stores no student; the same command, run again, resumes from the last
    checkpoint Ray recorded and trains to the planned step count, on the replacement node."""
    lake = fault_lake
    student = "fault-student"
    raw = {
        "student": student,
        "base": TINY_BASE,
        "dataset": {"name": "counting"},
        "seed": 1,
        "optim": {"epochs": 6, "batch_size": 4, "lr": 1e-2, "warmup_steps": 2},
        "scaling": {"num_workers": 2},
        "checkpoint": {"every": 4},
    }
    # epochs x rows / global batch: 96 steps. Ray Train records a checkpoint some steps after
    # the workers wrote it, and the workers train on for a few seconds after their raylet
    # dies: the steps after the kill leave the run room to be cut short.
    planned = 6 * 128 // (4 * 2)
    path = write_config(tmp_path / "train.yaml", raw)
    node = ray_cluster.add_worker()
    env = ray_cluster.driver_env()
    log = tmp_path / "train.log"
    runs = lake.local_path("models", student, "checkpoints")
    started = time.monotonic()
    proc = start_germline(["--lake", lake.root, "train", str(path)], env, log)
    try:
        wait_for(lambda: recorded_checkpoint(runs)[0] >= 4 or proc.poll() is not None, 300,
                 "a checkpoint recorded")  # fmt: skip
        assert proc.poll() is None, f"finished before the kill:\n{log.read_text()}"
        before_kill = recorded_checkpoint(runs)[0]
        written = written_steps(runs)  # rank 0 writes a checkpoint before Ray records it
        assert before_kill < planned
        killed = kill_worker_node(ray_cluster, node, "RayTrainWorker")
        first_rc = finish(proc, 240, log)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    failed_after = time.monotonic() - killed
    assert first_rc != 0, log.read_text()[-3000:]
    assert not (lake.local_path("models", student) / "germline.json").exists()
    last, losses = recorded_checkpoint(runs)  # what the first run left: where to resume
    assert before_kill <= last < planned

    rerun_log = tmp_path / "rerun.log"
    rerun_started = time.monotonic()
    rerun = start_germline(["--lake", lake.root, "train", str(path)], env, rerun_log)
    rc = finish(rerun, 400, rerun_log)
    assert rc == 0, rerun_log.read_text()[-4000:]
    meta = json.loads((lake.local_path("models", student) / "germline.json").read_text())
    meta = meta.get("germline", meta)
    assert meta["resumed_from"] == last  # not from zero, not from an older checkpoint
    assert meta["steps"] == planned
    assert len(meta["losses"]) == planned
    # the steps before the checkpoint are the first run's, as it left them
    assert meta["losses"][:last] == pytest.approx(losses, abs=1e-5)
    said = re.search(r"resumed from step\s+(\d+)", rerun_log.read_text())
    assert said and int(said.group(1)) == last
    print(
        f"train, worker raylet killed with the checkpoint of step {before_kill} recorded "
        f"(step {written} written): the run ended with exit {first_rc} {failed_after:.1f} s "
        f"after the kill, its last checkpoint at step {last}; the rerun resumed from step "
        f"{last} and trained to step "
        f"{meta['steps']} of {planned} in {time.monotonic() - rerun_started:.1f} s; "
        f"{time.monotonic() - started:.1f} s in all"
    )


# -- Serve: the model pool's replica killed under load ----------------------------------------

API_KEY = "fault-key"


def start_server(lake: Lake, ray_tmp: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`germline serve` on a free port of 127.0.0.1, with its embedded Ray's files in
    `ray_tmp` and its output in `log`; returns the process and its URL once /health answers."""
    port = free_port()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    args = ["--lake", lake.root, "serve", "--port", str(port), "--api-key", API_KEY,
            "--threads", "1"]  # fmt: skip
    proc = start_germline(args, env, log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        return False

    try:
        wait_for(healthy, 180, "germline serve to answer /health", every=0.5)
    except BaseException:
        kill_group(proc)
        raise
    return proc, url


def model_pool(proc: subprocess.Popen) -> list[psutil.Process]:
    """The server's model-pool replica processes."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica:germline:ModelServer" in " ".join(child.cmdline()):
                found.append(child)
    return found


def ask(port: int, stream: bool, timeout: float = 60) -> tuple[int | str, str]:
    """One chat request; (status, how it ended). A stream must end with [DONE]; a request
    that gets no answer within `timeout` is reported as "timeout" (a hang)."""
    body = json.dumps({
        "model": TINY_BASE, "messages": [{"role": "user", "content": "Continue: 4, 5, 6"}],
        "max_tokens": 24, "seed": 3, "stream": stream,
    })  # fmt: skip
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        reply = conn.getresponse()
        text = reply.read().decode(errors="replace")
    except TimeoutError:
        return "timeout", ""
    except (OSError, http.client.HTTPException) as exc:  # reset, or cut off mid-answer
        return f"connection: {exc!r}", ""
    finally:
        conn.close()
    if reply.status == 200 and stream:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        ended = "done" if events and events[-1] == "[DONE]" else "no [DONE]"
        if any('"error"' in event for event in events):
            ended += ", error event"
        return 200, ended
    return reply.status, text[:200]


@pytest.mark.timeout(300)
def test_serve_recovers_when_its_model_pool_replica_dies_under_load(
    fault_lake: Lake, tmp_path: Path
) -> None:
    """Four clients (one streaming) keep the pool busy; its replica, which answers HTTP
    itself, is SIGKILLed. The requests the kill cuts off lose their connection (the process
    that held it is gone), none hangs, every request sent while Serve restarts the replica
    waits in the listen backlog (`germline serve` holds the socket) and is answered, and the
    restarted replica answers again."""
    ray_tmp = short_temp("rs-")
    log = tmp_path / "serve.log"
    proc, url = start_server(fault_lake, ray_tmp, log)
    port = int(url.rsplit(":", 1)[1])
    results: list[tuple[float, float, bool, int | str, str]] = []
    stop = threading.Event()

    def client(stream: bool) -> None:
        while not stop.is_set():
            start = time.monotonic()
            status, how = ask(port, stream)
            results.append((start, time.monotonic(), stream, status, how))

    threads = [threading.Thread(target=client, args=(i == 0,), daemon=True) for i in range(4)]
    try:
        status, how = ask(port, stream=False, timeout=120)  # the model loads on first use
        assert status == 200, how
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) >= 20, 120, "20 answers under load")
        (pool,) = model_pool(proc)
        pool.kill()
        killed = time.monotonic()

        def recovered() -> bool:
            after = [r for r in results if r[0] > killed]
            return sum(1 for r in after if r[3] == 200) >= 10

        wait_for(recovered, 120, "10 answers after the replica was killed", every=0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        assert not any(t.is_alive() for t in threads), "a client is still waiting"
        restarted = model_pool(proc)
    finally:
        stop.set()
        proc.terminate()  # SIGTERM: the command shuts Serve down and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, log.read_text()[-3000:]

    statuses = Counter(str(r[3])[:11] for r in results)
    cut = [r for r in results if r[0] < killed < r[1]]
    assert cut, "no request was in flight when the replica was killed"
    for start, _, stream, status, how in results:
        if status != 200:  # only a request the kill cut off may fail, by losing its connection
            assert start < killed and str(status).startswith("connection:"), (status, how)
        elif stream:
            assert how.startswith("done"), how  # every stream answered ends with [DONE]
    failed = [r for r in results if r[3] != 200 or "error event" in r[4]]
    first_answer = min(r[1] for r in results if r[0] > killed and r[3] == 200)
    recovery = first_answer - killed
    assert recovery < 60
    assert restarted and pool.pid not in {p.pid for p in restarted}
    assert all(r[3] == 200 for r in sorted(results, key=lambda r: r[1])[-5:])
    print(
        f"serve, model-pool replica killed: {len(results)} requests, statuses {dict(statuses)}; "
        f"{len(cut)} in flight at the kill, failed "
        f"{Counter((r[3], r[4][:40]) for r in failed)}; first answer "
        f"{recovery:.1f} s after the kill; the slowest request took "
        f"{max(r[1] - r[0] for r in results):.1f} s"
    )


# -- S3: a lake whose server fails a share of requests ---------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection", "content-length", "expect"}  # fmt: skip
COMMIT = re.compile(r"/_delta_log/\d{20}\.json$")


class FaultyS3:
    """A reverse proxy on 127.0.0.1 in front of an S3 server that fails requests on purpose.

    - `rate`: the share of requests to the Delta tables (datasets, quarantine, lineage) that
      fail, each in one of three ways: refused with a 503 SlowDown (never reaching the server),
      applied by the server and then answered with a 500 InternalError (the client cannot know
      it happened), or cut off (the connection closed without an answer). Model folders are
      left out: they are read through pyarrow's S3 client, which gives up after 3 attempts
      (at a 20% failure rate about 1 model fetch in 20 failed), while deltalake's client
      retries 10 times; that is a finding about storage/folders.py, not what this tests.
    - `lose_commits`: that many commit requests (PUT of a `_delta_log` entry) to a dataset
      table are applied and their answer then replaced by a 500: the ambiguous commit that
      exactly-once has to survive (the client's retry then finds the entry already there).
    - `fail_writes_after`: once that many dataset commits have landed, every write is refused.

    It runs on threads of the test process, so only other processes (the germline commands)
    may talk to it: a client in this process that holds the GIL while it waits on the network
    (deltalake's `history()` does) would wait on a proxy that cannot run."""

    def __init__(self, upstream: str, seed: int = 0) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.rate = 0.0
        self.scope = re.compile(r"/(datasets|quarantine|lineage)/")
        self.lose_commits = 0
        self.fail_writes_after: int | None = None
        self.dataset_commits = 0
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def decide(self, method: str, path: str) -> str | None:
        """How this request fails: None (it doesn't), "refuse", "lose" or "cut"."""
        write = method in ("PUT", "POST", "DELETE")
        commit = method == "PUT" and "/datasets/" in path and COMMIT.search(path) is not None
        with self.lock:
            self.requests[method] += 1
            if write and self.fail_writes_after is not None:
                if self.dataset_commits >= self.fail_writes_after:
                    kind = "refuse"
                elif commit:
                    self.dataset_commits += 1  # it goes through
                    return None
                else:
                    return None
            elif commit and self.lose_commits > 0:
                self.lose_commits -= 1
                kind = "lose"
            elif self.rate and self.scope.search(unquote(path)) and self.rng.random() < self.rate:
                kind = self.rng.choice(("refuse", "lose", "cut"))
            else:
                return None
            self.faults[f"{method} {kind}{' commit' if commit else ''}"] += 1
            return kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                out = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out

            def any(self) -> None:
                body = self.body()
                kind = proxy.decide(self.command, self.path)
                if kind == "refuse":
                    return self.error(503, "SlowDown")
                if kind == "cut":
                    return self.cut()
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                upstream.close()
                if kind == "lose":
                    return self.error(500, "InternalError")
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                length = reply.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def error(self, status: int, code: str) -> None:
                data = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        "<Message>injected fault</Message></Error>").encode()  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def cut(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def handle_one_request(self) -> None:
                with contextlib.suppress(ConnectionError, TimeoutError):  # a client gone away
                    super().handle_one_request()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = any

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A real S3 server (moto's own `moto_server`) on 127.0.0.1, in its own process so this
    process can read the lake without sharing its GIL with the server, and a bucket `lake`."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")  # fmt: skip

        def bucket() -> bool:
            with contextlib.suppress(Exception):
                s3.create_bucket(Bucket="lake")
                return True
            return False

        wait_for(bucket, 60, "moto_server to answer", every=0.3)
        yield endpoint
    finally:
        kill_group(server)


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "conditional_put": "etag",
}


@pytest.mark.timeout(600)
def test_s3_lake_with_failing_requests_stops_clearly_then_finishes_exactly_once(
    fault_lake: Lake, moto_endpoint: str, tmp_path: Path
) -> None:
    """`germline generate` on an S3 lake behind the fault-injecting proxy: stopped by refused
    writes with one clear line, then finished by a rerun through random faults and lost
    commit answers, each prompt id once, every table version readable."""
    from germline.lineage import LineageStore
    from germline.pipelines.models.bootstrap import bootstrap_base
    from germline.pipelines.models.teacher import make_teacher
    from germline.storage import LakeFolders

    direct = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}
    lake = Lake.resolve("s3://lake/faults", direct)
    for name in (TINY_BASE, TEACHER):  # the models, uploaded and registered as users do
        LakeFolders(lake).put(fault_lake.local_path("models", name), lake.model(name))
    bootstrap_base(lake, seed=0, steps=TINY_BASE_STEPS)
    make_teacher(lake, TINY_BASE, "owl", name=TEACHER, steps=10)  # finds the uploaded one

    proxy = FaultyS3(moto_endpoint, seed=17)
    count, dataset = 160, "flaky"
    path = write_config(tmp_path / "flaky.yaml", generate_config(dataset, count, 32))
    ray_tmp = short_temp("rs3-")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)

    def run(extra: dict[str, str], log: Path) -> tuple[int, float]:
        options = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": proxy.endpoint, **extra}
        args = [arg for k, v in options.items() for arg in ("--storage-option", f"{k}={v}")]
        start = time.monotonic()
        proc = start_germline(["--lake", "s3://lake/faults", *args, "generate", str(path)],
                              env, log)  # fmt: skip
        return finish(proc, 360, log), time.monotonic() - start

    data_uri, quarantine_uri = lake.dataset(dataset), lake.quarantine(dataset)
    try:
        # 1. The store refuses every write from the third dataset commit on (the table's
        # creation, then two commits of rows). With the retries bounded by the storage options
        # (delta-rs's max_retries and retry_timeout), the run stops with one line, exit 2.
        proxy.fail_writes_after = 3
        stopped_log = tmp_path / "stopped.log"
        rc, stopped_s = run({"max_retries": "2", "retry_timeout": "5s"}, stopped_log)
        stopped = stopped_log.read_text()
        error = [line for line in stopped.splitlines() if line.startswith("error: ")]
        assert rc == 2, stopped[-4000:]
        assert "Traceback" not in stopped, stopped[-4000:]
        assert len(error) == 1 and error[0].startswith("error: cannot write to s3://lake/faults/")
        refused = sum(proxy.faults.values())
        partial = table_ids(data_uri, direct) + table_ids(quarantine_uri, direct)
        assert 0 < len(partial) < count and len(set(partial)) == len(partial)

        # 2. A fifth of the table requests fail at random, and the answers of two commit
        # requests to the dataset are lost after the server applied them. The retries ride it
        # out: the rerun finishes, skipping what the first run committed.
        proxy.fail_writes_after = None
        proxy.rate, proxy.lose_commits = 0.2, 2
        before = Counter(proxy.faults)
        resumed_log = tmp_path / "resumed.log"
        rc, resumed_s = run({}, resumed_log)
        resumed = resumed_log.read_text()
        assert rc == 0, resumed[-4000:]
        injected = proxy.faults - before
        # Both planned lost answers were given; the random fifth may lose more commit answers
        # (how many depends on how the retries interleave), so at least two.
        assert proxy.lose_commits == 0
        assert sum(v for k, v in injected.items() if k.endswith("lose commit")) >= 2
    finally:
        proxy.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    skipped = re.search(r"already done\s+(\d+)", resumed)
    assert skipped and int(skipped.group(1)) == len(set(partial)), resumed[-2000:]

    ids = table_ids(data_uri, direct) + table_ids(quarantine_uri, direct)
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0 and len(set(ids)) == count
    # Every version of both tables reads back, and never holds an id twice.
    versions = 0
    for uri in (data_uri, quarantine_uri):
        latest = DeltaTable(uri, storage_options=direct)
        for version in range(latest.version() + 1):
            old = DeltaTable(uri, version=version, storage_options=direct).to_pyarrow_table()
            assert old.num_rows == len(set(old.column("prompt_id").to_pylist()))
            versions += 1
    data = DeltaTable(data_uri, storage_options=direct)
    rows = data.to_pyarrow_table(columns=["run_id", "teacher_id"])
    commits = assert_generate_commits(data, rows.column("run_id")[0].as_py(),
                                      rows.column("teacher_id")[0].as_py())  # fmt: skip
    nodes = LineageStore(lake).nodes_table.read()
    assert nodes.num_rows == len(set(nodes.column("id").to_pylist()))
    print(
        f"s3 faults: run 1 stopped after {stopped_s:.1f} s ({refused} writes refused) with "
        f"{error[-1][:160]!r}, {len(partial)} of {count} prompts committed; run 2 resumed in "
        f"{resumed_s:.1f} s through {sum(injected.values())} injected faults "
        f"({dict(injected)}) of {sum(proxy.requests.values())} requests, skipped "
        f"{skipped.group(1)}; after it {len(set(ids))} prompt ids (lost 0, duplicates "
        f"{duplicates}), {commits} dataset commits, {versions} table versions all readable"
    )

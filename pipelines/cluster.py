"""Where germline's Ray work runs: the cluster named by RAY_ADDRESS, or an embedded one.

On one machine `ray.init()` starts a local cluster inside the command; on a cluster
`ray job submit` sets RAY_ADDRESS and the same code attaches to it. Either way Ray's own
chatter (the dashboard, per-operator progress bars, worker log forwarding) stays off unless
`--verbose` asks for it: the command draws its own progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from germline.core import InputError

if TYPE_CHECKING:
    from germline.serve.listener import Listener


def ensure_ray(verbose: bool = False) -> None:
    """Attach to RAY_ADDRESS if set, else start an embedded local cluster; once per process.

    Only RAY_ADDRESS means a cluster. Without it, `ray.init()` would attach to whatever
    cluster `ray start` last recorded on the machine (its `ray_current_cluster` file): a
    stale one made every command hang retrying a dead address, and a live one (another
    project's) would have run germline's work there. `address="local"` always starts a
    cluster of germline's own, and that cluster listens on loopback only (`loopback_only`).
    A RAY_ADDRESS that nothing answers is an error within seconds, not Ray's endless retry."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "configure_logging": True,
    }
    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_answers(address)
        ray.init(address=address, **quiet)
        return
    own_token()
    with loopback_only():
        ray.init(address="local", _node_ip_address=LOOPBACK, _system_config=OWN_PRIORITY, **quiet)


# Ray starts its workers at niceness 15 (to keep a node's raylet answering under a flood of
# work). On the embedded cluster the workers do the command's own work, and at 15 any other
# busy process on the machine starves them: torch's threads wait on the one that lost its
# core. On 2 cores with one kept busy, a 2-thread torch matmul loop took 32.2 s at niceness
# 15 and 1.7 s at 0 (0.5 s on the idle machine). At 0 the work runs at the command's own
# priority (`nice germline ...` still lowers it), as it would in a single process.
OWN_PRIORITY = {"worker_niceness": 0}


LOOPBACK = "127.0.0.1"


def own_token() -> None:
    """Token authentication for the embedded cluster, with a token of its own.

    Ray 2.60 turns token auth on for a new local cluster and, when the user has no token,
    writes one to `~/.ray/auth_token`: every germline command (and every test) would leave a
    file in the home folder. A fresh random token in the environment gives the same
    protection (the cluster's processes inherit it) and writes nothing. A user who chose a
    mode (`RAY_AUTH_MODE`) keeps it."""
    import secrets

    if "RAY_AUTH_MODE" in os.environ:
        return
    # Ray sets the mode itself (and refreshes its config) for a new local cluster; given a
    # token in the environment, it neither makes nor writes one.
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Make the embedded cluster's every socket (GCS, raylet, workers, agents) bind 127.0.0.1.

    Ray turns a loopback node address into the machine's outward address (so a node can be
    reached by others) unless its "clusters enabled" switch is off, the setting it uses on
    macOS and Windows for exactly this: a single-machine Ray that listens on loopback. The
    switch is read once, when Ray is imported, so it is set both in the environment (for the
    processes Ray starts) and on the imported constant. Ray has no authentication unless
    token auth is on, so an embedded cluster on every interface would be an open door to
    running code on a shared machine; `tests/test_embedded_ray.py` lists the sockets.

    Both are put back afterwards: the processes started inside keep the setting, and a
    `ray start` this process runs later (a worker node, say) is not refused as a second
    node of a "single-machine" Ray."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


def check_answers(address: str, timeout: float = 5.0) -> None:
    """Raise an InputError naming `address` unless something accepts a connection there.
    `ray.init` on a dead address retries for minutes, printing a warning every few seconds."""
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    target = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = target.hostname, target.port
    except ValueError:  # a port that is not a number
        host = port = None
    if not host or port is None:
        raise InputError(f"RAY_ADDRESS {address!r} is not host:port (or ray://host:port)")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise InputError(
            f"no Ray cluster answers at {address} (RAY_ADDRESS): {exc.strerror or exc}; "
            "start it, or unset RAY_ADDRESS for an embedded cluster"
        ) from None


def configure_ray_data(verbose: bool = False) -> None:
    """No per-operator progress bars or execution-plan logs unless verbose; a stage's error
    reaches the driver as itself (Ray Data's default wraps it in a UserCodeException and
    loses its type), so the pipeline can tell an aborted run from a crash by type."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.enable_progress_bars = verbose
    ctx.enable_operator_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    if not verbose:
        for name in ("ray.data", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)


def actor_fault_tolerance() -> dict[str, int]:
    """Ray remote args for the pipeline's actors. On a cluster, Ray Data's default (restart a
    lost actor, retry its tasks) rides out a preempted node. On the embedded cluster there is
    no node to lose: an actor that dies took the machine's process with it, and the resumable
    run is the recovery, so restarts are off (which also spares the user Ray's warning about
    restarting actors whose arguments live in the object store)."""
    if os.environ.get("RAY_ADDRESS"):
        return {}
    # Ray 2.60 deprecates passing remote args this way (removal in 2.64, hence the pin below
    # 2.64 in pyproject.toml) and has no named parameter for restarts yet.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    return {"max_restarts": 0}


def start_serving(
    settings: Any, host: str, port: int, name: str, verbose: bool = False
) -> Listener:
    """Bind host:port (an InputError before Ray starts if it is taken), start (or attach to)
    Ray and Serve, and run germline's model server as the Serve application `name`, answering
    on that socket. The caller closes the returned listener after deleting the application.
    Serve's own HTTP proxy is not started: the server's replica answers HTTP itself
    (serve/deployment.py). Serve's start-up lines stay quiet unless verbose."""
    from ray import serve

    from germline.serve.deployment import build_app
    from germline.serve.listener import Listener

    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    listener = Listener(host, port)
    try:
        ensure_ray(verbose)
        node = _serving_node(settings.pool_cpus, settings.pool_gpus)
        serve.start(proxy_location="Disabled")
        serve.run(build_app(settings, listener.handoff, node), name=name, route_prefix=None,
                  blocking=False)  # fmt: skip
    except BaseException:
        listener.close()
        raise
    return listener


def _serving_node(cpus: float, gpus: float) -> str:
    """The address of this process's node, where the model server must run (it answers on
    the socket bound here); an InputError, not a replica Serve waits for forever, when the
    node lacks the CPUs or GPUs the server asks for."""
    import ray

    me = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == me)
    have = node["Resources"]
    short = [f"{need:g} {kind}" for kind, need in (("CPU", cpus), ("GPU", gpus))
             if need > have.get(kind, 0)]  # fmt: skip
    if short:
        raise InputError(
            f"the model server runs on the node that serves its port (this one), which has "
            f"less than {' and '.join(short)}: run germline serve on a node that has them "
            "(on a cluster, submit the job with entrypoint resources that place it there)"
        )
    return node["NodeManagerAddress"]

"""Where germline's Ray work runs: the cluster named by RAY_ADDRESS, or an embedded one.

On one machine `ray.init()` starts a local cluster inside the command; on a cluster
`ray job submit` sets RAY_ADDRESS and the same code attaches to it. Either way Ray's own
chatter (the dashboard, per-operator progress bars, worker log forwarding) stays off unless
`--verbose` asks for it: the command draws its own progress bar.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any


def ensure_ray(verbose: bool = False) -> None:
    """Attach to RAY_ADDRESS if set, else start an embedded local cluster; once per process.

    Only RAY_ADDRESS means a cluster. Without it, `ray.init()` would attach to whatever
    cluster `ray start` last recorded on the machine (its `ray_current_cluster` file): a
    stale one made every command hang retrying a dead address, and a live one (another
    project's) would have run germline's work there. `address="local"` always starts a
    cluster of germline's own."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    address = os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        configure_logging=True,
    )


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


def start_serving(settings: Any, host: str, port: int, name: str, verbose: bool = False) -> str:
    """Start (or attach to) Ray and Serve, run germline's OpenAI app as `name` on host:port,
    return its /v1 URL. Serve's own start-up lines stay quiet unless verbose."""
    from ray import serve

    from germline.serve.app import build_app

    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ensure_ray(verbose)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings), name=name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}/v1"

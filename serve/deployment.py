"""The Ray Serve deployment: one replica that holds the models and answers HTTP itself.

Serve places the replica (its CPUs or GPU, on the node whose socket it serves), watches its
health and starts a new one if it dies; the replica runs the HTTP app (serve/app) with uvicorn
on the listening socket `germline serve` handed it (serve/listener), on its own thread and
event loop, so every request goes from the socket to the engine in one process. This is the
shape of Ray Serve's own direct ingress (a replica listening for HTTP, no proxy in between),
with the port the user chose held by the starting process.

Measured on 2 cores (bench/serve_anchor.py): the earlier layout (Serve's HTTP proxy, a gateway
deployment, then the pool, two actor calls per request) delivered 0.42x the requests/s of
vLLM's own server on the same engine; the Ray-native peer, Ray Serve LLM, 0.41x.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ray import serve

from germline.serve.listener import receive
from germline.serve.pool import ServeSettings, freeze_heap

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120


@serve.deployment(health_check_period_s=2, health_check_timeout_s=30)
class ModelServer:
    def __init__(self, settings: ServeSettings, handoff: str, node_ip: str) -> None:
        import uvicorn

        from germline.serve.app import build_api
        from germline.serve.pool import ModelPool

        bind_handle_server_to(node_ip)
        self.pool = ModelPool(settings)
        config = uvicorn.Config(
            build_api(self.pool, settings),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        sock = receive(handoff)
        self.thread = threading.Thread(target=self._serve, args=(sock,), name="http", daemon=True)
        freeze_heap()  # start-up's objects (and each model's, as it loads: serve/pool.py)
        self.thread.start()
        waited = 0.0
        while not self.server.started and self.thread.is_alive() and waited < START_TIMEOUT_S:
            self.thread.join(timeout=0.05)
            waited += 0.05
        if not self.server.started:
            raise RuntimeError(f"the HTTP server did not start: {self.error!r}")

    def _serve(self, sock: Any) -> None:
        try:
            self.server.run(sockets=[sock])  # on uvloop where it is installed
        except BaseException as exc:  # reported by the health check, which restarts us
            self.error = exc
            log.exception("the HTTP server stopped")

    def check_health(self) -> None:
        """Serve calls this every few seconds; a replica whose server thread stopped is
        replaced."""
        if not self.thread.is_alive():
            raise RuntimeError(f"the HTTP server stopped: {self.error!r}")

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.should_exit = True
            self.thread.join(timeout=10)


def build_app(settings: ServeSettings, handoff: str, node_ip: str) -> Any:
    """The Serve application: one `ModelServer` replica on the node at `node_ip` (the one
    holding the listening socket)."""
    resources = {"num_cpus": settings.pool_cpus, "num_gpus": settings.pool_gpus,
                 "resources": {f"node:{node_ip}": 0.001}}  # fmt: skip
    return ModelServer.options(ray_actor_options=resources).bind(settings, handoff, node_ip)


def bind_handle_server_to(host: str) -> None:
    """Make this replica's handle server listen on `host` (the node's Ray address: 127.0.0.1
    on the embedded Ray) instead of every interface.

    Serve 2.60 starts a gRPC server in every replica for calls from other deployments' handles
    and binds it to `[::]:0` (all interfaces, a fresh port) after the replica's constructor
    returns, with no setting to say where (ray-project/ray#64544 asks for one). Nothing calls
    germline's replica through a handle, but the port was open to the network: it answers
    UNAUTHENTICATED to a call without the embedded Ray's token, and on a cluster without
    token auth it would unpickle what a caller sends. Serve looks the binding function up in
    its replica module when it starts the server, so wrapping that function here, in the
    replica's own process before the server starts, puts the port where the node's other Ray
    sockets are. tests/test_serve.py lists every listening socket once Serve reports the
    replica RUNNING; a Ray upgrade that renames the function fails here, not silently."""
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "germline_host", None) == host:
        return
    shown = f"[{host}]" if ":" in host else host

    def bind_on_host(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{shown}:{address.rsplit(':', 1)[1]}"
        return bind(server, address)

    bind_on_host.germline_host = host  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_on_host

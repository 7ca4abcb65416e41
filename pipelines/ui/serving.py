"""Running the explorer: its socket bound before the graph loads (a taken port is one error
line, not a traceback after seconds of loading), then uvicorn on that socket."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from germline.core import InputError
from germline.storage import Lake

FIRST_PORT = 8265
PORTS_TRIED = 50


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket on `host`: on `port`, or when none is given the first free port
    from 8265 up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port is not None else range(FIRST_PORT, FIRST_PORT + PORTS_TRIED)
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port is None:
                continue
            raise InputError(f"cannot listen on {host}:{candidate}: {exc.strerror}") from None
        sock.listen(128)
        return sock
    raise InputError(f"no free port on {host} from {FIRST_PORT} to {FIRST_PORT + PORTS_TRIED - 1}")


def run_ui(lake: Lake, sock: socket.socket, api_key: str | None, say: Callable[[str], None],
           verbose: bool = False) -> None:  # fmt: skip
    """Load the lake's graph, then serve the page on `sock` until interrupted."""
    import uvicorn

    from germline.pipelines.ui.app import build_app
    from germline.pipelines.ui.explorer import Explorer

    explorer = Explorer(lake)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    nodes = len(explorer.snapshot.ids)
    say(f"lineage explorer at {url} ({nodes} nodes)"
        + (f"; open {url}?key=KEY once to sign in" if api_key else ""))  # fmt: skip
    app = build_app(explorer, api_key)
    level = "info" if verbose else "warning"
    config = uvicorn.Config(app, log_level=level, access_log=verbose, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])

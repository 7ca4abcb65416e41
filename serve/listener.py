"""The server's listening socket: bound by the `germline serve` process, served by the pool.

The model-pool replica answers HTTP itself (no Serve proxy and no gateway actor between the
client and the engine: each of those hops cost more CPU per request than a small model's
whole answer). The socket it answers on is bound and held by the process that started the
server, and handed to the replica over a Unix socket (SCM_RIGHTS) when the replica starts.
Because the starting process keeps its copy open, the port stays listening while Serve
restarts a replica that died: connections made meanwhile wait in the listen backlog and are
answered by the new replica, instead of being refused. The handoff folder is private to the
user (mode 0700) and removed on close.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from germline.core import InputError

BACKLOG = 1024


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; InputError (one line) when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise InputError(f"cannot serve on {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        taken = ""
        if exc.errno == errno.EADDRINUSE:
            taken = " (another server has it; pick another --port)"
        raise InputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}{taken}") from None
    sock.listen(BACKLOG)
    return sock


class Listener:
    """The listening socket and the Unix socket that hands it to the replica (any number of
    times: once per replica start)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self._folder = Path(tempfile.mkdtemp(prefix="germline-serve-"))  # 0700
        self.handoff = str(self._folder / "socket")
        self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._unix.bind(self.handoff)
        self._unix.listen(8)
        self._thread = threading.Thread(target=self._hand_out, name="serve-handoff", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def _hand_out(self) -> None:
        while True:
            try:
                conn, _ = self._unix.accept()
            except OSError:  # closed
                return
            with conn, contextlib.suppress(OSError):
                socket.send_fds(conn, [b"s"], [self.sock.fileno()])

    def close(self) -> None:
        for sock in (self._unix, self.sock):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._folder, ignore_errors=True)


def receive(handoff: str) -> socket.socket:
    """The listening socket, from the process that holds it (in the replica)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(handoff)
        _, fds, _, _ = socket.recv_fds(conn, 16, 1)
    if not fds:
        raise RuntimeError(f"no socket came from {handoff}")
    return socket.socket(fileno=fds[0])

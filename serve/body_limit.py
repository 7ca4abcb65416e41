"""The request-body limit: a body over `max_body_bytes` gets a 400 that the client can read.

Refusing early is easy; being heard is not. A client sends its whole body before it reads
the answer (the standard library's client, curl without `Expect: 100-continue`), so a server
that answers and closes while body bytes are still arriving makes the kernel reset the
connection, and the reset throws away the answer the client had not read yet: the client
sees "connection reset" or "broken pipe" instead of the 400 that says why. Mature servers
answer and then read and drop the rest of the body for a bounded while before closing
(nginx's lingering close); so does this middleware, bounded in bytes and in time, so a client
cannot hold the connection or make the server read without end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.responses import JSONResponse

from germline.serve.openai_api import error_body

# The rest of a refused body is read and dropped up to DRAIN_FACTOR times the limit, for at
# most DRAIN_SECONDS in all and DRAIN_IDLE_SECONDS without a byte (nginx's lingering_time and
# lingering_timeout are 30 s and 5 s). Past either bound the connection is closed as it is.
DRAIN_FACTOR = 64
DRAIN_SECONDS = 30.0
DRAIN_IDLE_SECONDS = 5.0


class BodyLimit:
    """An ASGI middleware that refuses a request body over `limit` bytes with a 400 naming
    the limit: from its Content-Length before reading anything, or, for a chunked body, as
    soon as the bytes received pass the limit (so at most the limit is ever held in memory).
    Either way the refusal is sent first, then the rest of the body is drained, then the
    connection is closed (`Connection: close`: a half-read request cannot be followed by
    another on the same connection)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit():
            if int(declared) <= limit:
                await self.app(scope, receive, send)
            elif int(declared) <= limit * DRAIN_FACTOR:
                await self._refuse(send, receive)
            else:  # more than would ever be drained: answer, and close at once
                await self._refuse(send, None)
            return
        # No length given (a chunked upload): read it here, at most `limit` bytes, then hand
        # the app the body it would have read (whose own error would not name the limit).
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await self._refuse(send, receive if message.get("more_body") else None, size)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, receive: Any | None, read: int = 0) -> None:
        """The 400, whole, then (with `receive`) the rest of the body drained, then the end
        of the response, on which the server closes the connection."""
        refusal = JSONResponse(
            error_body(f"the request body is over {self.limit} bytes (the server's limit)",
                       "invalid_request_error"),
            status_code=400,
            headers={"connection": "close"},
        )  # fmt: skip
        await send({"type": "http.response.start", "status": 400, "headers": refusal.raw_headers})
        await send({"type": "http.response.body", "body": refusal.body, "more_body": True})
        if receive is not None:
            await drain(receive, self.limit * DRAIN_FACTOR - read)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain(receive: Any, budget: int) -> None:
    """Read and drop the request body until it ends, the client goes away, `budget` bytes
    have been read, DRAIN_SECONDS have passed or DRAIN_IDLE_SECONDS pass without a byte."""
    deadline = time.monotonic() + DRAIN_SECONDS
    while budget >= 0:
        wait = min(DRAIN_IDLE_SECONDS, deadline - time.monotonic())
        if wait <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), wait)
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        budget -= len(message.get("body", b""))

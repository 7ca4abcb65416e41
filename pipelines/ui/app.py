"""The explorer's HTTP side: a read-only JSON API over `Explorer` and the page that draws it.

A plain ASGI app (Starlette, served by uvicorn) rather than a route of `germline serve`: the
server needs Ray Serve and loads models, the explorer needs neither, starts in the time the
graph takes to load and runs on a lake whose models are not on this machine. Both listen on
127.0.0.1 unless told otherwise and take an API key.

The key: a request carries it as `Authorization: Bearer KEY`, or as the cookie the page sets
when it is first opened as `/?key=KEY` (then redirected to `/`, so the key leaves the address
bar). Every answer is JSON or a static file; the page writes every name and value as text, and
the Content-Security-Policy lets only the package's own scripts run, so a node named
`<script>` stays a string.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from germline.core import InputError
from germline.lineage import LineageError, UnknownNode
from germline.pipelines.ui.details import node_details, report_file
from germline.pipelines.ui.explorer import Explorer

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "germline_ui_key"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # answers only: the static files may be cached
}


class KeyAndHeaders:
    """Refuses a request without the key (when one is set) and adds the security headers to
    every answer. `/health` answers without a key, as the model server's does."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (k.lower().encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k != "Cache-Control" or not scope["path"].startswith("/static/")
                ]
                message = {**message, "headers": headers}
            await send(message)

        request = Request(scope)
        if self.key is None or scope["path"] == "/health":
            await self.app(scope, receive, with_headers)
            return
        offered = request.query_params.get("key")
        if scope["path"] == "/" and offered is not None and self._same(offered):
            redirect = RedirectResponse("/", status_code=303)
            redirect.set_cookie(COOKIE, offered, httponly=True, samesite="strict")
            await redirect(scope, receive, with_headers)
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if given is not None and self._same(given):
            await self.app(scope, receive, with_headers)
            return
        refusal = JSONResponse(
            {"error": "an API key is required: open /?key=KEY, or send Authorization: Bearer"},
            status_code=401,
        )
        await refusal(scope, receive, with_headers)

    def _same(self, given: str) -> bool:
        assert self.key is not None
        return hmac.compare_digest(given.encode(), self.key.encode())


def build_app(explorer: Explorer, api_key: str | None = None) -> Starlette:
    """The explorer's app over one lake."""

    def answer(fn: Any) -> Any:
        """An endpoint's result as JSON; a bad request or an unknown node as a 4xx with its
        message (never a traceback). The work runs in a worker thread: a walk across a large
        lake, or a dataset's history read from an object store, does not hold up the other
        requests on the event loop."""

        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await run_in_threadpool(fn, request.query_params))
            except UnknownNode as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except (InputError, LineageError, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return endpoint

    def ints(params: Any, **defaults: int) -> dict[str, int]:
        try:
            return {k: int(params.get(k, v)) for k, v in defaults.items()}
        except ValueError:
            raise InputError(f"{', '.join(defaults)} must be whole numbers") from None

    def required(params: Any, name: str) -> str:
        value = params.get(name)
        if not value:
            raise InputError(f"the parameter {name!r} is required")
        return value

    def search(p: Any) -> dict[str, Any]:
        return explorer.search(p.get("q", ""), p.get("kind") or None, **ints(p, limit=50))

    def graph(p: Any) -> dict[str, Any]:
        return explorer.neighbourhood(required(p, "id"), **ints(p, depth=2, limit=300))

    def at_risk(p: Any) -> dict[str, Any]:
        return explorer.at_risk(required(p, "id"), **ints(p, depth=3, limit=300))

    def node(params: Any) -> dict[str, Any]:
        graph = explorer.graph
        return node_details(explorer.lake, graph, graph.resolve(required(params, "id")))

    async def report(request: Request) -> Response:
        try:
            data, media = await run_in_threadpool(
                report_file, explorer.lake, request.path_params["run"], request.path_params["name"]
            )
        except InputError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return Response(data, media_type=media)

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/favicon.ico", lambda _request: Response(status_code=204)),
        Route("/api/summary", answer(lambda p: explorer.summary())),
        Route("/api/search", answer(search)),
        Route("/api/graph", answer(graph)),
        Route("/api/at-risk", answer(at_risk)),
        Route("/api/node", answer(node)),
        Route("/api/report/{run}/{name}", report),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(KeyAndHeaders, api_key=api_key)])

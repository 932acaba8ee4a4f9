"""The daemon's own HTTP listener (loopback by default).

- ``/healthz``: 200 while the process works (its event loop turns);
- ``/readyz``: 200 while the daemon works *now*, 503 otherwise. Ready means:
  the NFON state stream delivered a full state and is connected (or was lost
  less than a short grace ago, 30 s by default), NFON accepts our logins, and
  no enabled target is paused because it rejected our credentials. It is
  observed at each request, so the answer goes back to 200 by itself when
  the cause ends. The JSON body names each component with ``ok`` and a
  reason (``{"ok": false, "status": "Degraded: NFON login refused since
  10:42:05+01:00", "components": {"nfon_stream": {...}, "nfon_login": {...},
  "target:slack_status": {...}}}``); ``status`` is the line systemd shows;
- ``/metrics``: Prometheus text format;
- ``/``: the status page (``status.html``, one self-contained file; every
  value from the API is put in with ``textContent``, and a Content Security
  Policy allows only its own script and style, by hash);
- ``/api/status``, ``/api/people/{who}``, ``POST /api/resync``: the JSON API
  (``docs/api.md``; documents built by ``api.status``). More routes (pause,
  resume) come in through ``build_app(routes=...)``.

Every request, in this order:

1. ``HostGuard``: its ``Host`` must name the listener (``api.hosts``), else
   421: a page whose name was rebound to our address (DNS rebinding) gets
   nothing, not even a GET;
2. ``BodyLimit``: its body is at most ``MAX_BODY`` bytes (413) and arrives
   within ``BODY_TIMEOUT`` seconds (408);
3. ``WriteGuard``: a request other than GET and HEAD on a listener that is
   not loopback needs ``Authorization: Bearer <http.token>`` (401 without or
   with a wrong one; 403 when no token is configured, so such a listener
   takes no change at all). A browser request from another site (an
   ``Origin`` that is not this listener) is refused everywhere, so a web page
   cannot make the browser post to a loopback listener.

Every answer is JSON (``{"error": ...}`` for a failure, an unexpected
exception included: 500, logged with its traceback) and carries
``X-Content-Type-Options: nosniff``, ``Cache-Control: no-store`` and
``Referrer-Policy: no-referrer``. The connection limits (idle connections,
header time and size) are the server's: ``api.listener``.

Nothing here shows a secret or a caller number.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
import ipaddress
import logging
import re
import secrets
import socket
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from presence_sync.api.hosts import Hosts
from presence_sync.api.status import DEFAULT_LIMIT, StatusBuilder
from presence_sync.ops.logging import Throttle, kv

__all__ = [
    "BODY_TIMEOUT",
    "MAX_BODY",
    "BodyLimit",
    "HostGuard",
    "WriteGuard",
    "build_app",
    "error",
    "is_loopback",
    "json_response",
]

log = logging.getLogger(__name__)

MAX_BODY: Final = 4096
"""Bytes a request body may have: a pause is some 40."""
BODY_TIMEOUT: Final = 10.0
"""Seconds a request body may take to arrive, once its head has."""

Probe = Callable[[], tuple[bool, Mapping[str, Any]]]

_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable only from this
    machine: a loopback address, or a name that resolves to nothing else.
    ``0.0.0.0`` and ``::`` (every address) are not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def json_response(doc: Any, status_code: int = 200) -> Response:
    """A JSON answer of the API, with its headers."""
    return JSONResponse(doc, status_code=status_code, headers=_HEADERS)


def error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """An API error: ``{"error": message}``."""
    response = json_response({"error": message}, status_code)
    response.headers.update(headers or {})
    return response


_SECURE_HEADERS: Final = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]


@dataclass(frozen=True, slots=True)
class SecureHeaders:
    """ASGI middleware: every answer carries ``_HEADERS`` (a route may set
    its own values; missing ones are added)."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _SECURE_HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True, slots=True)
class HostGuard:
    """ASGI middleware: a request whose ``Host`` does not name the listener
    (``hosts``) gets 421, whatever its method and path; logged once a minute."""

    app: ASGIApp
    hosts: Hosts
    throttle: Throttle = field(default_factory=Throttle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host")
            if not self.hosts.allows(host):
                held = self.throttle.allow("host")
                if held is not None:
                    log.warning(
                        "refused a request for a host name this listener does not answer "
                        "to (a DNS rebinding attempt, or a name missing from http.allowed_hosts)",
                        extra=kv(event="http_host_refused", host=host, held_back=held),
                    )
                shown = host if host is not None and len(host) <= 100 else f"{host!s:.100}…"
                refusal = error(
                    421,
                    f"this listener does not answer to the host {shown!r}: use its address, "
                    "or add the name to http.allowed_hosts",
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """ASGI middleware: reads a request's body whole before the route runs,
    refusing one over ``limit`` bytes (413) or slower than ``timeout``
    seconds (408); the route then reads it from memory."""

    app: ASGIApp
    limit: int = MAX_BODY
    timeout: float = BODY_TIMEOUT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal: Response | None = None
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            refusal = self._too_large()
        else:
            body = bytearray()
            try:
                async with asyncio.timeout(self.timeout):
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return  # the client left: nobody to answer
                        body += message.get("body", b"")
                        if len(body) > self.limit:
                            refusal = self._too_large()
                            break
                        if not message.get("more_body", False):
                            break
            except TimeoutError:
                refusal = error(
                    408,
                    f"the request body did not arrive within {self.timeout:g} s",
                    {"Connection": "close"},
                )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> Response:
        # Connection: close, since the rest of the body is never read.
        return error(
            413,
            f"the request body is over {self.limit} bytes (a pause or resume needs some 40)",
            {"Connection": "close"},
        )


@dataclass(frozen=True, slots=True)
class WriteGuard:
    """ASGI middleware in front of every route: lets GET and HEAD through
    and checks every other request (see the module docstring). ``required``:
    the listener is not loopback, so writes need ``token``."""

    app: ASGIApp
    token: str | None = None
    required: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            refusal = self.refusal(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        """The answer refusing ``request``, or None to let it through."""
        origin = request.headers.get("origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get(
            "host"
        ):
            return error(403, "changes from another web site are refused")
        if not self.required:
            return None
        if self.token is None:
            return error(
                403,
                "changes are refused: this listener is not on loopback and no http.token "
                "is configured",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            return error(
                401,
                "this change needs the API token: Authorization: Bearer <http.token>",
                {"WWW-Authenticate": 'Bearer realm="presence-sync"'},
            )
        return None


_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@cache
def _page() -> tuple[bytes, str]:
    """The status page and its Content-Security-Policy: only the page's own
    script and style (by hash) run, nothing inline from data ever can."""
    text = importlib.resources.files(__package__).joinpath("status.html").read_text("utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _BLOCK.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes["script"]),
            "style-src " + " ".join(hashes["style"]),
            "connect-src 'self'",
            "img-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return text.encode(), policy


def build_app(
    health: Probe,
    ready: Probe,
    *,
    status: StatusBuilder | None = None,
    resync: Callable[[], object] | None = None,
    routes: Sequence[BaseRoute] = (),
    hosts: Hosts,
    token: str | None = None,
    loopback: bool = True,
) -> Starlette:
    """The listener's routes around two probes that report (ok, details).

    ``status`` serves the page and the JSON API; ``resync`` is called for
    ``POST /api/resync``; ``routes`` are added as they are (the guards cover
    them too). ``hosts`` are the names the listener answers to (``HostGuard``);
    ``token`` and ``loopback`` configure ``WriteGuard``."""

    def probe_response(probe: Probe) -> Response:
        ok, details = probe()
        return json_response({"ok": ok, **details}, 200 if ok else 503)

    async def healthz(_: Request) -> Response:
        return probe_response(health)

    async def readyz(_: Request) -> Response:
        return probe_response(ready)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST, headers=_HEADERS)

    table: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    if status is not None:
        table += _api_routes(status, resync)
    table += routes

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return error(exc.status_code, exc.detail, exc.headers)
        return await internal_error(request, exc)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the exception after this answer: uvicorn logs
        # it with its traceback, in the daemon's log format.
        return error(500, "internal error (see the daemon's log)")

    return Starlette(
        routes=table,
        middleware=[
            Middleware(SecureHeaders),
            Middleware(HostGuard, hosts=hosts),
            Middleware(BodyLimit),
            Middleware(WriteGuard, token=token, required=not loopback),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


def _api_routes(status: StatusBuilder, resync: Callable[[], object] | None) -> list[BaseRoute]:
    async def index(_: Request) -> Response:
        page, policy = _page()
        headers = {
            **_HEADERS,
            "Content-Security-Policy": policy,
            "X-Frame-Options": "DENY",
        }
        return HTMLResponse(page, headers=headers)

    async def api_status(request: Request) -> Response:
        query = request.query_params
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            return error(400, "offset and limit must be whole numbers")
        try:
            doc = status.status(
                q=query.get("q", ""),
                filter=query.get("filter", "all"),
                offset=offset,
                limit=limit,
            )
        except ValueError as exc:
            return error(400, str(exc))
        return json_response(doc)

    async def api_person(request: Request) -> Response:
        who = request.path_params["who"]
        doc = status.person(who)
        if doc is None:
            return error(404, f"nobody with the key, e-mail or extension {who!r}")
        return json_response(doc)

    async def api_resync(_: Request) -> Response:
        if resync is None:
            return error(404, "resync is not available here")
        resync()
        return json_response({"ok": True}, 202)

    return [
        Route("/", index),
        Route("/api/status", api_status),
        Route("/api/people/{who}", api_person),
        Route("/api/resync", api_resync, methods=["POST"]),
    ]

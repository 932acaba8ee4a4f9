"""The daemon's own HTTP listener (loopback by default).

- ``/healthz``: 200 while the process works (its event loop turns);
- ``/readyz``: 200 while the daemon works *now*, 503 otherwise. Ready means:
  the NFON state stream delivered a full state and is connected (or was lost
  less than a short grace ago, 30 s by default), NFON accepts our logins, and
  no enabled target is paused because it rejected our credentials. It is
  observed at each request, so the answer goes back to 200 by itself when
  the cause ends. The JSON body names each component with ``ok`` and a
  reason (``{"ok": false, "status": "Degraded: NFON login refused since
  10:42:05", "components": {"nfon_stream": {...}, "nfon_login": {...},
  "target:slack_status": {...}}}``); ``status`` is the line systemd shows;
- ``/metrics``: Prometheus text format;
- the routes the daemon adds (``build_app(routes=...)``): the pause API
  (``presence_sync.ops.pause_api``).

Nothing here shows a secret; the bodies carry counts and states only.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from presence_sync.net import parse_listen

__all__ = ["Listener", "bind", "build_app"]

Probe = Callable[[], tuple[bool, Mapping[str, Any]]]


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = any free port), bound
    before the server starts so its address is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on
    # sockets whose proto says TCP, and with Nagle on every response whose
    # headers and body are written separately waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def build_app(health: Probe, ready: Probe, *, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The listener's routes around two probes that report (ok, details),
    and ``routes`` beside them."""

    def probe_response(probe: Probe) -> Response:
        ok, details = probe()
        return JSONResponse({"ok": ok, **details}, status_code=200 if ok else 503)

    async def healthz(_: Request) -> Response:
        return probe_response(health)

    async def readyz(_: Request) -> Response:
        return probe_response(ready)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def index(_: Request) -> Response:
        return PlainTextResponse("presence-sync: /healthz /readyz /metrics\n")

    return Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *routes,
        ]
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Listener:
    """Serves ``app`` on ``listen`` inside the daemon's task group."""

    def __init__(self, app: Starlette, listen: str) -> None:
        host, port = parse_listen(listen)
        self.sock = bind(host, port)
        self.address = self.sock.getsockname()
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = _Server(config)

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._server.should_exit = True

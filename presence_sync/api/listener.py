"""The HTTP server under the daemon's API: uvicorn, with the limits it lacks.

uvicorn keeps a connection that never finishes a request open for ever
(its keep-alive timeout starts only after a first answer), and asyncio
logs a failed ``accept()`` once per attempt, thousands of times a second
once the process is out of file descriptors. So:

- at most ``max_connections`` connections are open at once (by default 100,
  and never more than a quarter of what ``RLIMIT_NOFILE`` leaves after 64
  for the daemon's own files and clients). One more closes the connection
  that has waited longest without a request in progress (an idle client
  loses its place, a request being answered never does) with a 503;
- a connection has ``HEAD_TIMEOUT`` seconds from its start, or from the
  end of its last answer, to send a complete request head; then it gets a
  408 and is closed. Between requests an idle connection is closed after
  ``KEEP_ALIVE`` seconds;
- a request head that has not ended after ``MAX_HEAD`` bytes is a 400;
- a failed ``accept()`` (out of file descriptors or memory) and the
  closing of the longest-waiting connection are each logged once a minute,
  with how many were held back; asyncio retries accepting every second.

uvicorn's own ``limit_concurrency`` is not used: it keeps accepting
connections and answers requests beyond the limit with a plain-text 503, so
it bounds neither connections nor files.

Every answer the server gives itself (400, 408, 503) is JSON like the API's
(``{"error": ...}``), and uvicorn's own log lines go through the daemon's
logging (``ops.logging``), at most once a minute per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
from collections.abc import Generator
from typing import Any, ClassVar, Final

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from presence_sync.ops.logging import Throttle, kv

__all__ = [
    "HEAD_TIMEOUT",
    "KEEP_ALIVE",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "Listener",
    "connection_limit",
]

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 100
HEAD_TIMEOUT: Final = 10.0
KEEP_ALIVE: Final = 5
MAX_HEAD: Final = 16 * 1024
BACKLOG: Final = 128
"""Connections the kernel queues before we accept them (asyncio also tries
at most this many ``accept()`` calls per turn of the loop)."""

_RESERVED_FILES: Final = 64
_OUT_OF_RESOURCE: Final = "socket.accept() out of system resource"
_REASONS: Final = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}


def connection_limit(wanted: int = MAX_CONNECTIONS) -> int:
    """``wanted``, lowered so that the listener's connections cannot use up
    the process's file descriptors (``RLIMIT_NOFILE``); at least 8."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, (soft - _RESERVED_FILES) // 4))


def raw_answer(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the
    connection, for the server's own refusals (no request object exists)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class _Logged(logging.Filter):
    """Lets each of uvicorn's messages through once a minute, with how many
    were held back: a client sending garbage must not fill the journal."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = Throttle(60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        held = self.throttle.allow(str(record.msg))
        if held is None:
            return False
        if held:
            record.ctx = {**getattr(record, "ctx", {}), "held_back": held}
        return True


def _route_uvicorn_logs() -> None:
    """uvicorn's loggers write through the root logger (the daemon's format),
    throttled; a uvicorn started earlier in this process (the demo's
    simulators) may have given them handlers of their own."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _Logged) for f in error.filters):
        error.addFilter(_Logged())


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with the connection limits of the module
    docstring. ``limit`` and ``throttle`` are set per listener (a subclass
    made by ``Listener``)."""

    limit: ClassVar[int] = MAX_CONNECTIONS
    head_timeout: ClassVar[float] = HEAD_TIMEOUT
    throttle: ClassVar[Throttle] = Throttle(60.0)

    _waiting_since: float | None = None
    """Loop time since which the connection waits for a request head
    (None while a request is being answered)."""
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait()
        if len(self.connections) > self.limit:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._answering():
            self._waiting_since = None  # a whole request head arrived
            self._stop_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if not self.transport.is_closing() and not self._answering():
            self._wait()

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid HTTP request: malformed, or its head is over 16 KiB")

    def _wait(self) -> None:
        self._stop_timer()
        self._waiting_since = self.loop.time()
        self._timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._waiting_since is not None:
            self._refuse(
                408, f"no complete request within {self.head_timeout:g} s: the connection is closed"
            )

    def _make_room(self) -> None:
        waiting = [
            c for c in self.connections if isinstance(c, _Protocol) and c._waiting_since is not None
        ]
        if not waiting:
            waiting = [self]
        oldest = min(waiting, key=lambda c: c._waiting_since or 0.0)
        oldest._refuse(503, "too many connections: this one waited longest and is closed")
        held = self.throttle.allow("busy", self.loop.time())
        if held is not None:
            log.warning(
                "too many connections to the listener: closing the ones that wait longest "
                "without a request",
                extra=kv(event="http_connections_full", limit=self.limit, held_back=held),
            )

    def _refuse(self, status: int, message: str) -> None:
        self._stop_timer()
        self._waiting_since = None
        if not self.transport.is_closing():
            self.transport.write(raw_answer(status, message))
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Listener:
    """Serves ``app`` on the bound ``sock`` (``net.bind``) inside the
    daemon's task group, with the limits of the module docstring;
    ``max_connections`` is lowered by ``connection_limit``."""

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        *,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.sock = sock
        self.address = sock.getsockname()
        self.max_connections = connection_limit(max_connections)
        self._throttle = Throttle(60.0)
        limits = {
            "limit": self.max_connections,
            "head_timeout": head_timeout,
            "throttle": self._throttle,
        }
        protocol = type("Protocol", (_Protocol,), limits)
        config = uvicorn.Config(
            app,
            http=protocol,
            ws="none",
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE,
            h11_max_incomplete_event_size=MAX_HEAD,
            timeout_graceful_shutdown=2,
        )
        _route_uvicorn_logs()
        self._server = _Server(config)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == _OUT_OF_RESOURCE:
                self._accept_failed(context.get("exception"), loop.time())
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handle)
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            loop.set_exception_handler(previous)
            self.sock.close()

    def _accept_failed(self, exc: object, now: float) -> None:
        held = self._throttle.allow("accept", now)
        if held is None:
            return
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error(
            "the listener cannot accept connections (%s); retrying every second",
            reason,
            extra=kv(event="http_accept_failed", held_back=held),
        )

    def stop(self) -> None:
        self._server.should_exit = True

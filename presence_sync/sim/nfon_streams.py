"""Server-sent event plumbing of the NFON simulator: one outlet per open
stream, and the ASGI response that drains it onto the socket.

Fan-out cost is what matters here: a change is serialised once, and the same
frame bytes are appended to the buffer of every open outlet. The writer wakes
when its buffer is non-empty and sends everything buffered as one chunk, so a
burst of tens of thousands of events costs a few socket writes, not one write
(and one event-loop round trip) per event. A client that stops reading does
not make the simulator grow without bound: past ``max_buffer`` bytes the
outlet is closed, as a real server would drop a stuck consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Literal

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

__all__ = ["KEEPALIVE_FRAME", "Outlet", "SseResponse", "StreamKind", "rfc3339_now"]

StreamKind = Literal["states", "calls"]
KEEPALIVE_FRAME = b": keepalive\n\n"

_stamp_cache: tuple[int, str, str] = (-1, "", "")


def rfc3339_now() -> str:
    """Now as RFC 3339 with nanoseconds and the local UTC offset, the format
    of NFON's ``updated`` field (``2025-09-23T16:51:22.954969226+02:00``)."""
    global _stamp_cache
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    cached_sec, prefix, offset = _stamp_cache
    if sec != cached_sec:
        # strftime and the offset cost more than the rest together; at
        # benchmark rates thousands of stamps share one second.
        local = time.localtime(sec)
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local)
        minutes = (local.tm_gmtoff or 0) // 60
        sign = "-" if minutes < 0 else "+"
        hours, mins = divmod(abs(minutes), 60)
        offset = f"{sign}{hours:02d}:{mins:02d}"
        _stamp_cache = (sec, prefix, offset)
    return f"{prefix}.{frac:09d}{offset}"


class Outlet:
    """The server side of one open SSE connection.

    ``push`` may be called any number of times between two writes of the
    writer; ``close`` ends the stream after what is buffered has been sent.
    Both must be called on the simulator's event loop.
    """

    __slots__ = (
        "buf",
        "closed",
        "expires_at",
        "gone",
        "kind",
        "max_buffer",
        "overflowed",
        "size",
        "wake",
    )

    def __init__(self, kind: StreamKind, *, max_buffer: int, expires_at: float | None) -> None:
        self.kind: StreamKind = kind
        self.buf: list[bytes] = []
        self.size = 0
        self.max_buffer = max_buffer
        self.wake = asyncio.Event()
        self.closed = False
        self.gone = False
        """The client went away; nothing more can be sent."""
        self.overflowed = False
        self.expires_at = expires_at
        """Loop time at which the stream is closed (token expiry), or None."""

    def push(self, frame: bytes) -> None:
        """Queue bytes for the client. Past ``max_buffer`` unsent bytes the
        outlet drops what it holds and closes."""
        if self.closed or not frame:
            # An empty write would read as the end of a chunked body.
            return
        self.buf.append(frame)
        self.size += len(frame)
        if self.size > self.max_buffer:
            self.overflowed = True
            self.buf.clear()
            self.size = 0
            self.closed = True
        self.wake.set()

    def close(self) -> None:
        """End the stream once the buffered frames are written."""
        self.closed = True
        self.wake.set()

    def take(self) -> bytes:
        """Everything buffered, as one chunk, and an empty buffer."""
        chunk = self.buf[0] if len(self.buf) == 1 else b"".join(self.buf)
        self.buf.clear()
        self.size = 0
        return chunk


class SseResponse(Response):
    """A ``text/event-stream`` response fed by an ``Outlet``.

    Sends keep-alive comments after ``keepalive`` idle seconds (``None``:
    never), ends when the outlet closes or its ``expires_at`` passes, and
    calls ``on_end(outlet)`` exactly once however the stream finishes
    (server close, client disconnect, cancellation).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        outlet: Outlet,
        *,
        headers: Mapping[str, str],
        keepalive: float | None,
        on_end: Callable[[Outlet], None],
    ) -> None:
        self.outlet = outlet
        self.keepalive = keepalive
        self.on_end = on_end
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outlet = self.outlet
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._pump(send)
            if not outlet.gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            outlet.closed = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self.on_end(outlet)

    async def _pump(self, send: Send) -> None:
        outlet = self.outlet
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        while True:
            if outlet.buf:
                body = outlet.take()
                message: Message = {"type": "http.response.body", "body": body, "more_body": True}
                await send(message)
                if outlet.gone:
                    return
                last_write = loop.time()
                continue
            if outlet.closed:
                return
            now = loop.time()
            if outlet.expires_at is not None and now >= outlet.expires_at:
                return
            wake_at = None if self.keepalive is None else last_write + self.keepalive
            if outlet.expires_at is not None:
                wake_at = outlet.expires_at if wake_at is None else min(wake_at, outlet.expires_at)
            outlet.wake.clear()
            try:
                async with asyncio.timeout_at(wake_at):
                    await outlet.wake.wait()
            except TimeoutError:
                if self.keepalive is not None and loop.time() >= last_write + self.keepalive:
                    outlet.buf.append(KEEPALIVE_FRAME)

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.outlet.gone = True
                self.outlet.close()
                return

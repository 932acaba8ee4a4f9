"""The NFON event streams: an SSE decoder and consumers that never give up.

``SSEDecoder`` turns the bytes of a ``text/event-stream`` body into events,
following the WHATWG "server-sent events" parsing rules (CR, LF and CRLF line
ends, a leading BOM, ``:`` comments, ``event``/``data``/``id``/``retry``
fields, fields without a colon). It is incremental: chunks may split lines,
line ends and even the BOM anywhere.

``state_stream`` and ``call_stream`` hold one stream open for as long as the
caller iterates: they reconnect after EOF, network errors, HTTP errors and
silence (no byte for ``liveness_timeout``), with exponential backoff and full
jitter, and turn each frame into a domain event. A presence service is
judged by how soon it is right again after an outage, so the backoff never
outlasts NFON's return: every consumer sharing one ``Reachability`` stops
waiting as soon as any request to NFON is answered again after a failure,
and the states stream's ceiling is ``STATES_MAX_DELAY`` seconds. A frame that cannot be
understood is logged (rate-limited), counted and skipped; it never ends the
stream. All waiting goes through the injected ``Clock``.

What the caller sees:

- states: ``FullState`` once per connection, when the bootstrap (every
  extension's current state, sent by NFON on connect) is complete, then one
  ``StateEvent`` per change. NFON marks no end of the bootstrap, so it ends
  when an extension repeats, when ``expected`` extensions have been seen, or
  after ``bootstrap_quiet`` seconds without a frame (before the first frame
  it waits four times as long, so a slow start is not taken for an empty
  tenant).
- calls: ``Connected`` at each (re)connect, then ``CallEvent``\\ s. Calls made
  while disconnected are lost (NFON replays nothing), which ``Connected``
  with ``reconnect=True`` tells the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Final

import httpx

from presence_sync.clock import Clock
from presence_sync.errors import AuthError, UpstreamError
from presence_sync.model import CallEvent, StateEvent
from presence_sync.net import describe_error
from presence_sync.nfon.auth import CredentialsRejected
from presence_sync.nfon.schema import FrameError, parse_call, parse_state
from presence_sync.ops import metrics
from presence_sync.ops.logging import Throttle, kv

__all__ = [
    "MAX_EVENT_BYTES",
    "STATES_MAX_DELAY",
    "CallItem",
    "Connected",
    "FullState",
    "Reachability",
    "SSEDecoder",
    "ServerSentEvent",
    "StateItem",
    "StreamHealth",
    "StreamSettings",
    "call_stream",
    "state_stream",
]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES: Final = 4 * 1024 * 1024
"""Events larger than this are skipped (and counted), not buffered."""

HEALTHY_AFTER: Final = 30.0
"""A connection that lasted this long resets the backoff even without events."""

STATES_MAX_DELAY: Final = 3.0
"""The longest backoff of the states stream, whatever ``reconnect_max_delay``
says: while it is down no status moves, so it tries again within seconds."""

RECONNECT_REASONS: Final = ("eof", "timeout", "network", "http_error", "auth")

REJECT_REASONS: Final = ("json", "shape", "field", "too_large")

STATES_PATH: Final = "extensions/phone/states"
CALLS_PATH: Final = "extensions/phone/calls"

_BOM: Final = b"\xef\xbb\xbf"


# --- decoding ------------------------------------------------------------------------


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` unless named), its data
    (``data`` lines joined with ``\\n``) and the last event id seen so far."""

    event: str
    data: str
    id: str


class SSEDecoder:
    """Incremental ``text/event-stream`` parser.

    ``feed(chunk)`` returns the events completed by that chunk. State that
    outlives a connection per the SSE rules, ``last_event_id`` and ``retry``
    (milliseconds, ``None`` until the server sends one), survives ``reset()``,
    which starts a new connection's body. An event whose data, or any single
    line, exceeds ``max_event_bytes`` is dropped without buffering it and
    counted in ``oversized``. Never raises on any input.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry: int | None = None
        self.oversized = 0
        self.reset()

    def reset(self) -> None:
        """Forget any partial line or event: a new response body starts."""
        self._head = b""  # bytes at the very start, until we know if a BOM is there
        self._started = False
        self._pending: list[bytes] = []  # pieces of a line whose end has not arrived
        self._pending_size = 0
        self._skip_lf = False  # the last chunk ended in CR; a leading LF belongs to it
        self._skip_line = False  # the current line is over the limit; drop it
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""
        self._drop_event = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Parse ``chunk`` and return the events it completed, in order."""
        if not self._started:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk
                return []
            self._started = True
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if cut < 0:
            self._hold(chunk)
            return []
        if cut == len(chunk) - 1 and chunk[cut] == 0x0D:
            self._skip_lf = True
        tail = chunk[cut + 1 :]
        complete = chunk[: cut + 1]
        if self._pending:
            self._pending.append(complete)
            complete = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
        lines = complete.splitlines()
        if self._skip_line:
            # The first line is the end of one already dropped for its length.
            self._skip_line = False
            del lines[0]
        events = self._lines(lines)
        if tail:
            self._hold(tail)
        return events

    def _hold(self, piece: bytes) -> None:
        if self._skip_line:
            return
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > self.max_event_bytes:
            self._pending.clear()
            self._pending_size = 0
            self._skip_line = True
            self._drop_event = True

    def _lines(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        limit = self.max_event_bytes
        for line in lines:
            if not line:
                if self._drop_event:
                    self.oversized += 1
                    self._drop_event = False
                    data.clear()
                    self._data_size = 0
                    self._event = b""
                    continue
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    self._data_size = 0
                    events.append(
                        ServerSentEvent(
                            self._event.decode("utf-8", "replace") if self._event else "message",
                            payload.decode("utf-8", "replace"),
                            self.last_event_id,
                        )
                    )
                self._event = b""
                continue
            if len(line) > limit:  # as if it had arrived in pieces (see _hold)
                self._drop_event = True
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
            elif line[0] == 0x3A:  # ":" comment, e.g. a keep-alive
                continue
            else:
                colon = line.find(b":")
                if colon < 0:
                    name, value = line, b""
                else:
                    name = line[:colon]
                    start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
                    value = line[start:]
                if name == b"event":
                    self._event = value
                    continue
                if name == b"id":
                    if b"\x00" not in value:
                        self.last_event_id = value.decode("utf-8", "replace")
                    continue
                if name == b"retry":
                    if value.isdigit():
                        self.retry = int(value)
                    continue
                if name != b"data":
                    continue
            if self._drop_event:
                continue
            self._data_size += len(value) + 1
            if self._data_size > limit:
                self._drop_event = True
                data.clear()
                self._data_size = 0
                continue
            data.append(value)
        return events


# --- what the consumers yield ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FullState:
    """Every extension's state as of a (re)connect: the stream's bootstrap.

    The caller should treat it as a full resync. ``reconnect`` is true when an
    earlier ``FullState`` was yielded by the same iterator, i.e. changes may
    have been missed in between (they are reflected here).
    """

    states: tuple[StateEvent, ...]
    reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Connected:
    """The call stream is (again) connected. With ``reconnect`` true, calls
    that started or ended while it was down were not seen: call context
    older than this is not to be trusted."""

    stream: str
    reconnect: bool = False


StateItem = FullState | StateEvent
CallItem = Connected | CallEvent


# --- the reconnecting consumer -------------------------------------------------------


class Reachability:
    """Whether NFON answers, shared by every request to one NFON.

    ``failed()`` is called when a request found NFON unreachable (no answer,
    a timeout, 5xx, 408, 429) and ``answered()`` when NFON answered one
    properly. The first answer after a failure wakes every backoff waiting in
    ``wait``: the stream that got through first brings the others back with
    it instead of leaving them to sit out their jitter. Only that transition
    wakes anyone, so a stream refused for its own reasons (401, a bad path)
    is not woken by requests that keep succeeding around it.
    """

    def __init__(self) -> None:
        self.unreachable = False
        self._waiters: set[asyncio.Future[None]] = set()

    def failed(self) -> None:
        self.unreachable = True

    def answered(self) -> None:
        if not self.unreachable:
            return
        self.unreachable = False
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, clock: Clock, seconds: float) -> bool:
        """Wait ``seconds`` of ``clock``'s time, or less if NFON answers again
        meanwhile; true when woken early."""
        if seconds <= 0:
            await clock.sleep(0)
            return False
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(woken)
        timer = asyncio.ensure_future(clock.sleep(seconds))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            self._waiters.discard(woken)
        return woken.done() and not timer.done()


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a stream consumer connects, waits and gives up on a connection."""

    clock: Clock
    liveness_timeout: float = 120.0
    """No byte (event or comment) for this long: reconnect."""
    reconnect_base_delay: float = 0.5
    """First backoff step; the server's ``retry:`` field replaces it."""
    reconnect_max_delay: float = 60.0
    states_max_delay: float = STATES_MAX_DELAY
    """The states stream's own ceiling (the lower of the two applies)."""
    max_event_bytes: int = MAX_EVENT_BYTES
    rng: random.Random | None = None
    reachability: Reachability | None = None
    """Shared with every other request to the same NFON (see ``Reachability``);
    ``None``: each backoff is waited out in full."""


@dataclass(slots=True)
class StreamHealth:
    """Whether a stream is connected right now, as its consumer last saw it
    (monotonic times of the consumer's clock). While connected ``up_since``
    is set; otherwise ``down_since`` is when it was lost (or when the first
    attempt started) and ``reason`` the last failure (a ``RECONNECT_REASONS``
    value, or ``"connecting"`` before the first connection) and ``detail``
    its words for an admin (which host, and refused, DNS, TLS, timeout...)."""

    up_since: float | None = None
    down_since: float | None = None
    reason: str | None = None
    detail: str | None = None


class _Failed(Exception):
    """A connection attempt or an open connection ended; ``reason`` is one
    of ``RECONNECT_REASONS`` (the metric label)."""

    def __init__(
        self, reason: str, detail: str, *, wait_at_least: float = 0.0, unreachable: bool = False
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.wait_at_least = wait_at_least
        self.unreachable = unreachable
        """NFON did not answer properly (no answer, timeout, 5xx, 408, 429),
        as opposed to refusing us or ending a stream."""
        super().__init__(detail)


class _Session:
    """One open SSE response, read chunk by chunk with a deadline.

    A read that outlives its deadline is kept, not cancelled, so that waiting
    for the end of a bootstrap does not lose bytes; the next ``read`` picks it
    up.
    """

    def __init__(self, response: httpx.Response, clock: Clock) -> None:
        self.response = response
        self._clock = clock
        self.last_byte = clock.monotonic()
        self.delivered = False
        """The caller got something from this connection: the backoff starts over."""
        self._chunks = response.aiter_bytes()
        self._pending: asyncio.Task[bytes] | None = None

    async def _next(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    async def read(self, deadline: float) -> bytes | None:
        """The next chunk; ``b""`` at the end of the body, ``None`` when the
        clock reached ``deadline`` (monotonic) first. Raises what httpx raises."""
        task = self._pending
        if task is None:
            task = self._pending = asyncio.create_task(self._next())
        if not task.done():
            if deadline <= self._clock.monotonic():
                return None
            timer = asyncio.create_task(self._sleep_until(deadline))
            try:
                await asyncio.wait((task, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if not task.done():
                return None
        self._pending = None
        return task.result()

    async def _sleep_until(self, deadline: float) -> None:
        # Measured when the timer task starts, not when it was created.
        await self._clock.sleep(deadline - self._clock.monotonic())

    async def aclose(self) -> None:
        """Abandon any read in flight and release the connection."""
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            # wait() neither raises the read's error nor hides our own cancellation.
            await asyncio.wait((task,))
            if not task.cancelled():
                task.exception()  # retrieved: the connection is being dropped anyway
        with contextlib.suppress(Exception):
            await self._chunks.aclose()  # type: ignore[attr-defined]
        await self.response.aclose()


class _Connection:
    """Connects one stream again and again: backoff, metrics and the
    one-line-per-outage logging that the two consumers share."""

    def __init__(
        self,
        name: str,
        path: str,
        http: httpx.AsyncClient,
        settings: StreamSettings,
        health: StreamHealth | None = None,
        *,
        max_delay: float | None = None,
    ):
        self.name = name
        self.path = path
        self.http = http
        self.settings = settings
        self.clock = settings.clock
        self.decoder = SSEDecoder(settings.max_event_bytes)
        self._rng = settings.rng or random.Random()
        self._max_delay = min(settings.reconnect_max_delay, max_delay or math.inf)
        self._reachability = settings.reachability
        self._attempt = 0
        self._delay = 0.0
        self._wait_at_least = 0.0
        self._failing_since: float | None = None
        self._opened_at: float | None = None
        self._throttle = Throttle()
        self._state = metrics.STREAM_STATE.labels(stream=name)
        # Known label sets exist from the start, so a dashboard shows 0, not "no data".
        for reason in RECONNECT_REASONS:
            metrics.STREAM_RECONNECTS.labels(stream=name, reason=reason)
        for reason in REJECT_REASONS:
            metrics.STREAM_FRAMES_REJECTED.labels(stream=name, reason=reason)
        self._events = metrics.STREAM_EVENTS.labels(stream=name)
        self._last_event = metrics.STREAM_LAST_EVENT.labels(stream=name)
        self.health = health or StreamHealth()
        if self.health.up_since is None and self.health.down_since is None:
            self.health.down_since = self.clock.monotonic()
            self.health.reason = "connecting"

    async def open(self) -> _Session | None:
        """Wait out the backoff, then connect until it works. ``None`` once
        the HTTP client has been closed (the stream ends). Never raises
        (except cancellation)."""
        while True:
            if self._delay > 0:
                self._state.state("backoff")
                await self._backoff()
            if self.http.is_closed:
                return None
            self._state.state("connecting")
            self.decoder.reset()
            try:
                response = await self._connect()
            except _Failed as failure:
                self.failed(failure, delivered=False)
                continue
            self._state.state("connected")
            self._opened_at = self.clock.monotonic()
            self.health.up_since, self.health.down_since = self._opened_at, None
            self.health.reason = self.health.detail = None
            if self._failing_since is not None:
                log.info(
                    "nfon stream recovered",
                    extra=kv(
                        event="nfon_stream_recovered",
                        stream=self.name,
                        down_s=round(self.clock.monotonic() - self._failing_since, 3),
                    ),
                )
                self._failing_since = None
            else:
                log.info("nfon stream connected", extra=kv(stream=self.name))
            return _Session(response, self.clock)

    async def _backoff(self) -> None:
        """Sleep ``_delay``, cut short when NFON answers again, but never
        shorter than the floor a failure set (a ``Retry-After``, refused
        credentials)."""
        if self._reachability is None:
            await self.clock.sleep(self._delay)
            return
        started = self.clock.monotonic()
        if await self._reachability.wait(self.clock, self._delay):
            await self.clock.sleep(self._wait_at_least - (self.clock.monotonic() - started))

    async def _connect(self) -> httpx.Response:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.decoder.last_event_id:
            headers["Last-Event-ID"] = self.decoder.last_event_id
        request = self.http.build_request("GET", self.path, headers=headers)
        try:
            response = await self.http.send(request, stream=True)
        except CredentialsRejected as exc:
            raise _Failed("auth", str(exc), wait_at_least=exc.retry_in) from None
        except AuthError as exc:
            raise _Failed("auth", str(exc)) from None
        except UpstreamError as exc:  # a login that NFON did not answer properly
            reason = "http_error" if exc.status else "network"
            raise _Failed(reason, str(exc), unreachable=_unreachable(exc.status)) from None
        except httpx.TimeoutException as exc:
            raise _Failed("timeout", describe_error(exc, request.url), unreachable=True) from None
        except httpx.HTTPError as exc:
            raise _Failed("network", describe_error(exc, request.url), unreachable=True) from None
        status = response.status_code
        content_type = response.headers.get("content-type", "text/event-stream").lower()
        if status == 200 and content_type.startswith("text/event-stream"):
            return response
        await response.aclose()
        detail = f"HTTP {status}" if status != 200 else f"unexpected content type {content_type}"
        request_id = response.headers.get("x-request-id")
        if request_id:
            detail += f" (request id {request_id})"
        reason = "auth" if status == 401 else "http_error"
        raise _Failed(reason, detail, unreachable=_unreachable(status))

    def failed(self, failure: _Failed, *, delivered: bool) -> None:
        """Count and log the end of a connection (or a failed attempt) and
        choose the wait before the next one. ``delivered``: the connection
        gave the caller something, so the backoff starts over (as it does
        after a connection that stayed up for ``HEALTHY_AFTER`` seconds)."""
        metrics.STREAM_RECONNECTS.labels(stream=self.name, reason=failure.reason).inc()
        opened, self._opened_at = self._opened_at, None
        if self.health.up_since is not None:
            self.health.up_since, self.health.down_since = None, self.clock.monotonic()
        self.health.reason, self.health.detail = failure.reason, failure.detail
        if opened is not None and self.clock.monotonic() - opened >= HEALTHY_AFTER:
            delivered = True
        if delivered:
            self._attempt = 0
        hint = self.decoder.retry
        base = self.settings.reconnect_base_delay if hint is None else max(hint / 1000, 0.1)
        ceiling = min(self._max_delay, base * 2 ** min(self._attempt, 30))
        self._delay = max(self._rng.uniform(0, ceiling), failure.wait_at_least)
        self._wait_at_least = failure.wait_at_least
        if self._reachability is not None and failure.unreachable:
            self._reachability.failed()
        self._attempt += 1
        fields = {"stream": self.name, "reason": failure.reason, "detail": failure.detail}
        if delivered and failure.reason == "eof":
            # Servers end long streams now and then; that is no failure.
            log.info(
                "nfon stream closed by the server; reconnecting",
                extra=kv(event="nfon_stream_closed", **fields),
            )
        elif self._failing_since is None:
            self._failing_since = self.clock.monotonic()
            log.warning(
                "nfon stream lost; reconnecting with backoff",
                extra=kv(event="nfon_stream_lost", **fields),
            )
        else:
            log.debug("nfon stream still down", extra=kv(event="nfon_stream_down", **fields))

    async def receive(self, session: _Session, deadline: float) -> list[ServerSentEvent] | None:
        """The events completed by the next chunk (``[]`` for keep-alives
        and partial events), or ``None`` when the clock reached ``deadline``
        first. Raises ``_Failed`` at the end of the stream, on read errors
        and after ``liveness_timeout`` without a byte."""
        stale_at = session.last_byte + self.settings.liveness_timeout
        try:
            chunk = await session.read(min(deadline, stale_at))
        except httpx.HTTPError as exc:
            raise _read_failure(exc, session.response.url) from None
        now = self.clock.monotonic()
        if chunk is None:
            if now >= stale_at:
                raise _Failed("timeout", f"no data for {self.settings.liveness_timeout:g} s")
            return None
        if not chunk:
            raise _Failed("eof", "the server ended the stream")
        session.last_byte = now
        decoder = self.decoder
        events = decoder.feed(chunk)
        if decoder.oversized:
            self.oversized(decoder.oversized)
            decoder.oversized = 0
        if events:
            self._events.inc(len(events))
            self._last_event.set(self.clock.now().timestamp())
        return events

    def reject(self, error: FrameError) -> None:
        metrics.STREAM_FRAMES_REJECTED.labels(stream=self.name, reason=error.reason).inc()
        self._log_throttled(f"frame:{error.reason}", "nfon frame skipped", detail=error.detail)

    def unknown(self, field: str, value: object) -> None:
        # Not a rejected frame: it still flows on, with the value mapped to UNKNOWN.
        metrics.STREAM_UNKNOWN_VALUES.labels(stream=self.name, field=field).inc()
        self._log_throttled(
            f"unknown:{field}", "nfon sent an unknown value", field=field, value=repr(value)[:40]
        )

    def oversized(self, count: int) -> None:
        metrics.STREAM_FRAMES_REJECTED.labels(stream=self.name, reason="too_large").inc(count)
        self._log_throttled(
            "frame:too_large", "nfon frame skipped", detail=f"over {self.decoder.max_event_bytes}"
        )

    def _log_throttled(self, key: str, message: str, **context: object) -> None:
        held = self._throttle.allow(key, self.clock.monotonic())
        if held is not None:
            log.warning(message, extra=kv(stream=self.name, **context, also_held_back=held))

    def stopped(self) -> None:
        self._state.state("stopped")


def _unreachable(status: int | None) -> bool:
    """Whether an answer (``None``: none at all) says NFON is unreachable."""
    return status is None or status >= 500 or status in (408, 429)


def _read_failure(exc: httpx.HTTPError, url: httpx.URL) -> _Failed:
    detail = describe_error(exc, url)
    if isinstance(exc, httpx.TimeoutException):
        return _Failed("timeout", detail, unreachable=True)
    if isinstance(exc, httpx.RemoteProtocolError):  # the peer closed mid-body
        return _Failed("eof", detail)
    return _Failed("network", detail, unreachable=True)


async def state_stream(
    http: httpx.AsyncClient,
    settings: StreamSettings,
    *,
    bootstrap_quiet: float = 0.25,
    expected: Callable[[], int | None] = lambda: None,
    path: str = STATES_PATH,
    health: StreamHealth | None = None,
) -> AsyncGenerator[StateItem]:
    """Follow ``GET /extensions/phone/states`` forever (see the module docstring).

    ``expected()`` is asked at each connect for the number of extensions the
    bootstrap should hold (``None``: unknown). ``health``, when given, is kept
    up to date with the connection. Runs until the caller stops iterating,
    cancels, or closes ``http``; never raises otherwise.
    """
    conn = _Connection("states", path, http, settings, health, max_delay=settings.states_max_delay)
    clock = settings.clock
    unknown = conn.unknown
    reconnect = False
    try:
        while (session := await conn.open()) is not None:
            want = expected()
            booting = True
            seen: dict[str, StateEvent] = {}
            quiet_until = clock.monotonic() + 4 * bootstrap_quiet
            try:
                while True:
                    events = await conn.receive(session, quiet_until if booting else math.inf)
                    if events is None:  # the bootstrap went quiet
                        booting = False
                        yield FullState(tuple(seen.values()), reconnect)
                        reconnect = session.delivered = True
                        continue
                    if not events:
                        continue
                    quiet_until = clock.monotonic() + bootstrap_quiet
                    for event in events:
                        try:
                            state = parse_state(event.data, unknown)
                        except FrameError as error:
                            conn.reject(error)
                            continue
                        if booting:
                            repeat = state.extension in seen
                            if not repeat:
                                seen[state.extension] = state
                                if want is None or len(seen) < want:
                                    continue
                            booting = False
                            yield FullState(tuple(seen.values()), reconnect)
                            reconnect = session.delivered = True
                            if not repeat:
                                continue
                        yield state
            except _Failed as failure:
                conn.failed(failure, delivered=session.delivered)
            finally:
                await session.aclose()
    finally:
        conn.stopped()


async def call_stream(
    http: httpx.AsyncClient,
    settings: StreamSettings,
    *,
    path: str = CALLS_PATH,
    health: StreamHealth | None = None,
) -> AsyncGenerator[CallItem]:
    """Follow ``GET /extensions/phone/calls`` forever: ``Connected`` at each
    (re)connect, then every ``CallEvent``; ``health`` as for ``state_stream``.
    Runs until the caller stops iterating, cancels, or closes ``http``; never
    raises otherwise."""
    conn = _Connection("calls", path, http, settings, health)
    unknown = conn.unknown
    reconnect = False
    try:
        while (session := await conn.open()) is not None:
            try:
                yield Connected("calls", reconnect)
                reconnect = True
                while True:
                    events = await conn.receive(session, math.inf)
                    # Any byte, a keep-alive too, shows a healthy stream: a
                    # quiet night without calls is no reason to back off.
                    session.delivered = True
                    for event in events or ():
                        try:
                            call = parse_call(event.data, unknown)
                        except FrameError as error:
                            conn.reject(error)
                            continue
                        yield call
            except _Failed as failure:
                conn.failed(failure, delivered=session.delivered)
            finally:
                await session.aclose()
    finally:
        conn.stopped()

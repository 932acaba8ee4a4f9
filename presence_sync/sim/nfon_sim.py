"""The NFON simulator's state and behaviour, as the published contract
(``/work/shared/nfon/cti-openapi.json``) describes it. Import it from
``presence_sync.sim.nfon``.

``NfonSim`` owns the state (extensions, calls, tokens, open streams, stats)
and its methods are plain synchronous calls that must run on the loop that
serves it. Two faces, both public: the scripting API tests and the demo use
(states, calls, faults, traffic, stats), and the server-side API the HTTP
layer and the traffic generator use (requests, logins, streams, snapshots).
Nobody else touches its internals.

Modules, each importing only those below it: ``nfon_streams`` (SSE
plumbing), ``nfon_tokens`` (token issuing), ``nfon_traffic`` (random
traffic, through a small protocol) → ``nfon_sim`` (this) → ``nfon_http``
(NFON routes and the ``/_sim/`` control API) → ``nfon_serve`` (serving,
``SimHandle``, the thread-safe ``SimProxy``) → ``nfon`` (the public face and
``presence-sync sim nfon``).

Choices where the documentation is silent (each a knob or documented here):

- SSE frames are ``data: <json>`` + blank line, no ``event:``, no ``id:``
  (``event_ids=True`` adds ids; ``Last-Event-ID`` is recorded but the
  bootstrap is sent regardless, as the spec says it is on every connect).
- Keep-alive comments after ``keepalive`` idle seconds; ``None`` = never.
- Streams stay open past token expiry unless ``close_streams_on_token_expiry``.
- Both legs of an internal call carry the same call ``uuid``; a client must
  key call state by (uuid, extension).
- An outbound leg's line goes to ``in-use`` when it starts ringing the other
  party (the caller is off-hook); only inbound legs show ``ringing``.
- Every ``set_state`` emits an event, even when nothing changed.
- ``/extensions/phone/states`` answers an ``Accept`` that allows neither
  JSON nor SSE with 406 (the spec lists no status for it).
- Click-to-dial (``POST /extensions/phone/calls``, ``originate``) rings the
  caller's device first: the caller's line shows ``ringing`` and the calls
  stream ``caller-dial``, ``caller-ring``. The simulated device answers by
  itself after ``answer_delay`` seconds (``None``: never; the request's
  ``timeout`` then ends it with ``error: timeout``): ``caller-answer``, the
  line goes ``in-use``, then ``dial`` and ``ring`` for the callee, who never
  answers by itself (``answer(uuid)`` answers). A callee that is a simulated
  extension gets a ringing leg of its own; the caller's own number is
  ``busy``. ``start`` and ``end`` are request markers: they go to the
  POST's own SSE stream only, never to the calls stream, which ends the
  call with ``hangup``. ``cancel`` (``DELETE``) works until the request
  ended (``end`` sent): after that the call no longer "is being
  established" and the uuid is unknown to it (404).
- Conference calls (``callee_context: conference``) are not simulated (400).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid as uuid_module
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from presence_sync.ops.logging import kv
from presence_sync.sim.nfon_streams import Outlet, StreamKind, rfc3339_now
from presence_sync.sim.nfon_tokens import Issued, TokenIssuer, TokenPair
from presence_sync.sim.nfon_traffic import Traffic

__all__ = [
    "InjectedFailure",
    "LoginRefusal",
    "NfonSim",
    "NfonStats",
    "RefreshRefusal",
    "StreamKind",
]

# The simulator's log lines keep the name of its public module.
log = logging.getLogger("presence_sync.sim.nfon")

LoginRefusal = Literal["malformed", "refused", "invalid"]
"""Why ``POST /login`` failed: a bad body (400), logins refused (401), wrong
credentials (401)."""
RefreshRefusal = Literal["missing", "invalid"]
"""Why ``PUT /login`` failed: no ``Authorization`` header (400), a token that is
not a live refresh token (401)."""

DIRECTIONS = ("inbound", "outbound")
STREAM_KINDS: tuple[StreamKind, ...] = ("states", "calls")
_RECENT = 100

_FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannes", "Ida", "Jonas",
    "Kira", "Lukas", "Mara", "Niklas", "Olga", "Paul", "Rosa", "Samir", "Tilda", "Umut",
    "Vera", "Wim", "Yara", "Zeno",
)  # fmt: skip
_LAST_NAMES = (
    "Albers", "Brandt", "Conrad", "Dietz", "Engel", "Fuchs", "Graf", "Hahn", "Imhof",
    "Jäger", "Kern", "Lange", "Moser", "Nowak", "Otto", "Pohl", "Roth", "Sommer",
)  # fmt: skip


@dataclass(frozen=True)
class NfonStats:
    """What the simulator has seen, as of the moment it was taken."""

    requests: int
    """Requests to NFON paths (``/v1/...``), control API excluded."""
    logins: int
    """Successful ``POST /login``."""
    login_failures: int
    """``POST /login`` answered 400 or 401 for the request itself."""
    refused_logins: int
    """``POST /login`` answered 401 because logins are refused."""
    refreshes: int
    """Successful ``PUT /login``."""
    refresh_failures: int
    """``PUT /login`` answered 400 or 401."""
    unauthorized: int
    """Every 401 response, whatever the path."""
    injected_failures: int
    """Responses produced by ``fail_next``."""
    stream_connects: dict[str, int]
    """Streams opened so far, by kind (``states``, ``calls``)."""
    open_streams: dict[str, int]
    """Streams open right now, by kind."""
    stream_overflows: int
    """Streams closed because the client read too slowly."""
    user_agents: tuple[str | None, ...]
    """``User-Agent`` of the last 100 NFON requests, oldest first; None = absent."""
    distinct_user_agents: frozenset[str | None]
    """Every ``User-Agent`` value ever seen on NFON paths."""
    last_event_ids: tuple[str, ...]
    """``Last-Event-ID`` header values of the last 100 stream requests that sent one."""
    last_event_id_headers: int
    """Stream requests that carried a ``Last-Event-ID`` header."""
    requests_by_path: dict[str, int]
    """NFON requests per ``METHOD /path`` (path without ``/v1``)."""

    @property
    def last_user_agent(self) -> str | None:
        """``User-Agent`` of the most recent NFON request (None if none or absent)."""
        return self.user_agents[-1] if self.user_agents else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``GET /_sim/stats``)."""
        return {
            "requests": self.requests,
            "logins": self.logins,
            "login_failures": self.login_failures,
            "refused_logins": self.refused_logins,
            "refreshes": self.refreshes,
            "refresh_failures": self.refresh_failures,
            "unauthorized": self.unauthorized,
            "injected_failures": self.injected_failures,
            "stream_connects": dict(self.stream_connects),
            "open_streams": dict(self.open_streams),
            "stream_overflows": self.stream_overflows,
            "user_agents": list(self.user_agents),
            "distinct_user_agents": sorted(
                self.distinct_user_agents, key=lambda ua: (ua is None, ua or "")
            ),
            "last_user_agent": self.last_user_agent,
            "last_event_ids": list(self.last_event_ids),
            "last_event_id_headers": self.last_event_id_headers,
            "requests_by_path": dict(self.requests_by_path),
        }


@dataclass
class _Counters:
    requests: int = 0
    logins: int = 0
    login_failures: int = 0
    refused_logins: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    unauthorized: int = 0
    injected_failures: int = 0
    stream_overflows: int = 0
    last_event_id_headers: int = 0
    stream_connects: Counter[str] = field(default_factory=Counter)
    user_agents: deque[str | None] = field(default_factory=lambda: deque(maxlen=_RECENT))
    distinct_user_agents: set[str | None] = field(default_factory=set)
    last_event_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_RECENT))
    requests_by_path: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Extension:
    number: str
    name: str
    line: str = "idle"
    presence: str = "available"
    updated: str = ""
    payload: bytes = b""


@dataclass(slots=True)
class _Call:
    uuid: str
    caller: str
    caller_context: str
    callee: str
    callee_context: str
    legs: dict[str, str]
    """extension → direction from its point of view."""
    answered: bool = False
    ringing: set[str] = field(default_factory=set)
    """Legs whose device rings before the call goes anywhere (a
    click-to-dial caller), whatever their direction."""
    request: _Request | None = None
    """The ``POST`` that originated the call, while it is being processed."""


@dataclass(slots=True)
class _Request:
    """A click-to-dial request being processed: its own SSE stream (when
    the client asked for one) and its timers."""

    outlet: Outlet | None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


@dataclass(slots=True)
class _Failure:
    prefix: str
    status: int
    remaining: int
    retry_after: str | None


@dataclass(frozen=True, slots=True)
class InjectedFailure:
    """How to answer a request that ``fail_next`` chose."""

    status: int
    retry_after: str | None
    """``Retry-After`` header value to send, if any."""


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _generated_names(count: int, rng: random.Random) -> list[str]:
    pairs = [f"{first} {last}" for first in _FIRST_NAMES for last in _LAST_NAMES]
    rng.shuffle(pairs)
    return [pairs[i % len(pairs)] + ("" if i < len(pairs) else f" {i}") for i in range(count)]


class NfonSim:
    """The simulated NFON tenant (one K-Account) and its CTI API.

    All methods must run on the event loop that serves the simulator (use
    ``SimHandle.sim`` from other threads). Unknown extensions and call uuids
    raise ``KeyError``; invalid arguments raise ``ValueError``. Methods never
    block and never await: an event is on its way to every open stream when
    the method returns.
    """

    def __init__(
        self,
        *,
        customer: str = "K1234",
        username: str = "api-user",
        password: str = "api-secret",  # noqa: S107 - the simulator's published test credential
        extensions: int | Sequence[tuple[str, str]] = 20,
        token_lifetime: float = 300.0,
        refresh_lifetime: float = 3600.0,
        keepalive: float | None = 15.0,
        event_ids: bool = False,
        close_streams_on_token_expiry: bool = False,
        seed: int | None = None,
        max_stream_buffer: int = 64 * 1024 * 1024,
        answer_delay: float | None = 0.5,
    ) -> None:
        if keepalive is not None and keepalive <= 0:
            raise ValueError("keepalive must be positive or None")
        if max_stream_buffer <= 0:
            raise ValueError("max_stream_buffer must be positive")
        self.customer = customer
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.event_ids = event_ids
        self.close_streams_on_token_expiry = close_streams_on_token_expiry
        self.max_stream_buffer = max_stream_buffer
        self.answer_delay: float | None = None
        self.set_answer_delay(answer_delay)
        self.tokens = TokenIssuer(
            username=username,
            customer=customer,
            access_lifetime=token_lifetime,
            refresh_lifetime=refresh_lifetime,
        )
        self._rng = random.Random(seed)
        self._exts: dict[str, _Extension] = {}
        self._numbers: list[str] = []
        self._calls: dict[str, _Call] = {}
        self._ext_calls: dict[str, set[str]] = {}
        self._outlets: dict[StreamKind, set[Outlet]] = {kind: set() for kind in STREAM_KINDS}
        self._seq: dict[StreamKind, int] = dict.fromkeys(STREAM_KINDS, 0)
        self._failures: list[_Failure] = []
        self._held: dict[StreamKind, list[bytes]] = {}
        self._refuse_logins = False
        self._counters = _Counters()
        self._traffic: Traffic | None = None
        self._closing = False
        if isinstance(extensions, int):
            if extensions < 0:
                raise ValueError("extensions must not be negative")
            names = _generated_names(extensions, self._rng)
            pairs = [(str(100 + i), names[i]) for i in range(extensions)]
        else:
            pairs = [(str(number), str(name)) for number, name in extensions]
        for number, name in pairs:
            self._insert_extension(number, name)

    def __repr__(self) -> str:
        return (
            f"NfonSim(customer={self.customer!r}, username={self.username!r}, "
            f"extensions={len(self._exts)})"
        )

    # --- scripting: states ---------------------------------------------------------------

    def set_state(
        self, extension: str, line: str | None = None, presence: str | None = None
    ) -> None:
        """Set an extension's line and/or presence (any string, so tests can
        send values outside the enums) and emit a state event, even when the
        values did not change."""
        ext = self._ext(extension)
        if line is not None:
            ext.line = line
        if presence is not None:
            ext.presence = presence
        self._emit_state(ext)

    def state_of(self, extension: str) -> dict[str, str]:
        """The extension's current ``state`` object, as the snapshot shows it."""
        return self._state_obj(self._ext(extension))

    def states(self) -> list[dict[str, str]]:
        """Every extension's current ``state`` object, in directory order."""
        return [self._state_obj(ext) for ext in self._exts.values()]

    def extensions(self) -> list[tuple[str, str]]:
        """``(number, name)`` of every extension, in directory order."""
        return [(ext.number, ext.name) for ext in self._exts.values()]

    def add_extension(self, number: str, name: str) -> None:
        """Add an idle, available extension; open state streams get its state.
        Raises ``ValueError`` if the number exists or is empty."""
        if not number:
            raise ValueError("extension number must not be empty")
        if number in self._exts:
            raise ValueError(f"extension {number} already exists")
        self._emit_state(self._insert_extension(number, name))

    def remove_extension(self, number: str) -> None:
        """Remove an extension; its calls are hung up first (with events)."""
        self._ext(number)
        for call_id in list(self._ext_calls.get(number, ())):
            self.hangup(call_id)
        del self._exts[number]
        self._ext_calls.pop(number, None)
        self._numbers = list(self._exts)

    # --- scripting: calls ----------------------------------------------------------------

    def ring(
        self,
        extension: str,
        *,
        direction: str = "inbound",
        party: str = "4930123456",
        external: bool = True,
    ) -> str:
        """Start a call on ``extension`` and return its uuid.

        ``party`` is the other side: an external number (context ``global``)
        or, with ``external=False``, an internal number (context = the
        K-Account). When that internal number is a simulated extension it
        gets a leg of its own with the opposite direction (same uuid). Each
        leg emits a ``ring`` call event and, if its line changes, a state
        event (inbound: ``ringing``; outbound: ``in-use``).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        self._ext(extension)
        if not party:
            raise ValueError("party must not be empty")
        if not external and party == extension:
            raise ValueError("an extension cannot call itself")
        context = "global" if external else self.customer
        if direction == "inbound":
            caller, caller_ctx, callee, callee_ctx = party, context, extension, self.customer
        else:
            caller, caller_ctx, callee, callee_ctx = extension, self.customer, party, context
        legs = {extension: direction}
        if not external and party in self._exts:
            legs[party] = "outbound" if direction == "inbound" else "inbound"
        call_id = self._new_uuid()
        call = _Call(call_id, caller, caller_ctx, callee, callee_ctx, legs)
        self._calls[call_id] = call
        for number in legs:
            self._ext_calls.setdefault(number, set()).add(call_id)
        self._progress(call, "ring")
        return call_id

    def answer(self, uuid: str) -> None:
        """The ringing call is answered: lines go ``in-use``, an ``answer``
        event per leg. ``ValueError`` if it was answered already."""
        call = self._call(uuid)
        if call.answered:
            raise ValueError(f"call {uuid} is already answered")
        if call.ringing:
            raise ValueError(f"call {uuid} still rings its caller's device")
        call.answered = True
        self._progress(call, "answer")
        self._end_request(call, None)

    def hangup(self, uuid: str) -> None:
        """End the call (answered or still ringing): lines go ``idle`` unless
        another call holds them, a ``hangup`` event per leg."""
        call = self._call(uuid)
        self._end_request(call, "cancel")
        del self._calls[uuid]
        for number in call.legs:
            held = self._ext_calls.get(number)
            if held is not None:
                held.discard(uuid)
        self._progress(call, "hangup")

    def call(
        self,
        extension: str,
        *,
        direction: str = "inbound",
        party: str = "4930123456",
        external: bool = True,
    ) -> str:
        """``ring`` then ``answer`` at once; returns the call uuid."""
        call_id = self.ring(extension, direction=direction, party=party, external=external)
        self.answer(call_id)
        return call_id

    def active_calls(self) -> list[str]:
        """Uuids of the calls that have not been hung up."""
        return list(self._calls)

    # --- click-to-dial: POST and DELETE /extensions/phone/calls ---------------------------

    def set_answer_delay(self, seconds: float | None) -> None:
        """How long a simulated device rings before it answers a click-to-dial
        call by itself (``None``: never). Applies to calls placed from now on."""
        if seconds is not None and seconds < 0:
            raise ValueError("answer_delay must not be negative")
        self.answer_delay = seconds

    def originate(
        self,
        caller: str,
        callee: str,
        *,
        caller_context: str | None = None,
        callee_context: str | None = None,
        extension: str | None = None,
        timeout: int = 20,
        outlet: Outlet | None = None,
    ) -> dict[str, str]:
        """Click-to-dial as ``POST /extensions/phone/calls`` describes it:
        ring ``caller`` (on behalf of ``extension``, default the caller),
        then dial ``callee``. Returns the ``start`` event (the 202 body);
        events for the request go to ``outlet`` when given, and it is closed
        after ``end``. ``ValueError`` for a bad request (400), ``KeyError``
        for an extension the K-Account does not have (404)."""
        for name, number in (("caller", caller), ("callee", callee)):
            if not number:
                raise ValueError(f"{name} is required")
            if number.startswith(("+", "00")):
                raise ValueError(f"{name} must not start with + or 00")
        caller_ctx = caller_context or self.customer
        callee_ctx = callee_context or self.customer
        if caller_ctx not in (self.customer, "global"):
            raise ValueError(f"caller_context must be {self.customer} or global")
        if callee_ctx == "conference":
            raise ValueError("conference calls are not simulated")
        if callee_ctx not in (self.customer, "global"):
            raise ValueError(f"callee_context must be {self.customer}, global or conference")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 120:
            raise ValueError("timeout must be whole seconds from 1 to 120")
        on_behalf = extension or (caller if caller_ctx == self.customer else None)
        if on_behalf is None:
            raise ValueError("a caller outside the K-Account needs an extension")
        self._ext(on_behalf)
        call_id = self._new_uuid()
        call = _Call(
            call_id,
            caller,
            caller_ctx,
            callee,
            callee_ctx,
            legs={on_behalf: "outbound"},
            ringing={on_behalf},
            request=_Request(outlet),
        )
        self._calls[call_id] = call
        self._ext_calls.setdefault(on_behalf, set()).add(call_id)
        start = {
            "uuid": call_id,
            "caller": caller,
            "caller_context": caller_ctx,
            "callee": callee,
            "callee_context": callee_ctx,
            "extension": on_behalf,
            "direction": "outbound",
            "state": "start",
            "updated": rfc3339_now(),
        }
        self._tell(call, "start")
        self._progress(call, "caller-dial")
        self._progress(call, "caller-ring")
        loop = asyncio.get_running_loop()
        assert call.request is not None
        timers = call.request.timers
        timers.append(loop.call_later(timeout, self._give_up, call_id))
        if self.answer_delay is not None:
            timers.append(loop.call_later(self.answer_delay, self._caller_answers, call_id))
        return start

    def cancel(self, uuid: str) -> None:
        """``DELETE /extensions/phone/calls/{uuid}``: end a click-to-dial call
        still being established (``end`` with ``error: cancel``, then
        ``hangup``). ``KeyError`` when no such request is in progress."""
        call = self._calls.get(uuid)
        if call is None or call.request is None:
            raise KeyError(f"no call {uuid!r} is being established")
        self.hangup(uuid)

    def answer_caller(self, uuid: str) -> None:
        """The caller picks up a click-to-dial call whose device rings (what
        ``answer_delay`` does by itself). ``ValueError`` if it does not ring."""
        call = self._call(uuid)
        if not call.ringing:
            raise ValueError(f"call {uuid} does not ring its caller")
        self._caller_answers(uuid)

    def _caller_answers(self, uuid: str) -> None:
        call = self._calls.get(uuid)
        if call is None or not call.ringing:
            return
        call.ringing.clear()
        if call.request is not None:
            call.request.cancel_timers()
        self._progress(call, "caller-answer")
        (own,) = call.legs
        internal = call.callee_context == self.customer and call.callee in self._exts
        if internal and (call.callee == own or self._ext_calls.get(call.callee)):
            self._end_request(call, "busy")
            self.hangup(uuid)
            return
        self._progress(call, "dial")
        if internal:
            call.legs[call.callee] = "inbound"
            self._ext_calls.setdefault(call.callee, set()).add(uuid)
        self._progress(call, "ring")

    def _give_up(self, uuid: str) -> None:
        call = self._calls.get(uuid)
        if call is not None and call.ringing:
            self._end_request(call, "timeout")
            self.hangup(uuid)

    def _tell(self, call: _Call, state: str, error: str | None = None) -> None:
        """An event on the originating request's own stream: uuid and state."""
        request = call.request
        if request is None or request.outlet is None:
            return
        event = {"uuid": call.uuid, "state": state, "updated": rfc3339_now()}
        if error is not None:
            event["error"] = error
        request.outlet.push(b"data: " + _dumps(event) + b"\n\n")

    def _end_request(self, call: _Call, error: str | None) -> None:
        """The request is done (``end``, with ``error`` on failure)."""
        request = call.request
        if request is None:
            return
        self._tell(call, "end", error)
        request.cancel_timers()
        if request.outlet is not None:
            request.outlet.close()
        call.request = None

    # --- scripting: faults -----------------------------------------------------------------

    def drop_streams(self) -> None:
        """Close every open SSE stream from the server side (after sending
        what was already queued for it)."""
        for outlets in self._outlets.values():
            for outlet in outlets:
                outlet.close()

    def refuse_logins(self, on: bool = True) -> None:
        """While on, ``POST /login`` answers 401 even for good credentials.
        Refreshes keep working (use ``expire_tokens(refresh=True)`` for that)."""
        self._refuse_logins = on

    def fail_next(
        self,
        path_prefix: str,
        status: int = 503,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
    ) -> None:
        """Answer the next ``count`` NFON requests whose path starts with
        ``path_prefix`` (with or without ``/v1``, e.g. ``/extensions/phone/states``
        or ``/login``) with ``status``, an ``{"error": ...}`` body (none for
        401 and for login's documented empty 400) and ``X-Request-Id``.
        Several calls queue up; the earliest matching one is used first.

        ``retry_after`` (seconds or an HTTP-date, sent as given) adds a
        ``Retry-After`` header. NFON documents none, but any HTTP server or
        the load balancer in front of it may send one with a 429 or 503."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), not {status}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if not path_prefix.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        header = f"{retry_after:g}" if isinstance(retry_after, int | float) else retry_after
        self._failures.append(_Failure(path_prefix, status, count, header))

    def clear_failures(self) -> None:
        """Forget every ``fail_next`` not used up yet (an outage ends)."""
        self._failures.clear()

    def hold_stream(self, stream: str, on: bool = True) -> None:
        """While on, events for streams of kind ``stream`` (``states`` or
        ``calls``) are kept back; turning it off sends them, in order. The
        two streams are independent connections, so a client may see either
        one first: this makes the order a test's choice. A states stream
        opened meanwhile still gets the current bootstrap."""
        kind = self._kind(stream)
        if on:
            self._held.setdefault(kind, [])
            return
        for payload in self._held.pop(kind, []):
            self._send(kind, payload)

    def expire_tokens(self, *, refresh: bool = False) -> None:
        """Invalidate every access token issued so far (the next request with
        one gets 401); with ``refresh=True`` the refresh tokens too. Streams
        opened with them close if ``close_streams_on_token_expiry``."""
        self.tokens.expire_access()
        if refresh:
            self.tokens.expire_refresh()
        if self.close_streams_on_token_expiry:
            self.drop_streams()

    def inject_raw(self, stream: str, text: str) -> int:
        """Write ``text`` exactly as given into every open stream of kind
        ``stream`` (``states`` or ``calls``); returns how many streams got it."""
        kind = self._kind(stream)
        frame = text.encode()
        outlets = self._outlets[kind]
        for outlet in outlets:
            outlet.push(frame)
        return len(outlets)

    # --- traffic ---------------------------------------------------------------------------

    def start_traffic(
        self, rate: float, *, mean_call_seconds: float = 3.0, seed: int | None = None
    ) -> None:
        """Random calls and presence changes at about ``rate`` state changes
        per second until ``stop_traffic`` (replaces running traffic)."""
        self.stop_traffic()
        rng = random.Random(seed) if seed is not None else self._rng
        self._traffic = Traffic(self, rate, mean_call_seconds=mean_call_seconds, rng=rng)

    def stop_traffic(self) -> None:
        """Stop random traffic; calls it started are hung up now."""
        if self._traffic is not None:
            traffic, self._traffic = self._traffic, None
            traffic.stop()

    # --- stats -----------------------------------------------------------------------------

    @property
    def stats(self) -> NfonStats:
        """A snapshot of the counters (a new object on every access)."""
        c = self._counters
        return NfonStats(
            requests=c.requests,
            logins=c.logins,
            login_failures=c.login_failures,
            refused_logins=c.refused_logins,
            refreshes=c.refreshes,
            refresh_failures=c.refresh_failures,
            unauthorized=c.unauthorized,
            injected_failures=c.injected_failures,
            stream_connects={kind: c.stream_connects[kind] for kind in STREAM_KINDS},
            open_streams={kind: len(self._outlets[kind]) for kind in STREAM_KINDS},
            stream_overflows=c.stream_overflows,
            user_agents=tuple(c.user_agents),
            distinct_user_agents=frozenset(c.distinct_user_agents),
            last_event_ids=tuple(c.last_event_ids),
            last_event_id_headers=c.last_event_id_headers,
            requests_by_path=dict(c.requests_by_path),
        )

    # --- server side: the HTTP layer and the traffic generator --------------------------

    def record_request(self, method: str, api_path: str, user_agent: str | None) -> None:
        """Count a request to an NFON path (``api_path`` without ``/v1``)."""
        c = self._counters
        c.requests += 1
        c.user_agents.append(user_agent)
        c.distinct_user_agents.add(user_agent)
        c.requests_by_path[f"{method} {api_path}"] += 1

    def take_failure(self, method: str, full_path: str, api_path: str) -> InjectedFailure | None:
        """The injected failure (``fail_next``) this request must get, using
        it up; ``None`` when none matches."""
        for failure in self._failures:
            if full_path.startswith(failure.prefix) or api_path.startswith(failure.prefix):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                self._counters.injected_failures += 1
                if failure.status == 401 and method == "POST" and api_path == "/login":
                    self._counters.login_failures += 1
                return InjectedFailure(failure.status, failure.retry_after)
        return None

    def record_unauthorized(self) -> None:
        """Count a 401 answer, whatever the path."""
        self._counters.unauthorized += 1

    def login(self, username: str | None, password: str | None) -> TokenPair | LoginRefusal:
        """``POST /login``: a fresh token pair, or why not. ``None`` for a
        field means the request body did not carry it as a string."""
        c = self._counters
        if username is None or password is None:
            c.login_failures += 1
            return "malformed"
        if self._refuse_logins:
            c.refused_logins += 1
            return "refused"
        if username != self.username or password != self.password:
            c.login_failures += 1
            return "invalid"
        c.logins += 1
        return self.tokens.issue()

    def refresh(self, token: str | None) -> TokenPair | RefreshRefusal:
        """``PUT /login``: trade a refresh token for a new pair. ``token`` is
        ``None`` when the request had no ``Authorization`` header at all, and
        ``""`` when the header was not a bearer token."""
        c = self._counters
        pair = None if token is None else self.tokens.rotate(token)
        if pair is None:
            c.refresh_failures += 1
            return "missing" if token is None else "invalid"
        c.refreshes += 1
        return pair

    def authenticate(self, token: str | None) -> Issued | None:
        """The issuer's record of a live access token; ``None`` when ``token``
        is absent, unknown, revoked or expired."""
        return None if token is None else self.tokens.check_access(token)

    def open_stream(
        self, kind: StreamKind, token_deadline: float | None, last_event_id: str | None = None
    ) -> Outlet:
        """Register a stream; a states stream starts with the bootstrap. Done in
        one synchronous step, so no change falls between bootstrap and stream.
        ``token_deadline`` (wall-clock) ends the stream when
        ``close_streams_on_token_expiry``; ``last_event_id`` is recorded only."""
        if last_event_id is not None:
            self._counters.last_event_id_headers += 1
            self._counters.last_event_ids.append(last_event_id)
        expires_at = None
        if self.close_streams_on_token_expiry and token_deadline is not None:
            loop = asyncio.get_running_loop()
            expires_at = loop.time() + (token_deadline - time.time())
        outlet = Outlet(kind, max_buffer=self.max_stream_buffer, expires_at=expires_at)
        self._counters.stream_connects[kind] += 1
        if self._closing:
            outlet.close()
            return outlet
        if kind == "states":
            outlet.push(self._bootstrap())
        self._outlets[kind].add(outlet)
        log.debug("nfon sim: stream opened", extra=kv(kind=kind, open=len(self._outlets[kind])))
        return outlet

    def close_stream(self, outlet: Outlet) -> None:
        """Forget a stream that ended (whoever ended it)."""
        self._outlets[outlet.kind].discard(outlet)
        log.debug(
            "nfon sim: stream closed",
            extra=kv(
                kind=outlet.kind, client_gone=outlet.gone, open=len(self._outlets[outlet.kind])
            ),
        )
        if outlet.overflowed:
            self._counters.stream_overflows += 1
            log.warning(
                "nfon sim: closed a stream whose client reads too slowly",
                extra=kv(kind=outlet.kind, max_buffer=outlet.max_buffer),
            )

    def snapshot(self, wanted: set[str] | None = None) -> list[dict[str, str]]:
        """``state`` objects of the extensions in ``wanted`` (all when ``None``)."""
        exts = self._exts.values()
        return [self._state_obj(e) for e in exts if wanted is None or e.number in wanted]

    def directory(self) -> list[dict[str, str]]:
        """The body of ``GET /extensions/phone/data``."""
        return [
            {"uuid": f"{e.number}@{self.customer}", "extension_number": e.number, "name": e.name}
            for e in self._exts.values()
        ]

    def start_serving(self) -> None:
        """A server starts: streams may open again (after a ``shutdown``)."""
        self._closing = False

    def shutdown(self) -> None:
        """Before the server stops: no traffic, no open streams, and streams
        opened from now on end at once (so shutdown need not wait for them)."""
        self._closing = True
        self.stop_traffic()
        self.drop_streams()

    def pick_any(self, rng: random.Random) -> str | None:
        """A random extension number; ``None`` when there are none."""
        return rng.choice(self._numbers) if self._numbers else None

    def pick_idle(self, rng: random.Random, exclude: str | None = None) -> str | None:
        """A random extension without calls (other than ``exclude``), or
        ``None`` when a few draws found none."""
        for _ in range(8):
            number = self.pick_any(rng)
            if number is not None and number != exclude and not self._ext_calls.get(number):
                return number
        return None

    # --- internals -------------------------------------------------------------------------

    def _insert_extension(self, number: str, name: str) -> _Extension:
        if number in self._exts:
            raise ValueError(f"extension {number} is listed twice")
        ext = _Extension(number, name)
        ext.updated = rfc3339_now()
        ext.payload = _dumps(self._state_obj(ext))
        self._exts[number] = ext
        self._numbers.append(number)
        return ext

    def _ext(self, number: str) -> _Extension:
        try:
            return self._exts[number]
        except KeyError:
            raise KeyError(f"no extension {number!r}") from None

    def _call(self, call_id: str) -> _Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise KeyError(f"no active call {call_id!r}") from None

    @staticmethod
    def _kind(stream: str) -> StreamKind:
        if stream not in STREAM_KINDS:
            raise ValueError(f"stream must be one of {STREAM_KINDS}, not {stream!r}")
        return stream

    def _new_uuid(self) -> str:
        return str(uuid_module.UUID(int=self._rng.getrandbits(128), version=4))

    def _state_obj(self, ext: _Extension) -> dict[str, str]:
        return {
            "extension": ext.number,
            "customer": self.customer,
            "line": ext.line,
            "presence": ext.presence,
            "updated": ext.updated,
        }

    def _emit_state(self, ext: _Extension) -> None:
        ext.updated = rfc3339_now()
        ext.payload = _dumps(self._state_obj(ext))
        self._publish("states", ext.payload)

    def _progress(self, call: _Call, state: str) -> None:
        updated = rfc3339_now()
        for number, direction in call.legs.items():
            ext = self._exts.get(number)
            if ext is not None:
                line = self._line_for(number)
                if line != ext.line:
                    ext.line = line
                    self._emit_state(ext)
            if number == next(iter(call.legs)):
                self._tell(call, state)
            event = {
                "uuid": call.uuid,
                "state": state,
                "caller": call.caller,
                "caller_context": call.caller_context,
                "callee": call.callee,
                "callee_context": call.callee_context,
                "direction": direction,
                "extension": number,
                "customer": self.customer,
                "updated": updated,
            }
            self._publish("calls", _dumps(event))

    def _line_for(self, number: str) -> str:
        ringing = False
        for call_id in self._ext_calls.get(number, ()):
            call = self._calls[call_id]
            if number in call.ringing:
                ringing = True
            elif call.answered or call.legs[number] == "outbound":
                return "in-use"
            ringing = True
        return "ringing" if ringing else "idle"

    def _frame(self, kind: StreamKind, payload: bytes) -> bytes:
        if self.event_ids:
            return b"id: %d\ndata: %b\n\n" % (self._seq[kind], payload)
        return b"data: " + payload + b"\n\n"

    def _publish(self, kind: StreamKind, payload: bytes) -> None:
        held = self._held.get(kind)
        if held is not None:
            held.append(payload)
            return
        self._send(kind, payload)

    def _send(self, kind: StreamKind, payload: bytes) -> None:
        self._seq[kind] += 1
        outlets = self._outlets[kind]
        if not outlets:
            return
        frame = self._frame(kind, payload)
        for outlet in outlets:
            outlet.push(frame)

    def _bootstrap(self) -> bytes:
        # With ids on, every bootstrap event carries the current sequence
        # number: the stream is caught up to it once the bootstrap is read.
        return b"".join(self._frame("states", ext.payload) for ext in self._exts.values())

"""``NfonClient``: the one object the rest of presence-sync uses to talk to NFON.

It owns two ``httpx.AsyncClient``\\ s sharing one ``NfonAuth``: one for REST
calls (short timeouts) and one for the event streams, whose read timeout is
the liveness timeout. Every request, token requests included, carries
``User-Agent: presence-sync/<version> (<K-Account>)`` as NFON asks, and the
``X-Request-Id`` of every failed response is logged.

REST errors are translated at this edge:

- NFON unreachable, timeouts, 408, 429, 5xx: ``errors.TransientError``
  (with ``status`` and ``request_id`` where there was a response);
- 401 after the auth flow's one retry, or refused credentials:
  ``errors.AuthError`` (``CredentialsRejected`` for the latter);
- any other 4xx: ``errors.PermanentError``.

The streams never raise: they reconnect (see ``nfon/stream.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr

from presence_sync.clock import Clock, SystemClock
from presence_sync.errors import AuthError, PermanentError, TransientError, UpstreamError
from presence_sync.model import ExtensionInfo, StateEvent
from presence_sync.net import describe_error, retry_after, tls_context, user_agent
from presence_sync.nfon.auth import NfonAuth
from presence_sync.nfon.schema import FrameError, extension_from_wire, state_from_wire
from presence_sync.nfon.stream import (
    CALLS_PATH,
    STATES_PATH,
    CallItem,
    StateItem,
    StreamHealth,
    StreamSettings,
    call_stream,
    state_stream,
)
from presence_sync.ops import metrics
from presence_sync.ops.logging import Throttle, kv, printable

__all__ = ["NfonClient"]

log = logging.getLogger(__name__)

DATA_PATH = "extensions/phone/data"
CALLS_POST_PATH = "extensions/phone/calls"


def _error_text(response: httpx.Response) -> str:
    """NFON's ``{"error": "..."}`` body, shortened; empty if there is none."""
    try:
        body = response.json()
    except ValueError:
        return ""
    text = body.get("error") if isinstance(body, dict) else None
    return f": {printable(str(text)[:200])}" if text else ""


class NfonClient:
    """Client of the NFON CTI API for one K-Account (``customer``).

    ``base_url`` includes the version, e.g.
    ``https://providersupportdata.cloud-cfg.com/v1``. ``verify`` is
    ``True``/``False`` or a CA bundle file (or directory). ``transport``
    replaces the network (tests, benchmarks). Use it as an async context
    manager or call ``aclose()``.

    ``expected_extensions`` is the bootstrap size hint for ``states()``; an
    unfiltered ``snapshot()`` sets it, and the caller may too.
    """

    def __init__(
        self,
        base_url: str,
        customer: str,
        username: str,
        password: str | SecretStr,
        *,
        verify: str | bool = True,
        clock: Clock | None = None,
        request_timeout: float = 10.0,
        liveness_timeout: float = 120.0,
        reconnect_max_delay: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect_base_delay: float = 0.5,
        bootstrap_quiet: float = 0.25,
    ) -> None:
        self.customer = customer
        self.clock: Clock = clock or SystemClock()
        self.user_agent = user_agent(customer)
        self.bootstrap_quiet = bootstrap_quiet
        self.expected_extensions: int | None = None
        base = base_url.rstrip("/") + "/"
        common: dict[str, Any] = {
            "base_url": base,
            "headers": {"User-Agent": self.user_agent},
            "verify": tls_context(verify),
            "transport": transport,
            "event_hooks": {"response": [self._log_failure]},
        }
        self._rest = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout), **common)
        self.auth = NfonAuth(self._rest, username, password, clock=self.clock)
        self._rest.auth = self.auth
        self._streams = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout, read=liveness_timeout), auth=self.auth, **common
        )
        self._stream_settings = StreamSettings(
            clock=self.clock,
            liveness_timeout=liveness_timeout,
            reconnect_base_delay=reconnect_base_delay,
            reconnect_max_delay=reconnect_max_delay,
        )
        self._throttle = Throttle()
        self.states_health = StreamHealth()
        """The ``states()`` stream's connection, kept current while it is followed."""
        self.calls_health = StreamHealth()
        """The ``calls()`` stream's connection, kept current while it is followed."""

    @property
    def login_refused_since(self) -> datetime | None:
        """When NFON started refusing the API credentials (a login answered
        4xx), or ``None`` while they are accepted or no login was refused."""
        return self.auth.refused_since

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> NfonClient:
        """Build from ``config.Settings``: what ``parameters`` reads."""
        return cls(**cls.parameters(settings), clock=clock, transport=transport)

    @staticmethod
    def parameters(settings: Any) -> dict[str, Any]:
        """What a client is built from out of ``config.Settings``:
        ``settings.nfon`` (base_url, customer, username, password,
        request_timeout, liveness_timeout, reconnect_max_delay) and
        ``settings.tls.ca_bundle``. A reload whose parameters differ needs a
        new client (and reconnects the streams); nothing else does."""
        nfon = settings.nfon
        tls = getattr(settings, "tls", None)
        ca_bundle = getattr(tls, "ca_bundle", None)
        return {
            "base_url": str(nfon.base_url),
            "customer": nfon.customer,
            "username": nfon.username,
            "password": nfon.password,
            "verify": str(ca_bundle) if ca_bundle else True,
            "request_timeout": float(nfon.request_timeout),
            "liveness_timeout": float(nfon.liveness_timeout),
            "reconnect_max_delay": float(nfon.reconnect_max_delay),
        }

    def __repr__(self) -> str:
        return f"NfonClient({str(self._rest.base_url)!r}, customer={self.customer!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close both HTTP clients. Stream iterators still open end (stop
        iterating) instead of reconnecting; REST calls raise."""
        await self._streams.aclose()
        await self._rest.aclose()

    # --- REST -----------------------------------------------------------------------

    async def snapshot(self, extensions: Sequence[str] | None = None) -> list[StateEvent]:
        """The current state of every extension (or of ``extensions`` only),
        from ``GET /extensions/phone/states`` with ``Accept: application/json``.

        An empty ``extensions`` returns ``[]`` without asking. Entries that
        cannot be understood are skipped, logged and counted. Raises
        ``TransientError``, ``PermanentError`` or ``AuthError``.
        """
        if extensions is not None and not extensions:
            return []
        params = {"extension": list(extensions)} if extensions is not None else None
        body = await self._get_json(STATES_PATH, params)
        states: list[StateEvent] = []
        for entry in body:
            try:
                if not isinstance(entry, dict):
                    raise FrameError("shape", "entry is not an object")
                states.append(state_from_wire(entry, self._unknown))
            except FrameError as error:
                self._skipped("snapshot", error)
        if extensions is None:
            self.expected_extensions = len(states)
        return states

    async def directory(self) -> list[ExtensionInfo]:
        """Every extension the credentials may see, with its name, from
        ``GET /extensions/phone/data``. Entries without an extension number
        are skipped and logged. Raises like ``snapshot``."""
        infos: list[ExtensionInfo] = []
        for entry in await self._get_json(DATA_PATH, None):
            try:
                infos.append(extension_from_wire(entry))
            except FrameError as error:
                self._skipped("directory", error)
        return infos

    async def _get_json(self, path: str, params: dict[str, list[str]] | None) -> list[Any]:
        response = await self._send("GET", path, params=params)
        request_id = response.headers.get("x-request-id")
        status = response.status_code
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientError(
                f"NFON {path}: reply is not JSON", status=status, request_id=request_id
            ) from exc
        if not isinstance(body, list):
            raise TransientError(
                f"NFON {path}: reply is not a JSON array", status=status, request_id=request_id
            )
        return body

    # --- click-to-dial ------------------------------------------------------------

    async def place_call(
        self, caller: str, callee: str, *, callee_context: str | None = None, ring_for: int = 20
    ) -> str:
        """Click-to-dial (``POST /extensions/phone/calls``) on behalf of the
        extension ``caller``: NFON rings the caller's phone first and, once it
        is answered, dials ``callee`` (``callee_context`` ``global`` for an
        outside number; default: the K-Account, an extension). ``ring_for`` is
        how long, in seconds, the caller's phone may ring (the request's
        ``timeout``; NFON allows at most 120).
        Returns the call uuid from the ``start`` event. Raises like ``snapshot``."""
        body: dict[str, Any] = {
            "caller": caller,
            "caller_context": self.customer,
            "callee": callee,
            "callee_context": callee_context or self.customer,
            "extension": caller,
            "timeout": ring_for,
        }
        response = await self._send("POST", CALLS_POST_PATH, json=body)
        try:
            start = response.json()
            call_id = start["uuid"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientError(
                f"NFON {CALLS_POST_PATH}: the answer carries no call uuid",
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            ) from exc
        if not isinstance(call_id, str) or not call_id:
            raise TransientError(f"NFON {CALLS_POST_PATH}: the answer carries no call uuid")
        return call_id

    async def cancel_call(self, call_id: str) -> bool:
        """``DELETE /extensions/phone/calls/{uuid}``: cancel a call still being
        set up. False when NFON no longer knows it as such (404: it ended, or
        the other side answered). Raises like ``snapshot``."""
        response = await self._send("DELETE", f"{CALLS_POST_PATH}/{call_id}", missing_ok=True)
        return response.status_code != 404

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, list[str]] | None = None,
        missing_ok: bool = False,
    ) -> httpx.Response:
        """One REST request with NFON's errors translated (see the module
        docstring); a 404 is returned when ``missing_ok``."""
        try:
            response = await self._rest.request(
                method, path, json=json, params=params, headers={"Accept": "application/json"}
            )
        except (AuthError, UpstreamError):
            raise
        except httpx.HTTPError as exc:
            where = self._rest.base_url.join(path)
            raise TransientError(f"NFON {method} {path}: {describe_error(exc, where)}") from exc
        status = response.status_code
        if status < 400 or (status == 404 and missing_ok):
            return response
        request_id = response.headers.get("x-request-id")
        message = f"NFON {method} {path}: HTTP {status}{_error_text(response)}"
        if status == 401:
            raise AuthError(f"{message} (request id {request_id})")
        if status in (408, 429) or status >= 500:
            raise TransientError(
                message,
                status=status,
                request_id=request_id,
                retry_after=retry_after(response.headers.get("retry-after"), self.clock.now()),
            )
        raise PermanentError(message, status=status, request_id=request_id)

    # --- streams --------------------------------------------------------------------

    def states(
        self, *, bootstrap_quiet: float | None = None, expected: int | None = None
    ) -> AsyncGenerator[StateItem]:
        """Follow every extension's line and presence, forever.

        Yields a ``FullState`` per connection once its bootstrap is complete,
        then a ``StateEvent`` per change; reconnects on its own and never
        raises. The bootstrap ends when an extension repeats, when
        ``expected`` (default: ``expected_extensions``, read at each connect)
        extensions were seen, or after ``bootstrap_quiet`` seconds without a
        frame.
        """
        quiet = self.bootstrap_quiet if bootstrap_quiet is None else bootstrap_quiet
        return state_stream(
            self._streams,
            self._stream_settings,
            bootstrap_quiet=quiet,
            expected=lambda: self.expected_extensions if expected is None else expected,
            health=self.states_health,
        )

    def calls(self) -> AsyncGenerator[CallItem]:
        """Follow every call event of the K-Account, forever: ``Connected`` at
        each (re)connect, then ``CallEvent``\\ s. Never raises."""
        return call_stream(
            self._streams, self._stream_settings, path=CALLS_PATH, health=self.calls_health
        )

    # --- diagnostics ----------------------------------------------------------------

    async def _log_failure(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            log.info(
                "nfon request failed",
                extra=kv(
                    method=response.request.method,
                    path=response.request.url.path,
                    status=response.status_code,
                    request_id=response.headers.get("x-request-id"),
                ),
            )

    def _unknown(self, field: str, value: object) -> None:
        metrics.STREAM_UNKNOWN_VALUES.labels(stream="snapshot", field=field).inc()
        if self._throttle.allow(f"unknown:{field}", self.clock.monotonic()) is not None:
            log.warning("nfon sent an unknown value", extra=kv(field=field, value=repr(value)[:40]))

    def _skipped(self, source: str, error: FrameError) -> None:
        if source == "snapshot":
            metrics.STREAM_FRAMES_REJECTED.labels(stream=source, reason=error.reason).inc()
        held = self._throttle.allow(f"{source}:{error.reason}", self.clock.monotonic())
        if held is not None:
            log.warning(
                "nfon entry skipped",
                extra=kv(source=source, reason=error.reason, detail=error.detail),
            )

"""The glue between the running daemon and its listener: which routes it
serves and what they read (``app.Daemon`` builds one ``DaemonApi``).

The daemon's parts are asked for at each request (``running()``), since a
reload swaps them; before the first configuration is wired ``/readyz``
answers 503 "starting".
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.routing import BaseRoute

from presence_sync import __version__
from presence_sync.api.hosts import Hosts
from presence_sync.api.http import build_app, is_loopback
from presence_sync.api.listener import Listener
from presence_sync.api.pause import minimal_person, pause_routes
from presence_sync.api.readiness import Readiness
from presence_sync.api.status import Parts, PauseView, StatusBuilder, iso
from presence_sync.clock import Clock
from presence_sync.config import HttpSettings
from presence_sync.directory import Directory
from presence_sync.engine import Engine
from presence_sync.feed import Feed
from presence_sync.members import Refresher
from presence_sync.model import Person
from presence_sync.net import bind, parse_listen
from presence_sync.ops.logging import kv
from presence_sync.pauses import Pauses

__all__ = ["DaemonApi", "Running", "bind_listener"]

log = logging.getLogger(__name__)


class Running(Protocol):
    """What the API reads of the running daemon (``app.Runtime``)."""

    @property
    def engine(self) -> Engine: ...

    @property
    def pauses(self) -> Pauses: ...

    @property
    def feed(self) -> Feed: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def members(self) -> Refresher: ...


def bind_listener(http: HttpSettings) -> socket.socket | None:
    """The socket ``http.listen`` asks for, bound and listening (None when
    off), so that a busy address is known before anything else starts.
    Raises ``OSError`` (the caller names the configuration key)."""
    if not http.listen:
        return None
    return bind(*parse_listen(http.listen))


class DaemonApi:
    """The daemon's HTTP side. ``running()`` is the runtime in use (None
    before the first one is wired), ``readiness()`` the daemon's readiness
    now, ``resync()`` asks for a full resync (``POST /api/resync``)."""

    def __init__(
        self,
        running: Callable[[], Running | None],
        *,
        readiness: Callable[[], Readiness],
        resync: Callable[[], object],
        clock: Clock,
    ) -> None:
        self._running = running
        self._readiness = readiness
        self._resync = resync
        self._clock = clock
        self.status = StatusBuilder(self._parts)
        """The documents of the status API (``/api/status``, ``/api/people/...``)."""

    def listener(self, http: HttpSettings, sock: socket.socket | None = None) -> Listener | None:
        """The listener ``http`` asks for, not serving yet, on ``sock`` (from
        ``bind_listener``; bound here when None), or None when ``http.listen``
        is off. Raises ``OSError`` when the address cannot be bound."""
        if not http.listen:
            return None
        host, _ = parse_listen(http.listen)
        loopback = is_loopback(host)
        token = None if http.token is None else http.token.get_secret_value()
        if not loopback and token is None:
            log.warning(
                "http.listen is not a loopback address and no http.token is set: "
                "the API refuses every change (resync, pause); set http.token_file",
                extra=kv(listen=http.listen),
            )
        sock = sock or bind_listener(http)
        if sock is None:
            return None
        try:
            hosts = Hosts.of(
                host,
                sock.getsockname()[1],
                loopback=loopback,
                public_url=http.public_url,
                extra=http.allowed_hosts,
            )
            app = build_app(
                self._health,
                self._ready,
                status=self.status,
                resync=self._resync,
                routes=self._routes(),
                hosts=hosts,
                token=token,
                loopback=loopback,
            )
            listener = Listener(app, sock)
        except BaseException:
            sock.close()
            raise
        host, port = listener.address[:2]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info(
            "listening for /healthz /readyz /metrics, the status page / and /api",
            extra=kv(address=shown),
        )
        return listener

    def _now(self) -> Running:
        running = self._running()
        if running is None:
            raise RuntimeError("the daemon is not running")
        return running

    def _routes(self) -> list[BaseRoute]:
        """API routes beyond status and resync (changes among them get the
        bearer-token guard like every other non-GET request): pause and
        resume, answering with the status API's PERSON document."""
        pauses = self._now().pauses
        minimal = minimal_person(pauses)

        def person_doc(person: Person) -> Mapping[str, Any]:
            # Someone paused and since removed has no status document.
            return self.status.person(person.key) or minimal(person)

        return [*pause_routes(pauses, person_doc)]

    def _parts(self) -> Parts:
        running = self._now()
        return Parts(
            now=self._clock.now(),
            engine=running.engine,
            readiness=self._readiness(),
            last_resync=running.feed.last_resync,
            paused=self._paused,
            directory=self._directory,
        )

    def _directory(self) -> Mapping[str, Any] | None:
        """The Entra group's summary for the status documents (None without
        ``directory.microsoft``), with when it was last read and why not."""
        running = self._now()
        doc = running.directory.summary()
        if doc is not None:
            members = running.members
            doc["last_refresh"] = iso(members.last_success)
            doc["error"] = members.error
        return doc

    def _paused(self, key: str) -> PauseView | None:
        row = self._now().pauses.get(key)
        if row is None:
            return None
        return PauseView(row.until, None if row.targets is None else tuple(sorted(row.targets)))

    def _health(self) -> tuple[bool, Mapping[str, Any]]:
        return True, {"version": __version__}

    def _ready(self) -> tuple[bool, Mapping[str, Any]]:
        if self._running() is None:
            return False, {"status": "starting", "components": {}}
        now = self._readiness()
        return now.ok, {"status": now.status, "components": now.components}

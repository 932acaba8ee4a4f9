"""Pausing a person: an admin's "leave Anna alone this afternoon".

A pause covers every target of one person, or only some (``--target``). While
it lasts, the engine holds those keys (``Engine.hold``): they want nothing
from us, so the person gets their own status back exactly as when a call
ends, and nothing more is sent for them, whatever their line does and
however often the daemon resyncs. ``resume``, or the pause's end time,
releases the keys and the engine shows what the rules say again at once.

Pauses live in the store (``Store.put_pause``), so a restart keeps them;
those whose time ran out while the daemon was stopped are dropped when it
starts. The end times run on the injected clock. Every pause, resume and
end is logged once, naming the person, the targets and until when (local
time with its offset).

Pausing someone already paused adds up: the targets of both (every target
if either covered every target), with the new end time. To narrow a pause,
resume and pause again.

Errors a caller shows the admin: ``UnknownPerson`` (nobody configured is
``who``), ``BadPause`` (an unknown target, a duration that is not one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from presence_sync.clock import Clock
from presence_sync.errors import PauseError, StoreError
from presence_sync.model import Person, find_person
from presence_sync.ops.logging import kv
from presence_sync.store import PauseRow, Store

__all__ = [
    "LONGEST_PAUSE",
    "BadPause",
    "Holder",
    "PauseError",
    "Pauses",
    "UnknownPerson",
    "duration_problem",
    "shown_time",
]

log = logging.getLogger(__name__)

LONGEST_PAUSE: Final = 366 * 86400.0
"""Seconds a timed pause may last at most; longer ones are until resumed."""


def duration_problem(seconds: float) -> str | None:
    """Why a pause cannot last ``seconds``, in the words the API and the
    ``pause`` command both use; None when it can."""
    if 0 < seconds <= LONGEST_PAUSE:
        return None
    return (
        "a pause must last more than 0s and at most 366d; "
        "leave the duration out to pause until resumed"
    )


_MAX_SLEEP: Final = 60.0
"""The end-time timer looks again at least this often (seconds), so a wall
clock that jumps ends a pause at most this late."""


class UnknownPerson(PauseError, LookupError):
    """Nobody configured is the person asked for."""


class BadPause(PauseError, ValueError):
    """A pause asked with a target or duration that does not exist."""


class Holder(Protocol):
    """What a pause needs of the engine (``engine.Engine`` is one)."""

    @property
    def target_names(self) -> Sequence[str]: ...

    def hold(self, key: str, targets: frozenset[str] | None = None) -> None: ...

    def release(self, key: str) -> None: ...


def shown_time(when: datetime) -> str:
    """``when`` in the machine's local time, with its offset (``+01:00``)."""
    return when.astimezone().isoformat(timespec="seconds")


def _targets_text(targets: frozenset[str] | None) -> str:
    return "every target" if targets is None else ",".join(sorted(targets))


class Pauses:
    """The paused people of one daemon: kept in ``store``, held in
    ``engine``, ended on ``clock``. ``people()`` lists who may be paused
    (the engine's people, as the status API finds them; asked at each call,
    so a reload counts).

    Built at start: reads the store, drops (and logs) pauses whose time ran
    out, and holds the others in the engine before it runs. ``run()`` ends
    pauses when their time is up; without it running they end at the next
    start. One event loop; every method but ``run`` is synchronous.
    """

    def __init__(
        self,
        store: Store,
        engine: Holder,
        people: Callable[[], Sequence[Person]],
        clock: Clock,
    ) -> None:
        self._store = store
        self._engine = engine
        self._people = people
        self._clock = clock
        self._rows: dict[str, PauseRow] = {}
        self._changed = asyncio.Event()
        now = clock.now()
        for row in store.load_pauses():
            if row.until is not None and row.until <= now:
                store.delete_pause(row.person_key)
                log.info(
                    "pause ended while the daemon was stopped; syncing again",
                    extra=self._fields(row),
                )
                continue
            self._rows[row.person_key] = row
            engine.hold(row.person_key, row.targets)
            log.info("still paused from before the restart", extra=self._fields(row))

    # --- reading ----------------------------------------------------------------------

    def pauses(self) -> Mapping[str, PauseRow]:
        """Every pause in force, by person key (a copy)."""
        return dict(self._rows)

    def get(self, key: str) -> PauseRow | None:
        """The pause of person ``key``, if any."""
        return self._rows.get(key)

    def doc(self, key: str) -> dict[str, Any] | None:
        """PERSON.paused of the daemon's API: ``{"until": iso or None,
        "targets": [names] or None}``, or ``None`` when not paused."""
        row = self._rows.get(key)
        if row is None:
            return None
        return {
            "until": None if row.until is None else shown_time(row.until),
            "targets": None if row.targets is None else sorted(row.targets),
        }

    def find(self, who: str) -> Person:
        """The configured person ``who`` names (``model.find_person``);
        raises ``UnknownPerson``."""
        person = find_person(self._people(), who)
        if person is None:
            raise UnknownPerson(
                f"nobody configured is {who!r}: give a person's e-mail address or extension "
                "as listed under people: in the configuration"
            )
        return person

    # --- changing ---------------------------------------------------------------------

    def pause(
        self, who: str, *, seconds: float | None = None, target: str | None = None
    ) -> tuple[Person, PauseRow]:
        """Pause ``who`` at ``target`` (``None``: every target) for
        ``seconds`` (``None``: until resumed). Raises ``UnknownPerson`` or
        ``BadPause`` and changes nothing then; ``StoreError`` when the store
        cannot keep it (the engine is then left as it was)."""
        person = self.find(who)
        if target is not None:
            names = self._engine.target_names
            if target not in names:
                configured = ", ".join(names) or "none"
                raise BadPause(f"no target is called {target!r}; configured targets: {configured}")
        problem = None if seconds is None else duration_problem(seconds)
        if problem is not None:
            raise BadPause(problem)
        now = self._clock.now()
        old = self._rows.get(person.key)
        targets: frozenset[str] | None = None if target is None else frozenset({target})
        if old is not None:
            targets = None if targets is None or old.targets is None else old.targets | targets
        row = PauseRow(
            person_key=person.key,
            targets=targets,
            until=None if seconds is None else now + timedelta(seconds=seconds),
            since=now if old is None else old.since,
        )
        self._store.put_pause(row)
        self._rows[person.key] = row
        self._engine.hold(person.key, targets)
        self._changed.set()
        log.info(
            "paused: their own status is given back, then nothing is sent for them",
            extra=self._fields(row, person),
        )
        return person, row

    def resume(self, who: str) -> tuple[Person, PauseRow | None]:
        """End the pause of ``who`` now; the pause that ended, or ``None``
        when they were not paused (nothing changes then). Someone paused and
        since removed from the configuration is found by their e-mail
        address. Raises ``UnknownPerson``; ``StoreError`` when the store
        cannot forget it."""
        try:
            person = self.find(who)
        except UnknownPerson:
            key = who.strip().lower()
            if key not in self._rows:
                raise
            person = Person(key=key, email=key, extension="")
        row = self._rows.get(person.key)
        if row is None:
            return person, None
        self._end(row, "resumed: syncing again", person)
        return person, row

    async def run(self) -> None:
        """End each pause when its time is up, until cancelled."""
        while True:
            self._changed.clear()
            now = self._clock.now()
            for row in [r for r in self._rows.values() if r.until is not None and r.until <= now]:
                self._end(row, "pause ended: its time is up; syncing again", strict=False)
            ends = [r.until for r in self._rows.values() if r.until is not None]
            wait = (min(ends) - now).total_seconds() if ends else None
            changed = asyncio.ensure_future(self._changed.wait())
            waits: set[asyncio.Future[Any]] = {changed}
            if wait is not None:
                waits.add(asyncio.ensure_future(self._clock.sleep(min(wait, _MAX_SLEEP))))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in waits:
                    future.cancel()

    # --- inside -----------------------------------------------------------------------

    def _end(
        self, row: PauseRow, message: str, person: Person | None = None, *, strict: bool = True
    ) -> None:
        """End ``row``'s pause. ``strict``: a store that cannot forget it
        raises ``StoreError`` and nothing changes; otherwise (its time is
        up) it ends anyway, and the next start drops the stored row."""
        try:
            self._store.delete_pause(row.person_key)
        except StoreError as exc:
            if strict:
                raise
            log.warning(
                "an ended pause could not be removed from the state database; "
                "it is dropped at the next start",
                extra=kv(person=row.person_key, error=str(exc)),
            )
        del self._rows[row.person_key]
        self._engine.release(row.person_key)
        self._changed.set()
        log.info(message, extra=self._fields(row, person))

    def _fields(self, row: PauseRow, person: Person | None = None) -> dict[str, Any]:
        if person is None:
            person = next((p for p in self._people() if p.key == row.person_key), None)
        return kv(
            person=row.person_key if person is None else person.email,
            targets=_targets_text(row.targets),
            until="resumed" if row.until is None else shown_time(row.until),
        )

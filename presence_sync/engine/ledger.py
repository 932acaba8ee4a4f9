"""The write-ahead ledger: what each target shows per person, and the only
code that changes it, in memory and in the store.

A status counts as applied only once the target confirmed it. Before a status
is sent to a target with remote state it is recorded as *maybe applied*
(``write_ahead``: a ``Record`` flagged ``uncertain``), so a crash at any instant,
SIGKILL during the request included, leaves a store that knows what may need
taking back. A request whose outcome is unknown keeps the worse case recorded
and flagged (``uncertain``) until one request for that key succeeds; a
request the target refused outright changed nothing, and ``rejected`` puts
the record back.

Commits are grouped, and never wait on the event loop. A record after an
answer (``record``, ``uncertain``, ``rejected``) or before a request
(``write_ahead``) is *staged*: the in-memory row changes at once and the
store gets it with the next group, in ONE transaction: ``try_commit`` at the
end of the loop turn if the store can take it without waiting for a lock
(the common case, cheap), else ``commit`` through ``Store.awrite_applied``,
which a SQLite store runs on its writer thread; rows staged meanwhile go in
the next group. The engine sends a
request only after a group holding its write-ahead record has committed
(``Phase.STARTING`` until then). A crash before a commit loses only staged
rows whose older store row is the safe one (a flagged worse case, or a row
for a request that was refused or never sent): the next start applies such
a key again. What the ledger holds in memory is therefore the store's
content plus the staged and committing rows.

A store that cannot write (locked past its busy timeout, disk full) loses
nothing: the group goes back in front of the staged rows, ``commit`` says
so, and the failure is logged once until a commit succeeds again. A row the
store refuses as a bad value (``ValueError``, logged) stays in memory flagged
uncertain, so its key is applied, and recorded, again; ``commit`` returns
those keys for the engine to back off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from presence_sync.clock import Clock
from presence_sync.model import Applied, Person, Status
from presence_sync.ops.logging import kv
from presence_sync.store import AppliedRow, AppliedWrite, Store

__all__ = ["Ledger", "Record"]

log = logging.getLogger("presence_sync.engine")


@dataclass(frozen=True, slots=True)
class Record:
    """What the ledger knows of one (target, person). ``applied`` is the
    target's last answer (its ``data`` only the target's own memo);
    ``uncertain``: a request for it may or may not have arrived (a
    write-ahead record, an unanswered request), so ``applied`` is the worse
    case and the key is applied again until one request succeeds."""

    applied: Applied
    uncertain: bool = False

    @property
    def status(self) -> Status | None:
        return self.applied.status


def confirmed(record: Record | None) -> Applied | None:
    """The ``Applied`` of ``record`` as a target is handed it (``Change.applied``)."""
    return None if record is None else record.applied


@dataclass(frozen=True, slots=True)
class Failed:
    """A row the store could not take: its key needs another go."""

    target: str
    key: str
    error: Exception


class _Pending(NamedTuple):
    write: AppliedWrite
    record: Record | None
    what: str


class Ledger:
    """Applied rows per target, in memory and in the store. ``wake`` is
    called when a row is staged, so the owner commits at the end of the turn."""

    def __init__(self, store: Store, clock: Clock, wake: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake
        self._rows: dict[str, dict[str, Record]] = {}
        self._staged: list[_Pending] = []
        self._committing = 0
        self._down_since: float | None = None

    # --- reading ------------------------------------------------------------------------

    def rows(self, target: str) -> Mapping[str, Record]:
        """Person key → record of one target (read only)."""
        return self._rows.get(target, {})

    def get(self, target: str, key: str) -> Record | None:
        rows = self._rows.get(target)
        return None if rows is None else rows.get(key)

    def held(self, key: str) -> bool:
        """Whether any target has a row for person ``key``."""
        return any(key in rows for rows in self._rows.values())

    @property
    def staged(self) -> int:
        """Rows waiting for the next commit."""
        return len(self._staged)

    @property
    def committing(self) -> int:
        """Rows of the commit under way."""
        return self._committing

    # --- targets ------------------------------------------------------------------------

    def load(self, targets: Iterable[str]) -> list[AppliedRow]:
        """Start following ``targets`` from their rows in the store; returns
        those rows (the caller learns departed people from them)."""
        names = set(targets)
        for name in names:
            self._rows.setdefault(name, {})
        loaded = [row for row in self._store.load_applied() if row.target in names]
        for row in loaded:
            self._rows[row.target][row.person.key] = Record(row.applied, row.uncertain)
        return loaded

    def drop(self, target: str) -> None:
        """Forget a target's rows in memory (its store rows stay)."""
        self._rows.pop(target, None)

    # --- writing ------------------------------------------------------------------------

    def record(self, target: str, person: Person, applied: Applied | None) -> None:
        """Stage what the target confirmed for (target, person): ``None``, or
        nothing of ours with no memo, deletes the record. Memory has it now,
        the store at the commit."""
        kept = None if applied is None or (applied.status is None and not applied.data) else applied
        self._put(target, person, None if kept is None else Record(kept), "an applied status")

    def uncertain(self, target: str, person: Person, attempted: Status | None) -> None:
        """Remember that the remote side may now show ``attempted`` (or still
        what it showed): the worse case, flagged, so the key is applied again."""
        record = self._uncertain_record(target, person.key, attempted)
        if record is not None:
            self._put(target, person, record, "an uncertain status")

    def rejected(self, target: str, person: Person, before: Record | None) -> None:
        """The target refused the request outright (4xx, 429, auth): nothing
        changed there, so a write-ahead record goes back to what was before."""
        if self.get(target, person.key) is not before:
            self._put(target, person, before, "the record from before a refused request")

    def write_ahead(self, target: str, person: Person, attempted: Status) -> None:
        """Before a request for ``attempted`` leaves: stage the record that
        the target may now show it (flagged uncertain), unless the record
        already says so. The request may go once ``commit`` has written it."""
        record = self._uncertain_record(target, person.key, attempted)
        if record is not None:
            self._stage(_pending(target, person, record, "an uncertain status"))

    def _put(self, target: str, person: Person, record: Record | None, what: str) -> None:
        self._stage(_pending(target, person, record, what))
        self._wake()

    def try_commit(self) -> bool:
        """Write every staged row now if the store can without waiting for
        a lock (``Store.try_write_applied``). False, with every row still
        staged, otherwise, and on any error: ``commit`` then writes them,
        reports what fails and logs it."""
        if self._committing or not self._staged:
            return not self._staged
        try:
            done = self._store.try_write_applied([p.write for p in self._staged])
        except Exception:
            return False
        if done:
            self._staged = []
            self._recovered()
        return done

    async def commit(self) -> list[Failed] | None:
        """Write every staged row in one transaction (one ``commit`` at a
        time). Returns the rows the store refused as bad values (logged;
        kept in memory flagged uncertain), or ``None`` when the store could
        not write at all: then every row is staged again, for the next call.
        Cancelled, the rows are staged again too (writing them twice is
        harmless: each replaces or deletes a whole row)."""
        assert not self._committing, "one commit at a time"
        batch, self._staged = self._staged, []
        if not batch:
            return []
        self._committing = len(batch)
        try:
            failed = await self._write(batch)
        except asyncio.CancelledError:
            self._staged[:0] = batch
            raise
        except Exception as exc:
            self._staged[:0] = batch
            if self._down_since is None:
                self._down_since = self._clock.monotonic()
                log.error(
                    "cannot write the state database; records are kept and retried",
                    exc_info=exc,
                    extra=kv(records=len(self._staged)),
                )
            return None
        finally:
            self._committing = 0
        self._recovered()
        return failed

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "state database writable again",
                extra=kv(after_s=round(self._clock.monotonic() - self._down_since, 3)),
            )
            self._down_since = None

    def _stage(self, pending: _Pending) -> None:
        write = pending.write
        rows = self._rows.get(write.target)
        if rows is not None:  # else the target was removed meanwhile
            if pending.record is None:
                rows.pop(write.person.key, None)
            else:
                rows[write.person.key] = pending.record
        self._staged.append(pending)

    def _uncertain_record(self, target: str, key: str, attempted: Status | None) -> Record | None:
        """The worse case after a request for ``attempted`` (None when the
        record already says so, or when nothing of ours can be there)."""
        old = self.get(target, key)
        status = attempted if attempted is not None else (old.status if old else None)
        if old is None and status is None:
            return None  # clearing where nothing of ours was known: nothing can be left
        if old is not None and old.status == status and old.uncertain:
            return None
        if old is None:
            return Record(Applied(status=status, at=self._clock.now()), uncertain=True)
        was = old.applied
        expires = was.expires if was.status == status else None
        applied = Applied(status=status, at=self._clock.now(), expires=expires, data=was.data)
        return Record(applied, uncertain=True)

    async def _write(self, batch: list[_Pending]) -> list[Failed]:
        """One transaction. A value the store refuses (``ValueError``: a
        target's bad memo) fails alone: the group is then written one row at
        a time. Any other error is raised, with nothing written."""
        try:
            await self._store.awrite_applied([p.write for p in batch])
        except ValueError as exc:
            if len(batch) == 1:
                return self._failed(batch, exc)
            return [failed for pending in batch for failed in await self._write([pending])]
        return []

    def _failed(self, batch: list[_Pending], exc: Exception) -> list[Failed]:
        failed: list[Failed] = []
        for pending in batch:
            write = pending.write
            key = write.person.key
            log.error(
                "could not record %s",
                pending.what,
                exc_info=exc,
                extra=kv(target=write.target, person=write.person.email),
            )
            rows = self._rows.get(write.target)
            if rows is not None and rows.get(key) is pending.record:
                # Memory must not claim what the store lacks: flag it, so the
                # key is applied (and recorded) again.
                row = pending.record
                applied = Applied(status=None, at=self._clock.now()) if row is None else row.applied
                rows[key] = Record(applied, uncertain=True)
            failed.append(Failed(write.target, key, exc))
        return failed


def _pending(target: str, person: Person, record: Record | None, what: str) -> _Pending:
    if record is None:
        return _Pending(AppliedWrite(target, person, None), None, what)
    write = AppliedWrite(target, person, record.applied, record.uncertain)
    return _Pending(write, record, what)

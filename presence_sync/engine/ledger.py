"""The write-ahead ledger: what each target shows per person, as the store
knows it, and the only code that changes it.

A status counts as applied only once the target confirmed it. Before a status
is sent to a target with remote state it is recorded as *maybe applied*
(``uncertain``: the row flagged ``UNCERTAIN``), so a crash at any instant,
SIGKILL during the request included, leaves a store that knows what may need
taking back. A request whose outcome is unknown keeps the worse case recorded
and flagged until one request for that key succeeds; a request the target
refused outright changed nothing, and ``rejected`` puts the record back.

Writes are grouped, so a busy engine pays one commit per loop turn, not one
per key: the engine hands ``write_ahead`` the records of every request it
starts in one turn, committed in one ``Store.write_applied`` transaction
before any of those requests exists; the records after an answer
(``record``, ``rejected``) asked for during one turn are committed together
at its end, and each caller resumes once its record is committed (or
failed). The in-memory copy changes only once the store has the row, so both
agree (an uncertain record is kept in memory even if the store failed: the
key is then worked on until certain).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from presence_sync.clock import Clock
from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.ops.logging import kv
from presence_sync.store import AppliedRow, AppliedWrite, Store

__all__ = ["UNCERTAIN", "Ledger", "as_confirmed"]

log = logging.getLogger("presence_sync.engine")

UNCERTAIN: Final = "presence_sync.uncertain"
"""Key the engine sets in ``Applied.data`` of a row it is not sure about
(see ``Engine``); targets never see it."""


def as_confirmed(applied: Applied | None) -> Applied | None:
    """``applied`` as a target should see it: without the engine's own flag."""
    if applied is None or UNCERTAIN not in applied.data:
        return applied
    data = {k: v for k, v in applied.data.items() if k != UNCERTAIN}
    return dataclasses.replace(applied, data=frozen_map(data))


def is_uncertain(applied: Applied | None) -> bool:
    return applied is not None and UNCERTAIN in applied.data


@dataclass(slots=True, eq=False)
class _Pending:
    """One record waiting for the end of the loop turn."""

    write: AppliedWrite
    key: str
    what: str
    done: asyncio.Future[Exception | None] | None
    keep: bool = False
    """Keep the row in memory even if the store fails (uncertain records)."""


class Ledger:
    """Applied rows per target, in memory and in the store."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._rows: dict[str, dict[str, Applied]] = {}
        self._batch: list[_Pending] = []
        self._flush_scheduled = False

    # --- reading ------------------------------------------------------------------------

    def rows(self, target: str) -> Mapping[str, Applied]:
        """Person key → applied row of one target (read only)."""
        return self._rows.get(target, {})

    def get(self, target: str, key: str) -> Applied | None:
        rows = self._rows.get(target)
        return None if rows is None else rows.get(key)

    def held(self, key: str) -> bool:
        """Whether any target has a row for person ``key``."""
        return any(key in rows for rows in self._rows.values())

    # --- targets ------------------------------------------------------------------------

    def load(self, targets: Iterable[str]) -> list[AppliedRow]:
        """Start following ``targets`` from their rows in the store; returns
        those rows (the caller learns departed people from them)."""
        names = set(targets)
        for name in names:
            self._rows.setdefault(name, {})
        loaded = [row for row in self._store.load_applied() if row.target in names]
        for row in loaded:
            self._rows[row.target][row.person.key] = row.applied
        return loaded

    def drop(self, target: str) -> None:
        """Forget a target's rows in memory (its store rows stay)."""
        self._rows.pop(target, None)

    # --- writing ------------------------------------------------------------------------

    async def record(
        self, target: str, person: Person, row: Applied | None, what: str, *, keep: bool = False
    ) -> Exception | None:
        """Store ``row`` for (target, person) (``None``, or nothing of ours
        with no memo: delete it) at the end of this loop turn and, once
        stored, keep it in memory too (with ``keep``, even if the store
        failed). Returns the store's error, logged, instead of raising it."""
        kept = None if row is None or (row.status is None and not row.data) else row
        done: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        write = AppliedWrite(target, person, kept)
        self._batch.append(_Pending(write, person.key, what, done, keep=keep))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await done

    def _uncertain_row(self, target: str, key: str, attempted: Status | None) -> Applied | None:
        """The worse case after a request for ``attempted`` (or None when the
        record already says it, or nothing of ours can be there)."""
        old = self.get(target, key)
        status = attempted if attempted is not None else (old.status if old else None)
        if old is None and status is None:
            return None  # clearing where nothing of ours was known: nothing can be left
        if old is not None and old.status == status and UNCERTAIN in old.data:
            return None
        data = {**(old.data if old else {}), UNCERTAIN: True}
        expires = old.expires if old is not None and old.status == status else None
        return Applied(status=status, at=self._clock.now(), expires=expires, data=frozen_map(data))

    def write_ahead(self, requests: Iterable[tuple[str, Person, Status]]) -> None:
        """Before requests leave: record each (target, person, status about to
        be sent) as maybe applied, all in one transaction, committed when this
        returns. Should the store fail (logged), the records are kept in
        memory all the same, so the keys are worked on until certain."""
        batch = []
        for target, person, attempted in requests:
            row = self._uncertain_row(target, person.key, attempted)
            if row is not None:
                write = AppliedWrite(target, person, row)
                batch.append(_Pending(write, person.key, "an uncertain status", None, keep=True))
        if batch:
            self._write(batch)

    async def uncertain(self, target: str, person: Person, attempted: Status | None) -> None:
        """Remember that the remote side may now show ``attempted`` (or still
        what it showed): the worse case, flagged, so the key is applied again."""
        row = self._uncertain_row(target, person.key, attempted)
        if row is not None:
            await self.record(target, person, row, "an uncertain status", keep=True)

    async def rejected(self, target: str, person: Person, before: Applied | None) -> None:
        """The target refused the request outright (4xx, 429, auth): nothing
        changed there, so a write-ahead record goes back to what was before."""
        if self.get(target, person.key) is not before:
            # Should that fail, the uncertain record stays: safe, the key is
            # simply applied again.
            await self.record(target, person, before, "the record from before a refused request")

    def _flush(self) -> None:
        """Commit the turn's records in one transaction."""
        batch, self._batch = self._batch, []
        self._flush_scheduled = False
        self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        """Commit ``batch`` in one transaction. A value the store refuses
        (``ValueError``: a target's bad memo) fails alone: the group is then
        written one record at a time."""
        try:
            self._store.write_applied([p.write for p in batch])
        except ValueError as exc:
            if len(batch) > 1:
                for pending in batch:
                    self._write([pending])
                return
            self._settle(batch, exc)
        except Exception as exc:
            self._settle(batch, exc)
        else:
            self._settle(batch, None)

    def _settle(self, batch: list[_Pending], error: Exception | None) -> None:
        for pending in batch:
            write = pending.write
            if error is not None:
                log.error(
                    "could not record %s",
                    pending.what,
                    exc_info=error,
                    extra=kv(target=write.target, person=write.person.email),
                )
            rows = self._rows.get(write.target)
            if rows is not None and (error is None or pending.keep):
                # (else the target was removed meanwhile)
                if write.applied is None:
                    rows.pop(pending.key, None)
                else:
                    rows[pending.key] = write.applied
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(error)

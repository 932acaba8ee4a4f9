"""The store's contract: what the engine and the targets persist.

``Store`` is the protocol every backend keeps (``sqlite``, ``postgres``,
``memory``); ``AppliedRow``, ``PauseRow`` and ``AppliedWrite`` are the values
it takes and gives back; ``TargetMemory`` is the ``targets.base.Memory`` of
one (target, person), a view onto a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from presence_sync.model import Applied, Person

__all__ = ["AppliedRow", "AppliedWrite", "PauseRow", "Store", "TargetMemory"]


@dataclass(frozen=True, slots=True)
class AppliedRow:
    """One remembered (target, person) with the person as they were when
    applied, so a person who left the configuration can still be cleared.
    ``uncertain``: the engine does not know whether the target shows
    ``applied`` (see ``engine.ledger``); ``applied.data`` is only the target's."""

    target: str
    person: Person
    applied: Applied
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class PauseRow:
    """An admin's pause of one person: the engine leaves ``targets`` (``None``:
    every target) alone for them from ``since`` until ``until`` (``None``:
    until resumed). Times are timezone-aware."""

    person_key: str
    targets: frozenset[str] | None
    until: datetime | None
    since: datetime


class AppliedWrite(NamedTuple):
    """One change of the applied rows, for ``Store.write_applied``:
    ``applied`` replaces the (target, person) row, ``None`` deletes it;
    ``uncertain`` as in ``AppliedRow``. (A named tuple: the engine builds one
    per record, on its hot path.)"""

    target: str
    person: Person
    applied: Applied | None
    uncertain: bool = False


class Store(Protocol):
    """Everything the engine and the targets persist. Each call is its own
    small transaction; a crash between two calls leaves a state from which
    the next start converges."""

    def load_applied(self) -> list[AppliedRow]:
        """Every remembered (target, person), for the engine's start."""
        ...

    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        """Remember what ``target`` confirmed for ``person`` (replaces);
        ``uncertain`` as in ``AppliedRow``."""
        ...

    def delete_applied(self, target: str, person_key: str) -> None:
        """Forget (target, person) once nothing of ours is left there."""
        ...

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Put and delete applied rows in order, in ONE transaction: when the
        call returns all of them are committed; when it raises, none is. The
        engine groups the records of one loop turn this way, so a commit is
        paid per turn, not per key. ``ValueError`` for a bad value, before
        anything is written."""
        ...

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        """``write_applied`` if it needs no wait: False, with nothing
        written, when it would have to wait for a lock held elsewhere (or
        for ``awrite_applied`` calls still under way, to keep the order).
        Same errors as ``write_applied`` otherwise."""
        ...

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """``write_applied`` without blocking the event loop while the
        database waits for a lock or a checkpoint: same contract, same
        errors (``ValueError`` before anything is written). Calls are
        committed in the order they were made. If the awaiting task is
        cancelled, the write may still complete."""
        ...

    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None: ...

    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        """Save the person's own status (``None`` deletes it)."""
        ...

    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        """Open external objects: kind → external id."""
        ...

    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None: ...

    def delete_object(self, target: str, person_key: str, kind: str) -> None: ...

    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        """A cached id lookup, ``None`` when missing or older than ``max_age`` seconds."""
        ...

    def put_id(self, namespace: str, key: str, value: str) -> None: ...

    def housekeeping(self, max_id_age: float) -> int:
        """Drop id cache entries older than ``max_id_age`` seconds; returns how many."""
        ...

    def load_pauses(self) -> list[PauseRow]:
        """Every pause, ordered by person key; a row that no longer decodes
        is skipped with a warning (and kept)."""
        ...

    def put_pause(self, pause: PauseRow) -> None:
        """Remember a pause (replaces the person's earlier one). ``ValueError``
        for a naive datetime."""
        ...

    def delete_pause(self, person_key: str) -> None:
        """Forget a person's pause; nothing happens when there is none."""
        ...

    @property
    def write_failure(self) -> str | None:
        """Why the last write could not be committed (the database's own
        words, e.g. ``database or disk is full``), or ``None`` when it was
        (and before any write). Readiness shows it: while writes fail, every
        change waits."""
        ...

    def close(self) -> None: ...


# --- the targets' view --------------------------------------------------------------


class TargetMemory:
    """The ``targets.base.Memory`` of one (target, person), backed by a store.

    Id cache namespaces are prefixed with the target name (``"slack:user"``
    for namespace ``user`` of target ``slack``), so two targets never read
    each other's entries. Errors are the store's.
    """

    __slots__ = ("_person_key", "_store", "_target")

    def __init__(self, store: Store, target: str, person_key: str) -> None:
        self._store = store
        self._target = target
        self._person_key = person_key

    def __repr__(self) -> str:
        return f"TargetMemory(target={self._target!r}, person={self._person_key!r})"

    def saved(self) -> Mapping[str, Any] | None:
        return self._store.get_saved(self._target, self._person_key)

    def save(self, doc: Mapping[str, Any] | None) -> None:
        self._store.put_saved(self._target, self._person_key, doc)

    def objects(self) -> Mapping[str, str]:
        return self._store.get_objects(self._target, self._person_key)

    def put_object(self, kind: str, external_id: str) -> None:
        self._store.put_object(self._target, self._person_key, kind, external_id)

    def drop_object(self, kind: str) -> None:
        self._store.delete_object(self._target, self._person_key, kind)

    def cached_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        return self._store.get_id(f"{self._target}:{namespace}", key, max_age)

    def cache_id(self, namespace: str, key: str, value: str) -> None:
        self._store.put_id(f"{self._target}:{namespace}", key, value)

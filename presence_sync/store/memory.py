"""The ``Store`` contract in memory (``MemoryStore``), for tests and ``--dry-run``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from presence_sync.clock import Clock, SystemClock
from presence_sync.errors import StoreError
from presence_sync.model import Applied, Person
from presence_sync.store.base import AppliedRow, AppliedWrite, PauseRow
from presence_sync.store.codec import (
    PauseTuple,
    PersonCache,
    Row,
    applied_row,
    decode_applied,
    decode_pause,
    is_fresh,
    json_doc,
    parse_time,
    pause_tuple,
    time_text,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """The ``Store`` contract in memory, for tests and ``--dry-run``.

    It encodes values exactly as ``SqliteStore`` does, so it raises the same
    ``ValueError`` for values the database could not keep, and hands out
    copies. ``clock`` ages the id cache (a ``ManualClock`` in tests). After
    ``close`` every call raises ``StoreError``. One thread, like ``SqliteStore``.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._persons = PersonCache()
        self._applied: dict[tuple[str, str], Row] = {}
        self._saved: dict[tuple[str, str], str] = {}
        self._objects: dict[tuple[str, str], dict[str, str]] = {}
        self._ids: dict[tuple[str, str], tuple[str, datetime]] = {}
        self._pauses: dict[str, PauseTuple] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(applied={len(self._applied)})"

    @property
    def write_failure(self) -> str | None:
        """Always ``None``: memory does not fill up the way a disk does."""
        return None

    def _check(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")

    def load_applied(self) -> list[AppliedRow]:
        self._check()
        rows = (decode_applied(self._applied[k]) for k in sorted(self._applied))
        return [row for row in rows if row is not None]

    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        self._check()
        row = applied_row(target, self._persons.text(person), person, applied, uncertain)
        self._applied[target, person.key] = row

    def delete_applied(self, target: str, person_key: str) -> None:
        self._check()
        self._applied.pop((target, person_key), None)

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        self._check()
        # Encode everything first: a bad value must leave every row as it was.
        rows = [
            (w.target, w.person.key, None)
            if w.applied is None
            else (
                w.target,
                w.person.key,
                applied_row(
                    w.target, self._persons.text(w.person), w.person, w.applied, w.uncertain
                ),
            )
            for w in writes
        ]
        for target, key, row in rows:
            if row is None:
                self._applied.pop((target, key), None)
            else:
                self._applied[target, key] = row

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        # Nothing here can wait for a lock: the write happens at once.
        self.write_applied(writes)
        return True

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        self.write_applied(writes)

    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None:
        self._check()
        text = self._saved.get((target, person_key))
        return None if text is None else dict(json.loads(text))

    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        self._check()
        if doc is None:
            self._saved.pop((target, person_key), None)
        else:
            self._saved[target, person_key] = json_doc(doc, f"saved({target!r}, {person_key!r})")

    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        self._check()
        return dict(self._objects.get((target, person_key), {}))

    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None:
        self._check()
        self._objects.setdefault((target, person_key), {})[kind] = external_id

    def delete_object(self, target: str, person_key: str, kind: str) -> None:
        self._check()
        objects = self._objects.get((target, person_key))
        if objects is not None:
            objects.pop(kind, None)
            if not objects:
                del self._objects[target, person_key]

    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        self._check()
        hit = self._ids.get((namespace, key))
        if hit is None or not is_fresh(hit[1], self._clock.now(), max_age):
            return None
        return hit[0]

    def put_id(self, namespace: str, key: str, value: str) -> None:
        self._check()
        self._ids[namespace, key] = (value, parse_time(time_text(self._clock.now(), "now")))

    def housekeeping(self, max_id_age: float) -> int:
        self._check()
        now = self._clock.now()
        old = [k for k, (_, fetched) in self._ids.items() if not is_fresh(fetched, now, max_id_age)]
        for k in old:
            del self._ids[k]
        return len(old)

    def load_pauses(self) -> list[PauseRow]:
        self._check()
        rows = (decode_pause(self._pauses[k]) for k in sorted(self._pauses))
        return [row for row in rows if row is not None]

    def put_pause(self, pause: PauseRow) -> None:
        self._check()
        self._pauses[pause.person_key] = pause_tuple(pause)

    def delete_pause(self, person_key: str) -> None:
        self._check()
        self._pauses.pop(person_key, None)

    def close(self) -> None:
        self._closed = True

"""Durable memory of the reconciler: what each target shows, and what to give back.

(CONTRACT DRAFT: the ``Store`` protocol below is fixed; the SQLite and memory
implementations are being written.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from presence_sync.model import Applied, Person


@dataclass(frozen=True, slots=True)
class AppliedRow:
    """One remembered (target, person) with the person as they were when
    applied, so a person who left the configuration can still be cleared."""

    target: str
    person: Person
    applied: Applied


class Store(Protocol):
    """Everything the engine and the targets persist. Each call is its own
    small transaction; a crash between two calls leaves a state from which
    the next start converges."""

    def load_applied(self) -> list[AppliedRow]:
        """Every remembered (target, person), for the engine's start."""
        ...

    def put_applied(self, target: str, person: Person, applied: Applied) -> None:
        """Remember what ``target`` confirmed for ``person`` (replaces)."""
        ...

    def delete_applied(self, target: str, person_key: str) -> None:
        """Forget (target, person) once nothing of ours is left there."""
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

    def close(self) -> None: ...

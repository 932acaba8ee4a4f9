"""``picture``: the engine's state as the status page shows it, read from
the book, the lanes and the ledger without changing anything."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta

from presence_sync.clock import Clock

from .book import Book, Unknown
from .lane import Lane, Phase
from .ledger import Ledger, as_confirmed, is_uncertain
from .snapshot import EngineSnapshot, KeySnapshot, TargetSnapshot

__all__ = ["picture", "target_pictures"]


def target_pictures(clock: Clock, lanes: Mapping[str, Lane]) -> dict[str, TargetSnapshot]:
    """Every target at this instant, without its keys: O(targets)."""
    mono = clock.monotonic()
    wall = clock.now()
    targets: dict[str, TargetSnapshot] = {}
    for name, lane in lanes.items():
        paused = lane.paused(mono)
        targets[name] = TargetSnapshot(
            name=name,
            kind=lane.info.kind,
            dirty=lane.dirty(),
            in_flight=len(lane.flights),
            backoff=lane.waiting,
            parked=lane.parked,
            paused_until=wall + timedelta(seconds=lane.paused_until - mono) if paused else None,
            pause_reason=lane.pause_reason if paused else None,
            stats=dataclasses.replace(lane.stats),
        )
    return targets


def picture(clock: Clock, book: Book, lanes: Mapping[str, Lane], ledger: Ledger) -> EngineSnapshot:
    """Every target and every (person, target) key at this instant."""
    mono = clock.monotonic()
    wall = clock.now()

    def at(when: float) -> datetime:
        return wall + timedelta(seconds=when - mono)

    targets = target_pictures(clock, lanes)
    keys: list[KeySnapshot] = []
    people = book.known()
    for name, lane in lanes.items():
        rows = ledger.rows(name)
        for key, person in people.items():
            desired = book.desired_for(key, name)
            known = not isinstance(desired, Unknown)
            applied = rows.get(key)
            st = lane.state(key)
            phase = Phase.IDLE if st is None else st.phase
            if phase is not Phase.IDLE:
                state = phase.value
            elif book.held(key, name):
                state = "paused"
            else:
                state = phase.value if known else "unknown"
            retry = st.retry_at if st is not None and phase is Phase.BACKOFF else None
            keys.append(
                KeySnapshot(
                    person=key,
                    email=person.email,
                    target=name,
                    desired=None if isinstance(desired, Unknown) else desired,
                    desired_known=known,
                    applied=as_confirmed(applied),
                    state=state,
                    retry_at=None if retry is None else at(retry),
                    last_error=None if st is None else st.error,
                    uncertain=is_uncertain(applied),
                )
            )
    return EngineSnapshot(at=wall, targets=targets, keys=tuple(keys))

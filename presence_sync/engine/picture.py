"""``picture``: the engine's state as the status page shows it, read from
the book, the lanes and the ledger without changing anything.

``picture`` covers every key; the status API asks for one page of people at
a time (``key_pictures``) and filters with ``unsettled``, so a poll costs
O(people) cheap lookups plus O(page × targets) snapshots, never
O(people × targets) objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from presence_sync.clock import Clock

from .book import Book, Unknown
from .lane import Lane, Phase
from .ledger import Ledger, as_confirmed, is_uncertain
from .snapshot import EngineSnapshot, KeySnapshot, TargetSnapshot

__all__ = ["key_pictures", "picture", "target_pictures", "unsettled"]


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


def key_pictures(
    clock: Clock, book: Book, lanes: Mapping[str, Lane], ledger: Ledger, keys: Iterable[str]
) -> list[KeySnapshot]:
    """The (person, target) keys of the people ``keys`` (unknown ones are
    skipped) at this instant, person by person, targets in lane order."""
    mono = clock.monotonic()
    wall = clock.now()

    def at(when: float) -> datetime:
        return wall + timedelta(seconds=when - mono)

    out: list[KeySnapshot] = []
    for key in keys:
        person = book.person(key)
        if person is None:
            continue
        for name, lane in lanes.items():
            desired = book.desired_for(key, name)
            known = not isinstance(desired, Unknown)
            applied = ledger.get(name, key)
            st = lane.state(key)
            phase = Phase.IDLE if st is None else st.phase
            state = "unknown" if phase is Phase.IDLE and not known else phase.value
            retry = st.retry_at if st is not None and phase is Phase.BACKOFF else None
            since = None if st is None or st.since is None else at(st.since)
            out.append(
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
                    since=since,
                    rule=book.rule_for(key, name) if known else None,
                )
            )
    return out


def unsettled(book: Book, lanes: Mapping[str, Lane]) -> set[str]:
    """Person keys with at least one target not in sync: queued, starting,
    in flight, backing off, parked, or waiting for their line. Costs a set
    difference over the people plus the keys the lanes hold; no snapshot."""
    out = book.waiting() if lanes else set()
    for lane in lanes.values():
        out.update(key for key, st in lane.keys.items() if st.phase is not Phase.IDLE)
    return out


def picture(clock: Clock, book: Book, lanes: Mapping[str, Lane], ledger: Ledger) -> EngineSnapshot:
    """Every target and every (person, target) key at this instant, target by target."""
    targets = target_pictures(clock, lanes)
    keys = key_pictures(clock, book, lanes, ledger, book.known())
    order = {name: i for i, name in enumerate(lanes)}
    keys.sort(key=lambda k: order[k.target])  # stable: people stay in order within a target
    return EngineSnapshot(at=clock.now(), targets=targets, keys=tuple(keys))

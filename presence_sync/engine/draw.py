"""``draw``: the engine's state as the status page shows it, read from the
book, the lanes and the ledger without changing anything.

``draw`` covers every key; the status API asks for one page of people at a
time (``draw_keys``) and filters with ``unsettled``, so a poll costs
O(people) cheap lookups plus O(page × targets) pictures, never
O(people × targets) objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from presence_sync.clock import Clock

from .book import Book, Unknown
from .lane import Lane, Phase
from .ledger import Ledger
from .picture import EnginePicture, KeyPicture, TargetPicture

__all__ = ["draw", "draw_keys", "draw_targets", "unsettled"]


def draw_targets(clock: Clock, lanes: Mapping[str, Lane]) -> dict[str, TargetPicture]:
    """Every target at this instant, without its keys: O(targets)."""
    mono = clock.monotonic()
    wall = clock.now()
    targets: dict[str, TargetPicture] = {}
    for name, lane in lanes.items():
        health = lane.health
        paused = health.paused(mono)
        targets[name] = TargetPicture(
            name=name,
            kind=lane.info.kind,
            dirty=lane.dirty(),
            in_flight=lane.in_flight,
            backoff=lane.waiting,
            parked=lane.parked,
            paused_until=wall + timedelta(seconds=health.until - mono) if paused else None,
            pause_reason=health.mode.value if paused else None,
            stats=dataclasses.replace(lane.stats),
        )
    return targets


def draw_keys(
    clock: Clock, book: Book, lanes: Mapping[str, Lane], ledger: Ledger, keys: Iterable[str]
) -> list[KeyPicture]:
    """The (person, target) keys of the people ``keys`` (unknown ones are
    skipped) at this instant, person by person, targets in lane order."""
    mono = clock.monotonic()
    wall = clock.now()

    def at(when: float) -> datetime:
        return wall + timedelta(seconds=when - mono)

    out: list[KeyPicture] = []
    for key in keys:
        person = book.person(key)
        if person is None:
            continue
        for name, lane in lanes.items():
            desired = book.desired_for(key, name)
            known = not isinstance(desired, Unknown)
            record = ledger.get(name, key)
            st = lane.state(key)
            phase = Phase.IDLE if st is None else st.phase
            if phase is not Phase.IDLE:
                state = phase.value
            elif book.held(key, name):
                state = "paused"
            else:
                state = phase.value if known else "unknown"
            retry = st.retry_at if st is not None and phase is Phase.BACKOFF else None
            since = None if st is None or st.since is None else at(st.since)
            out.append(
                KeyPicture(
                    person=key,
                    email=person.email,
                    target=name,
                    desired=None if isinstance(desired, Unknown) else desired,
                    desired_known=known,
                    applied=None if record is None else record.applied,
                    state=state,
                    retry_at=None if retry is None else at(retry),
                    last_error=None if st is None else st.error,
                    uncertain=record is not None and record.uncertain,
                    since=since,
                    rule=book.rule_for(key, name) if known else None,
                )
            )
    return out


def unsettled(book: Book, lanes: Mapping[str, Lane]) -> set[str]:
    """Person keys with at least one target not in sync: queued, starting,
    in flight, backing off, parked, or waiting for their line. Costs a set
    difference over the people plus the keys the lanes hold; no picture."""
    out = book.waiting() if lanes else set()
    for lane in lanes.values():
        out.update(lane.unsettled())
    return out


def draw(clock: Clock, book: Book, lanes: Mapping[str, Lane], ledger: Ledger) -> EnginePicture:
    """Every target and every (person, target) key at this instant, target by target."""
    targets = draw_targets(clock, lanes)
    keys = draw_keys(clock, book, lanes, ledger, book.known())
    order = {name: i for i, name in enumerate(lanes)}
    keys.sort(key=lambda k: order[k.target])  # stable: people stay in order within a target
    return EnginePicture(at=clock.now(), targets=targets, keys=tuple(keys))

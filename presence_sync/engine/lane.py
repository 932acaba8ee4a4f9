"""One target's lane: its keys' states, queues, token bucket, pause and backoff.

Every (person, target) key a lane knows has exactly one ``KeyState`` whose
``phase`` says where the key is:

- ``IDLE``: nothing to do (in sync, or not looked at since it last changed);
- ``QUEUED``: dirty, in the restore queue or the write queue (restores, i.e.
  desired ``None``, go first; first-in first-out within each);
- ``STARTING``: picked for a request (``flight``) whose write-ahead record
  is still being committed; nothing is sent until it is. It holds a slot
  of the lane's concurrency, and a change meanwhile is looked at once the
  request has finished, as for ``IN_FLIGHT``;
- ``IN_FLIGHT``: one worker applies it (``flight``); a change meanwhile is
  looked at when the worker finishes;
- ``BACKOFF``: a failed request waits for ``retry_at``;
- ``PARKED``: a ``PermanentError`` (or a target that shows something else
  than asked) parked it until its desired status differs from ``parked_for``.

Only the methods below move a key between phases, each from the phases it
may come from, so "queued, in flight, waiting or parked, never two at once"
holds by construction. A refresh timer (``refresh_at``) is independent of
the phase. The lane holds its alarm task and running applies for the
engine, and starts nothing itself.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from presence_sync.clock import Clock
from presence_sync.model import Applied, Person, Status
from presence_sync.ops import metrics
from presence_sync.ops.logging import kv
from presence_sync.targets.base import Target, TargetInfo

from .ledger import UNCERTAIN
from .snapshot import TargetStats

__all__ = [
    "AUTH_PAUSE",
    "AUTH_PAUSE_CAP",
    "MIN_REFRESH",
    "MIN_RETRY_AFTER",
    "Backoff",
    "Flight",
    "KeyState",
    "Lane",
    "Phase",
    "check_target",
]

log = logging.getLogger("presence_sync.engine")

AUTH_PAUSE: Final = 300.0
"""First pause of a target whose credentials were rejected (seconds)."""
AUTH_PAUSE_CAP: Final = 3600.0
"""Longest such pause; each further rejection doubles it up to here."""
MIN_RETRY_AFTER: Final = 1.0
"""Floor of a ``Retry-After`` pause, so "retry after 0 s" cannot make a hot loop."""
MIN_REFRESH: Final = 1.0
"""Least time between two refreshes of one key, whatever ``expires`` says."""


def check_target(name: str, target: Target) -> TargetInfo:
    """``target``'s metadata (``type(target).info``). Raises ``ValueError``
    naming the target if the engine could not honour its limits: a rate of 0
    or less, a burst or concurrency below 1."""
    info = type(target).info
    if not info.rate > 0:
        raise ValueError(f"target {name!r} ({info.kind}) declares rate {info.rate}; must be > 0")
    if info.burst < 1 or info.concurrency < 1:
        raise ValueError(
            f"target {name!r} ({info.kind}) declares burst {info.burst} and concurrency "
            f"{info.concurrency}; both must be at least 1"
        )
    return info


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: after the n-th failure in a row
    a key waits ``rng.uniform(0, min(cap, base × 2^(n-1)))`` seconds."""

    rng: random.Random
    base: float
    cap: float

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(attempt))


class Phase(enum.Enum):
    """Where a key is; the value is what the status page shows."""

    IDLE = "in-sync"
    QUEUED = "dirty"
    STARTING = "starting"
    IN_FLIGHT = "in-flight"
    BACKOFF = "backoff"
    PARKED = "parked"


@dataclass(slots=True, eq=False)
class Flight:
    """One apply: ``desired`` for ``person``, decided (and written ahead)
    when it started; ``before``: the record before the write-ahead.
    ``deadline`` is ``inf`` until the request is sent (``launch``).
    ``answered``: the target has answered (or failed), only the record is
    left, so the apply timeout no longer applies."""

    key: str
    person: Person
    desired: Status | None
    before: Applied | None
    deadline: float
    rule: str | None = None
    """The rule that decided ``desired`` (None: no rule), for the log line."""
    task: asyncio.Task[None] | None = None
    timed_out: bool = False
    answered: bool = False


@dataclass(slots=True)
class KeyState:
    """One key of one lane: its phase and what that phase needs."""

    phase: Phase = Phase.IDLE
    restore: bool = False
    """While ``QUEUED``: in the restore queue (else the write queue)."""
    flight: Flight | None = None
    """While ``STARTING`` or ``IN_FLIGHT``."""
    retry_at: float = math.inf
    """While ``BACKOFF``: monotonic time of the retry."""
    parked_for: Status | None = None
    """While ``PARKED``: the desired status that cannot be applied."""
    since: float | None = None
    """When the key last became dirty (monotonic), until it is clean again."""
    failures: int = 0
    """Failures in a row, for the backoff."""
    error: str | None = None
    refresh_at: float | None = None
    """A refresh timer is set for this monotonic time."""

    def clean(self) -> bool:
        """Nothing worth keeping: the lane may forget the key."""
        return (
            self.phase is Phase.IDLE
            and self.since is None
            and not self.failures
            and self.error is None
            and self.refresh_at is None
        )


@dataclass(slots=True, eq=False)
class Lane:
    """Everything the engine keeps for one target."""

    name: str
    target: Target
    info: TargetInfo
    clock: Clock
    keys: dict[str, KeyState] = field(default_factory=dict)
    restores: OrderedDict[str, None] = field(default_factory=OrderedDict)
    writes: OrderedDict[str, None] = field(default_factory=OrderedDict)
    flights: dict[str, Flight] = field(default_factory=dict)
    """Applies starting or running, in start order."""
    waiting: int = 0
    parked: int = 0
    timers: list[tuple[float, int, str]] = field(default_factory=list)
    """Heap of (monotonic time, seq, key) for backoff retries and refreshes;
    an entry is live only while its key's state still says that time."""
    tokens: float = 0.0
    stamp: float = 0.0
    paused_until: float = -math.inf
    pause_reason: str | None = None
    auth_failures: int = 0
    probing: bool = False
    failing: bool = False
    alarm: asyncio.Task[None] | None = None
    alarm_at: float = math.inf
    closed: bool = False
    stats: TargetStats = field(default_factory=TargetStats)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    m_dirty: Gauge = field(init=False)
    m_duration: Histogram = field(init=False)
    m_latency: Histogram = field(init=False)
    m_throttled: Counter = field(init=False)
    m_paused: Gauge = field(init=False)
    m_result: dict[str, Counter] = field(init=False)

    def __post_init__(self) -> None:
        self.m_dirty = metrics.DIRTY_KEYS.labels(self.name)
        self.m_duration = metrics.TARGET_REQUEST_DURATION.labels(self.name)
        self.m_latency = metrics.EVENT_TO_APPLY.labels(self.name)
        self.m_throttled = metrics.TARGET_THROTTLED.labels(self.name)
        self.m_paused = metrics.TARGET_PAUSED_UNTIL.labels(self.name)
        self.m_result = {
            result: metrics.TARGET_APPLIES.labels(self.name, result)
            for result in ("ok", "noop", "transient", "permanent", "auth")
        }
        self.tokens = float(max(1, self.info.burst))
        self.stamp = self.clock.monotonic()

    # --- limits -------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Applies allowed at once: one while probing rejected credentials."""
        return 1 if self.probing else max(1, self.info.concurrency)

    def replace_target(self, target: Target, info: TargetInfo) -> None:
        """A new object under the same name (reload): keys, queue and backoff stay."""
        self.target = target
        self.info = info
        self.tokens = min(self.tokens, float(max(1, info.burst)))

    def take_token(self, now: float) -> float:
        """0 when a request may start now (a token is used), else seconds to wait."""
        rate = self.info.rate
        if math.isinf(rate):
            return 0.0
        burst = float(max(1, self.info.burst))
        tokens = min(burst, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = max(self.stamp, now)
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate

    def pause(self, seconds: float, reason: str) -> None:
        """Start no request for ``seconds`` (a longer pause already on wins)."""
        until = self.clock.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.pause_reason = reason
            self.m_paused.set((self.clock.now() + timedelta(seconds=seconds)).timestamp())
        # A fresh bucket after a pause would burst straight into the same wall.
        self.tokens = min(self.tokens, 1.0)
        self.stamp = max(self.stamp, self.paused_until)

    def paused(self, now: float) -> bool:
        return self.paused_until > now

    # --- key states ---------------------------------------------------------------------

    def state(self, key: str) -> KeyState | None:
        return self.keys.get(key)

    def phase(self, key: str) -> Phase:
        st = self.keys.get(key)
        return Phase.IDLE if st is None else st.phase

    def dirty(self) -> int:
        return len(self.restores) + len(self.writes)

    def pending(self) -> int:
        """Keys queued, running or backing off."""
        return len(self.restores) + len(self.writes) + len(self.flights) + self.waiting

    def _tidy(self, key: str, st: KeyState) -> None:
        if st.clean():
            del self.keys[key]

    def enqueue(self, key: str, restore: bool) -> bool:
        """Queue an ``IDLE`` key (or move a queued one to the queue ``restore``
        says). True when it was not queued before."""
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState()
        if st.phase is Phase.QUEUED:
            if st.restore != restore:
                del (self.restores if st.restore else self.writes)[key]
                (self.restores if restore else self.writes)[key] = None
                st.restore = restore
            return False
        assert st.phase is Phase.IDLE, st.phase
        st.phase = Phase.QUEUED
        st.restore = restore
        (self.restores if restore else self.writes)[key] = None
        if st.since is None:
            st.since = self.clock.monotonic()
        return True

    def head(self) -> str | None:
        """The next key to work on: restores first."""
        queue = self.restores or self.writes
        return next(iter(queue)) if queue else None

    def _dequeue(self, key: str, st: KeyState) -> None:
        assert st.phase is Phase.QUEUED, st.phase
        del (self.restores if st.restore else self.writes)[key]

    def start(
        self,
        key: str,
        person: Person,
        desired: Status | None,
        before: Applied | None,
        rule: str | None = None,
    ) -> Flight:
        """``QUEUED`` → ``STARTING``: a slot and the decision (made by
        ``rule``) are taken, the request is not sent yet (``launch``)."""
        st = self.keys[key]
        self._dequeue(key, st)
        flight = Flight(key, person, desired, before, math.inf, rule)
        st.phase = Phase.STARTING
        st.flight = flight
        self.flights[key] = flight
        return flight

    def launch(self, key: str, now: float) -> Flight:
        """``STARTING`` → ``IN_FLIGHT``: the request is sent now; its timeout runs."""
        st = self.keys[key]
        assert st.phase is Phase.STARTING, st.phase
        assert st.flight is not None
        timeout = self.info.timeout
        st.flight.deadline = now + timeout if timeout > 0 else math.inf
        st.phase = Phase.IN_FLIGHT
        return st.flight

    def land(self, key: str) -> None:
        """The worker is done, or the request was never sent: a key still
        ``IN_FLIGHT`` or ``STARTING`` becomes ``IDLE`` (the engine then looks
        at it again)."""
        st = self.keys[key]
        if st.phase is Phase.IN_FLIGHT or st.phase is Phase.STARTING:
            self._leave_flight(key, st)
            st.phase = Phase.IDLE
            self._tidy(key, st)

    def _leave_flight(self, key: str, st: KeyState) -> None:
        assert st.phase is Phase.IN_FLIGHT or st.phase is Phase.STARTING, st.phase
        del self.flights[key]
        st.flight = None

    def requeue_front(self, key: str, restore: bool, error: str) -> None:
        """``IN_FLIGHT`` → ``QUEUED`` at the head of its queue: a throttled or
        refused request is the first one when the pause ends."""
        st = self.keys[key]
        self._leave_flight(key, st)
        st.phase = Phase.QUEUED
        st.restore = restore
        st.error = error
        queue = self.restores if restore else self.writes
        queue[key] = None
        queue.move_to_end(key, last=False)

    def back_off(self, key: str, backoff: Backoff, error: str) -> None:
        """``IN_FLIGHT``, ``STARTING`` or ``IDLE`` → ``BACKOFF``, one more failure in a row."""
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState()
        assert st.phase in (Phase.IN_FLIGHT, Phase.STARTING, Phase.IDLE), st.phase
        if st.phase is not Phase.IDLE:
            self._leave_flight(key, st)
        st.failures += 1
        st.phase = Phase.BACKOFF
        st.error = error
        st.retry_at = self.clock.monotonic() + backoff.delay(st.failures)
        self.waiting += 1
        self._push_timer(st.retry_at, key)

    def park(self, key: str, desired: Status | None, error: str | None) -> None:
        """``IN_FLIGHT`` → ``PARKED`` until the desired status is no longer ``desired``."""
        st = self.keys[key]
        self._leave_flight(key, st)
        st.phase = Phase.PARKED
        st.parked_for = desired
        st.since = None
        st.failures = 0
        if error is not None:
            st.error = error
        self.parked += 1

    def unpark(self, key: str, desired: Status | None) -> bool:
        """A ``PARKED`` key whose desired status is now something else becomes
        ``IDLE``; False when it stays parked."""
        st = self.keys[key]
        if st.parked_for == desired:
            return False
        st.phase = Phase.IDLE
        st.parked_for = None
        st.error = None
        self.parked -= 1
        return True

    def drop(self, key: str) -> None:
        """A queued key that needs nothing after all: ``QUEUED`` → ``IDLE``, clean."""
        st = self.keys[key]
        self._dequeue(key, st)
        st.phase = Phase.IDLE
        self.clear(key)
        self._tidy(key, st)

    def clear(self, key: str) -> None:
        """The key needs nothing: no longer dirty, no failures in a row."""
        st = self.keys[key]
        st.since = None
        st.failures = 0

    def succeeded(self, key: str) -> None:
        """The record of a confirmed apply is stored: the key is clean."""
        st = self.keys[key]
        st.refresh_at = None
        st.failures = 0
        st.error = None
        st.since = None

    def schedule_refresh(self, key: str, when: float) -> None:
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState()
        if st.refresh_at is None:
            st.refresh_at = when
            self._push_timer(when, key)

    def _push_timer(self, when: float, key: str) -> None:
        heapq.heappush(self.timers, (when, next(self._seq), key))

    def due(self, now: float) -> list[str]:
        """Fire the timers due by ``now``: a key backing off becomes ``IDLE``,
        a refresh is no longer pending. Returns the keys to look at again."""
        timers = self.timers
        keys: list[str] = []
        while timers and timers[0][0] <= now:
            when, _, key = heapq.heappop(timers)
            st = self.keys.get(key)
            if st is None:
                continue
            if st.phase is Phase.BACKOFF and st.retry_at == when:
                st.phase = Phase.IDLE
                st.retry_at = math.inf
                self.waiting -= 1
                keys.append(key)
            elif st.refresh_at == when:
                st.refresh_at = None
                self._tidy(key, st)
                keys.append(key)
        return keys

    def next_timer(self) -> float:
        return self.timers[0][0] if self.timers else math.inf

    # --- what a key needs -------------------------------------------------------------

    def refresh_due(self, applied: Applied) -> datetime | None:
        """When ``applied`` should be applied again, or None if never."""
        if applied.status is None or applied.expires is None:
            return None
        lifetime = (applied.expires - applied.at).total_seconds()
        due = applied.expires - timedelta(seconds=self.info.refresh_before)
        # A lifetime shorter than refresh_before would make every refresh due at
        # once: refresh at half-life instead, and never more than once a second.
        earliest = applied.at + timedelta(seconds=max(lifetime / 2, MIN_REFRESH))
        return max(due, earliest)

    def needs(self, key: str, desired: Status | None, applied: Applied | None) -> bool:
        """Whether ``key`` needs a request to get from ``applied`` to
        ``desired``: they differ, the row is uncertain, or a refresh is due
        (a later refresh is scheduled here)."""
        current = None if applied is None else applied.status
        if desired != current:
            return True
        if applied is None:
            return False
        if UNCERTAIN in applied.data:
            return True
        due = self.refresh_due(applied)
        if due is None:
            return False
        wait = (due - self.clock.now()).total_seconds()
        if wait <= 0:
            return True
        self.schedule_refresh(key, self.clock.monotonic() + wait)
        return False

    # --- outcomes: counters, metrics and the one log line ------------------------------

    def noted_noop(self, key: str, person: Person | None, desired: object) -> None:
        self.stats.noops += 1
        self.m_result["noop"].inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: %s nothing to do",
                self.name,
                person.email if person else key,
                extra=kv(target=self.name, result="noop", desired=repr(desired)),
            )

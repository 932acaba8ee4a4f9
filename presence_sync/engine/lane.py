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
the phase.

The lane's health as a whole is one ``Health`` value (``Mode``, the end of
a pause, credentials rejected in a row), moved only by ``recovered``,
``failed``, ``throttle`` and ``lock_out``. The lane owns its alarm (one
wake-up on the clock) and the tasks of its running applies; it starts
nothing itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import heapq
import itertools
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from presence_sync.clock import Clock
from presence_sync.model import Applied, Person, Status
from presence_sync.ops import metrics
from presence_sync.targets.base import Target, TargetInfo

from .ledger import Record
from .picture import TargetStats

__all__ = [
    "AUTH_PAUSE",
    "AUTH_PAUSE_CAP",
    "MIN_REFRESH",
    "MIN_RETRY_AFTER",
    "Alarm",
    "Backoff",
    "Flight",
    "Health",
    "KeyState",
    "Lane",
    "Mode",
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


def refresh_due(applied: Applied, refresh_before: float) -> datetime | None:
    """When ``applied`` should be applied again (``refresh_before`` seconds
    before it lapses), or None if never."""
    if applied.status is None or applied.expires is None:
        return None
    lifetime = (applied.expires - applied.at).total_seconds()
    due = applied.expires - timedelta(seconds=refresh_before)
    # A lifetime shorter than refresh_before would make every refresh due at
    # once: refresh at half-life instead, and never more than once a second.
    earliest = applied.at + timedelta(seconds=max(lifetime / 2, MIN_REFRESH))
    return max(due, earliest)


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


class Bucket:
    """A token bucket: ``rate`` tokens a second up to ``burst``, one per
    request (an infinite rate never waits)."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._stamp = now

    def resize(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(1, burst))
        self._tokens = min(self._tokens, self._burst)

    def take(self, now: float) -> float:
        """0 when a request may start now (a token is used), else seconds to wait."""
        rate = self._rate
        if math.isinf(rate):
            return 0.0
        tokens = min(self._burst, self._tokens + max(0.0, now - self._stamp) * rate)
        self._stamp = max(self._stamp, now)
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate

    def hold(self, until: float) -> None:
        """Nothing fills up before ``until``, and at most one token is left:
        a fresh bucket after a pause would burst straight into the same wall."""
        self._tokens = min(self._tokens, 1.0)
        self._stamp = max(self._stamp, until)


class Timers:
    """A heap of (monotonic time, key) for backoff retries and refreshes; an
    entry is live only while its key's state still says that time."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def push(self, when: float, key: str) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), key))

    def pop_due(self, now: float) -> Iterator[tuple[float, str]]:
        """The entries due by ``now``, earliest first, each taken off."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            yield when, key

    def next(self) -> float:
        return self._heap[0][0] if self._heap else math.inf


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
    ``deadline`` is ``inf`` until the request is sent (``launch``);
    ``timed_out``: the engine cancelled it at its deadline."""

    key: str
    person: Person
    desired: Status | None
    before: Record | None
    deadline: float
    rule: str | None = None
    """The rule that decided ``desired`` (None: no rule), for the log line."""
    task: asyncio.Task[None] | None = None
    timed_out: bool = False


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


class Mode(enum.Enum):
    """How a target is doing as a whole; the value is what the status page
    and readiness show as the pause reason (for the two that pause)."""

    OK = "ok"
    """No failure since the last success."""
    FAILING = "failing"
    """A request failed since the last success (logged once); each key backs
    off on its own, the lane keeps sending."""
    THROTTLED = "retry-after"
    """The target asked us to wait (``Retry-After``): nothing starts until
    ``Health.until``; after it the episode goes on (as ``FAILING``) until a
    request succeeds."""
    LOCKED_OUT = "auth"
    """Our credentials were rejected: nothing starts until ``Health.until``;
    after it, one request at a time (``probing``) until one succeeds."""


@dataclass(frozen=True, slots=True)
class Health:
    """The lane's health: one value, replaced whole by the moves below.
    ``until``: monotonic end of the pause of ``THROTTLED``/``LOCKED_OUT``;
    ``rejections``: credentials rejected in a row (kept through a later
    throttle), which doubles each lock-out and limits the lane to one
    request at a time until a request succeeds."""

    mode: Mode = Mode.OK
    until: float = -math.inf
    rejections: int = 0

    def paused(self, now: float) -> bool:
        return self.until > now and self.mode in (Mode.THROTTLED, Mode.LOCKED_OUT)

    @property
    def probing(self) -> bool:
        return self.rejections > 0

    def succeeded(self) -> Health:
        """A request succeeded: the episode is over."""
        return _HEALTHY

    def failed(self) -> Health:
        """A request failed (5xx, timeout): an episode starts if none is on."""
        return dataclasses.replace(self, mode=Mode.FAILING) if self.mode is Mode.OK else self

    def throttled(self, now: float, wait: float) -> Health:
        """Asked to wait ``wait`` seconds: a longer pause already on wins."""
        until = now + wait
        if self.paused(now) and self.until >= until:
            return self
        return Health(Mode.THROTTLED, until, self.rejections)

    def locked_out(self, now: float, first: float, cap: float) -> Health:
        """Credentials rejected: pause ``first`` seconds, doubling per further
        rejection up to ``cap``. A rejection while the lock-out is on (another
        request of the same batch) changes nothing."""
        if self.mode is Mode.LOCKED_OUT and self.paused(now):
            return self
        rejections = self.rejections + 1
        until = now + min(cap, first * 2.0 ** min(rejections - 1, 64))
        if self.paused(now):
            until = max(until, self.until)
        return Health(Mode.LOCKED_OUT, until, rejections)


_HEALTHY: Final = Health()


class Alarm:
    """One wake-up on the clock: ``set`` keeps the earlier of two moments;
    when it rings it calls ``ring``. ``watch`` sees each task end (the
    engine ends ``run()`` on an error)."""

    def __init__(
        self,
        clock: Clock,
        name: str,
        ring: Callable[[], None],
        watch: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._clock = clock
        self._name = name
        self._ring = ring
        self._watch = watch
        self._task: asyncio.Task[None] | None = None
        self._at = math.inf

    def set(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None:
            if self._at <= when:
                return
            self._task.cancel()
        self._at = when
        self._task = loop.create_task(self._sleep(when), name=f"alarm:{self._name}")
        self._task.add_done_callback(self._watch)

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop it; returns the task to wait for, if one was set."""
        task, self._task, self._at = self._task, None, math.inf
        if task is not None:
            task.cancel()
        return task

    async def _sleep(self, when: float) -> None:
        # Measured when the task first runs, not when it was created: the
        # clock may have moved in between.
        await self._clock.sleep(when - self._clock.monotonic())
        self._task, self._at = None, math.inf
        self._ring()


class Lane:
    """Everything the engine keeps for one target: its keys' states, queues,
    timers, token bucket, health and alarm. ``ring`` is called when the
    alarm rings (the engine pumps the lane); ``watch`` sees each task end."""

    def __init__(
        self,
        name: str,
        target: Target,
        info: TargetInfo,
        clock: Clock,
        *,
        ring: Callable[[Lane], None],
        watch: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.name: Final = name
        self._target = target
        self._info = info
        self._clock = clock
        self._keys: dict[str, KeyState] = {}
        self._restores: OrderedDict[str, None] = OrderedDict()
        self._writes: OrderedDict[str, None] = OrderedDict()
        self._flights: dict[str, Flight] = {}
        """Applies starting or running, in start order."""
        self._waiting = 0
        self._parked = 0
        self._timers = Timers()
        self._bucket = Bucket(info.rate, info.burst, clock.monotonic())
        self._health = _HEALTHY
        self._alarm = Alarm(clock, name, lambda: ring(self), watch)
        self._closed = False
        self._stats = TargetStats()
        self._m_duration = metrics.TARGET_REQUEST_DURATION.labels(name)
        self._m_latency = metrics.EVENT_TO_APPLY.labels(name)
        self._m_throttled = metrics.TARGET_THROTTLED.labels(name)
        self._m_result = {
            result: metrics.TARGET_APPLIES.labels(name, result)
            for result in ("ok", "noop", "transient", "permanent", "auth")
        }
        self._m_dirty = metrics.DIRTY_KEYS.labels(name)
        self._m_paused = metrics.TARGET_PAUSED_UNTIL.labels(name)

    def __repr__(self) -> str:
        return f"<Lane {self.name!r} {self._health.mode.value}>"

    # --- what others read ---------------------------------------------------------------

    @property
    def target(self) -> Target:
        return self._target

    @property
    def info(self) -> TargetInfo:
        return self._info

    @property
    def stats(self) -> TargetStats:
        """Live counters (read them; ``sent`` and ``count`` move them)."""
        return self._stats

    @property
    def health(self) -> Health:
        return self._health

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """Keys backing off."""
        return self._waiting

    @property
    def parked(self) -> int:
        return self._parked

    @property
    def in_flight(self) -> int:
        """Requests starting or running."""
        return len(self._flights)

    def flight(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def flights(self) -> list[Flight]:
        """Requests starting or running, in start order (a copy)."""
        return list(self._flights.values())

    def unsettled(self) -> Iterator[str]:
        """Keys not ``IDLE``."""
        return (key for key, st in self._keys.items() if st.phase is not Phase.IDLE)

    # --- limits -------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """Applies allowed at once: one while probing rejected credentials."""
        return 1 if self._health.probing else max(1, self._info.concurrency)

    def replace_target(self, target: Target, info: TargetInfo) -> None:
        """A new object under the same name (reload): keys, queue and backoff stay."""
        self._target = target
        self._info = info
        self._bucket.resize(info.rate, info.burst)

    def take_token(self, now: float) -> float:
        """0 when a request may start now (a token is used), else seconds to wait."""
        return self._bucket.take(now)

    def paused(self, now: float) -> bool:
        return self._health.paused(now)

    # --- health: one move per answer, each saying whether an episode began or ended ---

    def recovered(self) -> Health:
        """A request succeeded; returns the health before, for its log line."""
        before = self._health
        self._health = before.succeeded()
        return before

    def failed(self) -> bool:
        """A request failed; True when this starts a failing episode."""
        before = self._health
        self._health = before.failed()
        return before.mode is Mode.OK

    def throttle(self, wait: float) -> bool:
        """Asked to wait ``wait`` seconds (at least ``MIN_RETRY_AFTER``);
        True when this starts a failing episode."""
        before = self._health
        self._health = before.throttled(self._clock.monotonic(), max(MIN_RETRY_AFTER, wait))
        self._paused_from(before)
        return before.mode is Mode.OK

    def lock_out(self, first: float, cap: float) -> float | None:
        """Credentials rejected: the pause in seconds when a new lock-out
        starts, None when one is already on."""
        before = self._health
        now = self._clock.monotonic()
        self._health = before.locked_out(now, first, cap)
        if self._health is before:
            return None
        self._paused_from(before)
        return self._health.until - now

    def _paused_from(self, before: Health) -> None:
        health = self._health
        if health.until != before.until:
            wall = self._clock.now() + timedelta(seconds=health.until - self._clock.monotonic())
            self._m_paused.set(wall.timestamp())
        self._bucket.hold(health.until)

    # --- counters -----------------------------------------------------------------------

    def sent(self, waited: float) -> None:
        """A request goes out ``waited`` seconds after its key became dirty."""
        self._stats.requests += 1
        self._m_latency.observe(max(0.0, waited))

    def count(self, counters: tuple[str, ...], result: str | None, took: float | None) -> None:
        """One more of each ``TargetStats`` field in ``counters`` (and of the
        throttle metric for ``throttled``); one more ``result`` of
        ``presence_sync_target_applies_total``; ``took``: the request's
        duration, if one was sent."""
        stats = self._stats
        for counter in counters:
            setattr(stats, counter, getattr(stats, counter) + 1)
        if "throttled" in counters:
            self._m_throttled.inc()
        if result is not None:
            self._m_result[result].inc()
        if took is not None:
            self._m_duration.observe(took)

    # --- the alarm and the end ----------------------------------------------------------

    def arm(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Ring at ``when`` (monotonic), or earlier if already set so."""
        self._alarm.set(when, loop)

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel the alarm and every running apply; returns their tasks."""
        tasks: list[asyncio.Task[None]] = []
        alarm = self._alarm.cancel()
        if alarm is not None:
            tasks.append(alarm)
        for flight in self._flights.values():
            if flight.task is not None:
                flight.task.cancel()
                tasks.append(flight.task)
        return tasks

    def close(self) -> None:
        """The target is removed: stop, and start nothing any more."""
        self._closed = True
        self.stop()
        self._m_dirty.set(0)

    def publish(self) -> None:
        """Export the queue length (dirty and backing off) as the gauge."""
        self._m_dirty.set(self.dirty() + self._waiting)

    # --- key states ---------------------------------------------------------------------

    def state(self, key: str) -> KeyState | None:
        return self._keys.get(key)

    def phase(self, key: str) -> Phase:
        st = self._keys.get(key)
        return Phase.IDLE if st is None else st.phase

    def dirty(self) -> int:
        return len(self._restores) + len(self._writes)

    def pending(self) -> int:
        """Keys queued, running or backing off."""
        return len(self._restores) + len(self._writes) + len(self._flights) + self._waiting

    def _tidy(self, key: str, st: KeyState) -> None:
        if st.clean():
            del self._keys[key]

    def enqueue(self, key: str, restore: bool) -> bool:
        """Queue an ``IDLE`` key (or move a queued one to the queue ``restore``
        says). True when it was not queued before."""
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = KeyState()
        if st.phase is Phase.QUEUED:
            if st.restore != restore:
                del (self._restores if st.restore else self._writes)[key]
                (self._restores if restore else self._writes)[key] = None
                st.restore = restore
            return False
        assert st.phase is Phase.IDLE, st.phase
        st.phase = Phase.QUEUED
        st.restore = restore
        (self._restores if restore else self._writes)[key] = None
        if st.since is None:
            st.since = self._clock.monotonic()
        return True

    def head(self) -> str | None:
        """The next key to work on: restores first."""
        queue = self._restores or self._writes
        return next(iter(queue)) if queue else None

    def _dequeue(self, key: str, st: KeyState) -> None:
        assert st.phase is Phase.QUEUED, st.phase
        del (self._restores if st.restore else self._writes)[key]

    def start(
        self,
        key: str,
        person: Person,
        desired: Status | None,
        before: Record | None,
        rule: str | None = None,
    ) -> Flight:
        """``QUEUED`` → ``STARTING``: a slot and the decision (made by
        ``rule``) are taken, the request is not sent yet (``launch``)."""
        st = self._keys[key]
        self._dequeue(key, st)
        flight = Flight(key, person, desired, before, math.inf, rule)
        st.phase = Phase.STARTING
        st.flight = flight
        self._flights[key] = flight
        return flight

    def launch(self, key: str, now: float) -> Flight:
        """``STARTING`` → ``IN_FLIGHT``: the request is sent now; its timeout runs."""
        st = self._keys[key]
        assert st.phase is Phase.STARTING, st.phase
        assert st.flight is not None
        timeout = self._info.timeout
        st.flight.deadline = now + timeout if timeout > 0 else math.inf
        st.phase = Phase.IN_FLIGHT
        return st.flight

    def land(self, key: str) -> None:
        """The worker is done, or the request was never sent: a key still
        ``IN_FLIGHT`` or ``STARTING`` becomes ``IDLE`` (the engine then looks
        at it again)."""
        st = self._keys[key]
        if st.phase is Phase.IN_FLIGHT or st.phase is Phase.STARTING:
            self._leave_flight(key, st)
            st.phase = Phase.IDLE
            self._tidy(key, st)

    def _leave_flight(self, key: str, st: KeyState) -> None:
        assert st.phase is Phase.IN_FLIGHT or st.phase is Phase.STARTING, st.phase
        del self._flights[key]
        st.flight = None

    def requeue_front(self, key: str, restore: bool, error: str) -> None:
        """``IN_FLIGHT`` → ``QUEUED`` at the head of its queue: a throttled or
        refused request is the first one when the pause ends."""
        st = self._keys[key]
        self._leave_flight(key, st)
        st.phase = Phase.QUEUED
        st.restore = restore
        st.error = error
        queue = self._restores if restore else self._writes
        queue[key] = None
        queue.move_to_end(key, last=False)

    def back_off(self, key: str, backoff: Backoff, error: str) -> None:
        """``IN_FLIGHT``, ``STARTING`` or ``IDLE`` → ``BACKOFF``, one more failure in a row."""
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = KeyState()
        assert st.phase in (Phase.IN_FLIGHT, Phase.STARTING, Phase.IDLE), st.phase
        if st.phase is not Phase.IDLE:
            self._leave_flight(key, st)
        st.failures += 1
        st.phase = Phase.BACKOFF
        st.error = error
        st.retry_at = self._clock.monotonic() + backoff.delay(st.failures)
        self._waiting += 1
        self._timers.push(st.retry_at, key)

    def park(self, key: str, desired: Status | None, error: str | None) -> None:
        """``IN_FLIGHT`` → ``PARKED`` until the desired status is no longer ``desired``."""
        st = self._keys[key]
        self._leave_flight(key, st)
        st.phase = Phase.PARKED
        st.parked_for = desired
        st.since = None
        st.failures = 0
        if error is not None:
            st.error = error
        self._parked += 1

    def unpark(self, key: str, desired: Status | None) -> bool:
        """A ``PARKED`` key whose desired status is now something else becomes
        ``IDLE``; False when it stays parked."""
        st = self._keys[key]
        if st.parked_for == desired:
            return False
        st.phase = Phase.IDLE
        st.parked_for = None
        st.error = None
        self._parked -= 1
        return True

    def drop(self, key: str) -> None:
        """A queued key that needs nothing after all: ``QUEUED`` → ``IDLE``, clean."""
        st = self._keys[key]
        self._dequeue(key, st)
        st.phase = Phase.IDLE
        self.clear(key)
        self._tidy(key, st)

    def clear(self, key: str) -> None:
        """The key needs nothing: no longer dirty, no failures in a row."""
        st = self._keys[key]
        st.since = None
        st.failures = 0

    def succeeded(self, key: str) -> None:
        """The record of a confirmed apply is stored: the key is clean."""
        st = self._keys[key]
        st.refresh_at = None
        st.failures = 0
        st.error = None
        st.since = None

    def schedule_refresh(self, key: str, when: float) -> None:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = KeyState()
        if st.refresh_at is None:
            st.refresh_at = when
            self._timers.push(when, key)

    def due(self, now: float) -> list[str]:
        """Fire the timers due by ``now``: a key backing off becomes ``IDLE``,
        a refresh is no longer pending. Returns the keys to look at again."""
        keys: list[str] = []
        for when, key in self._timers.pop_due(now):
            st = self._keys.get(key)
            if st is None:
                continue
            if st.phase is Phase.BACKOFF and st.retry_at == when:
                st.phase = Phase.IDLE
                st.retry_at = math.inf
                self._waiting -= 1
                keys.append(key)
            elif st.refresh_at == when:
                st.refresh_at = None
                self._tidy(key, st)
                keys.append(key)
        return keys

    def next_timer(self) -> float:
        return self._timers.next()

    def time_out(self, now: float) -> float:
        """Cancel the applies past their deadline (each once); returns the
        next deadline still to come (a ``STARTING`` flight's is ``inf``)."""
        first = math.inf
        for flight in self._flights.values():
            if flight.timed_out:
                continue
            if flight.deadline > now:
                first = min(first, flight.deadline)
                continue
            flight.timed_out = True
            if flight.task is not None:
                flight.task.cancel()
        return first

    # --- what a key needs -------------------------------------------------------------

    def needs(self, desired: Status | None, record: Record | None) -> bool:
        """Whether a key needs a request to get from ``record`` to
        ``desired``: they differ, the record is uncertain, or a refresh is
        due. Asks only; ``plan_refresh`` sets the timer of a later refresh."""
        current = None if record is None else record.status
        if desired != current:
            return True
        if record is None:
            return False
        if record.uncertain:
            return True
        due = refresh_due(record.applied, self._info.refresh_before)
        return due is not None and due <= self._clock.now()

    def plan_refresh(self, key: str, record: Record | None) -> None:
        """For a key that needs nothing now (``needs`` said so): set the timer
        of its next refresh, if its status lapses by itself."""
        if record is None:
            return
        due = refresh_due(record.applied, self._info.refresh_before)
        if due is None:
            return
        wait = (due - self._clock.now()).total_seconds()
        if wait > 0:
            self.schedule_refresh(key, self._clock.monotonic() + wait)

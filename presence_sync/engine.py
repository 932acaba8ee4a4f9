"""The reconciler: desired status vs applied status, closed by per-target workers.

This module owns the loop at the heart of presence-sync (DESIGN.md, "The one
idea"). It never forwards an event. It keeps, per person, the desired status of
every target (computed by the rules from the person's *current* line view),
remembers per ``(person, target)`` key what the target confirmed (the applied
rows of the store), and works on keys whose two differ:

- a key that differs is *dirty*; the dirty set is de-duplicated, so it never
  grows past people × targets, and a worker reads the desired status when it
  picks the key up: a call that starts and ends while its key waits costs no
  request at all;
- each target has its own lane: its own dirty queue, concurrency bound
  (``TargetInfo.concurrency``), token bucket (``rate``/``burst``), pause (a
  ``Retry-After`` or rejected credentials) and apply timeout, so a failing,
  paused or slow target never delays another;
- when a lane cannot keep up, restores (desired ``None``: giving a person
  their own status back) go before new writes, first-in first-out within each;
- a key is worked by one worker at a time; a key that changes while in flight
  is looked at again when its worker finishes;
- ``TransientError`` backs the key off exponentially with full jitter
  (``retry_after`` pauses the whole lane instead), ``PermanentError`` parks
  the key until its desired status changes, ``AuthError`` pauses the lane for
  minutes (doubling up to an hour) and then probes with one request at a time;
- an applied status that the remote side forgets by itself
  (``Applied.expires``) is applied again ``TargetInfo.refresh_before`` seconds
  before it lapses, through the same dirty queue;
- a status counts as applied only once the target confirmed it. Before a
  status is sent to a target with remote state, it is recorded as *maybe
  applied* (write-ahead, flagged ``UNCERTAIN``), so a crash at any instant,
  SIGKILL during the request included, leaves a store that knows what may
  need taking back. A request whose outcome is unknown (a timeout, a 5xx, a
  cancelled apply) keeps the key uncertain: the worse case (what it asked
  for, or what was there) stays recorded and the engine does not rest until
  one request for that key succeeds, even if the desired status comes back
  to what the store says. A request the target refused outright (4xx, 429,
  auth) changed nothing, and the record goes back to what it was.

Every wait goes through the injected ``Clock``; nothing polls. The engine
knows targets and the store only through their protocols, and the rules
through ``Decider``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Protocol

from prometheus_client import Counter, Gauge, Histogram

from presence_sync.clock import Clock
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Applied, LineView, Person, Status, describe, frozen_map
from presence_sync.ops import metrics
from presence_sync.ops.logging import kv
from presence_sync.store import Store, StoreMemory
from presence_sync.targets.base import Change, Memory, Target, TargetInfo

__all__ = [
    "Decider",
    "Engine",
    "EngineSnapshot",
    "KeySnapshot",
    "TargetSnapshot",
    "TargetStats",
    "check_target",
]

log = logging.getLogger(__name__)

AUTH_PAUSE: Final = 300.0
"""First pause of a target whose credentials were rejected (seconds)."""
AUTH_PAUSE_CAP: Final = 3600.0
"""Longest such pause; each further rejection doubles it up to here."""
MIN_RETRY_AFTER: Final = 1.0
"""Floor of a ``Retry-After`` pause, so "retry after 0 s" cannot make a hot loop."""
MIN_REFRESH: Final = 1.0
"""Least time between two refreshes of one key, whatever ``expires`` says."""
UNCERTAIN: Final = "presence_sync.uncertain"
"""Key the engine sets in ``Applied.data`` of a row it is not sure about
(see ``Engine``); targets never see it."""


class _Unknown:
    """Type of ``UNKNOWN``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()
"""The desired status of a configured person whose line is not known yet
(before the first full state from NFON): such keys are left alone."""

Desired = Status | None | _Unknown


class Decider(Protocol):
    """The rules, as the engine sees them (``rules.RuleSet`` is one)."""

    def evaluate(
        self, person: Person, view: LineView, now: datetime
    ) -> Mapping[str, Status | None]:
        """The desired status of every enabled target for ``person``; a target
        missing from the result gets ``None`` (nothing from us). Must not raise."""
        ...


@dataclass(slots=True)
class TargetStats:
    """Counters of one target since the engine started (tests, benchmarks).

    ``requests`` counts calls of ``Target.apply``; ``noops`` keys that were
    dirty but needed nothing by the time a worker looked; the failure
    counters split ``requests`` that did not succeed (``timeouts`` are also
    counted in ``transient``).
    """

    requests: int = 0
    ok: int = 0
    noops: int = 0
    transient: int = 0
    permanent: int = 0
    auth: int = 0
    throttled: int = 0
    timeouts: int = 0

    @property
    def failures(self) -> int:
        """Requests that did not succeed."""
        return self.transient + self.permanent + self.auth


@dataclass(frozen=True, slots=True)
class TargetSnapshot:
    """One lane at one instant. ``dirty``: keys queued; ``backoff``: keys
    waiting for a retry; ``paused_until``/``pause_reason`` (``"retry-after"``
    or ``"auth"``) while the whole target waits."""

    name: str
    kind: str
    dirty: int
    in_flight: int
    backoff: int
    parked: int
    paused_until: datetime | None
    pause_reason: str | None
    stats: TargetStats


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """One (person, target) key. ``desired_known`` is False while the person's
    line is not known yet (``desired`` is then ``None`` and meaningless).
    ``state``: ``in-sync``, ``dirty``, ``in-flight``, ``backoff``, ``parked``
    or ``unknown``. ``uncertain``: the last request's outcome is unknown and
    ``applied`` is the worse case."""

    person: str
    email: str
    target: str
    desired: Status | None
    desired_known: bool
    applied: Applied | None
    state: str
    retry_at: datetime | None
    last_error: str | None
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    """Everything the status page shows about the reconciler."""

    at: datetime
    targets: Mapping[str, TargetSnapshot]
    keys: tuple[KeySnapshot, ...]


@dataclass(slots=True, eq=False)
class _Flight:
    """One running apply."""

    key: str
    deadline: float
    task: asyncio.Task[None] | None = None
    timed_out: bool = False


@dataclass(slots=True, eq=False)
class _Lane:
    """Everything the engine keeps for one target."""

    name: str
    target: Target
    info: TargetInfo
    applied: dict[str, Applied] = field(default_factory=dict)
    restores: OrderedDict[str, None] = field(default_factory=OrderedDict)
    writes: OrderedDict[str, None] = field(default_factory=OrderedDict)
    since: dict[str, float] = field(default_factory=dict)
    """When each key last became dirty (monotonic), until it is clean again."""
    flights: dict[str, _Flight] = field(default_factory=dict)
    """Running applies in start order (so the first one times out first)."""
    waiting: dict[str, float] = field(default_factory=dict)
    """Keys backing off → monotonic time of their retry."""
    failures: dict[str, int] = field(default_factory=dict)
    parked: dict[str, Status | None] = field(default_factory=dict)
    """Keys parked by a PermanentError → the desired status that failed."""
    errors: dict[str, str] = field(default_factory=dict)
    refresh_at: dict[str, float] = field(default_factory=dict)
    timers: list[tuple[float, int, str]] = field(default_factory=list)
    """Heap of (monotonic time, seq, key) for backoff retries and refreshes;
    an entry is live only while ``waiting``/``refresh_at`` still say that time."""
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

    @property
    def limit(self) -> int:
        return 1 if self.probing else max(1, self.info.concurrency)

    def queued(self, key: str) -> bool:
        return key in self.restores or key in self.writes

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


class Engine:
    """The reconciler. Build it, give it people (``set_people``), feed it line
    views (``resync``, ``observe``) and ``await run()``.

    All methods except ``run`` and ``drain`` are synchronous and cheap; they
    only mark keys dirty and, while ``run()`` is active, start workers. Call
    them from the event loop that runs ``run()``. Targets' errors other than
    the three of ``errors`` are treated as transient and logged with their
    traceback; a bug inside the engine itself ends ``run()`` with it.

    A configured person is left alone until their line is known (an
    ``observe`` of their extension, or the first ``resync``): a restart does
    not clear everyone's "On a call" before NFON has said who is on a call.
    People known only from the store's rows are cleared once ``set_people``
    has said who is configured.

    ``rng`` draws the backoff jitter (a delay in ``[0, min(backoff_cap,
    backoff_base × 2^(n-1))]`` after the n-th failure in a row);
    ``memory(target, person_key)`` builds the ``Memory`` handed to targets
    (default: ``store.StoreMemory`` over ``store``); ``auth_pause`` and
    ``auth_pause_cap`` bound the pause after rejected credentials. Raises
    ``ValueError`` for a target whose limits cannot be honoured (see
    ``set_targets``).
    """

    def __init__(
        self,
        *,
        targets: Mapping[str, Target],
        store: Store,
        rules: Decider,
        clock: Clock,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        memory: Callable[[str, str], Memory] | None = None,
        auth_pause: float = AUTH_PAUSE,
        auth_pause_cap: float = AUTH_PAUSE_CAP,
    ) -> None:
        self._store = store
        self._rules = rules
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._auth_pause = auth_pause
        self._auth_pause_cap = auth_pause_cap
        self._memory: Callable[[str, str], Memory] = memory or (
            lambda target, key: StoreMemory(store, target, key)
        )
        self._seq = itertools.count()
        self._lanes: dict[str, _Lane] = {}
        self._people: dict[str, Person] = {}
        self._people_known = False
        self._departed: dict[str, Person] = {}
        """People with applied rows who are not (or not yet known to be) configured."""
        self._by_extension: dict[str, list[str]] = {}
        self._views: dict[str, LineView] = {}
        self._complete = False
        self._desired: dict[str, Mapping[str, Status | None]] = {}
        self._running = False
        self._draining = False
        self._stopped: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        for name, target in targets.items():
            self._lanes[name] = self._new_lane(name, target)
        self._load_applied(set(self._lanes))

    # --- public API -------------------------------------------------------------------

    @property
    def stats(self) -> Mapping[str, TargetStats]:
        """Live counters per target name."""
        return {name: lane.stats for name, lane in self._lanes.items()}

    async def run(self) -> None:
        """Dispatch until cancelled or ``stop()``. On the way out every running
        apply is cancelled (its key stays as the store knows it, so the next
        start converges). Raises ``RuntimeError`` if already running, and
        re-raises an unexpected error of the engine's own workers."""
        if self._running:
            raise RuntimeError("Engine.run() is already running")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        self._running = True
        self._draining = False
        try:
            for lane in self._lanes.values():
                self._pump(lane)
            await self._stopped
        finally:
            self._running = False
            tasks: list[asyncio.Task[None]] = []
            for lane in self._lanes.values():
                if lane.alarm is not None:
                    tasks.append(lane.alarm)
                    lane.alarm = None
                    lane.alarm_at = math.inf
                tasks.extend(f.task for f in lane.flights.values() if f.task is not None)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stopped = None

    def stop(self) -> None:
        """Make ``run()`` return (running applies are cancelled; ``drain`` first
        to let them finish)."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    # The timeout runs on the injected clock, which asyncio.timeout cannot follow.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Start no new work and wait up to ``timeout`` seconds (on the clock)
        for running applies. True when none is left running."""
        self._draining = True
        running = {
            f.task
            for lane in self._lanes.values()
            for f in lane.flights.values()
            if f.task is not None and not f.task.done()
        }
        if not running:
            return True
        timer = asyncio.get_running_loop().create_task(self._clock.sleep(timeout))
        try:
            while running and not timer.done():
                done, _ = await asyncio.wait({*running, timer}, return_when=asyncio.FIRST_COMPLETED)
                running -= done
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        return not running

    def set_people(self, people: Iterable[Person]) -> None:
        """Who is configured now. A person no longer listed (including one
        known only from the store's applied rows) gets nothing from us at every
        target; a new or changed person is evaluated against their line."""
        fresh = {p.key: p for p in people}
        old = self._people
        first = not self._people_known
        self._people = fresh
        self._people_known = True
        by_extension: dict[str, list[str]] = {}
        for person in fresh.values():
            by_extension.setdefault(person.extension, []).append(person.key)
        self._by_extension = by_extension
        now = self._clock.now()
        touched: list[str] = []
        for key, person in old.items():
            if key not in fresh:
                self._desired.pop(key, None)
                if any(key in lane.applied for lane in self._lanes.values()):
                    self._departed[key] = person
                touched.append(key)
        for key, person in fresh.items():
            self._departed.pop(key, None)
            if old.get(key) != person:
                self._evaluate(person, now)
                touched.append(key)
        if first:
            touched.extend(self._departed)
        self._touch_keys(touched, self._lanes.values())

    def observe(self, view: LineView) -> None:
        """The newest view of one extension. Re-evaluates the people on it and
        marks the keys whose desired status now differs from the applied one;
        costs O(people on the extension × targets), never a request by itself."""
        self._views[view.extension] = view
        keys = self._by_extension.get(view.extension)
        if not keys:
            return
        now = self._clock.now()
        woken: list[_Lane] = []
        for key in keys:
            self._desired[key] = self._rules.evaluate(self._people[key], view, now)
            for lane in self._lanes.values():
                if self._touch(lane, key) and lane not in woken:
                    woken.append(lane)
        for lane in woken:
            self._pump(lane)

    def resync(self, views: Iterable[LineView], *, complete: bool = True) -> int:
        """Take a full state: ``views`` replace what is known (with ``complete``,
        an extension missing from them counts as an unknown line and presence).
        Marks every key whose desired status differs from the applied one, or
        whose applied status expires soon. Returns how many keys became dirty;
        a resync that finds nothing to do costs no request."""
        if complete:
            self._views = {v.extension: v for v in views}
            self._complete = True
            people: Iterable[Person] = self._people.values()
        else:
            extensions: set[str] = set()
            for view in views:
                self._views[view.extension] = view
                extensions.add(view.extension)
            people = [p for p in self._people.values() if p.extension in extensions]
        now = self._clock.now()
        keys: list[str] = []
        for person in people:
            self._evaluate(person, now)
            keys.append(person.key)
        if complete:
            keys.extend(self._departed)
        return self._touch_keys(keys, self._lanes.values())

    def reevaluate(self) -> int:
        """Compute every desired status again (time windows in rules) and
        look at every key, refreshes included. Returns how many keys became dirty."""
        now = self._clock.now()
        for person in self._people.values():
            self._evaluate(person, now)
        return self._touch_keys([*self._people, *self._departed], self._lanes.values())

    def set_rules(self, rules: Decider) -> None:
        """Use new rules (configuration reload) and re-evaluate everyone."""
        self._rules = rules
        self.reevaluate()

    def set_targets(self, targets: Mapping[str, Target]) -> list[Target]:
        """Use a new set of targets (configuration reload). Returns the target
        objects that were removed or replaced, for the caller to ``aclose()``.
        Raises ``ValueError`` (and changes nothing) if a target declares limits
        the engine cannot honour (a rate of 0 or less, a burst or concurrency
        below 1).

        A target under a known name but a new object keeps everything the
        engine knows about that name (applied, queue, backoff); applies still
        running on the old object finish there. A removed target's running
        applies are cancelled and its keys forgotten (its store rows stay). A
        new name starts from its rows in the store.
        """
        for name, target in targets.items():
            check_target(name, target)
        retired: list[Target] = []
        for name, lane in list(self._lanes.items()):
            new = targets.get(name)
            if new is None:
                retired.append(lane.target)
                self._close_lane(lane)
                del self._lanes[name]
            elif new is not lane.target:
                retired.append(lane.target)
                lane.target = new
                lane.info = check_target(name, new)
                lane.tokens = min(lane.tokens, float(max(1, lane.info.burst)))
        added = [name for name in targets if name not in self._lanes]
        for name in added:
            self._lanes[name] = self._new_lane(name, targets[name])
        if added:
            self._load_applied(set(added))
            self._touch_keys([*self._people, *self._departed], [self._lanes[n] for n in added])
        for lane in self._lanes.values():
            self._pump(lane)
        return retired

    def pending(self) -> int:
        """Keys queued, running or waiting for a retry, over all targets (not
        parked keys nor scheduled refreshes): 0 once the engine is idle."""
        return sum(
            len(lane.restores) + len(lane.writes) + len(lane.flights) + len(lane.waiting)
            for lane in self._lanes.values()
        )

    def snapshot(self) -> EngineSnapshot:
        """A consistent picture of every target and key, for the status page."""
        mono = self._clock.monotonic()
        wall = self._clock.now()

        def at(when: float) -> datetime:
            return wall + timedelta(seconds=when - mono)

        targets: dict[str, TargetSnapshot] = {}
        keys: list[KeySnapshot] = []
        people = {**self._departed, **self._people}
        for name, lane in self._lanes.items():
            paused = lane.paused_until > mono
            targets[name] = TargetSnapshot(
                name=name,
                kind=lane.info.kind,
                dirty=len(lane.restores) + len(lane.writes),
                in_flight=len(lane.flights),
                backoff=len(lane.waiting),
                parked=len(lane.parked),
                paused_until=at(lane.paused_until) if paused else None,
                pause_reason=lane.pause_reason if paused else None,
                stats=dataclasses.replace(lane.stats),
            )
            for key, person in people.items():
                desired = self._desired_for(key, name)
                applied = lane.applied.get(key)
                if key in lane.flights:
                    state = "in-flight"
                elif lane.queued(key):
                    state = "dirty"
                elif key in lane.waiting:
                    state = "backoff"
                elif key in lane.parked:
                    state = "parked"
                elif isinstance(desired, _Unknown):
                    state = "unknown"
                else:
                    state = "in-sync"
                retry = lane.waiting.get(key)
                keys.append(
                    KeySnapshot(
                        person=key,
                        email=person.email,
                        target=name,
                        desired=None if isinstance(desired, _Unknown) else desired,
                        desired_known=not isinstance(desired, _Unknown),
                        applied=_as_confirmed(applied),
                        state=state,
                        retry_at=None if retry is None else at(retry),
                        last_error=lane.errors.get(key),
                        uncertain=applied is not None and UNCERTAIN in applied.data,
                    )
                )
        return EngineSnapshot(at=wall, targets=targets, keys=tuple(keys))

    # --- desired state ----------------------------------------------------------------

    def _new_lane(self, name: str, target: Target) -> _Lane:
        lane = _Lane(name=name, target=target, info=check_target(name, target))
        lane.stamp = self._clock.monotonic()
        return lane

    def _load_applied(self, names: set[str]) -> None:
        for row in self._store.load_applied():
            lane = self._lanes.get(row.target)
            if lane is None or row.target not in names:
                continue
            lane.applied[row.person.key] = row.applied
            if row.person.key not in self._people:
                self._departed.setdefault(row.person.key, row.person)

    def _evaluate(self, person: Person, now: datetime) -> None:
        view = self._views.get(person.extension)
        if view is None:
            if not self._complete:
                self._desired.pop(person.key, None)
                return
            view = LineView(extension=person.extension)
        self._desired[person.key] = self._rules.evaluate(person, view, now)

    def _desired_for(self, key: str, target: str) -> Desired:
        desired = self._desired.get(key)
        if desired is not None:
            return desired.get(target)
        if key in self._people or not self._people_known:
            return UNKNOWN
        return None

    def _person(self, key: str) -> Person | None:
        return self._people.get(key) or self._departed.get(key)

    def _refresh_due(self, lane: _Lane, applied: Applied) -> datetime | None:
        """When ``applied`` should be applied again, or None if never."""
        if applied.status is None or applied.expires is None:
            return None
        lifetime = (applied.expires - applied.at).total_seconds()
        due = applied.expires - timedelta(seconds=lane.info.refresh_before)
        # A lifetime shorter than refresh_before would make every refresh due at
        # once: refresh at half-life instead, and never more than once a second.
        earliest = applied.at + timedelta(seconds=max(lifetime / 2, MIN_REFRESH))
        return max(due, earliest)

    def _needs(self, lane: _Lane, key: str, desired: Status | None) -> bool:
        applied = lane.applied.get(key)
        current = None if applied is None else applied.status
        if desired != current:
            return True
        if applied is None:
            return False
        if UNCERTAIN in applied.data:
            return True
        due = self._refresh_due(lane, applied)
        if due is None:
            return False
        wait = (due - self._clock.now()).total_seconds()
        if wait <= 0:
            return True
        if key not in lane.refresh_at:
            self._push_timer(lane, key, lane.refresh_at, self._clock.monotonic() + wait)
        return False

    # --- the dirty set ----------------------------------------------------------------

    def _touch_keys(self, keys: Iterable[str], lanes: Iterable[_Lane]) -> int:
        lanes = list(lanes)
        count = 0
        for key in keys:
            for lane in lanes:
                count += self._touch(lane, key)
        for lane in lanes:
            self._pump(lane)
        return count

    def _touch(self, lane: _Lane, key: str) -> bool:
        """Queue ``key`` on ``lane`` if it needs work. True when it was not queued before."""
        if key in lane.flights or key in lane.waiting:
            # The worker looks again when it finishes; the retry reads the
            # desired status of its time, not of now.
            return False
        desired = self._desired_for(key, lane.name)
        if isinstance(desired, _Unknown):
            return False
        if key in lane.parked:
            if lane.parked[key] == desired:
                return False
            del lane.parked[key]
            lane.errors.pop(key, None)
        if not self._needs(lane, key, desired):
            return False
        restore = desired is None
        if key in lane.restores:
            if not restore:
                del lane.restores[key]
                lane.writes[key] = None
            return False
        if key in lane.writes:
            if restore:
                del lane.writes[key]
                lane.restores[key] = None
            return False
        (lane.restores if restore else lane.writes)[key] = None
        lane.since.setdefault(key, self._clock.monotonic())
        return True

    def _push_timer(self, lane: _Lane, key: str, where: dict[str, float], when: float) -> None:
        where[key] = when
        heapq.heappush(lane.timers, (when, next(self._seq), key))

    # --- dispatch ---------------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        """Fire due timers, time out overdue applies, start what may start,
        and set the lane's alarm for the next moment something changes."""
        if not self._running or lane.closed:
            return
        now = self._clock.monotonic()
        timers = lane.timers
        while timers and timers[0][0] <= now:
            when, _, key = heapq.heappop(timers)
            if lane.waiting.get(key) == when:
                del lane.waiting[key]
                self._touch(lane, key)
            elif lane.refresh_at.get(key) == when:
                del lane.refresh_at[key]
                self._touch(lane, key)
        for flight in lane.flights.values():
            if flight.timed_out:
                continue
            if flight.deadline > now:
                break
            flight.timed_out = True
            if flight.task is not None:
                flight.task.cancel()
        next_at = timers[0][0] if timers else math.inf
        if lane.paused_until > now:
            if lane.restores or lane.writes:
                next_at = min(next_at, lane.paused_until)
        elif not self._draining:
            next_at = min(next_at, self._start_work(lane, now))
        for flight in lane.flights.values():
            if not flight.timed_out:
                next_at = min(next_at, flight.deadline)
                break
        lane.m_dirty.set(len(lane.restores) + len(lane.writes) + len(lane.waiting))
        if next_at < math.inf:
            self._arm(lane, next_at)

    def _start_work(self, lane: _Lane, now: float) -> float:
        """Start applies while the lane has room; returns when to look again
        for lack of a token (``inf`` when tokens were not the limit)."""
        while (lane.restores or lane.writes) and len(lane.flights) < lane.limit:
            queue = lane.restores or lane.writes
            key = next(iter(queue))
            person = self._person(key)
            desired = self._desired_for(key, lane.name)
            if (
                person is None
                or isinstance(desired, _Unknown)
                or not self._needs(lane, key, desired)
            ):
                del queue[key]
                self._noop(lane, key, person, desired)
                continue
            wait = lane.take_token(now)
            if wait > 0:
                return now + wait
            del queue[key]
            self._start(lane, key, now)
        return math.inf

    def _start(self, lane: _Lane, key: str, now: float) -> None:
        timeout = lane.info.timeout
        deadline = now + timeout if timeout > 0 else math.inf
        flight = _Flight(key=key, deadline=deadline)
        lane.flights[key] = flight
        assert self._loop is not None  # only called while run() runs
        task = self._loop.create_task(self._work(lane, flight), name=f"apply:{lane.name}")
        flight.task = task
        task.add_done_callback(self._task_done)

    def _arm(self, lane: _Lane, when: float) -> None:
        if lane.alarm is not None and lane.alarm_at <= when:
            return
        if lane.alarm is not None:
            lane.alarm.cancel()
        lane.alarm_at = when
        assert self._loop is not None  # only called while run() runs
        lane.alarm = self._loop.create_task(self._ring(lane, when), name=f"alarm:{lane.name}")
        lane.alarm.add_done_callback(self._task_done)

    async def _ring(self, lane: _Lane, when: float) -> None:
        # Measured when the task first runs, not when it was created: the
        # clock may have moved in between.
        await self._clock.sleep(when - self._clock.monotonic())
        lane.alarm = None
        lane.alarm_at = math.inf
        self._pump(lane)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical("reconciler task failed", exc_info=exc)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(exc)

    def _close_lane(self, lane: _Lane) -> None:
        lane.closed = True
        if lane.alarm is not None:
            lane.alarm.cancel()
            lane.alarm = None
        for flight in lane.flights.values():
            if flight.task is not None:
                flight.task.cancel()
        lane.m_dirty.set(0)

    # --- one reconcile ----------------------------------------------------------------

    async def _work(self, lane: _Lane, flight: _Flight) -> None:
        key = flight.key
        clock = self._clock
        try:
            # Read again now that the worker runs: whatever happened since the
            # key was picked (a reload's set_targets → set_rules → set_people,
            # a burst of events) is seen here, not replayed after.
            desired = self._desired_for(key, lane.name)
            person = self._person(key)
            if (
                person is None
                or isinstance(desired, _Unknown)
                or not self._needs(lane, key, desired)
            ):
                self._noop(lane, key, person, desired)
                return
            applied = lane.applied.get(key)
            view = self._views.get(person.extension) if key in self._people else None
            change = Change(
                person=person,
                desired=desired,
                applied=_as_confirmed(applied),
                view=view,
                memory=self._memory(lane.name, key),
            )
            if desired is not None and lane.info.remote_state:
                # Write-ahead: a crash (even SIGKILL) during the request must
                # not leave a status of ours at the target that the store does
                # not know about, or nobody would ever take it away again.
                self._uncertain(lane, person, key, desired)
            start = clock.monotonic()
            lane.m_latency.observe(max(0.0, start - lane.since.get(key, start)))
            lane.stats.requests += 1
            try:
                result = await lane.target.apply(change)
            except asyncio.CancelledError:
                self._uncertain(lane, person, key, desired)
                if not flight.timed_out:
                    raise
                _uncancel()
                lane.stats.timeouts += 1
                self._transient(
                    lane,
                    person,
                    key,
                    TransientError(f"no answer within {lane.info.timeout:g} s"),
                    clock.monotonic() - start,
                )
            except TransientError as exc:
                if exc.retry_after is None:
                    self._uncertain(lane, person, key, desired)
                else:
                    self._rejected(lane, person, key, applied)
                self._transient(lane, person, key, exc, clock.monotonic() - start)
            except PermanentError as exc:
                self._rejected(lane, person, key, applied)
                self._permanent(lane, person, key, desired, exc, clock.monotonic() - start)
            except AuthError as exc:
                self._rejected(lane, person, key, applied)
                self._auth(lane, key, exc, clock.monotonic() - start)
            except Exception as exc:
                # A target bug must not stop the other keys: retry it like a 5xx,
                # with the traceback logged once per failing streak.
                self._uncertain(lane, person, key, desired)
                self._transient(lane, person, key, exc, clock.monotonic() - start)
            else:
                if flight.timed_out:
                    _uncancel()
                self._succeeded(lane, person, key, applied, desired, result, start)
        finally:
            del lane.flights[key]
            self._touch(lane, key)
            self._pump(lane)

    def _succeeded(
        self,
        lane: _Lane,
        person: Person,
        key: str,
        before: Applied | None,
        desired: Status | None,
        result: Applied,
        start: float,
    ) -> None:
        took = self._clock.monotonic() - start
        lane.m_duration.observe(took)
        error = self._record(lane, person, key, result, "an applied status")
        if error is not None:
            # The remote side shows it but we could not remember that: retry
            # later (targets are idempotent) rather than forget the difference.
            self._backoff(lane, key, f"store: {error}")
            return
        lane.refresh_at.pop(key, None)
        lane.failures.pop(key, None)
        lane.errors.pop(key, None)
        lane.since.pop(key, None)
        lane.stats.ok += 1
        lane.m_result["ok"].inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s: %s %s → %s",
                lane.name,
                person.email,
                describe(None if before is None else before.status),
                describe(result.status),
                extra=kv(
                    target=lane.name,
                    person=person.email,
                    seconds=round(took, 3),
                    result="ok",
                ),
            )
        if result.status != desired:
            # Asking again would get the same answer: wait until we want
            # something else rather than loop on it.
            lane.parked[key] = desired
            log.warning(
                "target shows something else than asked; not asking again until that changes",
                extra=kv(target=lane.name, person=person.email, asked=describe(desired)),
            )
        if lane.failing:
            lane.failing = False
            log.info("target recovered", extra=kv(target=lane.name))
        if lane.auth_failures:
            lane.auth_failures = 0
            log.warning("target accepts our credentials again", extra=kv(target=lane.name))
        lane.probing = False
        if key not in self._people:
            # Someone who left while this apply ran: keep them until cleared everywhere.
            if any(key in other.applied for other in self._lanes.values()):
                self._departed.setdefault(key, person)
            else:
                self._departed.pop(key, None)

    def _noop(self, lane: _Lane, key: str, person: Person | None, desired: Desired) -> None:
        lane.since.pop(key, None)
        lane.failures.pop(key, None)
        lane.stats.noops += 1
        lane.m_result["noop"].inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: %s nothing to do",
                lane.name,
                person.email if person else key,
                extra=kv(target=lane.name, result="noop", desired=repr(desired)),
            )

    def _transient(
        self, lane: _Lane, person: Person, key: str, exc: Exception, took: float
    ) -> None:
        lane.stats.transient += 1
        lane.m_result["transient"].inc()
        lane.m_duration.observe(took)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            lane.stats.throttled += 1
            lane.m_throttled.inc()
            self._pause(lane, max(MIN_RETRY_AFTER, float(retry_after)), "retry-after")
            lane.errors[key] = str(exc)
            self._requeue_front(lane, key)
            log.info(
                "%s: asked to wait %.0f s",
                lane.name,
                retry_after,
                extra=kv(target=lane.name, person=person.email, result="throttled"),
            )
            return
        expected = isinstance(exc, TransientError)
        if not lane.failing:
            lane.failing = True
            log.warning(
                "%s: target failing, backing off: %s",
                lane.name,
                exc,
                exc_info=None if expected else exc,
                extra=kv(target=lane.name, person=person.email, result="transient"),
            )
        else:
            log.debug(
                "%s: %s failed: %s",
                lane.name,
                person.email,
                exc,
                extra=kv(target=lane.name, result="transient"),
            )
        self._backoff(lane, key, str(exc) or type(exc).__name__)

    def _uncertain(self, lane: _Lane, person: Person, key: str, attempted: Status | None) -> None:
        """Remember that the remote side may now show ``attempted`` (or still
        what it showed): the worse case, flagged, so the key is applied again."""
        old = lane.applied.get(key)
        status = attempted if attempted is not None else (old.status if old else None)
        if old is None and status is None:
            return  # clearing where nothing of ours was known: nothing can be left
        if old is not None and old.status == status and UNCERTAIN in old.data:
            return
        data = {**(old.data if old else {}), UNCERTAIN: True}
        expires = old.expires if old is not None and old.status == status else None
        row = Applied(status=status, at=self._clock.now(), expires=expires, data=frozen_map(data))
        if self._record(lane, person, key, row, "an uncertain status") is not None:
            lane.applied[key] = row  # the key is worked on until it is certain again

    def _rejected(self, lane: _Lane, person: Person, key: str, before: Applied | None) -> None:
        """The target refused the request outright (4xx, 429, auth): nothing
        changed there, so a write-ahead record goes back to what was before."""
        if lane.applied.get(key) is not before:
            # Should that fail, the uncertain record stays: safe, the key is
            # simply applied again.
            self._record(lane, person, key, before, "the record from before a refused request")

    def _record(
        self, lane: _Lane, person: Person, key: str, row: Applied | None, what: str
    ) -> Exception | None:
        """Store ``row`` for the key (``None``, or nothing of ours with no
        memo: delete it) and, once stored, keep it in memory too. Returns the
        store's error, logged, instead of raising it."""
        kept = None if row is None or (row.status is None and not row.data) else row
        try:
            if kept is None:
                self._store.delete_applied(lane.name, key)
            else:
                self._store.put_applied(lane.name, person, kept)
        except Exception as exc:
            log.error(
                "could not record %s",
                what,
                exc_info=exc,
                extra=kv(target=lane.name, person=person.email),
            )
            return exc
        if kept is None:
            lane.applied.pop(key, None)
        else:
            lane.applied[key] = kept
        return None

    def _backoff(self, lane: _Lane, key: str, error: str) -> None:
        attempt = lane.failures.get(key, 0) + 1
        lane.failures[key] = attempt
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(attempt - 1, 64))
        delay = self._rng.uniform(0.0, ceiling)
        lane.errors[key] = error
        self._push_timer(lane, key, lane.waiting, self._clock.monotonic() + delay)

    def _permanent(
        self,
        lane: _Lane,
        person: Person,
        key: str,
        desired: Status | None,
        exc: PermanentError,
        took: float,
    ) -> None:
        lane.stats.permanent += 1
        lane.m_result["permanent"].inc()
        lane.m_duration.observe(took)
        lane.parked[key] = desired
        lane.errors[key] = str(exc)
        lane.failures.pop(key, None)
        lane.since.pop(key, None)
        log.error(
            "%s: %s cannot be set to %s, parked until that changes: %s",
            lane.name,
            person.email,
            describe(desired),
            exc,
            extra=kv(target=lane.name, person=person.email, result="permanent"),
        )

    def _auth(self, lane: _Lane, key: str, exc: AuthError, took: float) -> None:
        lane.stats.auth += 1
        lane.m_result["auth"].inc()
        lane.m_duration.observe(took)
        lane.errors[key] = str(exc)
        self._requeue_front(lane, key)
        if lane.pause_reason == "auth" and lane.paused_until > self._clock.monotonic():
            return  # another request of the same batch: the pause is already on
        lane.auth_failures += 1
        pause = min(self._auth_pause_cap, self._auth_pause * 2 ** (lane.auth_failures - 1))
        lane.probing = True
        self._pause(lane, pause, "auth")
        if lane.auth_failures == 1:
            log.error(
                "%s: CREDENTIALS REJECTED, pausing this target for %.0f s: %s",
                lane.name,
                pause,
                exc,
                extra=kv(target=lane.name, result="auth"),
            )
        else:
            log.debug(
                "%s: credentials still rejected, pausing %.0f s",
                lane.name,
                pause,
                extra=kv(target=lane.name, result="auth"),
            )

    def _pause(self, lane: _Lane, seconds: float, reason: str) -> None:
        now = self._clock.monotonic()
        until = now + seconds
        if until > lane.paused_until:
            lane.paused_until = until
            lane.pause_reason = reason
            lane.m_paused.set((self._clock.now() + timedelta(seconds=seconds)).timestamp())
        # A fresh bucket after a pause would burst straight into the same wall.
        lane.tokens = min(lane.tokens, 1.0)
        lane.stamp = max(lane.stamp, lane.paused_until)

    def _requeue_front(self, lane: _Lane, key: str) -> None:
        desired = self._desired_for(key, lane.name)
        queue = lane.restores if desired is None else lane.writes
        queue[key] = None
        queue.move_to_end(key, last=False)


def check_target(name: str, target: Target) -> TargetInfo:
    """``target``'s metadata; ``ValueError`` naming the target if the engine
    could not honour it. ``Engine`` and ``set_targets`` apply the same check,
    so a caller can refuse a target before handing it over."""
    info = type(target).info
    if not info.rate > 0:
        raise ValueError(f"target {name!r} ({info.kind}) declares rate {info.rate}; must be > 0")
    if info.burst < 1 or info.concurrency < 1:
        raise ValueError(
            f"target {name!r} ({info.kind}) declares burst {info.burst} and concurrency "
            f"{info.concurrency}; both must be at least 1"
        )
    return info


def _as_confirmed(applied: Applied | None) -> Applied | None:
    """``applied`` as a target should see it: without the engine's own flag."""
    if applied is None or UNCERTAIN not in applied.data:
        return applied
    data = {k: v for k, v in applied.data.items() if k != UNCERTAIN}
    return dataclasses.replace(applied, data=frozen_map(data))


def _uncancel() -> None:
    """Take back a cancellation the engine itself caused (an apply timeout)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()

"""The dispatch loop: ``Engine`` ties the book, the lanes and the ledger
together and runs the workers (see the package docstring for the contract)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from presence_sync.clock import Clock
from presence_sync.model import LineView, Person
from presence_sync.ops.logging import kv
from presence_sync.store import Store, StoreMemory
from presence_sync.targets.base import Memory, Target

from .book import Book, Decider, Unknown
from .lane import (
    AUTH_PAUSE,
    AUTH_PAUSE_CAP,
    Backoff,
    Flight,
    Lane,
    Phase,
    check_target,
)
from .ledger import Failed, Ledger
from .picture import key_pictures, picture, target_pictures, unsettled
from .snapshot import EngineSnapshot, KeySnapshot, TargetSnapshot, TargetStats
from .worker import Worker

__all__ = ["STORE_RETRY", "Engine"]

log = logging.getLogger("presence_sync.engine")

STORE_RETRY: Final = 1.0
"""Seconds between two attempts to commit records the store could not take
(on top of the store's own wait for a lock)."""


class Engine:
    """The reconciler. Build it, give it people (``set_people``), feed it line
    views (``resync``, ``observe``) and ``await run()``.

    All methods except ``run``, ``drain`` and ``committed`` are synchronous
    and cheap; they
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
    ``check_target``).
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
        infos = {name: check_target(name, target) for name, target in targets.items()}
        self._clock = clock
        self._book = Book(rules)
        self._ledger = Ledger(store, clock, self._schedule_turn)
        self._worker = Worker(
            book=self._book,
            ledger=self._ledger,
            clock=clock,
            backoff=Backoff(rng or random.Random(), backoff_base, backoff_cap),
            auth_pause=auth_pause,
            auth_pause_cap=auth_pause_cap,
            memory=memory or (lambda target, key: StoreMemory(store, target, key)),
        )
        self._lanes: dict[str, Lane] = {
            name: Lane(name, target, infos[name], clock) for name, target in targets.items()
        }
        self._running = False
        self._draining = False
        self._woken: dict[Lane, None] = {}
        self._turn_scheduled = False
        self._stopped: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ahead: list[tuple[Lane, Flight]] = []
        """Flights ``STARTING``: sent once the next group has committed."""
        self._committer: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        """Set while no commit is under way or about to start."""
        self._settled.set()
        self._load(self._lanes)

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
            self._dispatch(list(self._lanes.values()))
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
            for lane in self._lanes.values():
                # A worker cancelled before its first step, or a request
                # never sent, left its key still to do, for the next run().
                for key in list(lane.flights):
                    lane.land(key)
                    self._touch(lane, key)
            self._woken.clear()
            self._ahead.clear()
            await self._last_commit()
            self._stopped = None

    async def committed(self) -> None:
        """Return once no commit is under way or about to start: the records
        made so far are in the store, or the store could not take them and
        the engine waits ``STORE_RETRY`` seconds (on the clock) to try again
        (``pending()`` still counts them). For tests and benchmarks that
        must not move a ``ManualClock`` while a commit runs in a thread."""
        await self._settled.wait()

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
        timer: asyncio.Task[None] | None = None
        try:
            while True:
                # Requests still STARTING go out once their group commits.
                waits: set[asyncio.Future[None]] = {
                    f.task
                    for lane in self._lanes.values()
                    for f in lane.flights.values()
                    if f.task is not None and not f.task.done()
                }
                if self._ahead and self._committer is not None and not self._committer.done():
                    waits.add(self._committer)
                if not waits:
                    return True
                if timer is None:
                    timer = asyncio.get_running_loop().create_task(self._clock.sleep(timeout))
                await asyncio.wait({*waits, timer}, return_when=asyncio.FIRST_COMPLETED)
                if timer.done():
                    return not any(
                        f.task is None or not f.task.done()
                        for lane in self._lanes.values()
                        for f in lane.flights.values()
                    )
        finally:
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer

    def set_people(self, people: Iterable[Person]) -> None:
        """Who is configured now. A person no longer listed (including one
        known only from the store's applied rows) gets nothing from us at every
        target; a new or changed person is evaluated against their line."""
        keys = self._book.set_people(people, self._clock.now(), self._ledger.held)
        self._touch_keys(keys, self._lanes.values())

    def observe(self, view: LineView) -> None:
        """The newest view of one extension. Re-evaluates the people on it and
        marks the keys whose desired status now differs from the applied one;
        costs O(people on the extension × targets), never a request by itself."""
        keys = self._book.observe(view, self._clock.now())
        if not keys:
            return
        for key in keys:
            for lane in self._lanes.values():
                if self._touch(lane, key):
                    self._wake(lane)

    def resync(self, views: Iterable[LineView], *, complete: bool = True) -> int:
        """Take a full state: ``views`` replace what is known (with ``complete``,
        an extension missing from them counts as an unknown line and presence).
        Marks every key whose desired status differs from the applied one, or
        whose applied status expires soon. Returns how many keys became dirty;
        a resync that finds nothing to do costs no request."""
        keys = self._book.resync(views, complete, self._clock.now())
        return self._touch_keys(keys, self._lanes.values())

    def reevaluate(self) -> int:
        """Compute every desired status again (time windows in rules) and
        look at every key, refreshes included. Returns how many keys became dirty."""
        return self._touch_keys(self._book.reevaluate(self._clock.now()), self._lanes.values())

    def set_rules(self, rules: Decider) -> None:
        """Use new rules (configuration reload) and re-evaluate everyone."""
        self._touch_keys(self._book.set_rules(rules, self._clock.now()), self._lanes.values())

    def set_targets(self, targets: Mapping[str, Target]) -> list[Target]:
        """Use a new set of targets (configuration reload). Returns the target
        objects that were removed or replaced, for the caller to ``aclose()``.
        Raises ``ValueError`` (and changes nothing) if any target declares
        limits the engine cannot honour (see ``check_target``, which a caller
        may run first).

        A target under a known name but a new object keeps everything the
        engine knows about that name (applied, queue, backoff); applies still
        running on the old object finish there. A removed target's running
        applies are cancelled and its keys forgotten (its store rows stay). A
        new name starts from its rows in the store.
        """
        infos = {name: check_target(name, target) for name, target in targets.items()}
        retired: list[Target] = []
        for name, lane in list(self._lanes.items()):
            new = targets.get(name)
            if new is None:
                retired.append(lane.target)
                self._close_lane(lane)
                del self._lanes[name]
                self._ledger.drop(name)
            elif new is not lane.target:
                retired.append(lane.target)
                lane.replace_target(new, infos[name])
        added = [name for name in targets if name not in self._lanes]
        for name in added:
            self._lanes[name] = Lane(name, targets[name], infos[name], self._clock)
        if added:
            self._load(added)
            self._touch_keys(self._book.everyone(), [self._lanes[n] for n in added])
        for lane in self._lanes.values():
            self._wake(lane)
        return retired

    def pending(self) -> int:
        """Keys queued, running or waiting for a retry, over all targets (not
        parked keys nor scheduled refreshes), plus records not yet committed
        to the store: 0 once the engine is idle."""
        ledger = self._ledger
        return (
            ledger.staged + ledger.committing + sum(lane.pending() for lane in self._lanes.values())
        )

    def snapshot(self) -> EngineSnapshot:
        """A consistent picture of every target and key, for the status page."""
        return picture(self._clock, self._book, self._lanes, self._ledger)

    def people(self) -> list[Person]:
        """Everyone the engine may act for: configured people in configuration
        order, then people known only from the store's rows (being cleared)."""
        book = self._book
        configured = book.people
        departed = [p for k, p in book.departed().items() if k not in configured]
        return [*configured.values(), *departed]

    def key_snapshots(self, keys: Iterable[str]) -> list[KeySnapshot]:
        """The keys of the people ``keys`` at this instant (see ``snapshot``):
        O(len(keys) × targets), for a status page that shows one page."""
        return key_pictures(self._clock, self._book, self._lanes, self._ledger, keys)

    def unsettled(self) -> set[str]:
        """Person keys with a target not in sync (queued, in flight, backing
        off, parked, or waiting for their line); builds no snapshot."""
        return unsettled(self._book, self._lanes)

    def target_states(self) -> Mapping[str, TargetSnapshot]:
        """``snapshot().targets`` without the keys: costs O(targets), not
        O(people × targets), for callers that ask often (readiness)."""
        return target_pictures(self._clock, self._lanes)

    # --- lanes --------------------------------------------------------------------------

    def _load(self, names: Iterable[str]) -> None:
        for row in self._ledger.load(names):
            self._book.add_departed(row.person)

    def _close_lane(self, lane: Lane) -> None:
        lane.closed = True
        if lane.alarm is not None:
            lane.alarm.cancel()
            lane.alarm = None
        for flight in lane.flights.values():
            if flight.task is not None:
                flight.task.cancel()
        lane.m_dirty.set(0)

    # --- the dirty set ----------------------------------------------------------------

    def _touch_keys(self, keys: Iterable[str], lanes: Iterable[Lane]) -> int:
        lanes = list(lanes)
        count = 0
        for key in keys:
            for lane in lanes:
                count += self._touch(lane, key)
        for lane in lanes:
            self._wake(lane)
        return count

    def _touch(self, lane: Lane, key: str) -> bool:
        """Queue ``key`` on ``lane`` if it needs work. True when it was not queued before."""
        phase = lane.phase(key)
        if phase is Phase.IN_FLIGHT or phase is Phase.STARTING or phase is Phase.BACKOFF:
            # The worker looks again when it finishes; the retry reads the
            # desired status of its time, not of now.
            return False
        desired = self._book.desired_for(key, lane.name)
        if isinstance(desired, Unknown):
            return False
        if phase is Phase.PARKED and not lane.unpark(key, desired):
            return False
        if not lane.needs(key, desired, self._ledger.get(lane.name, key)):
            return False
        return lane.enqueue(key, restore=desired is None)

    # --- dispatch ---------------------------------------------------------------------
    #
    # Work starts once per loop turn: whatever marks keys dirty wakes the lane,
    # and one callback at the end of the turn pumps every woken lane and
    # commits the turn's rows in one transaction if the store can take them
    # without waiting (the common case: requests then start in the same
    # turn). Otherwise a request that needs a write-ahead record waits
    # (STARTING) for a group holding it: ``_commit_loop`` writes the groups
    # one after another, off the event loop, each with every row staged
    # meanwhile, and retries while the store cannot write.

    def _wake(self, lane: Lane) -> None:
        """Pump ``lane`` at the end of this loop turn."""
        if not self._running or lane.closed:
            return
        self._woken[lane] = None
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        """Run ``_turn`` once at the end of this loop turn (also asked by the
        ledger when a row is staged, so it is committed)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            # The loop of run(), which need not be running right now: sync
            # methods may be called between two of its iterations.
            (self._loop or asyncio.get_running_loop()).call_soon(self._turn)

    def _turn(self) -> None:
        self._turn_scheduled = False
        lanes = list(self._woken)
        self._woken.clear()
        self._dispatch(lanes)

    def _dispatch(self, lanes: Iterable[Lane]) -> None:
        """Pump ``lanes``, stage the write-ahead records of the requests
        picked, send those that need none (or whose record the store has
        already), and have the staged rows committed."""
        starting: list[tuple[Lane, Flight]] = []
        for lane in lanes:
            self._pump(lane, starting)
        ledger = self._ledger
        # Write-ahead: a crash (even SIGKILL) during a request must not leave
        # a status of ours at the target that the store does not know about,
        # or nobody would ever take it away again.
        ahead = [
            (lane, f) for lane, f in starting if f.desired is not None and lane.info.remote_state
        ]
        for lane, flight in ahead:
            assert flight.desired is not None
            ledger.write_ahead(lane.name, flight.person, flight.desired)
        # While rows are staged or committing, memory is ahead of the store:
        # such a request waits for the next group even if it staged nothing.
        # The common case needs no wait: the store takes the group at once.
        idle = self._committer is None or self._committer.done()
        behind = not (idle and ledger.try_commit())
        for lane, flight in starting:
            if behind and flight.desired is not None and lane.info.remote_state:
                self._ahead.append((lane, flight))
            else:
                self._launch(lane, flight)
        if ledger.staged and self._running:
            self._commit_soon()

    def _commit_soon(self) -> None:
        if self._committer is None or self._committer.done():
            assert self._loop is not None  # only called while run() runs
            self._settled.clear()
            self._committer = self._loop.create_task(self._commit_loop(), name="commit")
            self._committer.add_done_callback(self._task_done)

    async def _commit_loop(self) -> None:
        """Commit group after group while rows are staged; send each
        group's requests once it is in the store."""
        try:
            await self._commit_groups()
        finally:
            self._settled.set()

    async def _commit_groups(self) -> None:
        ledger = self._ledger
        while ledger.staged:
            group, self._ahead = self._ahead, []
            failed = await ledger.commit()
            if failed is None:
                # Nothing written (logged once by the ledger): the rows are
                # staged again, the requests keep waiting.
                self._ahead[:0] = group
                if not self._running:
                    return
                assert self._loop is not None
                # A task of its own, so that the end of run() can cut it short.
                self._retry = self._loop.create_task(self._clock.sleep(STORE_RETRY))
                self._settled.set()
                try:
                    await asyncio.wait({self._retry})
                finally:
                    self._retry = None
                    self._settled.clear()
                # Cut short by the end of run(): one last try, then return.
                continue
            self._committed(group, failed)
        # No row staged while the last group committed: memory equals the
        # store, so requests queued meanwhile need nothing more.
        group, self._ahead = self._ahead, []
        self._committed(group, [])

    def _committed(self, group: list[tuple[Lane, Flight]], failed: list[Failed]) -> None:
        """A group is in the store: send its requests, except those whose
        write-ahead record the store refused, and back off the keys of the
        refused rows."""
        refused = {(f.target, f.key): f for f in failed}
        for lane, flight in group:
            if not self._running or lane.closed or lane.flights.get(flight.key) is not flight:
                continue  # stopped or target removed meanwhile: nothing was sent
            failure = refused.pop((lane.name, flight.key), None)
            if failure is None:
                self._launch(lane, flight)
            else:
                self._worker.back_off(lane, flight.key, f"store: {failure.error}")
                self._wake(lane)
        for failure in refused.values():
            # The store lacks a confirmed row: apply it again later (targets
            # are idempotent) rather than forget the difference.
            failed_lane = self._lanes.get(failure.target)
            if failed_lane is not None and failed_lane.phase(failure.key) is Phase.IDLE:
                self._worker.back_off(failed_lane, failure.key, f"store: {failure.error}")
                self._wake(failed_lane)

    def _launch(self, lane: Lane, flight: Flight) -> None:
        """Send the request of a ``STARTING`` flight: its worker starts now."""
        assert self._loop is not None  # work starts only while run() runs
        lane.launch(flight.key, self._clock.monotonic())
        task = self._loop.create_task(self._work(lane, flight), name=f"apply:{lane.name}")
        flight.task = task
        task.add_done_callback(self._task_done)
        if flight.deadline < math.inf:
            self._arm(lane, flight.deadline)

    async def _last_commit(self) -> None:
        """At the end of ``run()``: finish the commit under way (a wait for a
        retry is cut short), then try once more for what is left."""
        committer, self._committer = self._committer, None
        if self._retry is not None:
            self._retry.cancel()
        if committer is not None and not committer.done():
            await asyncio.wait({committer})
        if self._ledger.staged:
            left = self._ledger.staged
            if await self._ledger.commit() is None:
                log.error(
                    "stopping with records the state database did not take; "
                    "the next start applies those keys again",
                    extra=kv(records=left),
                )

    def _pump(self, lane: Lane, starting: list[tuple[Lane, Flight]]) -> None:
        """Fire due timers, time out overdue applies, pick what may start
        (into ``starting``), and set the lane's alarm for the next moment
        something changes."""
        if not self._running or lane.closed:
            return
        now = self._clock.monotonic()
        for key in lane.due(now):
            self._touch(lane, key)
        # A STARTING flight's deadline is inf; its timeout runs once sent.
        first_deadline = math.inf
        for flight in lane.flights.values():
            if flight.timed_out or flight.answered:
                continue
            if flight.deadline > now:
                first_deadline = min(first_deadline, flight.deadline)
                continue
            flight.timed_out = True
            if flight.task is not None:
                flight.task.cancel()
        next_at = min(lane.next_timer(), first_deadline)
        if lane.paused(now):
            if lane.dirty():
                next_at = min(next_at, lane.paused_until)
        elif not self._draining:
            next_at = min(next_at, self._start_work(lane, now, starting))
        lane.m_dirty.set(lane.dirty() + lane.waiting)
        if next_at < math.inf:
            self._arm(lane, next_at)

    def _start_work(self, lane: Lane, now: float, starting: list[tuple[Lane, Flight]]) -> float:
        """Start applies while the lane has room; returns when to look again
        for lack of a token (``inf`` when tokens were not the limit)."""
        while len(lane.flights) < lane.limit:
            key = lane.head()
            if key is None:
                break
            person = self._book.person(key)
            desired = self._book.desired_for(key, lane.name)
            applied = self._ledger.get(lane.name, key)
            if (
                person is None
                or isinstance(desired, Unknown)
                or not lane.needs(key, desired, applied)
            ):
                lane.drop(key)
                lane.noted_noop(key, person, desired)
                continue
            wait = lane.take_token(now)
            if wait > 0:
                return now + wait
            rule = self._book.rule_for(key, lane.name)
            starting.append((lane, lane.start(key, person, desired, applied, rule)))
        return math.inf

    def _arm(self, lane: Lane, when: float) -> None:
        if lane.alarm is not None and lane.alarm_at <= when:
            return
        if lane.alarm is not None:
            lane.alarm.cancel()
        lane.alarm_at = when
        assert self._loop is not None  # only called while run() runs
        lane.alarm = self._loop.create_task(self._ring(lane, when), name=f"alarm:{lane.name}")
        lane.alarm.add_done_callback(self._task_done)

    async def _ring(self, lane: Lane, when: float) -> None:
        # Measured when the task first runs, not when it was created: the
        # clock may have moved in between.
        await self._clock.sleep(when - self._clock.monotonic())
        lane.alarm = None
        lane.alarm_at = math.inf
        self._dispatch([lane])

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical("reconciler task failed", exc_info=exc)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(exc)

    # --- one reconcile ----------------------------------------------------------------

    async def _work(self, lane: Lane, flight: Flight) -> None:
        try:
            await self._worker.apply(lane, flight)
        finally:
            lane.land(flight.key)
            self._touch(lane, flight.key)
            self._wake(lane)

"""The dispatch loop: which keys are dirty, and when each lane starts work.

Work starts once per loop turn: whatever marks keys dirty wakes the lane,
and one callback at the end of the turn pumps every woken lane (due timers,
overdue applies, the requests that may start) and hands the requests picked
to ``Commits``. A lane's alarm pumps it again at the next moment something
changes (a timer, a deadline, a token, the end of a pause).

One request runs as: ``Worker.apply`` (build the change, call the target)
→ ``Outcome`` → ``Outcomes.settle`` (ledger, counters, health, the key's next
phase, the log line) → the scheduler looks at the key again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable

from presence_sync.clock import Clock
from presence_sync.model import Person
from presence_sync.ops.logging import kv
from presence_sync.targets.base import Target, TargetInfo

from .book import Book, Unknown
from .commits import Commits
from .lane import Flight, Lane, Phase
from .ledger import Ledger
from .outcome import Kind, Outcomes
from .worker import Worker

__all__ = ["Scheduler"]

log = logging.getLogger("presence_sync.engine")


class Scheduler:
    """The lanes of one engine and the loop that works them. ``failed(exc)``
    is told of an unexpected error in one of its tasks (``run()`` ends with it)."""

    def __init__(
        self,
        *,
        book: Book,
        ledger: Ledger,
        clock: Clock,
        worker: Worker,
        outcomes: Outcomes,
        failed: Callable[[BaseException], None],
    ) -> None:
        self._book = book
        self._ledger = ledger
        self._clock = clock
        self._worker = worker
        self._outcomes = outcomes
        self._failed = failed
        self.lanes: dict[str, Lane] = {}
        """Target name → lane, in configuration order (the engine adds and removes)."""
        self._running = False
        self._draining = False
        self._woken: dict[Lane, None] = {}
        self._turn_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = Commits(
            ledger=ledger,
            clock=clock,
            lanes=self.lanes,
            launch=self._launch,
            refused=self._refused,
            running=lambda: self._running,
            watch=self._task_done,
        )

    def lane(self, name: str, target: Target, info: TargetInfo) -> Lane:
        """A new lane for ``target`` (not yet in ``lanes``)."""
        return Lane(name, target, info, self._clock, ring=self.pump, watch=self._task_done)

    # --- run ----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._running = True
        self._draining = False
        self.commits.start(loop)
        self._dispatch(list(self.lanes.values()))

    async def stop(self) -> None:
        """Cancel every alarm and running apply; a key whose request never
        went out, or was cut short, stays to do for the next run."""
        self._running = False
        tasks = [task for lane in self.lanes.values() for task in lane.stop()]
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self.lanes.values():
            # A worker cancelled before its first step, or a request
            # never sent, left its key still to do, for the next run().
            for flight in lane.flights():
                lane.land(flight.key)
                self.touch(lane, flight.key)
        self._woken.clear()
        await self.commits.stop()

    def drain(self) -> None:
        """Start no new work."""
        self._draining = True

    # --- the dirty set ------------------------------------------------------------------

    def touch_keys(self, keys: Iterable[str], lanes: Iterable[Lane] | None = None) -> int:
        """Look at ``keys`` on ``lanes`` (all by default); returns how many became dirty."""
        lanes = list(self.lanes.values() if lanes is None else lanes)
        count = 0
        for key in keys:
            for lane in lanes:
                count += self.touch(lane, key)
        for lane in lanes:
            self.wake(lane)
        return count

    def touch(self, lane: Lane, key: str) -> bool:
        """Queue ``key`` on ``lane`` if it needs work (else set the timer of
        its next refresh). True when it was not queued before."""
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
        record = self._ledger.get(lane.name, key)
        if not lane.needs(desired, record):
            lane.plan_refresh(key, record)
            return False
        return lane.enqueue(key, restore=desired is None)

    # --- dispatch -----------------------------------------------------------------------

    def wake(self, lane: Lane) -> None:
        """Pump ``lane`` at the end of this loop turn."""
        if not self._running or lane.closed:
            return
        self._woken[lane] = None
        self.schedule_turn()

    def schedule_turn(self) -> None:
        """Run ``_turn`` once at the end of this loop turn (also asked by the
        ledger when a row is staged, so it is committed)."""
        if not self._turn_scheduled:
            self._turn_scheduled = True
            # The loop of run(), which need not be running right now: sync
            # methods may be called between two of its iterations.
            (self._loop or asyncio.get_running_loop()).call_soon(self._turn)

    def pump(self, lane: Lane) -> None:
        """Pump ``lane`` now (its alarm rang)."""
        self._dispatch([lane])

    def _turn(self) -> None:
        self._turn_scheduled = False
        lanes = list(self._woken)
        self._woken.clear()
        self._dispatch(lanes)

    def _dispatch(self, lanes: Iterable[Lane]) -> None:
        starting: list[tuple[Lane, Flight]] = []
        for lane in lanes:
            self._pump(lane, starting)
        self.commits.send(starting)

    def _pump(self, lane: Lane, starting: list[tuple[Lane, Flight]]) -> None:
        """Fire due timers, time out overdue applies, pick what may start
        (into ``starting``), and set the lane's alarm for the next moment
        something changes."""
        if not self._running or lane.closed:
            return
        now = self._clock.monotonic()
        for key in lane.due(now):
            self.touch(lane, key)
        next_at = min(lane.next_timer(), lane.time_out(now))
        if lane.paused(now):
            if lane.dirty():
                next_at = min(next_at, lane.health.until)
        elif not self._draining:
            next_at = min(next_at, self._start_work(lane, now, starting))
        lane.publish()
        if next_at < math.inf:
            assert self._loop is not None  # only called while run() runs
            lane.arm(next_at, self._loop)

    def _start_work(self, lane: Lane, now: float, starting: list[tuple[Lane, Flight]]) -> float:
        """Start applies while the lane has room; returns when to look again
        for lack of a token (``inf`` when tokens were not the limit)."""
        book = self._book
        while lane.in_flight < lane.limit:
            key = lane.head()
            if key is None:
                break
            person = book.person(key)
            desired = book.desired_for(key, lane.name)
            record = self._ledger.get(lane.name, key)
            if person is None or isinstance(desired, Unknown) or not lane.needs(desired, record):
                lane.drop(key)
                _noted_noop(lane, key, person, desired)
                if person is not None and not isinstance(desired, Unknown):
                    lane.plan_refresh(key, record)
                continue
            wait = lane.take_token(now)
            if wait > 0:
                return now + wait
            rule = book.rule_for(key, lane.name)
            starting.append((lane, lane.start(key, person, desired, record, rule)))
        return math.inf

    def _launch(self, lane: Lane, flight: Flight) -> None:
        """Send the request of a ``STARTING`` flight: its worker starts now."""
        assert self._loop is not None  # work starts only while run() runs
        lane.launch(flight.key, self._clock.monotonic())
        task = self._loop.create_task(self._work(lane, flight), name=f"apply:{lane.name}")
        flight.task = task
        task.add_done_callback(self._task_done)
        if flight.deadline < math.inf:
            lane.arm(flight.deadline, self._loop)

    def _refused(self, lane: Lane, key: str, error: str) -> None:
        """The store refused a record of ``key``: retry it after a backoff."""
        lane.back_off(key, self._outcomes.backoff, error)
        self.wake(lane)

    async def _work(self, lane: Lane, flight: Flight) -> None:
        try:
            outcome = await self._worker.apply(lane, flight)
            self._outcomes.settle(lane, flight, outcome)
            if outcome.kind is Kind.CANCELLED:
                raise asyncio.CancelledError
        finally:
            lane.land(flight.key)
            self.touch(lane, flight.key)
            self.wake(lane)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.critical("reconciler task failed", exc_info=exc)
        self._failed(exc)


def _noted_noop(lane: Lane, key: str, person: Person | None, desired: object) -> None:
    """A queued key needed nothing by the time it was picked: it cost no request."""
    lane.count(("noops",), "noop", None)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s: %s nothing to do",
            lane.name,
            person.email if person else key,
            extra=kv(target=lane.name, result="noop", desired=repr(desired)),
        )

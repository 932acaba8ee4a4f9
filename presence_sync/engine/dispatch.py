"""``Engine``: the reconciler's public face. It ties the book, the ledger and
the scheduler (lanes, workers, commits) together; see the package docstring
for the contract."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Mapping

from presence_sync.clock import Clock
from presence_sync.model import LineView, Person
from presence_sync.store import Store, TargetMemory
from presence_sync.targets.base import Memory, Target

from .book import Book, Decider
from .draw import draw, draw_keys, draw_targets, unsettled
from .lane import AUTH_PAUSE, AUTH_PAUSE_CAP, Backoff, check_target
from .ledger import Ledger
from .outcome import Outcomes
from .picture import EnginePicture, KeyPicture, TargetPicture, TargetStats
from .scheduler import Scheduler
from .worker import Worker

__all__ = ["Engine"]


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
    (default: ``store.TargetMemory`` over ``store``); ``auth_pause`` and
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
        self._stopped: asyncio.Future[None] | None = None
        self._ledger = Ledger(store, clock, lambda: self._scheduler.schedule_turn())
        self._scheduler = Scheduler(
            book=self._book,
            ledger=self._ledger,
            clock=clock,
            worker=Worker(
                book=self._book,
                clock=clock,
                memory=memory or (lambda target, key: TargetMemory(store, target, key)),
            ),
            outcomes=Outcomes(
                book=self._book,
                ledger=self._ledger,
                backoff=Backoff(rng or random.Random(), backoff_base, backoff_cap),
                auth_pause=auth_pause,
                auth_cap=auth_pause_cap,
            ),
            failed=self._failed,
        )
        self._lanes = self._scheduler.lanes
        for name, target in targets.items():
            self._lanes[name] = self._scheduler.lane(name, target, infos[name])
        self._running = False
        self._load(self._lanes)

    # --- public API -------------------------------------------------------------------

    @property
    def target_names(self) -> tuple[str, ...]:
        """The names of the targets in use, in configuration order."""
        return tuple(self._lanes)

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
        self._stopped = loop.create_future()
        self._running = True
        try:
            self._scheduler.start(loop)
            await self._stopped
        finally:
            self._running = False
            await self._scheduler.stop()
            self._stopped = None

    async def committed(self) -> None:
        """Return once no commit is under way or about to start: the records
        made so far are in the store, or the store could not take them and
        the engine waits ``STORE_RETRY`` seconds (on the clock) to try again
        (``pending()`` still counts them). For tests and benchmarks that
        must not move a ``ManualClock`` while a commit runs in a thread."""
        await self._scheduler.commits.settled()

    def stop(self) -> None:
        """Make ``run()`` return (running applies are cancelled; ``drain`` first
        to let them finish)."""
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    # The timeout runs on the injected clock, which asyncio.timeout cannot follow.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Start no new work and wait up to ``timeout`` seconds (on the clock)
        for running applies. True when none is left running."""
        self._scheduler.drain()
        flights = [f for lane in self._lanes.values() for f in lane.flights()]
        timer: asyncio.Task[None] | None = None
        try:
            while True:
                # Requests still STARTING go out once their group commits.
                flights = [f for lane in self._lanes.values() for f in lane.flights()]
                waits: set[asyncio.Future[None]] = {
                    f.task for f in flights if f.task is not None and not f.task.done()
                }
                waits |= self._scheduler.commits.waits()
                if not waits:
                    return True
                if timer is None:
                    timer = asyncio.get_running_loop().create_task(self._clock.sleep(timeout))
                await asyncio.wait({*waits, timer}, return_when=asyncio.FIRST_COMPLETED)
                if timer.done():
                    flights = [f for lane in self._lanes.values() for f in lane.flights()]
                    return not any(f.task is None or not f.task.done() for f in flights)
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
        self._scheduler.touch_keys(keys)

    def observe(self, view: LineView) -> None:
        """The newest view of one extension. Re-evaluates the people on it and
        marks the keys whose desired status now differs from the applied one;
        costs O(people on the extension × targets), never a request by itself."""
        keys = self._book.observe(view, self._clock.now())
        if not keys:
            return
        scheduler = self._scheduler
        for key in keys:
            for lane in self._lanes.values():
                if scheduler.touch(lane, key):
                    scheduler.wake(lane)

    def resync(self, views: Iterable[LineView], *, complete: bool = True) -> int:
        """Take a full state: ``views`` replace what is known (with ``complete``,
        an extension missing from them counts as an unknown line and presence).
        Marks every key whose desired status differs from the applied one, or
        whose applied status expires soon. Returns how many keys became dirty;
        a resync that finds nothing to do costs no request."""
        keys = self._book.resync(views, complete, self._clock.now())
        return self._scheduler.touch_keys(keys)

    def reevaluate(self) -> int:
        """Compute every desired status again (time windows in rules) and
        look at every key, refreshes included. Returns how many keys became dirty."""
        return self._scheduler.touch_keys(self._book.reevaluate(self._clock.now()))

    def hold(self, key: str, targets: Iterable[str] | None = None) -> None:
        """An admin paused person ``key`` at ``targets`` (``None``: every
        target): those keys want nothing from us, so the person's own
        status comes back (as when a call ends) and nothing more is sent
        for them, whatever their line does, until ``release``. Replaces an
        earlier hold of the same person; names of no target are ignored."""
        held = None if targets is None else frozenset(targets)
        self._book.hold(key, held)
        self._scheduler.touch_keys([key])

    def release(self, key: str) -> None:
        """End the hold of ``key``: every target shows what the rules say
        again, at once."""
        if self._book.release(key):
            self._scheduler.touch_keys([key])

    def set_rules(self, rules: Decider) -> None:
        """Use new rules (configuration reload) and re-evaluate everyone."""
        self._scheduler.touch_keys(self._book.set_rules(rules, self._clock.now()))

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
                lane.close()
                del self._lanes[name]
                self._ledger.drop(name)
            elif new is not lane.target:
                retired.append(lane.target)
                lane.replace_target(new, infos[name])
        added = [name for name in targets if name not in self._lanes]
        for name in added:
            self._lanes[name] = self._scheduler.lane(name, targets[name], infos[name])
        if added:
            self._load(added)
            self._scheduler.touch_keys(self._book.everyone(), [self._lanes[n] for n in added])
        for lane in self._lanes.values():
            self._scheduler.wake(lane)
        return retired

    def pending(self) -> int:
        """Keys queued, running or waiting for a retry, over all targets (not
        parked keys nor scheduled refreshes), plus records not yet committed
        to the store: 0 once the engine is idle."""
        ledger = self._ledger
        return (
            ledger.staged + ledger.committing + sum(lane.pending() for lane in self._lanes.values())
        )

    def picture(self) -> EnginePicture:
        """A consistent picture of every target and key, for the status page."""
        return draw(self._clock, self._book, self._lanes, self._ledger)

    def line(self, extension: str) -> LineView | None:
        """The newest view of ``extension`` handed to the engine (``observe``,
        ``resync``); ``lines.LineViews`` for the feed's fold and the status page."""
        return self._book.line(extension)

    def line_count(self) -> int:
        """Extensions whose view the engine knows."""
        return self._book.line_count()

    def people(self) -> list[Person]:
        """Everyone the engine may act for: configured people in configuration
        order, then people known only from the store's rows (being cleared)."""
        book = self._book
        configured = book.people
        departed = [p for k, p in book.departed().items() if k not in configured]
        return [*configured.values(), *departed]

    def key_pictures(self, keys: Iterable[str]) -> list[KeyPicture]:
        """The keys of the people ``keys`` at this instant (see ``picture``):
        O(len(keys) × targets), for a status page that shows one page."""
        return draw_keys(self._clock, self._book, self._lanes, self._ledger, keys)

    def unsettled(self) -> set[str]:
        """Person keys with a target not in sync (queued, in flight, backing
        off, parked, or waiting for their line); draws no picture."""
        return unsettled(self._book, self._lanes)

    def target_states(self) -> Mapping[str, TargetPicture]:
        """``picture().targets`` without the keys: costs O(targets), not
        O(people × targets), for callers that ask often (readiness)."""
        return draw_targets(self._clock, self._lanes)

    # --- lanes --------------------------------------------------------------------------

    def _load(self, names: Iterable[str]) -> None:
        for row in self._ledger.load(names):
            self._book.add_departed(row.person)

    def _failed(self, exc: BaseException) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_exception(exc)

"""Time, injected: the real clock for the daemon, a manual one for tests.

Everything that waits (backoff, token buckets, liveness timers, schedules that
the engine owns) asks a ``Clock``, so tests advance time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """A source of wall time (for rules and the store) and monotonic time
    (for every wait)."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (0 or less: just yield)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to.

    ``sleep`` parks the caller until ``advance`` (or ``set``) passes its
    deadline; ``advance`` wakes sleepers in deadline order and lets the loop
    run them. Use it from one event loop.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall0 = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._t)

    def monotonic(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut

    @property
    def next_deadline(self) -> float | None:
        """Monotonic time of the earliest pending sleeper, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending: one per task parked on this clock."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose
        deadline falls inside, each at its own deadline. Tasks created just
        before get to register their sleeps first."""
        await _settle()
        target = self._t + seconds
        while True:
            deadline = self.next_deadline
            if deadline is None or deadline > target:
                break
            self._t = max(self._t, deadline)
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._t = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """Let woken tasks run until they park again."""
    for _ in range(rounds):
        await asyncio.sleep(0)

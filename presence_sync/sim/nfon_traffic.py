"""Random telephony for the NFON simulator: calls that ring, get answered or
missed and hang up, and people changing their presence, at about a chosen
number of state changes per second. For demos and benchmarks, not for tests
that assert on exact events (those script calls directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Protocol

__all__ = ["Switchboard", "Traffic"]

_PRESENCES = ("available", "away", "busy", "dnd", "offline")
_PRESENCE_WEIGHTS = (50, 15, 15, 10, 10)
_ANSWER_RATE = 0.8


class Switchboard(Protocol):
    """What traffic needs of a simulator (``NfonSim`` is one). Declared here,
    not imported, because the simulator is the one that starts traffic."""

    def ring(self, extension: str, *, direction: str, party: str, external: bool) -> str: ...
    def answer(self, uuid: str) -> None: ...
    def hangup(self, uuid: str) -> None: ...
    def state_of(self, extension: str) -> dict[str, str]: ...
    def set_state(
        self, extension: str, line: str | None = None, presence: str | None = None
    ) -> None: ...
    def pick_any(self, rng: random.Random) -> str | None: ...
    def pick_idle(self, rng: random.Random, exclude: str | None = None) -> str | None: ...


class Traffic:
    """Drives one simulator until ``stop``. Must be created and used on the
    simulator's event loop."""

    def __init__(
        self, sim: Switchboard, rate: float, *, mean_call_seconds: float, rng: random.Random
    ) -> None:
        if rate <= 0:
            raise ValueError("traffic rate must be positive")
        if mean_call_seconds <= 0:
            raise ValueError("mean_call_seconds must be positive")
        self.sim = sim
        self.rate = rate
        self.mean_call_seconds = mean_call_seconds
        self.rng = rng
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="nfon-sim-traffic")

    def stop(self) -> None:
        """Stop making traffic and hang up the calls it started, so every line
        it touched is idle again."""
        self._task.cancel()
        for handle in self._timers.values():
            handle.cancel()
        open_calls = list(self._timers)
        self._timers.clear()
        for uuid in open_calls:
            with contextlib.suppress(KeyError):
                self.sim.hangup(uuid)

    async def _run(self) -> None:
        # A budget of state changes refills at ``rate`` per second; each
        # action spends what it will cause over its lifetime. Ticks no finer
        # than 5 ms keep high rates cheap (many actions per wake-up).
        tick = min(0.05, max(0.005, 1.0 / self.rate))
        budget = 0.0
        last = self._loop.time()
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            budget = min(budget + (now - last) * self.rate, self.rate + 1.0)
            last = now
            while budget >= 1.0:
                budget -= self._step()

    def _step(self) -> float:
        rng = self.rng
        if rng.random() < 0.3:
            return self._presence_change()
        first = self.sim.pick_idle(rng)
        if first is None:
            return self._presence_change()
        kind = rng.random()
        if kind < 0.25:
            second = self.sim.pick_idle(rng, exclude=first)
            if second is None:
                return self._presence_change()
            direction, party, external = "outbound", second, False
        else:
            direction = "inbound" if kind < 0.75 else "outbound"
            party, external = self._external_number(), True
        uuid = self.sim.ring(first, direction=direction, party=party, external=external)
        answered = rng.random() < _ANSWER_RATE
        ring_time = rng.uniform(0.2, 1.0) * min(3.0, self.mean_call_seconds)
        finish = self._answer if answered else self._hangup
        self._timers[uuid] = self._loop.call_later(ring_time, finish, uuid)
        # An inbound leg goes ringing → in-use → idle (a missed one skips
        # in-use); an outbound leg goes straight to in-use, then idle.
        inbound = 3.0 if answered else 2.0
        if external:
            return inbound if direction == "inbound" else 2.0
        return 2.0 + inbound

    def _presence_change(self) -> float:
        number = self.sim.pick_any(self.rng)
        if number is None:
            return 1.0
        current = self.sim.state_of(number)["presence"]
        choice = current
        while choice == current:
            choice = self.rng.choices(_PRESENCES, _PRESENCE_WEIGHTS)[0]
        self.sim.set_state(number, presence=choice)
        return 1.0

    def _external_number(self) -> str:
        return "49" + "".join(str(self.rng.randrange(10)) for _ in range(10))

    def _answer(self, uuid: str) -> None:
        try:
            self.sim.answer(uuid)
        except (KeyError, ValueError):
            # Hung up or answered by a script meanwhile: not ours to finish.
            self._timers.pop(uuid, None)
            return
        talk = self.rng.expovariate(1.0 / self.mean_call_seconds)
        self._timers[uuid] = self._loop.call_later(talk, self._hangup, uuid)

    def _hangup(self, uuid: str) -> None:
        self._timers.pop(uuid, None)
        with contextlib.suppress(KeyError):
            self.sim.hangup(uuid)

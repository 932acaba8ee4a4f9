"""An NFON outage played against the real stream client, on an injected clock.

The NFON simulator serves over real loopback sockets; the client's waits
(backoff, liveness, bootstrap) run on a ``ManualClock``. ``recovery`` starts
both streams, takes NFON away (logins answer 500, streams 503, every token
expires, open streams drop), lets ``outage`` seconds of clock time pass in
jumps from one pending wait to the next (each attempt a real request that
fails), brings NFON back and jumps on until both streams are back: a new
full state on the states stream, a new ``Connected`` on the calls stream.
It returns how long after the outage's end each came back, in clock
seconds. Nothing here depends on how fast the machine is; what varies from
run to run is the jitter, drawn from ``random.Random(seed)``.

Used by tests/contract/test_nfon_client.py and benchmarks/nfon_outage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from presence_sync.clock import ManualClock
from presence_sync.nfon import Connected, FullState, NfonClient
from presence_sync.sim.nfon import SimHandle

FOREVER = 1_000_000
PARKED_WITHIN = 10.0  # real seconds for one round of requests to the simulator


@dataclass(frozen=True)
class Recovery:
    """Clock seconds from the end of the outage until each stream was back."""

    states: float
    calls: float

    @property
    def both(self) -> float:
        return max(self.states, self.calls)


async def _until(check: Callable[[], bool], what: str) -> None:
    """Let the loop run (real requests to the simulator) until ``check`` holds."""
    deadline = time.monotonic() + PARKED_WITHIN
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def recovery(
    sim: SimHandle, seed: int, *, outage: float = 30.0, **client_options: Any
) -> Recovery:
    """One outage of ``outage`` clock seconds (see the module docstring).
    ``client_options`` go to ``NfonClient`` (``wake_streams``,
    ``states_max_delay``, ...). ``sim`` should send no keep-alives: they
    would move real, not clock, time."""
    clock = ManualClock()
    extensions = len(sim.sim.states())
    client = NfonClient(
        sim.base_url,
        sim.sim.customer,
        sim.sim.username,
        sim.sim.password,
        clock=clock,
        rng=random.Random(seed),
        **client_options,
    )
    seen: dict[str, list[float]] = {"states": [], "calls": []}

    async def follow(name: str, stream: AsyncGenerator[Any], kind: type[Any]) -> None:
        async for item in stream:
            if isinstance(item, kind):
                seen[name].append(clock.monotonic())

    states = client.states(expected=extensions)
    calls = client.calls()
    tasks = [
        asyncio.create_task(follow("states", states, FullState)),
        asyncio.create_task(follow("calls", calls, Connected)),
    ]

    # Each stream, connected or backing off, parks on exactly one clock wait.
    def parked() -> bool:
        return clock.sleepers >= 2

    try:
        await _until(lambda: bool(seen["states"] and seen["calls"]) and parked(), "both streams")
        sim.sim.fail_next("/login", 500, count=FOREVER)
        sim.sim.fail_next("/extensions", 503, count=FOREVER)
        sim.sim.expire_tokens(refresh=True)
        sim.sim.drop_streams()
        await _until(lambda: client.states_health.up_since is None, "the states stream to drop")
        await _until(lambda: client.calls_health.up_since is None, "the calls stream to drop")
        await _until(parked, "both streams to back off")
        end = clock.monotonic() + outage
        while (deadline := clock.next_deadline) is not None and deadline < end:
            await clock.advance(deadline - clock.monotonic())
            await _until(parked, "the next attempts")
        await clock.advance(end - clock.monotonic())
        before = {name: len(times) for name, times in seen.items()}
        sim.sim.clear_failures()

        def back() -> bool:
            return all(len(seen[name]) > before[name] for name in seen)

        def waiting() -> bool:
            # Parked, and not in the middle of a bootstrap (which ends by
            # itself once every extension arrived: no clock time needed).
            booting = client.states_health.up_since is not None and not (
                len(seen["states"]) > before["states"]
            )
            return parked() and not booting

        while not back():
            await _until(lambda: back() or waiting(), "the streams to come back or wait")
            if back():
                break
            deadline = clock.next_deadline
            assert deadline is not None, "nothing waits on the clock"
            await clock.advance(deadline - clock.monotonic())
        first = {name: times[before[name]] - end for name, times in seen.items()}
        return Recovery(first["states"], first["calls"])
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await states.aclose()
        await calls.aclose()
        await client.aclose()
        sim.sim.clear_failures()

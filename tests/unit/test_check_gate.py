"""``check``'s gate per service waits as the engine does: on the injected
clock, a ``Retry-After`` for every lookup of that service, the engine's
backoff between failures."""

from __future__ import annotations

import asyncio
import io
import itertools
import random

import pytest

from presence_sync.clock import ManualClock
from presence_sync.engine import MIN_RETRY_AFTER, Backoff
from presence_sync.errors import AuthError, TransientError
from presence_sync.tools import check


def gate(clock: ManualClock, limit: int = 4) -> check._Gate:
    progress = check._Progress(10, io.StringIO())
    backoff = Backoff(random.Random(7), base=0.5, cap=30.0)
    return check._Gate(limit, progress, "Slack", clock=clock, backoff=backoff)


async def test_a_retry_after_holds_every_lookup_of_the_service_on_the_clock() -> None:
    clock = ManualClock()
    slack = gate(clock)
    answered: list[tuple[str, float]] = []
    throttled = {"anna"}

    async def lookup(who: str) -> str:
        if who in throttled:
            throttled.discard(who)
            raise TransientError("429", retry_after=10.0)
        answered.append((who, clock.monotonic()))
        return who

    first = asyncio.ensure_future(slack.run(lambda: lookup("anna")))
    await clock.advance(0)
    second = asyncio.ensure_future(slack.run(lambda: lookup("ben")))
    await clock.advance(9.9)
    assert answered == []
    await clock.advance(0.1)
    assert await first == "anna"
    assert await second == "ben"
    assert sorted(answered) == [("anna", 10.0), ("ben", 10.0)]


async def test_retry_after_zero_still_waits_the_engines_floor() -> None:
    clock = ManualClock()
    slack = gate(clock)
    calls: list[float] = []

    async def lookup() -> str:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            raise TransientError("429", retry_after=0.0)
        return "ok"

    task = asyncio.ensure_future(slack.run(lookup))
    await clock.advance(MIN_RETRY_AFTER)
    assert await task == "ok"
    assert calls == [0.0, MIN_RETRY_AFTER]


async def test_failures_back_off_as_the_engine_does_then_stop_the_gate() -> None:
    clock = ManualClock()
    slack = gate(clock)
    calls: list[float] = []

    async def down() -> str:
        calls.append(clock.monotonic())
        raise TransientError("503")

    task = asyncio.ensure_future(slack.run(down))
    await clock.advance(100.0)
    with pytest.raises(TransientError):
        await task
    assert len(calls) == check.ATTEMPTS
    # The same draws as the engine's Backoff with the same seed.
    expected = Backoff(random.Random(7), base=0.5, cap=30.0)
    waits = [b - a for a, b in itertools.pairwise(calls)]
    assert waits == pytest.approx([expected.delay(n) for n in range(1, check.ATTEMPTS)])
    with pytest.raises(TransientError):
        await slack.run(down)
    assert len(calls) == check.ATTEMPTS


async def test_rejected_credentials_stop_the_gate_at_once() -> None:
    slack = gate(ManualClock())
    tries = 0

    async def refused() -> str:
        nonlocal tries
        tries += 1
        raise AuthError("invalid_auth")

    for _ in range(3):
        with pytest.raises(AuthError):
            await slack.run(refused)
    assert tries == 1

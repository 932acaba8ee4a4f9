"""Fakes shared by the engine tests: a remote side with failure injection, a
target in front of it, a tiny rule set, and helpers to run the engine on a
``ManualClock``."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.model import STATUS_FIELDS, Applied, Line, LineView, Person, Presence, Status
from presence_sync.targets.base import Change, TargetInfo

BUSY = Status(availability="Busy", activity="InACall", text="On a call")
DND = Status(availability="DoNotDisturb", activity="Presenting")


def person(name: str, extension: str) -> Person:
    """A configured person ``<name>@example.com`` on ``extension``."""
    email = f"{name}@example.com"
    return Person(key=email, email=email, extension=extension, name=name.title())


def view(
    extension: str, line: Line = Line.IDLE, presence: Presence = Presence.AVAILABLE
) -> LineView:
    return LineView(extension=extension, line=line, presence=presence)


def in_call(extension: str) -> LineView:
    return view(extension, Line.IN_USE)


def idle(extension: str) -> LineView:
    return view(extension, Line.IDLE)


class CallRules:
    """The default rules in miniature: in use → busy, presence dnd → do not
    disturb, anything else → nothing from us, for every target in ``targets``
    the person has not opted out of."""

    def __init__(self, targets: Iterable[str]) -> None:
        self.targets = tuple(targets)

    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> dict[str, Status | None]:
        if view.line is Line.IN_USE:
            status: Status | None = BUSY
        elif view.presence is Presence.DND:
            status = DND
        else:
            status = None
        return {t: None if t in person.opt_out else status for t in self.targets}


@dataclass
class Request:
    """One call of ``apply`` as the remote side saw it."""

    at: float
    person: str
    desired: Status | None


@dataclass
class Remote:
    """What one remote service shows per person, and how it misbehaves.

    Failures, most specific first: ``fail_for[person]``, then ``fail_next``
    (consumed one per request), then ``failure()`` while it is set. With
    ``gate`` set, every request waits for it before answering (a slow API).
    """

    clock: ManualClock
    shows: dict[str, Status] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail_for: dict[str, Exception] = field(default_factory=dict)
    fail_next: deque[Exception] = field(default_factory=deque)
    failure: Callable[[], Exception] | None = None
    gate: asyncio.Event | None = None
    ttl: float | None = None
    active: set[str] = field(default_factory=set)
    most_active: int = 0
    overlaps: int = 0
    """Requests that arrived while another one for the same person ran."""

    async def apply(self, key: str, desired: Status | None) -> Applied:
        self.requests.append(Request(self.clock.monotonic(), key, desired))
        if key in self.active:
            self.overlaps += 1
        self.active.add(key)
        self.most_active = max(self.most_active, len(self.active))
        try:
            if self.gate is not None:
                await self.gate.wait()
            if key in self.fail_for:
                raise self.fail_for[key]
            if self.fail_next:
                raise self.fail_next.popleft()
            if self.failure is not None:
                raise self.failure()
            if desired is None:
                self.shows.pop(key, None)
            else:
                self.shows[key] = desired
        finally:
            self.active.discard(key)
        now = self.clock.now()
        expires = None
        if self.ttl is not None and desired is not None:
            expires = now + timedelta(seconds=self.ttl)
        return Applied(status=desired, at=now, expires=expires)

    def times(self, key: str | None = None) -> list[float]:
        return [r.at for r in self.requests if key is None or r.person == key]

    def asked(self) -> list[tuple[str, Status | None]]:
        return [(r.person, r.desired) for r in self.requests]


class RemoteTarget:
    """A target in front of a ``Remote``; subclass it through ``target_kind``
    for other limits."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="remote",
        description="test double",
        fields=frozenset(STATUS_FIELDS),
        rate=float("inf"),
        burst=1,
        concurrency=4,
        restores=True,
        refresh_before=60.0,
        timeout=30.0,
    )

    def __init__(self, name: str, remote: Remote) -> None:
        self.name = name
        self.remote = remote
        self.closed = False

    async def apply(self, change: Change) -> Applied:
        return await self.remote.apply(change.person.key, change.desired)

    async def aclose(self) -> None:
        self.closed = True


def target_kind(**info: float | int | str) -> type[RemoteTarget]:
    """A ``RemoteTarget`` class whose ``TargetInfo`` differs by ``info``."""
    changed = dataclasses.replace(RemoteTarget.info, **info)  # type: ignore[arg-type]
    return type("LimitedRemoteTarget", (RemoteTarget,), {"info": changed})


def make_target(name: str, remote: Remote, **info: float | int | str) -> RemoteTarget:
    cls = target_kind(**info) if info else RemoteTarget
    return cls(name, remote)


class MaxJitter(random.Random):
    """Jitter that always picks the top of the range, so backoff is exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[asyncio.Task[None]]:
    """``engine.run()`` in a task for the block; stopped (and awaited) after."""
    task = asyncio.get_running_loop().create_task(engine.run())
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        engine.stop()
        if not task.done():
            await task
        elif not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def settle(rounds: int = 50, engine: Engine | None = None) -> None:
    """Let every runnable task run until all wait for something (the clock).
    With ``engine``, also wait for each of its commits to the store (a
    ``SqliteStore`` commits in a thread, which loop turns do not measure)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
        if engine is not None:
            await engine.committed()


async def until(condition: Callable[[], bool], rounds: int = 500) -> None:
    """Yield to the loop until ``condition()`` holds; fails after ``rounds`` turns.
    Time does not move: only work that needs no clock can make it true."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def run_until_idle(engine: Engine, clock: ManualClock, limit: float = 7200.0) -> None:
    """Advance the clock until the engine has nothing queued, running or
    backing off (at most ``limit`` seconds)."""
    await settle(engine=engine)
    spent = 0.0
    while engine.pending() and spent < limit:
        deadline = clock.next_deadline
        step = 1.0 if deadline is None else max(0.001, deadline - clock.monotonic())
        await clock.advance(step)
        await settle(engine=engine)
        spent += step
    assert not engine.pending(), f"engine still busy after {limit} s"


def shows(remotes: Mapping[str, Remote]) -> dict[str, dict[str, Status]]:
    return {name: dict(remote.shows) for name, remote in remotes.items()}


async def tick(clock: ManualClock, seconds: float) -> None:
    """Let started work reach its first wait, then move time by ``seconds``:
    what a real clock does while the loop runs."""
    await settle()
    await clock.advance(seconds)

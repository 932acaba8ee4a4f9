"""Any sequence of line events, target failures, clock jumps, people leaving
and coming back, resyncs and daemon restarts converges: once the failures stop
and the engine is idle, every remote side shows exactly what the rules want
(nothing of ours where they want nothing), the store agrees with the remote
side, and a resync sends nothing.

The only exception is by design: a key parked by a ``PermanentError`` keeps
its last confirmed status until what we want for it changes (or the daemon
restarts), and the remote side must then still show what the store says.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from engine_helpers import (
    CallRules,
    Remote,
    make_target,
    person,
    run_until_idle,
    settle,
    tick,
    view,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Line, LineView, Person, Presence, Status
from presence_sync.store import MemoryStore

T = TypeVar("T")

PEOPLE = [person(name, ext) for name, ext in (("anna", "100"), ("bob", "101"), ("carl", "102"))]
EXTENSIONS = ["100", "101", "102", "199"]
TARGETS = ("fast", "slow")
FAILURES: dict[str, Callable[[], Exception]] = {
    "transient": lambda: TransientError("503 Service Unavailable", status=503),
    "retry-after": lambda: TransientError("429 Too Many Requests", retry_after=20, status=429),
    "auth": lambda: AuthError("401 token revoked"),
}


class LostReply(Remote):
    """A remote side that may carry out a change and then lose the answer
    (a timeout after the server did the work)."""

    lose_replies: bool = False

    async def apply(self, key: str, desired: Status | None) -> Any:
        applied = await super().apply(key, desired)
        if self.lose_replies:
            raise TransientError("read timeout")
        return applied


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.store = MemoryStore(clock=self.clock)
        self.remotes = {
            "fast": LostReply(self.clock),
            "slow": LostReply(self.clock, ttl=600.0),
        }
        self.views: dict[str, LineView] = {ext: view(ext) for ext in EXTENSIONS}
        self.active: dict[str, Person] = {p.key: p for p in PEOPLE}
        self.seed = 0
        self.task: asyncio.Task[None] | None = None
        self.engine = self._start()

    # --- plumbing ----------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _start(self) -> Engine:
        self.seed += 1
        targets = {
            "fast": make_target("fast", self.remotes["fast"], concurrency=4),
            "slow": make_target(
                "slow",
                self.remotes["slow"],
                rate=2.0,
                burst=1,
                concurrency=1,
                refresh_before=60.0,
                timeout=10.0,
            ),
        }
        engine = Engine(
            targets=targets,
            store=self.store,
            rules=CallRules(TARGETS),
            clock=self.clock,
            rng=random.Random(self.seed),
            backoff_base=1.0,
            backoff_cap=120.0,
        )
        engine.set_people(self.active.values())
        engine.resync(self.views.values())
        self.task = self.loop.create_task(engine.run())
        self.run(settle())
        return engine

    def _stop(self, *, drain: bool) -> None:
        assert self.task is not None
        if drain:
            self.run(self.engine.drain(5.0))
            self.engine.stop()
        else:
            self.task.cancel()  # a crash, as far as the store can tell
        self.run(asyncio.wait([self.task]))
        if not self.task.cancelled() and self.task.exception() is not None:
            raise self.task.exception()  # type: ignore[misc]
        self.task = None

    # --- rules -------------------------------------------------------------------------

    @rule(
        extension=st.sampled_from(EXTENSIONS),
        line=st.sampled_from(list(Line)),
        presence=st.sampled_from(list(Presence)),
    )
    def line_event(self, extension: str, line: Line, presence: Presence) -> None:
        self.views[extension] = view(extension, line, presence)
        self.engine.observe(self.views[extension])
        self.run(settle())

    @rule(extension=st.sampled_from(EXTENSIONS))
    def call_starts(self, extension: str) -> None:
        self.line_event(extension, Line.IN_USE, self.views[extension].presence)

    @rule(extension=st.sampled_from(EXTENSIONS))
    def call_ends(self, extension: str) -> None:
        self.line_event(extension, Line.IDLE, self.views[extension].presence)

    @rule(extension=st.sampled_from(EXTENSIONS), dnd=st.booleans())
    def do_not_disturb(self, extension: str, dnd: bool) -> None:
        presence = Presence.DND if dnd else Presence.AVAILABLE
        self.line_event(extension, self.views[extension].line, presence)

    @rule(service=st.sampled_from(TARGETS), failure=st.sampled_from([None, *FAILURES]))
    def target_fails(self, service: str, failure: str | None) -> None:
        self.remotes[service].failure = None if failure is None else FAILURES[failure]

    @rule(service=st.sampled_from(TARGETS), lose=st.booleans())
    def replies_get_lost(self, service: str, lose: bool) -> None:
        self.remotes[service].lose_replies = lose

    @rule(service=st.sampled_from(TARGETS), who=st.sampled_from(PEOPLE))
    def account_broken(self, service: str, who: Person) -> None:
        self.remotes[service].fail_for[who.key] = PermanentError("404 no such user", status=404)

    @rule(service=st.sampled_from(TARGETS))
    def account_fixed(self, service: str) -> None:
        self.remotes[service].fail_for.clear()

    @rule(seconds=st.sampled_from([0.2, 1.0, 3.0, 25.0, 301.0, 700.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(tick(self.clock, seconds))

    @rule(who=st.sampled_from(PEOPLE))
    def person_leaves_or_returns(self, who: Person) -> None:
        if who.key in self.active:
            del self.active[who.key]
        else:
            self.active[who.key] = who
        self.engine.set_people(self.active.values())
        self.run(settle())

    @rule()
    def resync(self) -> None:
        self.engine.resync(self.views.values())
        self.run(settle())

    @rule()
    def reevaluate(self) -> None:
        self.engine.reevaluate()
        self.run(settle())

    @rule(drain=st.booleans())
    def daemon_restarts(self, drain: bool) -> None:
        self._stop(drain=drain)
        self.engine = self._start()

    @precondition(lambda self: self.task is not None)
    @rule()
    def quiet_then_check(self) -> None:
        self._converge_and_check()

    # --- the property ----------------------------------------------------------------

    def _wanted(self, target: str, who: Person) -> Status | None:
        if who.key not in self.active:
            return None
        rules = CallRules(TARGETS)
        return rules.evaluate(who, self.views[who.extension], self.clock.now())[target]

    def _converge_and_check(self) -> None:
        for remote in self.remotes.values():
            remote.failure = None
            remote.lose_replies = False
            remote.fail_for.clear()
        self.run(run_until_idle(self.engine, self.clock))

        parked = {(k.target, k.person) for k in self.engine.picture().keys if k.state == "parked"}
        rows = {(r.target, r.person.key): r for r in self.store.load_applied()}
        for target, remote in self.remotes.items():
            for who in PEOPLE:
                key = (target, who.key)
                shown = remote.shows.get(who.key)
                row = rows.get(key)
                if key in parked:
                    # Parked after a request with an unknown outcome, the store
                    # may only hold the worse case; otherwise it is exact.
                    if row is None or not row.uncertain:
                        assert (row and row.applied.status) == shown, key
                    continue
                assert row is None or not row.uncertain, key
                assert (row and row.applied.status) == shown, key
                assert shown == self._wanted(target, who), key

        sent = sum(len(r.requests) for r in self.remotes.values())
        assert self.engine.resync(self.views.values()) == 0
        self.run(tick(self.clock, 1.0))
        assert sum(len(r.requests) for r in self.remotes.values()) == sent

    def teardown(self) -> None:
        try:
            if self.task is not None:
                self._converge_and_check()
                self._stop(drain=True)
            # A restart forgets parked keys: now everything must be as wanted.
            self.engine = self._start()
            self._converge_and_check()
            for target, remote in self.remotes.items():
                for who in PEOPLE:
                    assert remote.shows.get(who.key) == self._wanted(target, who)
            self._stop(drain=True)
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


EngineMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase

"""The reconciler against fake remotes on a manual clock: what reaches each
remote side, when, and what the store remembers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from engine_helpers import (
    BUSY,
    DND,
    CallRules,
    MaxJitter,
    Remote,
    idle,
    in_call,
    make_target,
    person,
    run_until_idle,
    running,
    settle,
    tick,
    until,
    view,
)
from polling import eventually_async
from prometheus_client import REGISTRY

from presence_sync.clock import ManualClock
from presence_sync.engine import STORE_RETRY, Engine, check_target
from presence_sync.errors import AuthError, PermanentError, StoreError, TransientError
from presence_sync.model import (
    STATUS_FIELDS,
    Applied,
    Call,
    Direction,
    Line,
    LineView,
    Person,
    Presence,
    Status,
    describe,
)
from presence_sync.rules import compile_rules
from presence_sync.store import AppliedWrite, MemoryStore, SqliteStore, Store
from presence_sync.targets.base import Target, TargetEnv, TargetInfo
from presence_sync.targets.log import LogOptions, LogTarget

ANNA = person("anna", "100")
BOB = person("bob", "101")
CARL = person("carl", "102")
DORA = person("dora", "103")
PEOPLE = [ANNA, BOB, CARL, DORA]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def engine_for(
    clock: ManualClock,
    store: Store,
    targets: Mapping[str, Target],
    people: list[Person] = PEOPLE,
    **kwargs: object,
) -> Engine:
    engine = Engine(
        targets=targets,
        store=store,
        rules=CallRules(targets),
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )
    engine.set_people(people)
    engine.resync([idle(p.extension) for p in people])
    return engine


def stored(store: Store) -> dict[tuple[str, str], Status | None]:
    return {(row.target, row.person.key): row.applied.status for row in store.load_applied()}


# --- level-triggered ------------------------------------------------------------------


async def test_a_call_that_ends_while_its_key_waits_costs_no_request(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, rate=1.0, burst=1)})
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: ANNA.key in remote.shows)
        engine.observe(in_call("101"))  # the bucket is empty: Bob waits
        await tick(clock, 0.5)
        engine.observe(idle("101"))  # Bob hangs up before his turn
        await tick(clock, 10)

    assert remote.asked() == [(ANNA.key, BUSY)]
    assert remote.shows == {ANNA.key: BUSY}
    assert engine.stats["teams"].noops == 1


async def test_the_newest_view_wins_over_queued_history(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, rate=1.0, burst=1)})
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: len(remote.requests) == 1)
        for line in (Line.IN_USE, Line.IDLE, Line.RINGING, Line.IN_USE, Line.IDLE):
            engine.observe(view("101", line))
        engine.observe(view("101", Line.IDLE, Presence.DND))
        await tick(clock, 10)

    assert remote.asked() == [(ANNA.key, BUSY), (BOB.key, DND)]


async def test_a_key_changed_while_in_flight_is_looked_at_again(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: len(remote.requests) == 1)
        engine.observe(idle("100"))
        engine.observe(in_call("100"))
        engine.observe(idle("100"))
        await settle()
        assert len(remote.requests) == 1  # one worker per key
        assert remote.gate is not None
        remote.gate.set()
        await run_until_idle(engine, clock)

    assert remote.asked() == [(ANNA.key, BUSY), (ANNA.key, None)]
    assert remote.overlaps == 0
    assert remote.shows == {}
    assert stored(store) == {}


async def test_concurrency_per_target_is_bounded(clock: ManualClock, store: MemoryStore) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, concurrency=2)})
    async with running(engine):
        for p in PEOPLE:
            engine.observe(in_call(p.extension))
        await settle()
        assert len(remote.requests) == 2
        assert engine.picture().targets["teams"].in_flight == 2
        assert engine.picture().targets["teams"].dirty == 2
        assert remote.gate is not None
        remote.gate.set()
        await run_until_idle(engine, clock)

    assert remote.most_active == 2
    assert remote.shows == {p.key: BUSY for p in PEOPLE}


# --- failures ------------------------------------------------------------------------


async def test_a_failing_target_backs_off_exponentially_then_recovers(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    remote.fail_next.extend(TransientError("503 Service Unavailable", status=503) for _ in range(4))
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    async with running(engine):
        engine.observe(in_call("100"))
        await tick(clock, 100)
        assert remote.times() == [0, 1, 3, 7, 15]  # waits of 1, 2, 4, 8 s
        assert remote.shows == {ANNA.key: BUSY}
        assert stored(store) == {("teams", ANNA.key): BUSY}

        await tick(clock, 3600)
        assert len(remote.requests) == 5  # converged: nothing more to send

        # Success reset the backoff: the next failure waits 1 s again, not 16.
        remote.fail_next.append(TransientError("502 Bad Gateway", status=502))
        engine.observe(idle("100"))
        await tick(clock, 100)
    assert remote.times()[5:] == [3700, 3701]
    assert remote.shows == {}
    assert engine.stats["teams"].transient == 5


class ScriptedJitter(random.Random):
    """Jitter that returns a scripted fraction of the range it is asked for,
    and remembers every range."""

    def __init__(self, fractions: list[float]) -> None:
        super().__init__(0)
        self.fractions = itertools.cycle(fractions)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a + (b - a) * next(self.fractions)


async def test_backoff_draws_full_jitter_under_a_doubling_capped_ceiling(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    remote.fail_next.extend(TransientError("timeout") for _ in range(8))
    rng = ScriptedJitter([0.5, 0.0, 1.0, 0.25])
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", remote)},
        rng=rng,
        backoff_base=2.0,
        backoff_cap=60.0,
    )
    async with running(engine):
        engine.observe(in_call("100"))
        await run_until_idle(engine, clock)

    ceilings = [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert rng.ranges == [(0.0, c) for c in ceilings]
    waits = [b - a for a, b in itertools.pairwise(remote.times())]
    fractions = [0.5, 0.0, 1.0, 0.25] * 2
    assert waits == pytest.approx([f * c for f, c in zip(fractions, ceilings, strict=True)])
    assert remote.shows == {ANNA.key: BUSY}


async def test_retry_after_pauses_only_that_target(clock: ManualClock, store: MemoryStore) -> None:
    teams, slack = Remote(clock), Remote(clock)
    teams.fail_next.append(TransientError("429 Too Many Requests", retry_after=30, status=429))
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", teams), "slack": make_target("slack", slack)},
    )
    async with running(engine):
        engine.observe(in_call("100"))
        await settle()
        assert slack.shows == {ANNA.key: BUSY}
        snap = engine.picture().targets["teams"]
        assert snap.pause_reason == "retry-after"
        assert snap.paused_until == clock.now() + timedelta(seconds=30)

        await tick(clock, 5)
        engine.observe(in_call("101"))
        await settle()
        assert slack.shows == {ANNA.key: BUSY, BOB.key: BUSY}  # slack keeps going
        await tick(clock, 24.9)
        assert teams.times() == [0]  # teams waits, for every key

        await tick(clock, 0.2)
    assert teams.asked() == [(ANNA.key, BUSY), (ANNA.key, BUSY), (BOB.key, BUSY)]
    assert teams.times()[1:] == [30, 30]
    assert engine.stats["teams"].throttled == 1


async def test_restores_go_before_new_writes_when_throttled(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, rate=1.0, burst=1)})
    async with running(engine):
        engine.observe(in_call("100"))
        engine.observe(in_call("101"))
        await tick(clock, 1.5)  # Anna at 0, Bob at 1
        engine.observe(in_call("102"))
        engine.observe(in_call("103"))
        engine.observe(idle("100"))
        engine.observe(idle("101"))
        await tick(clock, 10)

    assert remote.asked() == [
        (ANNA.key, BUSY),
        (BOB.key, BUSY),
        (ANNA.key, None),
        (BOB.key, None),
        (CARL.key, BUSY),
        (DORA.key, BUSY),
    ]
    assert remote.times() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("queue", ["writes", "restores"])
@pytest.mark.parametrize(
    ("refusal", "pause"),
    [
        (TransientError("429 Too Many Requests", retry_after=30, status=429), 30.0),
        (AuthError("401 invalid client secret"), 300.0),
    ],
    ids=["retry-after", "auth"],
)
async def test_a_throttled_key_is_the_first_request_after_the_pause(
    clock: ManualClock, store: MemoryStore, queue: str, refusal: Exception, pause: float
) -> None:
    """Anna was first in line and was refused; Bob and Carl queued behind her
    must not overtake her when the pause ends."""
    remote = Remote(clock)
    first = [in_call("100"), in_call("101"), in_call("102")]
    then = [idle("100"), idle("101"), idle("102")]
    if queue == "writes":
        first, then = [idle("100"), idle("101"), idle("102")], first
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, concurrency=1)})
    engine.resync([*first, idle("103")])
    async with running(engine):
        await run_until_idle(engine, clock)
        before = len(remote.requests)
        remote.fail_next.append(refusal)
        for event in then:
            engine.observe(event)
        await tick(clock, pause - 0.1)
        assert [who for who, _ in remote.asked()[before:]] == [ANNA.key]  # all wait
        await tick(clock, 0.1)
        await run_until_idle(engine, clock)

    wanted = BUSY if queue == "writes" else None
    assert remote.asked()[before:] == [
        (ANNA.key, wanted),
        (ANNA.key, wanted),
        (BOB.key, wanted),
        (CARL.key, wanted),
    ]
    assert remote.times()[before + 1] == remote.times()[before] + pause


async def test_a_slow_target_does_not_delay_another(clock: ManualClock, store: MemoryStore) -> None:
    slow, fast = Remote(clock, gate=asyncio.Event()), Remote(clock)
    engine = engine_for(
        clock,
        store,
        {"slow": make_target("slow", slow, concurrency=1), "fast": make_target("fast", fast)},
    )
    async with running(engine):
        for p in PEOPLE:
            engine.observe(in_call(p.extension))
        await settle()
        assert fast.shows == {p.key: BUSY for p in PEOPLE}
        assert slow.shows == {}
        assert len(slow.requests) == 1
        assert slow.gate is not None
        slow.gate.set()
        await run_until_idle(engine, clock)

    assert slow.shows == {p.key: BUSY for p in PEOPLE}


async def test_an_apply_that_hangs_times_out_and_is_retried(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(
        clock, store, {"teams": make_target("teams", remote, timeout=10.0)}, rng=MaxJitter()
    )
    async with running(engine):
        engine.observe(in_call("100"))
        await tick(clock, 9.9)
        assert engine.stats["teams"].timeouts == 0
        await tick(clock, 0.2)
        assert engine.stats["teams"].timeouts == 1
        assert engine.picture().targets["teams"].backoff == 1
        await tick(clock, 1.0)  # retried after 1 s
        assert remote.gate is not None
        remote.gate.set()
        await settle()

    assert remote.times() == [0, 11]
    assert remote.shows == {ANNA.key: BUSY}
    assert stored(store) == {("teams", ANNA.key): BUSY}


async def test_a_permanent_error_parks_the_key_until_its_desired_status_changes(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Remote(clock)
    remote.fail_for[ANNA.key] = PermanentError("404 user not found", status=404)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    with caplog.at_level(logging.INFO, logger="presence_sync.engine"):
        async with running(engine):
            engine.observe(in_call("100"))
            await tick(clock, 3600)
            assert engine.resync([in_call("100")], complete=False) == 0
            engine.reevaluate()
            await tick(clock, 3600)
            assert remote.times() == [0]
            key = next(k for k in engine.picture().keys if k.person == ANNA.key)
            assert key.state == "parked"
            assert key.last_error == "404 user not found"

            engine.observe(view("100", Line.IDLE, Presence.DND))  # wanted: something else
            await settle()
            assert remote.asked() == [(ANNA.key, BUSY), (ANNA.key, DND)]

            del remote.fail_for[ANNA.key]  # the admin fixed the account
            engine.observe(in_call("100"))
            await settle()

    assert remote.shows == {ANNA.key: BUSY}
    parked_lines = [r for r in caplog.records if "parked" in r.getMessage()]
    assert len(parked_lines) == 2  # once per parking, not per resync
    assert all(r.levelno == logging.ERROR for r in parked_lines)
    assert "404 user not found" in parked_lines[0].getMessage()


async def test_rejected_credentials_pause_the_target_and_probe_with_one_request(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    teams, slack = Remote(clock), Remote(clock)
    teams.failure = lambda: AuthError("401 invalid client secret")
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", teams), "slack": make_target("slack", slack)},
    )
    with caplog.at_level(logging.INFO, logger="presence_sync.engine"):
        async with running(engine):
            for p in PEOPLE:
                engine.observe(in_call(p.extension))
            await settle()
            first_batch = len(teams.requests)  # up to the concurrency, all rejected
            assert engine.picture().targets["teams"].pause_reason == "auth"
            assert engine.target_states() == engine.picture().targets
            assert engine.target_states()["slack"].pause_reason is None
            assert slack.shows == {p.key: BUSY for p in PEOPLE}

            await tick(clock, 299)
            assert len(teams.requests) == first_batch
            await tick(clock, 1)  # 300 s: one probe, rejected again → 600 s
            assert len(teams.requests) == first_batch + 1
            await tick(clock, 599)
            assert len(teams.requests) == first_batch + 1

            teams.failure = None  # the admin renewed the secret
            await tick(clock, 1)
            await run_until_idle(engine, clock)

    assert teams.shows == {p.key: BUSY for p in PEOPLE}
    assert teams.times()[first_batch : first_batch + 2] == [300, 900]
    loud = [r for r in caplog.records if "CREDENTIALS REJECTED" in r.getMessage()]
    assert len(loud) == 1
    assert loud[0].levelno == logging.ERROR
    recovered = [r for r in caplog.records if "accepts our credentials again" in r.getMessage()]
    assert len(recovered) == 1


async def test_an_unexpected_target_error_is_retried_and_logged_with_its_traceback(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Remote(clock)
    remote.fail_next.append(KeyError("bug in a target"))
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    with caplog.at_level(logging.WARNING, logger="presence_sync.engine"):
        async with running(engine):
            engine.observe(in_call("100"))
            await tick(clock, 5)

    assert remote.times() == [0, 1]
    assert remote.shows == {ANNA.key: BUSY}
    failing = [r for r in caplog.records if "target failing" in r.getMessage()]
    assert len(failing) == 1
    assert failing[0].exc_info is not None


async def test_a_target_failure_is_one_warning_with_its_status_and_cause_per_episode(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A target named like its kind used to read "webhook webhook: receiver
    answered 503" on the status page, and a throttle was an INFO line
    without the HTTP status each time."""
    remote = Remote(clock)
    remote.failure = lambda: TransientError(
        "webhook webhook: receiver answered 503 Service Unavailable", status=503
    )
    engine = engine_for(clock, store, {"webhook": make_target("webhook", remote)}, rng=MaxJitter())
    with caplog.at_level(logging.INFO, logger="presence_sync.engine"):
        async with running(engine):
            for p in PEOPLE:
                engine.observe(in_call(p.extension))
            await tick(clock, 1)
            await tick(clock, 2)
            [key, *_] = engine.key_pictures([ANNA.key])
            assert key.last_error == "receiver answered 503 Service Unavailable"
            assert len(remote.requests) > len(PEOPLE)  # retried, still failing

            remote.failure = lambda: TransientError(
                "webhook webhook: receiver answered 429 Too Many Requests",
                retry_after=10,
                status=429,
            )
            await tick(clock, 4)
            remote.failure = None
            await run_until_idle(engine, clock)

            # Recovered; now a second episode, a throttle from the start.
            remote.fail_next.extend(
                TransientError("webhook: receiver answered 429", retry_after=10, status=429)
                for _ in range(3)
            )
            for p in PEOPLE:
                engine.observe(idle(p.extension))
            await run_until_idle(engine, clock)

    assert remote.shows == {}
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in loud] == [
        "webhook: target failing (HTTP 503), backing off: "
        "receiver answered 503 Service Unavailable",
        "webhook: asked to wait 10 s (HTTP 429): receiver answered 429",
    ]
    assert [r.__dict__["ctx"]["status"] for r in loud] == [503, 429]
    assert [r.getMessage() for r in caplog.records].count("target recovered") == 2


# --- nothing to do costs nothing ----------------------------------------------------


async def test_resync_with_nothing_changed_sends_nothing(
    clock: ManualClock, store: MemoryStore
) -> None:
    teams, slack = Remote(clock), Remote(clock)
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", teams), "slack": make_target("slack", slack)},
    )
    views = [in_call("100"), view("101", Line.IDLE, Presence.DND), idle("102"), idle("103")]
    async with running(engine):
        assert engine.resync(views) == 4
        await run_until_idle(engine, clock)
        sent = len(teams.requests) + len(slack.requests)
        assert sent == 4

        assert engine.resync(views) == 0
        assert engine.reevaluate() == 0
        await tick(clock, 600)
    assert len(teams.requests) + len(slack.requests) == sent
    assert engine.stats["teams"].noops == 0


async def test_people_wait_for_their_first_line_state(
    clock: ManualClock, store: MemoryStore
) -> None:
    """Before the first full state from NFON nobody is cleared: the store says
    Anna is on a call, and that stays until NFON says otherwise."""
    remote = Remote(clock, shows={ANNA.key: BUSY})
    store.put_applied("teams", ANNA, Applied(status=BUSY, at=clock.now()))
    engine = Engine(
        targets={"teams": make_target("teams", remote)},
        store=store,
        rules=CallRules(["teams"]),
        clock=clock,
    )
    engine.set_people(PEOPLE)
    async with running(engine):
        await tick(clock, 60)
        assert remote.requests == []
        assert engine.resync([in_call("100")], complete=False) == 0
        await tick(clock, 60)
        assert remote.requests == []
        assert engine.resync([idle("101")]) == 1  # complete: Anna's line is unknown now
        await run_until_idle(engine, clock)
    assert remote.asked() == [(ANNA.key, None)]


# --- people come and go ---------------------------------------------------------------


async def test_a_person_removed_from_the_configuration_is_cleared(
    clock: ManualClock, store: MemoryStore
) -> None:
    teams, slack = Remote(clock), Remote(clock)
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", teams), "slack": make_target("slack", slack)},
    )
    async with running(engine):
        engine.observe(in_call("100"))
        engine.observe(in_call("101"))
        await run_until_idle(engine, clock)
        engine.set_people([BOB, CARL, DORA])
        await run_until_idle(engine, clock)
        engine.observe(in_call("100"))  # Anna's old extension: nobody's now
        await run_until_idle(engine, clock)

    assert teams.shows == slack.shows == {BOB.key: BUSY}
    assert stored(store) == {("teams", BOB.key): BUSY, ("slack", BOB.key): BUSY}
    assert all(k.person != ANNA.key for k in engine.picture().keys)


async def test_a_person_who_left_while_the_daemon_was_down_is_cleared_at_start(
    clock: ManualClock, store: MemoryStore
) -> None:
    zoe = person("zoe", "199")
    remote = Remote(clock, shows={zoe.key: BUSY})
    store.put_applied("teams", zoe, Applied(status=BUSY, at=clock.now()))
    engine = Engine(
        targets={"teams": make_target("teams", remote)},
        store=store,
        rules=CallRules(["teams"]),
        clock=clock,
    )
    engine.set_people(PEOPLE)  # no line state needed to clear someone who left
    async with running(engine):
        await run_until_idle(engine, clock)
    assert remote.asked() == [(zoe.key, None)]
    assert stored(store) == {}


async def test_an_opt_out_clears_that_target_only(clock: ManualClock, store: MemoryStore) -> None:
    teams, slack = Remote(clock), Remote(clock)
    engine = engine_for(
        clock,
        store,
        {"teams": make_target("teams", teams), "slack": make_target("slack", slack)},
    )
    async with running(engine):
        engine.observe(in_call("100"))
        await run_until_idle(engine, clock)
        anna_no_slack = Person(
            key=ANNA.key, email=ANNA.email, extension="100", opt_out=frozenset({"slack"})
        )
        engine.set_people([anna_no_slack, BOB, CARL, DORA])
        await run_until_idle(engine, clock)
    assert teams.shows == {ANNA.key: BUSY}
    assert slack.shows == {}


# --- refresh --------------------------------------------------------------------------


async def test_an_expiring_status_is_refreshed_before_it_lapses(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Remote(clock, ttl=900.0)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, refresh_before=60.0)})
    caplog.set_level(logging.INFO, logger="presence_sync.engine")
    async with running(engine):
        engine.observe(in_call("100"))
        await tick(clock, 839)
        assert remote.times() == [0]
        await tick(clock, 1)
        assert remote.times() == [0, 840]
        await tick(clock, 840)
        assert remote.times() == [0, 840, 1680]
        assert stored(store)[("teams", ANNA.key)] == BUSY

        engine.observe(idle("100"))
        await tick(clock, 3600)
    assert remote.asked()[-1] == (ANNA.key, None)
    assert remote.times() == [0, 840, 1680, 1680]
    # Two changes, two lines: the refreshes change nothing anyone sees.
    changes = [(r.ctx["old"], r.ctx["new"]) for r in caplog.records if r.levelno == logging.INFO]
    assert changes == [
        ("own status", 'Busy/InACall "On a call"'),
        ('Busy/InACall "On a call"', "own status"),
    ]


async def test_a_resync_after_a_long_stop_refreshes_a_lapsed_status(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock, ttl=900.0, shows={ANNA.key: BUSY})
    store.put_applied(
        "teams",
        ANNA,
        Applied(status=BUSY, at=clock.now(), expires=clock.now() + timedelta(seconds=900)),
    )
    await tick(clock, 3600)
    engine = Engine(
        targets={"teams": make_target("teams", remote)},
        store=store,
        rules=CallRules(["teams"]),
        clock=clock,
    )
    engine.set_people([ANNA])
    assert engine.resync([in_call("100")]) == 1
    async with running(engine):
        await run_until_idle(engine, clock)
    assert remote.asked() == [(ANNA.key, BUSY)]


async def test_a_status_that_expires_too_soon_is_refreshed_at_half_life(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock, ttl=30.0)  # shorter than refresh_before
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        await tick(clock, 100)
    assert remote.times() == [0, 15, 30, 45, 60, 75, 90]


# --- drain, cancel, restart -----------------------------------------------------------


async def test_drain_waits_for_applies_in_flight(clock: ManualClock, store: MemoryStore) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, concurrency=1)})
    async with running(engine):
        engine.observe(in_call("100"))
        engine.observe(in_call("101"))
        await settle()
        drain = asyncio.get_running_loop().create_task(engine.drain(30))
        await tick(clock, 5)
        assert not drain.done()
        assert remote.gate is not None
        remote.gate.set()
        assert await drain is True
        await tick(clock, 5)

    assert remote.asked() == [(ANNA.key, BUSY)]  # Bob was not started while draining
    assert stored(store) == {("teams", ANNA.key): BUSY}


async def test_drain_gives_up_after_its_timeout(clock: ManualClock, store: MemoryStore) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote, timeout=0.0)})
    async with running(engine):
        engine.observe(in_call("100"))
        await settle()
        drain = asyncio.get_running_loop().create_task(engine.drain(10))
        await tick(clock, 9.9)
        assert not drain.done()
        await tick(clock, 0.1)
        assert await drain is False
    # Stopping cancelled the apply: the remote side may or may not show it now.
    [row] = store.load_applied()
    assert row.applied.status == BUSY
    assert row.uncertain
    assert row.applied.data == {}


@pytest.mark.parametrize("still_in_call", [True, False])
async def test_an_apply_cancelled_at_shutdown_is_redone_after_a_restart(
    clock: ManualClock, store: MemoryStore, still_in_call: bool
) -> None:
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    task = asyncio.get_running_loop().create_task(engine.run())
    await settle()
    engine.observe(in_call("100"))
    await settle()
    assert remote.active == {ANNA.key}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert remote.active == set()
    assert engine.pending() == 1  # still dirty, for whoever runs it next
    # Whether the remote side got it is unknown, so the store says so.
    assert [(row.uncertain, row.applied.data) for row in store.load_applied()] == [(True, {})]

    remote.gate = None
    later = engine_for(clock, store, {"teams": make_target("teams", remote)})
    later.resync([in_call("100") if still_in_call else idle("100")])
    async with running(later):
        await run_until_idle(later, clock)
    # Asked again even when what we want equals what the store says.
    assert remote.asked()[1:] == [(ANNA.key, BUSY if still_in_call else None)]
    assert remote.requests[-1].desired == (BUSY if still_in_call else None)
    assert [row.applied.data for row in store.load_applied()] == ([{}] if still_in_call else [])


async def test_a_lost_reply_is_not_mistaken_for_nothing_done(
    clock: ManualClock, store: MemoryStore
) -> None:
    """The remote side did the change but the answer never came; the call ends
    before the retry. Anna must not keep "On a call"."""

    class LosesReplies(Remote):
        async def apply(self, key: str, desired: Status | None) -> Applied:
            applied = await super().apply(key, desired)
            if len(self.requests) == 1:
                raise TransientError("read timeout")
            return applied

    remote = LosesReplies(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    async with running(engine):
        engine.observe(in_call("100"))
        await settle()
        engine.observe(idle("100"))  # during the backoff
        await run_until_idle(engine, clock)
    assert remote.asked() == [(ANNA.key, BUSY), (ANNA.key, None)]
    assert remote.shows == {}
    assert stored(store) == {}


async def test_a_status_is_recorded_before_it_is_sent(
    clock: ManualClock, store: MemoryStore
) -> None:
    """SIGKILL can strike while a request is on the wire: the store must
    already know that the remote side may show it, or nobody would ever
    take it away again."""
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: remote.active == {ANNA.key})
        # In flight: nothing confirmed, but the store knows what may be there.
        [row] = store.load_applied()
        assert row.applied.status == BUSY
        assert row.uncertain
        assert row.applied.data == {}
        assert remote.gate is not None
        remote.gate.set()
        await run_until_idle(engine, clock)
    [row] = store.load_applied()
    assert row.applied.status == BUSY
    assert row.applied.data == {}


@pytest.mark.parametrize(
    "refusal",
    [PermanentError("400 bad request"), TransientError("429", retry_after=30.0)],
    ids=["permanent", "retry-after"],
)
async def test_a_refused_request_takes_its_write_ahead_record_back(
    clock: ManualClock, store: MemoryStore, refusal: Exception
) -> None:
    remote = Remote(clock)
    remote.fail_next.append(refusal)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: len(remote.requests) == 1)
        await settle()
        # The remote side refused outright: nothing of ours can be there.
        assert stored(store) == {}


class JournalStore(MemoryStore):
    """A memory store that keeps every ``write_applied`` call (one
    transaction each) and can refuse the next ``refuse`` of them."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.transactions: list[list[AppliedWrite]] = []
        self.refuse = 0

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        # A refusing store is one that cannot write right now: the engine
        # then hands the group to awrite_applied, where the failure counts.
        return not self.refuse and super().try_write_applied(writes)

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        if self.refuse:
            self.refuse -= 1
            raise StoreError("state database: disk I/O error")
        super().write_applied(writes)
        self.transactions.append(list(writes))


async def test_requests_started_together_are_written_ahead_in_one_transaction(
    clock: ManualClock,
) -> None:
    store = JournalStore(clock)
    remote = Remote(clock, gate=asyncio.Event())
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        for p in PEOPLE:
            engine.observe(in_call(p.extension))
        await until(lambda: len(remote.active) == 4)
        # Every request left after one commit holding all four records.
        assert len(store.transactions) == 1
        [ahead] = store.transactions
        assert {w.person.key for w in ahead} == {p.key for p in PEOPLE}
        assert all(w.applied is not None and w.uncertain and not w.applied.data for w in ahead)
        assert remote.gate is not None
        remote.gate.set()
        await run_until_idle(engine, clock)
    # ... and their confirmations went to the store together too.
    assert len(store.transactions) == 2
    assert stored(store) == {("teams", p.key): BUSY for p in PEOPLE}
    assert all(r.applied.data == {} for r in store.load_applied())


async def test_a_write_ahead_the_store_could_not_take_is_retried_before_sending(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = JournalStore(clock)
    remote = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    store.refuse = 2  # the write-ahead record, and its first retry
    with caplog.at_level(logging.WARNING, logger="presence_sync.engine"):
        async with running(engine):
            engine.observe(in_call("100"))
            await settle()
            [key] = [k for k in engine.picture().keys if k.person == ANNA.key]
            assert key.state == "starting"
            assert remote.requests == []  # nothing leaves before its record is stored
            await tick(clock, STORE_RETRY)
            assert remote.requests == []
            await tick(clock, STORE_RETRY)
            assert remote.times() == [2 * STORE_RETRY]
            await run_until_idle(engine, clock)
    assert stored(store) == {("teams", ANNA.key): BUSY}
    assert [r.applied.data for r in store.load_applied()] == [{}]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cannot write the state database; records are kept and retried") == 1
    assert messages.count("state database writable again") == 1


async def test_a_confirmation_the_store_could_not_take_is_kept_and_retried(
    clock: ManualClock,
) -> None:
    store = JournalStore(clock)
    gate = asyncio.Event()
    remote = Remote(clock, gate=gate)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    async with running(engine):
        engine.observe(in_call("100"))
        await until(lambda: len(remote.active) == 1)
        assert store.load_applied()[0].uncertain
        store.refuse = 1  # the confirmation
        gate.set()
        await settle()
        assert engine.pending() == 1  # the record, kept for the retry
        await tick(clock, STORE_RETRY)
        await run_until_idle(engine, clock)
    assert remote.times() == [0]  # one request: the record was not lost
    assert [r.applied.data for r in store.load_applied()] == [{}]


async def test_one_bad_memo_does_not_keep_other_rows_from_the_store(
    clock: ManualClock,
) -> None:
    class BadMemo(Remote):
        async def apply(self, key: str, desired: Status | None) -> Applied:
            applied = await super().apply(key, desired)
            if key == ANNA.key:  # a target bug: a tuple cannot come back from JSON
                return Applied(status=desired, at=applied.at, data={"ids": (1, 2)})
            return applied

    store = JournalStore(clock)
    remote = BadMemo(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)}, rng=MaxJitter())
    async with running(engine):
        engine.observe(in_call("100"))
        engine.observe(in_call("101"))
        await settle()
        keys = {k.person: k for k in engine.picture().keys}
    assert stored(store)[("teams", BOB.key)] == BUSY
    assert keys[BOB.key].state == "in-sync"
    assert keys[ANNA.key].state == "backoff"
    assert keys[ANNA.key].uncertain


async def test_a_target_without_remote_state_writes_once_per_change(
    clock: ManualClock, store: MemoryStore
) -> None:
    writes: list[Status | None] = []

    class CountingStore(MemoryStore):
        def write_applied(self, batch: Sequence[AppliedWrite]) -> None:
            writes.extend(None if w.applied is None else w.applied.status for w in batch)
            super().write_applied(batch)

    counting = CountingStore(clock=clock)
    log_target = LogTarget("log", LogOptions(muted=True), TargetEnv(clock=clock, user_agent="t"))
    engine = engine_for(clock, counting, {"log": log_target})
    async with running(engine):
        engine.observe(in_call("100"))
        await run_until_idle(engine, clock)
    assert writes == [BUSY]


async def test_a_restart_converges_without_redundant_requests(
    clock: ManualClock, tmp_path: Path
) -> None:
    teams, slack = Remote(clock, ttl=3600.0), Remote(clock)
    views = [in_call("100"), view("101", Line.IDLE, Presence.DND), idle("102"), idle("103")]

    def start(store: Store) -> Engine:
        targets = {"teams": make_target("teams", teams), "slack": make_target("slack", slack)}
        engine = Engine(targets=targets, store=store, rules=CallRules(targets), clock=clock)
        engine.set_people(PEOPLE)
        return engine

    first_store = SqliteStore(tmp_path / "state.db", clock=clock)
    first = start(first_store)
    first.resync(views)
    async with running(first):
        await run_until_idle(first, clock)
    first_store.close()
    sent = len(teams.requests) + len(slack.requests)
    assert sent == 4

    await tick(clock, 600)
    second_store = SqliteStore(tmp_path / "state.db", clock=clock)
    second = start(second_store)
    assert second.resync(views) == 0
    async with running(second):
        await tick(clock, 60)
        assert len(teams.requests) + len(slack.requests) == sent
        views[2] = in_call("102")  # Carl picked up while we were down
        assert second.resync(views) == 2
        await run_until_idle(second, clock)
    second_store.close()
    assert teams.asked()[sent // 2 :] == [(CARL.key, BUSY)]
    assert slack.asked()[sent // 2 :] == [(CARL.key, BUSY)]


async def test_a_held_write_lock_does_not_freeze_the_loop(
    clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, clock=clock)
    teams, hook = Remote(clock), Remote(clock)
    targets = {
        "teams": make_target("teams", teams),
        "hook": make_target("hook", hook, remote_state=False),
    }
    engine = engine_for(clock, store, targets)
    backup = sqlite3.connect(path, isolation_level=None)
    backup.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        async with running(engine):
            engine.observe(in_call("100"))
            # A target that needs no write-ahead record is served at once...
            await eventually_async(lambda: hook.requests, "the request needing no record")
            # ... and the loop keeps ticking while the writer waits for the lock.
            gaps = []
            for _ in range(40):
                before = time.monotonic()
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - before)
            assert max(gaps) < 1.0  # a blocked loop would stall for the 5 s busy timeout
            assert teams.requests == []  # not sent before its record is stored
            keys = {(k.target, k.person): k.state for k in engine.picture().keys}
            assert keys["teams", ANNA.key] == "starting"
            backup.execute("ROLLBACK")
            await eventually_async(lambda: teams.requests, "the request once its record is in")
            await run_until_idle(engine, clock)
    finally:
        backup.close()
    store.close()
    reopened = SqliteStore(path, clock=clock)
    assert stored(reopened) == {("teams", ANNA.key): BUSY, ("hook", ANNA.key): BUSY}
    assert all(not r.applied.data for r in reopened.load_applied())
    reopened.close()


async def test_a_lock_held_past_the_busy_timeout_delays_requests_but_loses_nothing(
    clock: ManualClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, clock=clock, busy_timeout=0.05)
    teams = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", teams)})
    backup = sqlite3.connect(path, isolation_level=None)
    backup.execute("BEGIN IMMEDIATE")
    failing = "cannot write the state database; records are kept and retried"
    try:
        with caplog.at_level(logging.WARNING, logger="presence_sync.engine"):
            async with running(engine):
                engine.observe(in_call("100"))
                await eventually_async(lambda: failing in caplog.messages, "the failed commit")
                await settle(engine=engine)
                await tick(clock, STORE_RETRY)  # the retry fails too
                await settle(engine=engine)
                assert teams.requests == []
                assert engine.pending() == 2  # the key, and its record
                backup.execute("ROLLBACK")
                await tick(clock, STORE_RETRY)
                await settle(engine=engine)
                assert teams.times() == [2 * STORE_RETRY]
                await run_until_idle(engine, clock)
    finally:
        backup.close()
    assert caplog.messages.count(failing) == 1
    assert caplog.messages.count("state database writable again") == 1
    assert stored(store) == {("teams", ANNA.key): BUSY}
    assert [r.applied.data for r in store.load_applied()] == [{}]
    store.close()


# --- reloads ------------------------------------------------------------------------


class Workday:
    """Busy on a call, but only from 09:00 to 09:30 UTC."""

    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> dict[str, Status | None]:
        inside = now.hour == 9 and now.minute < 30
        return {"teams": BUSY if inside and view.line is Line.IN_USE else None}


async def test_reevaluate_follows_time_windows_in_rules(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    engine = Engine(
        targets={"teams": make_target("teams", remote)}, store=store, rules=Workday(), clock=clock
    )
    engine.set_people(PEOPLE)
    engine.resync([in_call("100")])
    async with running(engine):
        await settle()
        assert remote.shows == {ANNA.key: BUSY}
        await tick(clock, 29 * 60)
        assert engine.reevaluate() == 0
        await tick(clock, 60)
        assert engine.reevaluate() == 1
        await settle()
    assert remote.shows == {}


async def test_set_rules_applies_the_new_rules_at_once(
    clock: ManualClock, store: MemoryStore
) -> None:
    remote = Remote(clock)
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        await settle()
        engine.set_rules(CallRules([]))  # the admin turned every rule off
        await settle()
    assert remote.asked() == [(ANNA.key, BUSY), (ANNA.key, None)]


async def test_set_targets_returns_what_the_caller_must_close(
    clock: ManualClock, store: MemoryStore
) -> None:
    teams, slack, hook = Remote(clock), Remote(clock), Remote(clock)
    old_teams, old_slack = make_target("teams", teams), make_target("slack", slack)
    engine = engine_for(clock, store, {"teams": old_teams, "slack": old_slack})
    hook.shows[BOB.key] = BUSY  # left behind by an earlier configuration
    store.put_applied("hook", BOB, Applied(status=BUSY, at=clock.now()))
    async with running(engine):
        engine.observe(in_call("100"))
        await run_until_idle(engine, clock)
        new_teams, new_hook = make_target("teams", teams), make_target("hook", hook)
        engine.set_rules(CallRules(["teams", "hook"]))
        retired = engine.set_targets({"teams": new_teams, "hook": new_hook})
        await run_until_idle(engine, clock)

    assert retired == [old_teams, old_slack]
    assert len(teams.requests) == 1  # same remote under a new object: nothing to redo
    assert hook.shows == {ANNA.key: BUSY}  # new target gets Anna; Bob's old status cleared
    assert slack.shows == {ANNA.key: BUSY}  # a removed target is left alone
    assert ("slack", ANNA.key) in stored(store)
    assert set(engine.stats) == {"teams", "hook"}


async def test_a_reload_that_brings_a_target_back_does_not_flap_it(
    clock: ManualClock, store: MemoryStore
) -> None:
    """The app reloads with set_targets → set_rules → set_people in one go;
    in between, the new target has no rule yet and would look like "clear"."""
    teams, hook = Remote(clock), Remote(clock, shows={ANNA.key: BUSY})
    store.put_applied("hook", ANNA, Applied(status=BUSY, at=clock.now()))
    engine = engine_for(clock, store, {"teams": make_target("teams", teams)})
    engine.resync([in_call("100")])
    async with running(engine):
        await run_until_idle(engine, clock)
        engine.set_targets(
            {"teams": make_target("teams", teams), "hook": make_target("hook", hook)}
        )
        engine.set_rules(CallRules(["teams", "hook"]))
        engine.set_people(PEOPLE)
        await run_until_idle(engine, clock)
    assert hook.requests == []
    assert hook.shows == {ANNA.key: BUSY}


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"rate": 0.0}, "rate 0.0"), ({"burst": 0}, "burst 0"), ({"concurrency": 0}, "concurrency 0")],
)
def test_limits_the_engine_cannot_honour_are_refused(
    clock: ManualClock, store: MemoryStore, limits: dict[str, float], message: str
) -> None:
    remote = Remote(clock)
    good, bad = make_target("teams", remote), make_target("odd", remote, **limits)
    with pytest.raises(ValueError, match=f"'odd'.*{message}"):
        Engine(targets={"odd": bad}, store=store, rules=CallRules(["odd"]), clock=clock)
    with pytest.raises(ValueError, match=f"'odd'.*{message}"):
        check_target("odd", bad)
    assert check_target("teams", good) is type(good).info
    engine = Engine(targets={"teams": good}, store=store, rules=CallRules(["teams"]), clock=clock)
    replacement = make_target("teams", remote)
    with pytest.raises(ValueError, match=message):
        engine.set_targets({"teams": replacement, "odd": bad})
    # Nothing changed, not even the target checked before the bad one.
    assert set(engine.stats) == {"teams"}
    assert engine.set_targets({"teams": replacement}) == [good]


# --- what operators see ---------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_results_per_target(clock: ManualClock, store: MemoryStore) -> None:
    remote = Remote(clock)
    remote.fail_next.append(TransientError("503"))
    engine = engine_for(clock, store, {"metrics-t": make_target("metrics-t", remote)})
    before_ok = _sample("presence_sync_target_applies_total", target="metrics-t", result="ok")
    before_tr = _sample(
        "presence_sync_target_applies_total", target="metrics-t", result="transient"
    )
    before_lat = _sample("presence_sync_event_to_apply_seconds_count", target="metrics-t")
    async with running(engine):
        engine.observe(in_call("100"))
        await settle()
        assert _sample("presence_sync_reconcile_dirty_keys", target="metrics-t") == 1
        await run_until_idle(engine, clock)
    assert _sample("presence_sync_target_applies_total", target="metrics-t", result="ok") == (
        before_ok + 1
    )
    assert _sample(
        "presence_sync_target_applies_total", target="metrics-t", result="transient"
    ) == (before_tr + 1)
    assert _sample("presence_sync_event_to_apply_seconds_count", target="metrics-t") == (
        before_lat + 2
    )
    assert _sample("presence_sync_reconcile_dirty_keys", target="metrics-t") == 0


async def test_the_picture_shows_each_key(clock: ManualClock, store: MemoryStore) -> None:
    remote = Remote(clock)
    remote.fail_for[BOB.key] = TransientError("503 from upstream")
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    async with running(engine):
        engine.observe(in_call("100"))
        engine.observe(in_call("101"))
        await settle()
        snap = engine.picture()
    keys = {k.person: k for k in snap.keys}
    assert keys[ANNA.key].state == "in-sync"
    anna = keys[ANNA.key].applied
    assert anna is not None
    assert anna.status == BUSY
    assert not keys[ANNA.key].uncertain
    assert keys[BOB.key].state == "backoff"
    assert keys[BOB.key].desired == BUSY
    assert keys[BOB.key].last_error == "503 from upstream"
    assert keys[BOB.key].retry_at is not None
    assert keys[BOB.key].uncertain  # a 503: Bob may or may not show busy
    assert keys[CARL.key].state == "in-sync"
    assert keys[CARL.key].desired is None
    assert snap.targets["teams"].backoff == 1
    assert snap.targets["teams"].stats.ok == 1


async def test_one_log_line_per_change_and_no_phone_numbers(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    class WithNumber:
        def evaluate(
            self,
            person: Person,
            view: LineView,
            now: datetime,
            *,
            why: dict[str, str] | None = None,
        ) -> dict[str, Status | None]:
            if view.call is None:
                return {"log": None}
            if why is not None:
                why["log"] = "calls"
            return {"log": Status(text=f"On a call with {view.call.party}")}

    target = LogTarget("log", LogOptions(), TargetEnv(clock=clock, user_agent="test"))
    engine = Engine(targets={"log": target}, store=store, rules=WithNumber(), clock=clock)
    engine.set_people([ANNA])
    call = Call(uuid="c1", direction=Direction.INBOUND, external=True, party="+49 30 1234567")
    with caplog.at_level(logging.DEBUG):
        async with running(engine):
            engine.observe(LineView(extension="100", line=Line.IN_USE, call=call))
            await settle()
            engine.observe(LineView(extension="100", line=Line.IDLE))
            await settle()

    assert list(target.history) == [
        (ANNA.key, Status(text="On a call with +49 30 1234567")),
        (ANNA.key, None),
    ]
    assert "1234567" not in caplog.text
    changes = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.name for r in changes] == ["presence_sync.engine"] * 2
    fields = [{k: v for k, v in r.ctx.items() if k != "request_ms"} for r in changes]
    assert fields == [
        {
            "person": "anna@example.com",
            "target": "log",
            "rule": "calls",
            "old": "own status",
            "new": '"On a call with …"',
            "duration_ms": 0,
            "result": "ok",
        },
        {
            "person": "anna@example.com",
            "target": "log",
            "rule": None,
            "old": '"On a call with …"',
            "new": "own status",
            "duration_ms": 0,
            "result": "ok",
        },
    ]
    assert "cleared, own status restored" in changes[1].getMessage()
    assert "no rule matched" in changes[1].getMessage()


# --- the log target -------------------------------------------------------------------


async def test_log_target_remembers_and_confirms_and_writes_no_line_of_its_own(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    env = TargetEnv(clock=clock, user_agent="test")
    loud = LogTarget("log", LogOptions(), env)
    quiet = LogTarget("quiet", LogOptions(muted=True), env)
    engine = engine_for(clock, store, {"log": loud, "quiet": quiet})
    with caplog.at_level(logging.DEBUG):
        async with running(engine):
            engine.observe(in_call("100"))
            await settle()
            engine.observe(idle("100"))
            await settle()
    assert not [r for r in caplog.records if r.name == "presence_sync.targets.log"]
    changes = [r.ctx for r in caplog.records if r.levelno == logging.INFO]
    # One line per change per target, whatever order the two lanes answer in.
    assert sorted((c["target"], c["old"], c["new"]) for c in changes) == sorted(
        [
            ("log", "own status", 'Busy/InACall "On a call"'),
            ("log", 'Busy/InACall "On a call"', "own status"),
            ("quiet", "own status", 'Busy/InACall "On a call"'),
            ("quiet", 'Busy/InACall "On a call"', "own status"),
        ]
    )
    assert list(loud.history) == list(quiet.history) == [(ANNA.key, BUSY), (ANNA.key, None)]
    assert stored(store) == {}


def test_log_target_declares_itself() -> None:
    info = LogTarget.info
    assert info.kind == "log"
    assert info.restores
    assert info.rate == float("inf")
    assert set(info.fields) == {"availability", "activity", "text", "emoji", "dnd"}
    assert LogTarget.Options is LogOptions
    with pytest.raises(ValueError, match="extra"):
        LogOptions.model_validate({"mute": True})


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (None, "own status"),
        (BUSY, 'Busy/InACall "On a call"'),
        (
            Status(emoji=":telephone_receiver:", text="On a call"),
            ':telephone_receiver: "On a call"',
        ),
        (Status(dnd=True), "dnd"),
        (Status(), "(empty status)"),
        (Status(text="Call with 0301234567"), '"Call with …"'),
        (Status(text="Call with (030) 123-45 67, 2 min"), '"Call with …, 2 min"'),
    ],
)
def test_describe(status: Status | None, text: str) -> None:
    assert describe(status) == text


# --- rule names --------------------------------------------------------------------


async def test_the_deciding_rule_travels_with_the_decision_but_is_no_reason_to_write(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    same = {"availability": "Busy", "activity": "InACall", "text": "On a call"}
    rules = compile_rules(
        [
            {"name": "calls", "when": {"line": "in-use"}, "set": {"teams": same}},
            {"when": {"presence": "dnd"}, "set": {"teams": same}},
        ],
        targets={"teams": TargetInfo("teams", "test", frozenset(STATUS_FIELDS))},
    )
    remote = Remote(clock)
    engine = Engine(
        targets={"teams": make_target("teams", remote)}, store=store, rules=rules, clock=clock
    )
    engine.set_people(PEOPLE)

    def rule_shown() -> str | None:
        [key] = [k for k in engine.picture().keys if k.person == ANNA.key]
        return key.rule

    with caplog.at_level(logging.INFO, logger="presence_sync.engine"):
        async with running(engine):
            engine.observe(view("100", Line.IN_USE, Presence.DND))
            await settle()
            assert rule_shown() == "calls"
            # The call ends, DND stays: another rule decides the same status.
            engine.observe(view("100", Line.IDLE, Presence.DND))
            await settle()
            assert rule_shown() == "rules[1]"
            engine.observe(view("100", Line.IDLE, Presence.AVAILABLE))
            await settle()
            assert rule_shown() is None

    assert remote.asked() == [(ANNA.key, BUSY), (ANNA.key, None)]
    assert [(r.ctx["rule"], r.ctx["new"]) for r in caplog.records] == [
        ("calls", 'Busy/InACall "On a call"'),
        (None, "own status"),
    ]


async def test_a_change_that_needed_a_retry_is_still_one_line(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Remote(clock)
    remote.fail_next.append(TransientError("503 Service Unavailable", status=503))
    engine = engine_for(clock, store, {"teams": make_target("teams", remote)})
    caplog.set_level(logging.INFO, logger="presence_sync.engine")
    async with running(engine):
        engine.observe(in_call("100"))
        await run_until_idle(engine, clock)
    assert len(remote.requests) == 2
    changes = [r.ctx for r in caplog.records if r.ctx.get("result") == "ok"]
    # The 503 left it open whether Teams showed the call: the old status is unknown.
    assert [(c["old"], c["new"]) for c in changes] == [("unknown", 'Busy/InACall "On a call"')]

"""Pausing people: the real engine in front of fake remotes, a real store, and a
manual clock that ends the pauses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from engine_helpers import BUSY, CallRules, Remote, idle, in_call, make_target, person, settle
from starlette.applications import Starlette

from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.model import find_person
from presence_sync.ops.pause_api import pause_routes
from presence_sync.pauses import BadPause, Pauses, UnknownPerson
from presence_sync.store import PauseRow, SqliteStore, Store

ANNA = person("anna", "100")
BOB = person("bob", "101")
PEOPLE = [ANNA, BOB]
TARGETS = ("teams", "slack")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock, tmp_path: Path) -> Iterator[Store]:
    store = SqliteStore(tmp_path / "state.db", clock=clock)
    yield store
    store.close()


class World:
    """An engine over one remote per target, everyone idle, and its pauses."""

    def __init__(self, clock: ManualClock, store: Store) -> None:
        self.clock = clock
        self.store = store
        self.remotes = {name: Remote(clock) for name in TARGETS}
        self.engine = Engine(
            targets={name: make_target(name, r) for name, r in self.remotes.items()},
            store=store,
            rules=CallRules(TARGETS),
            clock=clock,
        )
        self.engine.set_people(PEOPLE)
        self.engine.resync([idle(p.extension) for p in PEOPLE])
        self.people = list(PEOPLE)
        self.pauses = Pauses(store, self.engine, lambda: self.people, clock)

    def shows(self, key: str) -> dict[str, object]:
        return {name: r.shows.get(key) for name, r in self.remotes.items()}

    def requests(self, key: str) -> int:
        return sum(len(r.times(key)) for r in self.remotes.values())

    def states(self, key: str) -> dict[str, str]:
        return {k.target: k.state for k in self.engine.picture().keys if k.person == key}


@pytest.fixture
async def world(clock: ManualClock, store: Store) -> AsyncIterator[World]:
    """The world with the engine and the pauses' timer running."""
    world = World(clock, store)
    engine = asyncio.get_running_loop().create_task(world.engine.run())
    timer = asyncio.get_running_loop().create_task(world.pauses.run())
    await settle(engine=world.engine)
    yield world
    timer.cancel()
    world.engine.stop()
    await engine
    with pytest.raises(asyncio.CancelledError):
        await timer


async def idle_again(world: World) -> None:
    await settle(engine=world.engine)
    assert world.engine.pending() == 0


async def test_a_paused_person_gets_their_status_back_and_is_then_left_alone(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.engine.observe(in_call("100"))
    await idle_again(world)
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": BUSY}

    with caplog.at_level(logging.INFO, logger="presence_sync.pauses"):
        who, row = world.pauses.pause("Anna@Example.com")
    await idle_again(world)

    assert who == ANNA
    assert row == PauseRow(ANNA.key, None, None, world.clock.now())
    assert world.shows(ANNA.key) == {"teams": None, "slack": None}
    assert world.states(ANNA.key) == {"teams": "paused", "slack": "paused"}
    (line,) = caplog.records
    assert line.__dict__["ctx"] == {
        "person": ANNA.email,
        "targets": "every target",
        "until": "resumed",
    }
    # Calls, hang-ups, full resyncs and re-evaluations: nothing is sent.
    sent = world.requests(ANNA.key)
    world.engine.observe(idle("100"))
    world.engine.observe(in_call("100"))
    world.engine.resync([in_call("100"), idle("101")])
    world.engine.reevaluate()
    await idle_again(world)
    await world.clock.advance(3600)
    await idle_again(world)
    assert world.requests(ANNA.key) == sent
    assert world.shows(ANNA.key) == {"teams": None, "slack": None}

    world.pauses.resume("100")
    await idle_again(world)
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": BUSY}
    assert world.states(ANNA.key) == {"teams": "in-sync", "slack": "in-sync"}
    assert world.store.load_pauses() == []


async def test_a_pause_ends_when_its_time_is_up(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.engine.observe(in_call("100"))
    await idle_again(world)
    world.pauses.pause(ANNA.email, seconds=7200)
    await idle_again(world)
    assert world.shows(ANNA.key)["teams"] is None

    await world.clock.advance(7199)
    await idle_again(world)
    assert world.pauses.get(ANNA.key) is not None
    assert world.shows(ANNA.key)["teams"] is None

    with caplog.at_level(logging.INFO, logger="presence_sync.pauses"):
        await world.clock.advance(1)
        await idle_again(world)
    assert world.pauses.pauses() == {}
    assert world.store.load_pauses() == []
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": BUSY}
    (line,) = caplog.records
    assert line.getMessage().startswith("pause ended: its time is up")
    assert line.__dict__["ctx"]["person"] == ANNA.email


async def test_a_pause_of_one_target_leaves_the_other_working(world: World) -> None:
    world.engine.observe(in_call("100"))
    await idle_again(world)

    world.pauses.pause(ANNA.email, target="slack")
    await idle_again(world)
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": None}
    world.engine.observe(idle("100"))
    world.engine.observe(in_call("100"))
    await idle_again(world)
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": None}
    assert world.states(ANNA.key) == {"teams": "in-sync", "slack": "paused"}
    assert world.pauses.doc(ANNA.key) == {"until": None, "targets": ["slack"]}


async def test_pauses_add_up_and_the_new_end_time_counts(world: World) -> None:
    start = world.clock.now()
    world.pauses.pause(ANNA.email, target="slack", seconds=60)
    await world.clock.advance(30)
    _, row = world.pauses.pause(ANNA.email, target="teams", seconds=3600)
    assert row == PauseRow(ANNA.key, frozenset(TARGETS), start + timedelta(seconds=3630), start)
    _, row = world.pauses.pause(ANNA.email)
    assert row.targets is None
    assert row.until is None
    _, row = world.pauses.pause(ANNA.email, target="slack")
    assert row.targets is None  # still every target: resume first to narrow it
    assert world.store.load_pauses() == [row]


async def test_bad_pauses_are_refused_and_change_nothing(world: World) -> None:
    with pytest.raises(UnknownPerson, match=r"nobody configured is 'zoe@example\.com'"):
        world.pauses.pause("zoe@example.com")
    with pytest.raises(UnknownPerson):
        world.pauses.resume("999")
    with pytest.raises(
        BadPause, match="no target is called 'outlook'; configured targets: teams, slack"
    ):
        world.pauses.pause(ANNA.email, target="outlook")
    for seconds in (0.0, 367 * 86400.0):
        with pytest.raises(BadPause, match="more than 0s and at most 366d"):
            world.pauses.pause(ANNA.email, seconds=seconds)
    assert world.pauses.pauses() == {}
    assert world.store.load_pauses() == []
    assert world.pauses.resume(ANNA.email) == (ANNA, None)


async def test_pauses_are_kept_across_a_restart_and_ended_ones_dropped(
    clock: ManualClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, clock=clock)
    world = World(clock, store)
    world.pauses.pause(ANNA.email, seconds=3600)
    world.pauses.pause(BOB.email, target="teams")
    store.close()

    await clock.advance(3600)
    store = SqliteStore(path, clock=clock)
    try:
        with caplog.at_level(logging.INFO, logger="presence_sync.pauses"):
            again = World(clock, store)
        assert set(again.pauses.pauses()) == {BOB.key}
        assert [p.person_key for p in store.load_pauses()] == [BOB.key]
        assert [(r.getMessage(), r.__dict__["ctx"]["person"]) for r in caplog.records] == [
            ("pause ended while the daemon was stopped; syncing again", ANNA.email),
            ("still paused from before the restart", BOB.email),
        ]
        # Held before the engine runs: Bob's call never reaches the paused target.
        again.engine.observe(in_call("101"))
        task = asyncio.get_running_loop().create_task(again.engine.run())
        await settle(engine=again.engine)
        assert again.shows(BOB.key) == {"teams": None, "slack": BUSY}
        again.engine.stop()
        await task
    finally:
        store.close()


async def test_someone_removed_from_the_configuration_can_still_be_resumed(
    world: World,
) -> None:
    world.pauses.pause(BOB.email)
    world.people = [ANNA]
    world.engine.set_people(world.people)

    person, row = world.pauses.resume(BOB.email)

    assert person.key == BOB.key
    assert row is not None
    assert world.store.load_pauses() == []
    with pytest.raises(UnknownPerson):
        world.pauses.resume(BOB.email)


async def test_a_person_is_found_by_e_mail_in_any_case_or_by_extension(world: World) -> None:
    assert find_person(PEOPLE, " BOB@example.com ") == BOB
    assert find_person(PEOPLE, "100") == ANNA
    assert world.pauses.find(" BOB@example.com ") == BOB
    with pytest.raises(UnknownPerson, match="e-mail address or extension"):
        world.pauses.find("Anna")


async def test_a_pause_the_store_cannot_keep_is_refused_and_changes_nothing(
    world: World,
) -> None:
    """Through the API's routes: a 500 naming the cause, and no pause."""
    app = Starlette(routes=pause_routes(world.pauses))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as client:
        world.engine.observe(in_call("100"))
        await idle_again(world)
        world.store.close()

        answer = await client.post("/api/people/100/pause", json={"for": "1h"})

    assert answer.status_code == 500
    assert answer.json()["error"].startswith("the pause could not be stored, nothing changed:")
    assert world.pauses.pauses() == {}
    await idle_again(world)
    assert world.shows(ANNA.key) == {"teams": BUSY, "slack": BUSY}


def test_before_nfon_reports_a_line_a_person_paused_everywhere_waits_for_nothing(
    clock: ManualClock, store: Store
) -> None:
    remotes = {name: Remote(clock) for name in TARGETS}
    engine = Engine(
        targets={name: make_target(name, r) for name, r in remotes.items()},
        store=store,
        rules=CallRules(TARGETS),
        clock=clock,
    )
    engine.set_people(PEOPLE)
    assert engine.unsettled() == {ANNA.key, BOB.key}

    engine.hold(ANNA.key)
    engine.hold(BOB.key, {"slack"})

    assert engine.unsettled() == {BOB.key}
    states = {(k.person, k.target): k.state for k in engine.picture().keys}
    assert states == {
        (ANNA.key, "teams"): "paused",
        (ANNA.key, "slack"): "paused",
        (BOB.key, "teams"): "unknown",
        (BOB.key, "slack"): "paused",
    }

"""The NFON → engine feed and readiness, on a wired runtime with an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from presence_sync.app import Runtime, load, wire
from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.errors import AuthError
from presence_sync.feed import Feed
from presence_sync.model import (
    Applied,
    CallEvent,
    CallState,
    Direction,
    Line,
    LineView,
    Presence,
    StateEvent,
)
from presence_sync.nfon import NfonClient
from presence_sync.readiness import Readiness, readiness
from presence_sync.rules import compile_rules
from presence_sync.store import MemoryStore
from presence_sync.targets.base import Change, TargetInfo, TargetOptions, target_class

CONFIG = """nfon:
  base_url: http://127.0.0.1:9/v1
  customer: K1234
  username: api-user
  password: api-secret
  call_settle: 300ms
people:
  - extension: "100"
    email: anna@example.com
targets:
  log: {}
state:
  path: state.db
http:
  listen: ""
"""
OUTBOUND_RULES = """rules:
  - when: {line: in-use, direction: outbound}
    set: {log: {text: Calling out}}
  - when: {line: in-use}
    set: {log: {text: On a call}}
"""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def runtime_for(tmp_path: Path, clock: ManualClock, rules: str) -> AsyncIterator[Runtime]:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("state.db", str(tmp_path / "s.db")) + rules)
    runtime = await wire(load(config), clock=clock, dry_run=True)
    runtime.feed.offer(
        runtime.lines.on_full_state(
            [StateEvent("100", Line.IDLE, Presence.AVAILABLE)], runtime.feed
        )[0]
    )
    yield runtime
    runtime.feed.close()
    await runtime.nfon.aclose()
    runtime.store.close()


@pytest.fixture
async def outbound(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Runtime]:
    async for runtime in runtime_for(tmp_path, clock, OUTBOUND_RULES):
        yield runtime


@pytest.fixture
async def plain(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Runtime]:
    async for runtime in runtime_for(tmp_path, clock, ""):
        yield runtime


def ready(runtime: Runtime, clock: ManualClock, grace: float = 30) -> Readiness:
    return readiness(runtime.nfon, runtime.feed, runtime.engine, clock=clock, grace=grace)


def desired_text(runtime: Runtime) -> str | None:
    (key,) = runtime.engine.picture().keys
    return key.desired.text if key.desired is not None else None


def in_use(runtime: Runtime) -> None:
    view = runtime.lines.on_state(StateEvent("100", Line.IN_USE, Presence.AVAILABLE), runtime.feed)
    assert view is not None
    runtime.feed.offer(view)


def outbound_call(runtime: Runtime) -> None:
    event = CallEvent("c1", CallState.RING, "100", Direction.OUTBOUND, "100", "K1234", "4930")
    view = runtime.lines.on_call(event, runtime.feed)
    assert view is not None
    runtime.feed.offer(view)


async def test_an_in_use_line_waits_for_its_call_when_rules_look_at_calls(
    outbound: Runtime, clock: ManualClock
) -> None:
    in_use(outbound)
    await clock.advance(0.1)
    assert desired_text(outbound) is None  # still held: not "On a call"
    outbound_call(outbound)
    assert desired_text(outbound) == "Calling out"
    await clock.advance(1.0)
    assert desired_text(outbound) == "Calling out"


async def test_a_call_that_never_comes_is_decided_without_it_after_the_settle(
    outbound: Runtime, clock: ManualClock
) -> None:
    in_use(outbound)
    await clock.advance(0.29)
    assert desired_text(outbound) is None
    await clock.advance(0.02)
    assert desired_text(outbound) == "On a call"


async def test_a_call_first_needs_no_waiting(outbound: Runtime, clock: ManualClock) -> None:
    outbound_call(outbound)
    in_use(outbound)
    assert desired_text(outbound) == "Calling out"
    assert list(outbound.feed.held()) == []


async def test_rules_without_call_context_never_wait(plain: Runtime, clock: ManualClock) -> None:
    assert plain.rules.uses_call_context is False
    in_use(plain)
    assert desired_text(plain) == "On a call"


@pytest.mark.parametrize(
    ("rules", "uses"),
    [
        (None, False),
        ([{"when": {"presence": "dnd"}, "set": {"log": {"text": "busy"}}}], False),
        ([{"when": {"direction": "inbound"}, "set": {"log": {"text": "x"}}}], True),
        ([{"unless": {"party": "internal"}, "set": {"log": {"text": "x"}}}], True),
        ([{"when": {"party_in": "vip"}, "set": {"log": {"text": "x"}}}], True),
        ([{"set": {"log": {"text": "with {party_name}"}}}], True),
        ([{"set": {"log": {"text": "{direction:>8} call"}}}], True),
        ([{"set": {"log": {"text": "literal {{party_name}}"}}}], False),
        ([{"set": {"log": {"text": "since {since}"}}}], False),
    ],
)
def test_a_rule_set_knows_whether_it_uses_call_context(
    rules: list[dict[str, Any]] | None, uses: bool
) -> None:
    infos = {"log": target_class("log").info}
    lists = {"vip": {"4930": None}}
    assert compile_rules(rules, targets=infos, lists=lists).uses_call_context is uses


def nfon_answering(states: list[dict[str, str]]) -> NfonClient:
    """A real ``NfonClient`` whose network is a function: logins succeed and
    the snapshot lists ``states``."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, json={"access-token": "a", "refresh-token": "r"})
        return httpx.Response(200, json=states)

    return NfonClient(
        "http://nfon.invalid/v1", "K1234", "u", "p", transport=httpx.MockTransport(answer)
    )


async def test_an_empty_snapshot_does_not_clear_everyone(
    plain: Runtime, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    in_use = plain.lines.on_full_state(
        [StateEvent("100", Line.IN_USE, Presence.AVAILABLE)], plain.feed
    )
    plain.engine.resync(in_use, complete=False)
    async with nfon_answering([]) as nfon:
        feed = Feed(nfon, plain.lines, plain.engine, plain.directory, clock)
        await feed.resync()
    view = plain.engine.line("100")
    assert view is not None
    assert view.line is Line.IN_USE
    assert "snapshot listed no extensions" in caplog.text


async def test_a_full_state_during_the_settle_wins_over_the_view_held_back(
    outbound: Runtime, clock: ManualClock
) -> None:
    """The feed holds back the in-use view; the snapshot meanwhile says the
    line is idle again. The held view must not overwrite that afterwards."""
    idle = [{"extension": "100", "line": "idle", "presence": "available"}]
    async with nfon_answering(idle) as nfon:
        feed = Feed(nfon, outbound.lines, outbound.engine, outbound.directory, clock, settle=0.3)
        view = outbound.lines.on_state(StateEvent("100", Line.IN_USE, Presence.AVAILABLE), feed)
        assert view is not None
        feed.offer(view)
        assert list(feed.held()) == ["100"]
        assert feed.line("100") == view  # the next event folds onto the held view
        await feed.resync()
        assert list(feed.held()) == []
        await clock.advance(1.0)
    shown = outbound.engine.line("100")
    assert shown is not None
    assert shown.line is Line.IDLE
    assert desired_text(outbound) is None


# --- readiness -------------------------------------------------------------------------


async def test_not_ready_until_the_first_full_state_then_while_the_stream_is_down_too_long(
    plain: Runtime, clock: ManualClock
) -> None:
    health = plain.nfon.states_health
    assert ready(plain, clock).ok is False  # no full state yet
    health.up_since, health.down_since = clock.monotonic(), None
    plain.feed.bootstrapped = True
    now = ready(plain, clock)
    assert now.ok is True
    assert now.status == "Ready: following NFON"

    health.up_since, health.down_since, health.reason = None, clock.monotonic(), "eof"
    await clock.advance(30)
    assert ready(plain, clock).ok is True  # within the grace
    await clock.advance(1)
    now = ready(plain, clock)
    assert now.ok is False
    assert now.components["nfon_stream"]["reason"].startswith("NFON stream down since")
    assert now.status.startswith("Degraded: NFON stream down since")


async def test_not_ready_while_nfon_refuses_logins(plain: Runtime, clock: ManualClock) -> None:
    health = plain.nfon.states_health
    health.up_since, health.down_since = clock.monotonic(), None
    plain.feed.bootstrapped = True
    plain.nfon.auth.refused_since = clock.now() - timedelta(minutes=5)
    now = ready(plain, clock)
    assert now.ok is False
    assert now.components["nfon_login"]["ok"] is False
    assert now.status.startswith("Degraded: NFON login refused since ")
    plain.nfon.auth.refused_since = None
    assert ready(plain, clock).ok is True


class Rejecting:
    """A target whose service refuses our credentials until told otherwise."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="pager", description="", fields=frozenset({"text"})
    )
    Options: ClassVar[type[TargetOptions]] = TargetOptions

    def __init__(self, clock: ManualClock) -> None:
        self.name = "pager"
        self.clock = clock
        self.rejecting = True

    async def apply(self, change: Change) -> Applied:
        if self.rejecting:
            raise AuthError("401 invalid_auth")
        return Applied(status=change.desired, at=self.clock.now())

    async def aclose(self) -> None:
        pass


async def test_not_ready_while_a_target_rejects_our_credentials(
    plain: Runtime, clock: ManualClock
) -> None:
    pager = Rejecting(clock)
    rules = compile_rules(None, targets={"pager": Rejecting.info})
    engine = Engine(
        targets={"pager": pager}, store=MemoryStore(), rules=rules, clock=clock, auth_pause=60
    )
    engine.set_people(plain.directory.people())
    runtime = dataclasses.replace(plain, engine=engine)
    health = runtime.nfon.states_health
    health.up_since, health.down_since = clock.monotonic(), None
    runtime.feed.bootstrapped = True
    task = asyncio.create_task(engine.run())
    engine.observe(LineView("100", Line.IN_USE, Presence.AVAILABLE))
    await clock.advance(0.01)
    now = ready(runtime, clock)
    assert now.ok is False
    assert now.components["target:pager"]["reason"].startswith("pager rejects our credentials")
    assert "Degraded: pager rejects our credentials; paused until" in now.status

    pager.rejecting = False
    await clock.advance(61)  # the pause ends, a probe succeeds
    assert ready(runtime, clock).ok is True
    engine.stop()
    await task

"""The status API's pure parts: the documents built from an engine (the fast
"not in sync" filter agrees with the per-key states), the write guard,
finding the daemon's address, and terminal-safe text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from engine_helpers import CallRules, person
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.lines import Lines
from presence_sync.model import Line, Presence, StateEvent
from presence_sync.ops.http import WriteGuard, is_loopback
from presence_sync.ops.status import Parts, PauseView, StatusBuilder, iso
from presence_sync.readiness import Readiness
from presence_sync.store import MemoryStore
from presence_sync.targets.base import TargetEnv
from presence_sync.targets.log import LogOptions, LogTarget
from presence_sync.tools.client import daemon_url
from presence_sync.tools.status import clean

ZONE = timezone(timedelta(hours=1))


def build(count: int) -> tuple[Engine, Lines, StatusBuilder, ManualClock]:
    clock = ManualClock(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
    env = TargetEnv(clock=clock, user_agent="test")
    targets = {name: LogTarget(name, LogOptions(), env) for name in ("teams", "slack")}
    engine = Engine(targets=targets, store=MemoryStore(), rules=CallRules(targets), clock=clock)
    people = [person(f"p{i:03d}", str(100 + i)) for i in range(count)]
    engine.set_people(people)
    lines = Lines(clock)
    ready = Readiness(True, {}, "Ready: following NFON")
    builder = StatusBuilder(lambda: Parts(clock.now(), engine, ready, None), zone=ZONE)
    return engine, lines, builder, clock


def test_the_not_in_sync_filter_agrees_with_every_key_state() -> None:
    engine, lines, builder, _ = build(30)
    # Nobody's line is known yet: everyone waits for NFON.
    waiting = builder.status(filter="not-in-sync", limit=1000)
    assert waiting["matched"] == 30
    assert {k["state"] for p in waiting["people"] for k in p["targets"].values()} == {"waiting"}
    # Lines of the first 20 only, three of them on a call (queued: the engine does not run).
    states = [
        StateEvent(str(100 + i), Line.IN_USE if i % 7 == 0 else Line.IDLE, Presence.AVAILABLE)
        for i in range(20)
    ]
    engine.resync(lines.on_full_state(states, engine), complete=False)
    doc = builder.status(limit=1000)
    unsettled = {
        p["key"]
        for p in doc["people"]
        if any(k["state"] != "in-sync" for k in p["targets"].values())
    }
    filtered = builder.status(filter="not-in-sync", limit=1000)
    assert {p["key"] for p in filtered["people"]} == unsettled
    assert filtered["matched"] == len(unsettled) == 3 + 10
    busy = builder.person("100")
    assert busy is not None
    assert busy["line"] == "in-use"
    assert busy["targets"]["teams"]["state"] == "queued"
    assert busy["targets"]["teams"]["desired"] == 'Busy/InACall "On a call"'
    assert busy["targets"]["teams"]["since"] == "2026-12-02T10:00:00+01:00"


def test_search_paging_and_lookups() -> None:
    _, _, builder, _ = build(250)
    assert builder.status()["people"][0]["email"] == "p000@example.com"
    assert len(builder.status()["people"]) == 100
    last = builder.status(offset=200, limit=100)
    assert (last["matched"], len(last["people"])) == (250, 50)
    assert [p["extension"] for p in builder.status(q="P24")["people"]] == [
        str(100 + i) for i in range(240, 250)
    ]
    assert builder.person("P001@EXAMPLE.COM") == builder.person("101")
    assert builder.person("nobody") is None
    with pytest.raises(ValueError, match=r"limit must be 1\.\.1000"):
        builder.status(limit=1001)
    with pytest.raises(ValueError, match="filter must be one of"):
        builder.status(filter="broken")


def test_a_paused_person_shows_paused_targets() -> None:
    engine, lines, _, clock = build(2)
    engine.resync(lines.on_full_state([StateEvent("100", Line.IDLE, Presence.AVAILABLE)], engine))
    until = clock.now() + timedelta(hours=2)
    builder = StatusBuilder(
        lambda: Parts(
            clock.now(),
            engine,
            Readiness(True, {}, "Ready"),
            None,
            paused=lambda key: PauseView(until, ("slack",)) if key == "p000@example.com" else None,
        ),
        zone=ZONE,
    )
    doc = builder.person("100")
    assert doc is not None
    assert doc["paused"] == {"until": "2026-12-02T12:00:00+01:00", "targets": ["slack"]}
    assert doc["targets"]["slack"]["state"] == "paused"
    assert doc["targets"]["teams"]["state"] == "in-sync"


def test_times_carry_their_offset() -> None:
    assert (
        iso(datetime(2026, 12, 2, 8, 30, 15, 123, tzinfo=UTC), ZONE) == "2026-12-02T09:30:15+01:00"
    )
    assert iso(None) is None


def guarded(token: str | None, required: bool) -> httpx.AsyncClient:
    async def echo(request: Request) -> Response:
        return JSONResponse({"method": request.method})

    app = Starlette(
        routes=[Route("/x", echo, methods=["GET", "POST", "DELETE"])],
        middleware=[Middleware(WriteGuard, token=token, required=required)],
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://daemon:9477")


@pytest.mark.parametrize(
    ("token", "required", "headers", "status"),
    [
        (None, False, {}, 200),
        ("t0ken", False, {}, 200),
        ("t0ken", True, {}, 401),
        ("t0ken", True, {"Authorization": "Bearer wrong"}, 401),
        ("t0ken", True, {"Authorization": "Basic t0ken"}, 401),
        ("t0ken", True, {"Authorization": "Bearer t0ken"}, 200),
        ("t0ken", True, {"Authorization": "bearer  t0ken"}, 200),
        (None, True, {"Authorization": "Bearer anything"}, 403),
        (None, False, {"Origin": "https://evil.example"}, 403),
        (None, False, {"Origin": "http://daemon:9477"}, 200),
    ],
)
async def test_the_write_guard(
    token: str | None, required: bool, headers: dict[str, str], status: int
) -> None:
    async with guarded(token, required) as client:
        assert (await client.get("/x")).status_code == 200  # reading is always open
        responses = [await client.request(m, "/x", headers=headers) for m in ("POST", "DELETE")]
    for response in responses:
        assert response.status_code == status
        if status != 200:
            assert "error" in response.json()


def test_what_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.4.5")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("192.0.2.10")
    assert not is_loopback("no-such-host.invalid")


def test_the_daemon_is_reached_where_it_listens() -> None:
    assert daemon_url("127.0.0.1:9477") == "http://127.0.0.1:9477"
    assert daemon_url("0.0.0.0:9477") == "http://127.0.0.1:9477"
    assert daemon_url("[::]:9477") == "http://[::1]:9477"
    assert daemon_url("[::1]:9477") == "http://[::1]:9477"
    assert daemon_url("status.example.com:80") == "http://status.example.com:80"
    with pytest.raises(ValueError, match="give --url"):
        daemon_url("127.0.0.1:0")


def test_names_cannot_drive_the_terminal() -> None:
    assert clean("Anna \x1b[31mred\x1b[0m\r\n") == "Anna \\x1b[31mred\\x1b[0m\\r\\n"
    assert clean("Müller 李") == "Müller 李"
    assert clean(None) == ""

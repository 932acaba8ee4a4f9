"""The Microsoft targets against the Graph simulator, over TLS, with the real
msal and httpx: the failure cases every Microsoft target shares beyond
``target_contract.TargetContract`` (which ``test_target_contract.py`` runs for
them), then each target's own.

The targets are driven the way the engine drives them (``apply`` with a
``Change`` and a store-backed ``Memory``); the simulator runs on a
``SimClock`` that is also the targets' clock, so sessions, tokens and
expirations move together.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from polling import eventually_async

from presence_sync.clock import ManualClock
from presence_sync.config import MicrosoftSettings, TlsSettings
from presence_sync.engine import Engine
from presence_sync.errors import AuthError, ConfigError, PermanentError, TransientError
from presence_sync.model import (
    Applied,
    Call,
    Direction,
    Line,
    LineView,
    Person,
    Presence,
    Status,
)
from presence_sync.rules import compile_rules
from presence_sync.sim.certs import client_certificate
from presence_sync.sim.graph import GraphHandle, GraphSim, SimClock, serve
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import Change, Target, target_class, target_env
from presence_sync.targets.teams import TeamsPresenceOptions, TeamsPresenceTarget

SECRET = "graph-secret-0123"
ANNA = "anna@contoso.example"
BEN_UPN = "ben.b@contoso.onmicrosoft.com"
BEN_MAIL = "ben@contoso.example"


class Clock(SimClock):
    """The simulator's clock, also a ``clock.Clock`` for the targets."""

    def monotonic(self) -> float:
        return (self.now() - datetime(2026, 1, 1, tzinfo=UTC)).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


@dataclass
class World:
    sim: GraphSim
    handle: GraphHandle
    clock: Clock
    client_id: str
    store: MemoryStore
    settings: Any
    anna: str
    built: list[Target] = field(default_factory=list)

    def target(
        self, kind: str, name: str | None = None, settings: Any = None, **options: Any
    ) -> Target:
        cls = target_class(kind)
        env = target_env(
            cls.info, settings or self.settings, clock=self.clock, user_agent="presence-sync/t"
        )
        built = cls(name or kind, cls.Options(**options), env)
        self.built.append(built)
        return built

    def change(
        self,
        target: Target,
        desired: Status | None,
        applied: Applied | None,
        person: Person | None = None,
        view: LineView | None = None,
    ) -> Change:
        person = person or PERSON
        memory = TargetMemory(self.store, target.name, person.key)
        return Change(person=person, desired=desired, applied=applied, view=view, memory=memory)

    async def apply(
        self, target: Target, desired: Status | None, applied: Applied | None = None, **kw: Any
    ) -> Applied:
        return await target.apply(self.change(target, desired, applied, **kw))


PERSON = Person(key=ANNA, email=ANNA, extension="100")


def _settings(handle: GraphHandle, sim: GraphSim, client_id: str, **credential: Any) -> Any:
    microsoft = MicrosoftSettings(
        tenant_id=sim.tenant,
        client_id=client_id,
        authority=handle.origin,
        graph_url=handle.origin,
        **(credential or {"client_secret": SECRET}),
    )
    return SimpleNamespace(microsoft=microsoft, tls=TlsSettings(ca_bundle=handle.ca_path))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = Clock()
    sim = GraphSim(clock=clock)
    client_id = sim.register_app(secret=SECRET)
    anna = sim.add_user(ANNA)
    async with serve(sim) as handle:
        world = World(
            sim,
            handle,
            clock,
            client_id,
            MemoryStore(clock=clock),
            _settings(handle, sim, client_id),
            anna,
        )
        yield world
        for target in world.built:
            await target.aclose()


# --- what each target shows, as a person would check it ------------------------------


@dataclass(frozen=True)
class Kind:
    kind: str
    status: Status
    shows: Callable[[World], bool]
    cleared: Callable[[World], bool]
    write_path: str
    permission: str

    def __str__(self) -> str:
        return self.kind


def _presence_shows(w: World) -> bool:
    shown = w.sim.presence(w.anna)
    return (shown["availability"], shown["activity"]) == ("Busy", "InACall")


def _presence_cleared(w: World) -> bool:
    return w.client_id not in w.sim.sessions(w.anna)


def _message(w: World) -> str:
    message = w.sim.presence(w.anna)["statusMessage"] or {}
    return str((message.get("message") or {}).get("content") or "")


def _open_events(w: World) -> list[dict[str, Any]]:
    now = w.clock.now().replace(tzinfo=None)
    return [
        e for e in w.sim.events(w.anna) if datetime.fromisoformat(e["end"]["dateTime"][:19]) > now
    ]


KINDS = [
    Kind(
        "teams_presence",
        Status(availability="Busy", activity="InACall"),
        _presence_shows,
        _presence_cleared,
        "/presence/setPresence",
        "Presence.ReadWrite.All",
    ),
    Kind(
        "teams_status_message",
        Status(text="On a call"),
        lambda w: _message(w) == "On a call",
        lambda w: _message(w) == "",
        "/presence/setStatusMessage",
        "Presence.ReadWrite.All",
    ),
    Kind(
        "outlook_calendar",
        Status(text="On a call"),
        lambda w: [e["subject"] for e in _open_events(w)] == ["On a call"],
        lambda w: len(w.sim.events(w.anna)) == 1 and not _open_events(w),
        "/events",
        "Calendars.ReadWrite",
    ),
]


def _writes(w: World, kind: Kind) -> list[Any]:
    return [
        r
        for r in w.sim.requests("/v1.0/users/")
        if r.method in ("POST", "PATCH", "DELETE") and kind.write_path in r.path and r.status < 300
    ]


@pytest.fixture(params=KINDS, ids=str)
def kind(request: pytest.FixtureRequest) -> Kind:
    param: Kind = request.param
    return param


# --- beyond the shared contract ---------------------------------------------------------
# Apply, clear, re-apply, 401 then a new token, 429, a timeout and an unknown
# person run for every target from tests/contract/target_contract.py; these
# are the Microsoft-only failure cases, for each of the three kinds.


async def test_401_twice_is_an_auth_error_naming_tenant_and_permission(
    world: World, kind: Kind
) -> None:
    target = world.target(kind.kind)
    world.sim.fail_next("/v1.0/users/", 401, count=2, retry_after=None)
    with pytest.raises(AuthError) as error:
        await world.apply(target, kind.status)
    assert world.sim.tenant in str(error.value)
    assert "User.Read.All" in str(error.value)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_before_anything_is_known_is_transient(
    world: World, kind: Kind, status: int
) -> None:
    target = world.target(kind.kind)
    world.sim.fail_next("/v1.0/users/", status, retry_after=None)
    with pytest.raises(TransientError) as error:
        await world.apply(target, kind.status)
    assert error.value.status == status
    applied = await world.apply(target, kind.status)  # the retry works
    assert applied.status == kind.status
    assert kind.shows(world)


async def test_a_refused_permission_is_an_auth_error_naming_it(world: World, kind: Kind) -> None:
    world.sim.set_roles(world.client_id, ["User.Read.All"])
    target = world.target(kind.kind)
    with pytest.raises(AuthError) as error:
        await world.apply(target, kind.status)
    message = str(error.value)
    assert kind.permission in message
    assert world.sim.tenant in message
    assert "admin consent" in message
    assert not _writes(world, kind)


async def test_a_refused_secret_is_an_auth_error(world: World, kind: Kind) -> None:
    settings = _settings(world.handle, world.sim, world.client_id, client_secret="wrong")
    target = world.target(kind.kind, settings=settings)
    with pytest.raises(AuthError, match="AADSTS7000215"):
        await world.apply(target, kind.status)


async def test_token_endpoint_5xx_is_transient(world: World, kind: Kind) -> None:
    target = world.target(kind.kind)
    world.sim.fail_next(f"/{world.sim.tenant}/oauth2/v2.0/token", 503, retry_after=None)
    with pytest.raises(TransientError):
        await world.apply(target, kind.status)


# --- who is who ---------------------------------------------------------------------------


async def test_a_upn_that_differs_from_the_mail_is_found_by_filter_and_cached(
    world: World,
) -> None:
    ben = world.sim.add_user(BEN_UPN, mail=BEN_MAIL)
    person = Person(key=BEN_MAIL, email=BEN_MAIL, extension="101")
    target = world.target("teams_presence")
    status = Status(availability="Busy", activity="InACall")
    applied = await world.apply(target, status, person=person)
    assert world.sim.sessions(ben)[world.client_id]["availability"] == "Busy"
    lookups = len(world.sim.requests("/v1.0/users"))
    await world.apply(target, None, applied, person=person)
    users = [r for r in world.sim.requests("/v1.0/users") if "/presence" not in r.path]
    assert len(users) == lookups - 1  # 404 by mail, then $filter; not again


async def test_ids_from_the_configuration_skip_the_lookup(world: World) -> None:
    person = Person(
        key="x@elsewhere.example",
        email="x@elsewhere.example",
        extension="102",
        ids={"teams_presence": world.anna},
    )
    target = world.target("teams_presence")
    await world.apply(target, Status(availability="Busy", activity="InACall"), person=person)
    assert _presence_shows(world)
    assert not [r for r in world.sim.requests("/v1.0/users") if "/presence" not in r.path]


async def test_certificate_credentials_work(world: World, tmp_path: Path) -> None:
    pair = client_certificate()
    client_id = world.sim.register_app(certificate_pem=pair.cert_pem)
    pem = tmp_path / "app.pem"
    pem.write_bytes(pair.key_pem + pair.cert_pem)
    pem.chmod(0o600)
    settings = _settings(
        world.handle,
        world.sim,
        client_id,
        certificate_file=pem,
        certificate_thumbprint=pair.sha1_thumbprint,
    )
    target = world.target("teams_presence", settings=settings)
    await world.apply(target, Status(availability="Busy", activity="InACall"))
    assert client_id in world.sim.sessions(world.anna)


# --- teams_presence --------------------------------------------------------------------------


async def test_a_three_hour_call_keeps_the_session_alive(world: World) -> None:
    target = world.target("teams_presence")
    refresh_before = target.info.refresh_before
    busy = Status(availability="Busy", activity="InACall")
    applied = await world.apply(target, busy)
    assert applied.expires == applied.at + timedelta(minutes=15)
    end = world.clock.now() + timedelta(hours=3)
    while world.clock.now() < end:
        world.clock.advance(60)
        assert _presence_shows(world), f"lapsed at {world.clock.now()}"
        assert applied.expires is not None
        if world.clock.now() >= applied.expires - timedelta(seconds=refresh_before):
            applied = await world.apply(target, busy, applied)
    await world.apply(target, None, applied)
    sets = world.sim.requests(f"/v1.0/users/{world.anna}/presence/setPresence")
    clears = world.sim.requests(f"/v1.0/users/{world.anna}/presence/clearPresence")
    assert 12 <= len(sets) - 1 <= 15  # 3 h / 15 min, refreshed 2 min early
    assert len(clears) == 1
    assert _presence_cleared(world)
    assert all(r.body["expirationDuration"] == "PT15M" for r in sets)


async def test_clear_without_a_session_is_fine(world: World) -> None:
    target = world.target("teams_presence")
    applied = await world.apply(target, None, Applied(None, world.clock.now()))
    assert applied.status is None
    [clear] = world.sim.requests("/v1.0/users/" + world.anna + "/presence/clearPresence")
    assert clear.status == 404


async def test_the_persons_own_choice_wins_and_is_not_touched(world: World) -> None:
    world.sim.sign_in_client(world.anna, "Available")
    world.sim.set_preferred(world.anna, "DoNotDisturb", "DoNotDisturb")
    target = world.target("teams_presence")
    applied = await world.apply(target, Status(availability="Busy", activity="InACall"))
    assert world.sim.presence(world.anna)["availability"] == "DoNotDisturb"
    await world.apply(target, None, applied)
    assert world.sim.presence(world.anna)["availability"] == "DoNotDisturb"


@pytest.mark.parametrize("expiration", ["PT4M", "PT5H", "3m", "PT"])
def test_expiration_outside_5_minutes_to_4_hours_is_refused(expiration: str) -> None:
    with pytest.raises(ValueError, match="expiration"):
        TeamsPresenceOptions.model_validate({"expiration": expiration})


def test_expiration_accepts_iso_and_config_durations() -> None:
    assert TeamsPresenceOptions.model_validate({"expiration": "PT1H"}).expiration == 3600
    assert TeamsPresenceOptions.model_validate({"expiration": "30m"}).expiration == 1800


async def test_a_pair_teams_does_not_take_is_never_sent(world: World) -> None:
    target = world.target("teams_presence")
    for status in (
        Status(availability="Busy", activity="InAMeeting"),
        Status(availability="Available", activity="Available"),
    ):
        with pytest.raises(PermanentError):
            await world.apply(target, status)
    assert not world.sim.requests(f"/v1.0/users/{world.anna}/presence/setPresence")


# --- teams_status_message ----------------------------------------------------------------


async def test_own_status_message_survives_a_call(world: World) -> None:
    world.sim.set_status_message(world.anna, "Back from lunch at 2")
    target = world.target("teams_status_message")
    applied = await world.apply(target, Status(text="On a call"))
    assert _message(world) == "On a call"
    expiry = world.sim.presence(world.anna)["statusMessage"]["expiryDateTime"]
    assert expiry is not None  # ours always expires
    world.clock.advance(600)
    await world.apply(target, None, applied)
    assert _message(world) == "Back from lunch at 2"
    restored = world.sim.presence(world.anna)["statusMessage"]
    assert restored.get("expiryDateTime") is None  # Graph hides the original expiry


async def test_a_message_changed_mid_call_is_kept(world: World) -> None:
    world.sim.set_status_message(world.anna, "Back from lunch at 2")
    target = world.target("teams_status_message")
    applied = await world.apply(target, Status(text="On a call"))
    world.sim.set_status_message(world.anna, "Working from home")
    world.clock.advance(3600 - 100)  # past refresh time
    applied = await world.apply(target, Status(text="On a call"), applied)
    assert _message(world) == "Working from home"
    await world.apply(target, None, applied)
    assert _message(world) == "Working from home"


async def test_cannot_set_presence_of_another_user_names_the_permission(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    target = world.target("teams_status_message")
    world.sim.fail_next(
        f"/v1.0/users/{world.anna}/presence/setStatusMessage", 403, retry_after=None
    )
    with pytest.raises(AuthError, match=r"Presence\.ReadWrite\.All"):
        await world.apply(target, Status(text="On a call"))


# --- outlook_calendar ----------------------------------------------------------------------


def _view(world: World, line: Line, since: datetime) -> LineView:
    call = Call("c-1", Direction.INBOUND, True, party="+4930123456", answered=True, since=since)
    return LineView("100", line=line, call=call if line is Line.IN_USE else None, since=since)


async def test_a_call_makes_one_event_ending_at_hang_up(world: World) -> None:
    target = world.target("outlook_calendar", category="Phone")
    start = world.clock.now()
    busy = Status(text="On a call")
    applied = await world.apply(target, busy, view=_view(world, Line.IN_USE, start))
    for _ in range(5):  # 50 minutes, refreshed as the engine would
        world.clock.advance(600)
        assert applied.expires is not None
        if world.clock.now() >= applied.expires - timedelta(seconds=120):
            applied = await world.apply(
                target, busy, applied, view=_view(world, Line.IN_USE, start)
            )
    hang_up = world.clock.now()
    world.clock.advance(5)  # the engine answers a little later
    await world.apply(target, None, applied, view=_view(world, Line.IDLE, hang_up))
    [event] = world.sim.events(world.anna)
    assert event["subject"] == "On a call"
    assert event["showAs"] == "busy"
    assert event["isReminderOn"] is False
    assert event["categories"] == ["Phone"]
    assert datetime.fromisoformat(event["start"]["dateTime"][:19]) == start.replace(
        tzinfo=None, microsecond=0
    )
    assert datetime.fromisoformat(event["end"]["dateTime"][:19]) == hang_up.replace(
        tzinfo=None, microsecond=0
    )
    assert "+4930123456" not in str(event)


async def test_a_retried_post_after_a_timeout_makes_one_event(world: World) -> None:
    target = world.target("outlook_calendar", timeout=0.3)
    busy = Status(text="On a call")
    await world.apply(target, None, Applied(None, world.clock.now()))  # resolve the id
    world.sim.hang_next(1.0, f"/v1.0/users/{world.anna}/events")
    with pytest.raises(TransientError):
        await world.apply(target, busy)
    applied = await world.apply(target, busy)
    assert len(world.sim.events(world.anna)) == 1
    await world.apply(target, None, applied)
    assert len(world.sim.events(world.anna)) == 1
    assert not _open_events(world)


async def test_a_call_shorter_than_min_duration_leaves_no_event(world: World) -> None:
    target = world.target("outlook_calendar", min_duration="1m")
    applied = await world.apply(target, Status(text="On a call"))
    world.clock.advance(20)
    await world.apply(target, None, applied)
    assert world.sim.events(world.anna) == []


async def test_an_event_left_open_is_closed_by_the_next_start(world: World) -> None:
    first = world.target("outlook_calendar")
    applied = await world.apply(first, Status(text="On a call"))
    await first.aclose()  # the daemon dies; the store keeps the event id
    world.clock.advance(300)
    second = world.target("outlook_calendar")
    await world.apply(second, None, applied)
    assert len(world.sim.events(world.anna)) == 1
    assert not _open_events(world)


# --- rules: what teams_presence can show -------------------------------------------


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (("Busy", "InAMeeting"), "Teams does not accept Busy/InAMeeting"),
        (("Available", "Available"), "never posted"),
        (("DoNotDisturb", "DoNotDisturb"), "accepted: Away/Away, Busy/InACall"),
    ],
)
def test_a_rule_with_a_pair_teams_refuses_is_a_config_error(
    pair: tuple[str, str], message: str
) -> None:
    raw = [
        {
            "when": {"line": "in-use"},
            "set": {"teams_presence": dict(zip(("availability", "activity"), pair, strict=True))},
        }
    ]
    with pytest.raises(ConfigError) as error:
        compile_rules(raw, targets={"teams_presence": TeamsPresenceTarget.info})
    [problem] = error.value.problems
    assert problem.key == "rules[0].set.teams_presence"
    assert message in problem.message


def test_the_default_rules_show_pairs_teams_takes() -> None:
    info = TeamsPresenceTarget.info
    rules = compile_rules(None, targets={"teams_presence": info})
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    shown = {
        state: rules.evaluate(PERSON, view, now)["teams_presence"]
        for state, view in {
            "in a call": LineView("100", line=Line.IN_USE),
            "do not disturb": LineView("100", line=Line.IDLE, presence=Presence.DND),
        }.items()
    }
    pairs = {
        state: (status.availability, status.activity)
        for state, status in shown.items()
        if status is not None
    }
    assert pairs == {
        "in a call": ("Busy", "InACall"),
        "do not disturb": ("DoNotDisturb", "Presenting"),
    }
    assert info.check is not None
    for availability, activity in pairs.values():
        assert info.check({"availability": availability, "activity": activity}) is None


# --- the shared Graph access --------------------------------------------------------


async def test_one_token_serves_every_target_until_shortly_before_it_expires(
    world: World,
) -> None:
    presence = world.target("teams_presence")
    message = world.target("teams_status_message")
    applied = await world.apply(presence, Status(availability="Busy", activity="InACall"))
    await world.apply(message, Status(text="On a call"))
    assert world.sim.tokens_issued == 1
    world.clock.advance(3600 - 200)  # the token has 200 s left: too little
    await world.apply(presence, None, applied)
    assert world.sim.tokens_issued == 2
    assert not [r for r in world.sim.requests("/v1.0/") if r.status == 401]


class Gate:
    """A TCP relay to ``upstream`` that holds every connection until
    ``open()``: a sign-in endpoint that answers only when the test says so.
    ``arrived`` is set, on this loop, when the first connection comes in."""

    def __init__(self, upstream: str) -> None:
        self._host, port = upstream.removeprefix("https://").rsplit(":", 1)
        self._port = int(port)
        self.arrived = asyncio.Event()
        self._opened = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.origin = ""

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.origin = f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def open(self) -> None:
        self._opened.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrived.set()
        await self._opened.wait()
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_slow_token_endpoint_does_not_block_the_loop(world: World) -> None:
    """The simulator answers on this loop, so a sign-in that blocked it could
    not even reach the held endpoint before MSAL's own timeout failed it."""
    async with Gate(world.handle.origin) as gate:
        microsoft = world.settings.microsoft.model_copy(update={"authority": gate.origin})
        settings = SimpleNamespace(microsoft=microsoft, tls=world.settings.tls)
        target = world.target("teams_presence", settings=settings)
        applying = asyncio.create_task(
            world.apply(target, Status(availability="Busy", activity="InACall"))
        )
        await asyncio.wait_for(gate.arrived.wait(), timeout=30)
        # MSAL waits for the held sign-in endpoint, and this loop runs on.
        assert not applying.done()
        gate.open()
        await applying
    assert _presence_shows(world)


async def test_tls_ca_bundle_wins_over_requests_ca_bundle(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(client_certificate("not the simulator").cert_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    target = world.target("teams_presence")
    await world.apply(target, Status(availability="Busy", activity="InACall"))
    assert _presence_shows(world)


# --- with the engine: a three-hour call on a manual clock ----------------------------


async def test_the_engine_keeps_a_three_hour_call_alive_and_clears_it() -> None:
    clock = ManualClock(datetime.now(UTC))
    sim = GraphSim(clock=clock)
    client_id = sim.register_app(secret=SECRET)
    anna = sim.add_user(ANNA)
    async with serve(sim) as handle:
        settings = _settings(handle, sim, client_id)
        cls = target_class("teams_presence")
        env = target_env(cls.info, settings, clock=clock, user_agent="t")
        target = cls("teams_presence", cls.Options(), env)
        engine = Engine(
            targets={"teams_presence": target},
            store=MemoryStore(clock=clock),
            rules=compile_rules(None, targets={"teams_presence": cls.info}),
            clock=clock,
        )
        engine.set_people([PERSON])
        task = asyncio.get_running_loop().create_task(engine.run())

        async def step(seconds: float) -> None:
            await clock.advance(seconds)
            for _ in range(50):
                await asyncio.sleep(0)
            await eventually_async(lambda: engine.pending() == 0, "the engine idle")

        def sets() -> int:
            return len(sim.requests(f"/v1.0/users/{anna}/presence/setPresence"))

        try:
            engine.resync([LineView("100", line=Line.IN_USE)])
            await step(0)
            assert sets() == 1
            for minute in range(180):
                await step(60)
                shown = sim.presence(anna)
                assert (shown["availability"], shown["activity"]) == ("Busy", "InACall"), minute
            # 3 h / 15 min, each refreshed 2 min before it ran out: every 13 min.
            assert 1 + 12 <= sets() <= 1 + 14
            engine.resync([LineView("100", line=Line.IDLE)])
            await step(0)
            assert client_id not in sim.sessions(anna)
            assert len(sim.requests(f"/v1.0/users/{anna}/presence/clearPresence")) == 1
        finally:
            engine.stop()
            await task
            await target.aclose()


async def test_an_unknown_tenant_is_an_auth_error_naming_it(world: World) -> None:
    microsoft = world.settings.microsoft.model_copy(
        update={"tenant_id": "99999999-9999-9999-9999-999999999999"}
    )
    settings = SimpleNamespace(microsoft=microsoft, tls=world.settings.tls)
    target = world.target("teams_presence", settings=settings)
    with pytest.raises(AuthError, match="99999999-9999-9999-9999-999999999999"):
        await world.apply(target, Status(availability="Busy", activity="InACall"))


def test_a_bad_teams_option_or_pair_in_the_file_exits_78_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1, username: u, password: p}\n"
        "microsoft: {tenant_id: t, client_id: c, client_secret: s}\n"
        'people: [{extension: "100", email: a@example.com}]\n'
        "targets:\n"
        "  teams_presence:\n"
        "    expiration: PT3M\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "presence_sync", "run", "-c", str(config), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 78
    assert "config.yaml:6:17: targets.teams_presence.expiration: PT3M is outside" in run.stderr
    config.write_text(
        config.read_text().replace("PT3M", "PT10M")
        + "rules:\n"
        + "  - when: {line: in-use}\n"
        + "    set: {teams_presence: {availability: Busy, activity: InAMeeting}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "presence_sync", "run", "-c", str(config), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 78
    assert "config.yaml:9:27: rules[0].set.teams_presence: Teams does not accept" in run.stderr


async def test_an_unreachable_token_endpoint_names_host_and_cause(world: World) -> None:
    """MSAL's token request goes through requests: its failure still says
    which host and why, not just ``ConnectionError``."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        microsoft = world.settings.microsoft.model_copy(
            update={"authority": f"https://127.0.0.1:{port}"}
        )
        settings = SimpleNamespace(microsoft=microsoft, tls=world.settings.tls)
        target = world.target("teams_presence", settings=settings)
        with pytest.raises(TransientError) as caught:
            await world.apply(target, KINDS[0].status)
    assert f"token endpoint unreachable: 127.0.0.1:{port}: connection refused" in str(caught.value)

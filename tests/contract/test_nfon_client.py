"""The NFON client against the NFON simulator, over real loopback sockets.

Each test drives the simulator the way NFON could behave (tokens expiring,
streams dropped or silent, garbage on the wire, refused credentials) and
checks what a user of the client would see: the states and calls that come
out, the requests the server saw, the metrics and the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import pytest
from polling import eventually_async
from prometheus_client import REGISTRY

from presence_sync import __version__
from presence_sync.clock import ManualClock
from presence_sync.model import CallState, Direction, Line, Presence, StateEvent
from presence_sync.nfon import (
    AuthError,
    CallEvent,
    Connected,
    CredentialsRejected,
    FullState,
    NfonClient,
    PermanentError,
    TransientError,
)
from presence_sync.nfon.schema import parse_time
from presence_sync.nfon.watch import watch
from presence_sync.sim.nfon import NfonSim, SimHandle, serve_in_thread

T = TypeVar("T")

USER_AGENT = f"presence-sync/{__version__} (K1234)"


# --- helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def simulator(**options: Any) -> Iterator[SimHandle]:
    with serve_in_thread(NfonSim(seed=7, **options)) as handle:
        yield handle


def client_for(handle: SimHandle, **options: Any) -> NfonClient:
    options.setdefault("reconnect_base_delay", 0.05)
    options.setdefault("request_timeout", 5.0)
    return NfonClient(
        handle.base_url,
        handle.sim.customer,
        handle.sim.username,
        handle.sim.password,
        **options,
    )


class Follow(Generic[T]):
    """Consumes a stream iterator in a background task, keeping every item."""

    def __init__(self, stream: AsyncGenerator[T]) -> None:
        self.stream = stream
        self.items: list[T] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.stream:
            self.items.append(item)

    def of(self, kind: type[Any]) -> list[Any]:
        return [item for item in self.items if isinstance(item, kind)]

    async def nth(self, kind: type[Any], n: int = 1) -> Any:
        """The n-th item of ``kind`` (1-based), once it has arrived."""
        await eventually_async(lambda: len(self.of(kind)) >= n, f"{kind.__name__} #{n}")
        return self.of(kind)[n - 1]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.stream.aclose()


def latest(items: list[Any]) -> dict[str, StateEvent]:
    """Every extension's state as a consumer of ``states()`` would know it."""
    view: dict[str, StateEvent] = {}
    for item in items:
        if isinstance(item, FullState):
            view = {state.extension: state for state in item.states}
        elif isinstance(item, StateEvent):
            view[item.extension] = item
    return view


def matches(event: StateEvent | None, wire: dict[str, str]) -> bool:
    return (
        event is not None
        and event.line.value == wire["line"]
        and event.presence.value == wire["presence"]
        and event.updated == parse_time(wire["updated"])
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rejected(stream: str, reason: str) -> float:
    return metric("presence_sync_stream_frames_rejected_total", stream=stream, reason=reason)


def unknown_values(stream: str, field: str) -> float:
    return metric("presence_sync_stream_unknown_values_total", stream=stream, field=field)


def reconnects(stream: str, reason: str) -> float:
    return metric("presence_sync_stream_reconnects_total", stream=stream, reason=reason)


def stream_state(stream: str) -> str | None:
    for state in ("connecting", "connected", "backoff", "stopped"):
        labels = {"stream": stream, "presence_sync_stream_state": state}
        if REGISTRY.get_sample_value("presence_sync_stream_state", labels) == 1.0:
            return state
    return None


# --- REST -----------------------------------------------------------------------------


async def test_user_agent_on_every_request_including_login_and_refresh() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            await client.directory()
            await client.snapshot()
            h.sim.expire_tokens()  # forces a 401, a refresh and a retry
            await client.snapshot(["100"])
            follow = Follow(client.states(expected=20))
            calls = Follow(client.calls())
            await follow.nth(FullState)
            await calls.nth(Connected)
            await follow.close()
            await calls.close()
        stats = h.sim.stats
    assert stats.requests_by_path["POST /login"] == 1
    assert stats.requests_by_path["PUT /login"] == 1
    assert stats.distinct_user_agents == {USER_AGENT}


async def test_snapshot_all_filtered_and_empty() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            everything = await client.snapshot()
            some = await client.snapshot(["101", "117"])
            none = await client.snapshot([])
            requests = h.sim.stats.requests_by_path["GET /extensions/phone/states"]
            wire = h.sim.states()
    assert [s.extension for s in everything] == [w["extension"] for w in wire]
    assert all(matches(s, w) for s, w in zip(everything, wire, strict=True))
    assert all(s.customer == "K1234" for s in everything)
    assert sorted(s.extension for s in some) == ["101", "117"]
    assert none == []
    assert requests == 2
    assert client.expected_extensions == 20


async def test_directory_lists_extensions_and_names() -> None:
    people = [("100", "Anna Example"), ("205", "Ben Beispiel"), ("3000", "Reception")]
    with simulator(extensions=people) as h:
        async with client_for(h) as client:
            directory = await client.directory()
    assert [(e.extension, e.name) for e in directory] == people
    assert [e.uuid for e in directory] == ["100@K1234", "205@K1234", "3000@K1234"]


async def test_5xx_is_transient_and_carries_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="presence_sync.nfon")
    with simulator() as h:
        async with client_for(h) as client:
            h.sim.fail_next("/extensions/phone/states", 503)
            with pytest.raises(TransientError) as caught:
                await client.snapshot()
            assert len(await client.snapshot()) == 20  # the next one works
    error = caught.value
    assert error.status == 503
    assert error.request_id
    logged = [r for r in caplog.records if r.getMessage() == "nfon request failed"]
    assert [r.ctx["request_id"] for r in logged] == [error.request_id]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "header", "wait"),
    [
        (429, "30", 30.0),
        (503, "Mon, 02 Mar 2026 10:01:30 GMT", 90.0),  # an HTTP-date, read against our clock
        (503, "Mon, 02 Mar 2026 09:00:00 GMT", 0.0),  # a date already past: now
        (503, "later", None),
    ],
)
async def test_retry_after_is_read_as_seconds_or_a_date(
    status: int, header: str, wait: float | None
) -> None:
    clock = ManualClock(datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC))
    with simulator() as h:
        async with client_for(h, clock=clock) as client:
            h.sim.fail_next("/extensions/phone/data", status, retry_after=header)
            with pytest.raises(TransientError) as caught:
                await client.directory()
    assert caught.value.status == status
    assert caught.value.retry_after == wait


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_other_4xx_are_permanent(status: int) -> None:
    with simulator() as h:
        async with client_for(h) as client:
            h.sim.fail_next("/extensions/phone/data", status)
            with pytest.raises(PermanentError) as caught:
                await client.directory()
    assert caught.value.status == status
    assert caught.value.request_id


async def test_a_401_gets_one_fresh_token_and_one_retry() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            await client.directory()
            h.sim.expire_tokens()
            assert len(await client.directory()) == 20
            after_one = h.sim.stats
            h.sim.fail_next("/extensions/phone/data", 401, count=2)
            with pytest.raises(AuthError):
                await client.directory()
            after_two = h.sim.stats
    assert (after_one.logins, after_one.refreshes, after_one.unauthorized) == (1, 1, 1)
    # Two 401s in a row: one renewal, one retry, then the error, no loop.
    assert after_two.requests_by_path["GET /extensions/phone/data"] == 5
    assert after_two.refreshes == 2


async def test_refused_refresh_falls_back_to_a_full_login() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            await client.directory()
            h.sim.expire_tokens(refresh=True)
            assert len(await client.directory()) == 20
        stats = h.sim.stats
    assert stats.refresh_failures == 1
    assert stats.logins == 2


async def test_concurrent_requests_log_in_once() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            results = await asyncio.gather(*(client.directory() for _ in range(10)))
        stats = h.sim.stats
    assert all(len(r) == 20 for r in results)
    assert stats.logins == 1


async def test_tokens_are_renewed_before_they_expire() -> None:
    clock = ManualClock()
    with simulator(token_lifetime=300.0) as h:
        async with client_for(h, clock=clock) as client:
            await client.directory()
            await clock.advance(230)
            await client.directory()
            before = h.sim.stats
            await clock.advance(20)  # 250 s: past 80 % of the lifetime
            await client.directory()
            after = h.sim.stats
    assert (before.logins, before.refreshes) == (1, 0)
    assert (after.logins, after.refreshes, after.unauthorized) == (1, 1, 0)


async def test_wrong_password_is_an_auth_error() -> None:
    with simulator() as h, pytest.raises(CredentialsRejected):
        async with NfonClient(h.base_url, "K1234", "api-user", "wrong") as client:
            await client.directory()


async def test_refused_credentials_back_off_instead_of_hammering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    with simulator() as h:
        h.sim.refuse_logins(True)
        async with client_for(h, clock=clock) as client:
            delays = []
            for step in (0, 29.9, 0.1, 59.9, 0.1):
                await clock.advance(step)
                with pytest.raises(CredentialsRejected) as caught:
                    await client.directory()
                delays.append(round(caught.value.retry_in, 1))
            attempts = h.sim.stats.refused_logins
            errors = [
                r
                for r in caplog.records
                if r.levelno == logging.ERROR and r.name.startswith("presence_sync")
            ]

            # A stream must not hammer either: it waits for the backoff.
            follow = Follow(client.states(expected=20))
            await eventually_async(lambda: stream_state("states") == "backoff", "stream backoff")
            refused_while_streaming = h.sim.stats.refused_logins
            h.sim.refuse_logins(False)
            await clock.advance(121)
            full = await follow.nth(FullState)
            await follow.close()
        stats = h.sim.stats
    # Each refusal doubles the wait; requests in between fail without a login.
    assert delays == [30.0, 0.1, 60.0, 0.1, 120.0]
    assert attempts == 3
    assert len(errors) == 3
    assert refused_while_streaming == 3
    assert stats.logins == 1
    assert len(full.states) == 20
    assert stats.requests_by_path.get("GET /extensions/phone/data", 0) == 0


# --- streams --------------------------------------------------------------------------


async def test_bootstrap_then_changes() -> None:
    with simulator() as h:
        async with client_for(h) as client:
            follow = Follow(client.states())  # no hint: the quiet period ends it
            full = await follow.nth(FullState)
            h.sim.set_state("104", line="in-use", presence="busy")
            change = await follow.nth(StateEvent)
            wire = h.sim.state_of("104")
            await follow.close()
    assert not full.reconnect
    assert len(full.states) == 20
    assert matches(change, wire)
    assert [type(i) for i in follow.items] == [FullState, StateEvent]


async def test_bootstrap_ends_on_a_repeated_extension() -> None:
    with simulator(extensions=5) as h:
        async with client_for(h) as client:
            # Quiet period of an hour: only the repeat can end the bootstrap.
            follow = Follow(client.states(bootstrap_quiet=3600))
            await eventually_async(lambda: h.sim.stats.open_streams["states"] == 1, "connect")
            h.sim.set_state("102", presence="dnd")
            full = await follow.nth(FullState)
            change = await follow.nth(StateEvent)
            await follow.close()
    assert [s.extension for s in full.states] == ["100", "101", "102", "103", "104"]
    assert change.extension == "102"
    assert change.presence is Presence.DND


async def test_empty_bootstrap_then_silence_is_an_empty_full_state() -> None:
    with simulator(extensions=0) as h:
        async with client_for(h) as client:
            follow = Follow(client.states(bootstrap_quiet=0.05))
            full = await follow.nth(FullState)
            h.sim.add_extension("900", "New Person")
            change = await follow.nth(StateEvent)
            await follow.close()
    assert full == FullState((), reconnect=False)
    assert change.extension == "900"


@pytest.mark.parametrize("close_on_expiry", [False, True])
async def test_events_keep_flowing_when_the_access_token_expires(close_on_expiry: bool) -> None:
    with simulator(token_lifetime=1.0, close_streams_on_token_expiry=close_on_expiry) as h:
        async with client_for(h) as client:
            follow = Follow(client.states(expected=20))
            await follow.nth(FullState)
            start = time.monotonic()
            changes = 0
            while time.monotonic() - start < 2.5:  # past two token lifetimes
                changes += 1
                extension = str(100 + changes % 20)
                h.sim.set_state(extension, presence=("away", "busy", "available")[changes % 3])
                wire = h.sim.state_of(extension)
                await eventually_async(
                    lambda: matches(latest(follow.items).get(extension), wire),  # noqa: B023
                    f"change {changes}",
                )
            view = latest(follow.items)
            assert all(matches(view.get(w["extension"]), w) for w in h.sim.states())
            snapshot = await client.snapshot()  # REST works with a renewed token
            await follow.close()
        stats = h.sim.stats
    assert changes > 5
    assert len(snapshot) == 20
    assert stats.refreshes + stats.logins >= 2
    if close_on_expiry:
        assert stats.stream_connects["states"] >= 2
        assert len(follow.of(FullState)) == stats.stream_connects["states"]
        assert all(f.reconnect for f in follow.of(FullState)[1:])
    else:
        assert stats.stream_connects["states"] == 1


async def test_a_change_made_while_disconnected_arrives_in_the_next_bootstrap() -> None:
    clock = ManualClock()
    with simulator() as h:
        async with client_for(h, clock=clock) as client:
            follow = Follow(client.states(expected=20))
            first = await follow.nth(FullState)
            eof_before = reconnects("states", "eof")
            h.sim.drop_streams()
            await eventually_async(lambda: stream_state("states") == "backoff", "backoff")
            await eventually_async(lambda: h.sim.stats.open_streams["states"] == 0, "disconnected")
            h.sim.set_state("105", line="in-use", presence="busy")
            wire = h.sim.state_of("105")
            await clock.advance(0.1)  # past the backoff delay (at most 0.05 s here)
            second = await follow.nth(FullState, 2)
            await follow.close()
            eof_after = reconnects("states", "eof")
    assert not first.reconnect
    assert second.reconnect
    assert matches({s.extension: s for s in second.states}["105"], wire)
    assert follow.of(StateEvent) == []  # it came through the bootstrap, not as a change
    assert eof_after - eof_before == 1


async def test_garbage_on_the_wire_does_not_stop_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons = ("json", "shape", "field", "too_large")
    before = {reason: rejected("states", reason) for reason in reasons}
    unknown_before = unknown_values("states", "line")
    big = {"extension": "101", "line": "in-use", "presence": "busy", "pad": "x" * 1024 * 1024}
    garbage = (
        ": a comment line\n\n"
        + "data: {not json\n\n" * 30
        + 'data: ["extension", "100"]\n\n'
        + 'data: {"line": "idle", "presence": "away"}\n\n'
        + 'data: {"extension": "100", "line": "on-hold",\ndata:  "presence": "available"}\n\n'
        + f"data: {json.dumps(big)}\n\n"
        + "data: "
        + "y" * (5 * 1024 * 1024)
        + "\n\n"
    )
    with simulator() as h:
        async with client_for(h) as client:
            follow = Follow(client.states(expected=20))
            await follow.nth(FullState)
            assert h.sim.inject_raw("states", garbage) == 1
            h.sim.set_state("102", line="ringing")
            events = [await follow.nth(StateEvent, n) for n in (1, 2, 3)]
            await follow.close()
    after = {reason: rejected("states", reason) for reason in reasons}
    assert [(e.extension, e.line, e.presence) for e in events] == [
        ("100", Line.UNKNOWN, Presence.AVAILABLE),
        ("101", Line.IN_USE, Presence.BUSY),
        ("102", Line.RINGING, Presence.AVAILABLE),
    ]
    assert {r: after[r] - before[r] for r in reasons} == {
        "json": 30,
        "shape": 1,
        "field": 1,
        "too_large": 1,
    }
    assert unknown_values("states", "line") - unknown_before == 1
    skipped = [r for r in caplog.records if r.getMessage() == "nfon frame skipped"]
    assert len([r for r in skipped if r.ctx["detail"] == "JSONDecodeError"]) == 1  # type: ignore[attr-defined]


async def test_call_events_and_numbers_stay_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="presence_sync")
    with simulator() as h:
        earlier = h.sim.ring("103", party="4930111111")  # before we listen
        async with client_for(h) as client:
            follow = Follow(client.calls())
            connected = await follow.nth(Connected)
            h.sim.hangup(earlier)
            h.sim.inject_raw("calls", 'data: {"caller": "4930222222", "state": "ring"}\n\n')
            answered = h.sim.call("104", party="4930333333")
            h.sim.hangup(answered)
            events = [await follow.nth(CallEvent, n) for n in (1, 2, 3, 4)]
            await follow.close()
    assert connected == Connected("calls", reconnect=False)
    assert [(e.uuid, e.state, e.extension) for e in events] == [
        (earlier, CallState.HANGUP, "103"),  # never saw it ring: fine
        (answered, CallState.RING, "104"),
        (answered, CallState.ANSWER, "104"),
        (answered, CallState.HANGUP, "104"),
    ]
    assert all(e.direction is Direction.INBOUND and e.external for e in events)
    assert events[1].party == "4930333333"
    assert rejected("calls", "field") >= 1
    assert not re.search(r"4930\d{6}", caplog.text)


async def test_a_silent_stream_is_restarted() -> None:
    clock = ManualClock()
    with simulator(keepalive=None) as h:
        async with client_for(h, clock=clock, liveness_timeout=30.0) as client:
            follow = Follow(client.calls())
            await follow.nth(Connected)
            before = reconnects("calls", "timeout")
            await clock.advance(29)
            still = h.sim.stats.stream_connects["calls"]
            await clock.advance(2)
            await eventually_async(
                lambda: reconnects("calls", "timeout") > before,
                "the timeout",
            )
            await clock.advance(5)  # past the backoff, if it is still waiting
            again = await follow.nth(Connected, 2)
            await follow.close()
            after = reconnects("calls", "timeout")
        stats = h.sim.stats
    assert still == 1
    assert again == Connected("calls", reconnect=True)
    assert stats.stream_connects["calls"] == 2
    assert after - before == 1


async def test_keepalive_comments_keep_a_quiet_stream_alive() -> None:
    with simulator(keepalive=0.05) as h:
        async with client_for(h, liveness_timeout=0.3) as client:
            follow = Follow(client.calls())
            await follow.nth(Connected)
            start = time.monotonic()
            await eventually_async(lambda: time.monotonic() - start > 1.0, "a second of quiet")
            connects = h.sim.stats.stream_connects["calls"]
            await follow.close()
    assert connects == 1
    assert len(follow.items) == 1


@pytest.mark.parametrize("event_ids", [True, False])
async def test_last_event_id_is_sent_back_only_when_the_server_gave_ids(event_ids: bool) -> None:
    with simulator(event_ids=event_ids) as h:
        async with client_for(h) as client:
            follow = Follow(client.states(expected=20))
            await follow.nth(FullState)
            h.sim.set_state("100", presence="away")
            await follow.nth(StateEvent)
            h.sim.drop_streams()
            await follow.nth(FullState, 2)
            await follow.close()
        stats = h.sim.stats
    assert stats.stream_connects["states"] == 2
    if event_ids:
        assert stats.last_event_id_headers == 1
        assert stats.last_event_ids == ("1",)  # the id of the one change
    else:
        assert stats.last_event_id_headers == 0


async def test_http_errors_on_connect_back_off_and_recover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="presence_sync.nfon.stream")
    with simulator() as h:
        async with client_for(h) as client:
            h.sim.fail_next("/extensions/phone/calls", 503, count=3)
            follow = Follow(client.calls())
            connected = await follow.nth(Connected)
            await follow.close()
        stats = h.sim.stats
    messages = [r.getMessage() for r in caplog.records if r.name == "presence_sync.nfon.stream"]
    assert connected == Connected("calls", reconnect=False)
    assert stats.requests_by_path["GET /extensions/phone/calls"] == 4
    # One warning for the outage and one line when it is over, not one per retry.
    assert messages == ["nfon stream lost; reconnecting with backoff", "nfon stream recovered"]


# --- watch ----------------------------------------------------------------------------


async def test_watch_prints_the_directory_states_and_calls() -> None:
    people = [("100", "Anna Example"), ("2001", "Ben")]
    with simulator(extensions=people) as h:
        out = io.StringIO()
        async with client_for(h) as client:
            task = asyncio.create_task(watch(client, out))
            await eventually_async(lambda: out.getvalue().count("\n") >= 3, "the bootstrap lines")
            h.sim.set_state("2001", presence="dnd")
            h.sim.set_state("2001", presence="dnd")  # no change: no line
            call = h.sim.call("100", party="4930123456")
            h.sim.hangup(call)
            await eventually_async(lambda: "call ended" in out.getvalue(), "the hangup line")
            # The states stream is in order: once 100 is idle again, the
            # repeated dnd (sent before the call) has been read too.
            idle_again = "100   Anna Example  idle     available"
            await eventually_async(lambda: out.getvalue().count(idle_again) == 2, "100 idle again")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in out.getvalue().splitlines()]
    assert lines[0] == "2 extensions"
    assert lines[1:3] == [
        "100   Anna Example  idle     available",
        "2001  Ben           idle     available",
    ]
    assert lines[3] == "2001  Ben           idle     dnd"
    assert lines.count("2001  Ben           idle     dnd") == 1
    assert "100   Anna Example  inbound call ringing (external)" in lines
    assert "100   Anna Example  inbound call answered (external)" in lines
    assert "100   Anna Example  inbound call ended (external)" in lines
    assert "100   Anna Example  in-use   available" in lines
    assert "4930123456" not in out.getvalue()


async def test_watch_shows_names_from_nfon_escaped() -> None:
    """A name with an escape sequence or a line break cannot recolour the
    admin's terminal or start a line of its own."""
    with simulator(extensions=[("100", "Anna \x1b[31mRed\nFake line\u202e")]) as h:
        out = io.StringIO()
        async with client_for(h) as client:
            task = asyncio.create_task(watch(client, out))
            await eventually_async(lambda: out.getvalue().count("\n") >= 2, "the bootstrap line")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    lines = [re.sub(r"^\d\d:\d\d:\d\d  ", "", line) for line in out.getvalue().splitlines()]
    assert lines == [
        "1 extensions",
        "100  Anna \\x1b[31mRed\\nFake line\\u202e  idle     available",
    ]


async def test_closing_the_client_ends_open_streams() -> None:
    with simulator() as h:
        client = client_for(h)
        follow = Follow(client.calls())
        await follow.nth(Connected)
        await client.aclose()
        await eventually_async(follow.task.done, "the stream to end")
        await follow.close()
    assert follow.task.exception() is None
    assert stream_state("calls") == "stopped"

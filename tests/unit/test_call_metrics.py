"""Metrics fed by the daemon: ``CallMeter`` counts calls once when they end,
by direction and result, with ring and talk times measured on the injected
clock; ``set_readiness`` shows /readyz's components."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from presence_sync.clock import ManualClock
from presence_sync.model import CallEvent, CallState, Direction
from presence_sync.ops import metrics
from presence_sync.ops.calls import CallMeter, call_result


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Calls:
    """Plays call events into a meter while the clock moves on."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.meter = CallMeter(self.clock, forget_after=3600)

    async def wait(self, seconds: float) -> None:
        await self.clock.advance(seconds)

    def event(
        self,
        uuid: str,
        state: CallState,
        *,
        extension: str = "100",
        direction: Direction = Direction.INBOUND,
        error: str | None = None,
    ) -> None:
        self.meter.observe(
            CallEvent(uuid, state, extension, direction, caller="4930123456", error=error)
        )


@pytest.fixture
def calls() -> Calls:
    return Calls()


async def test_an_answered_call_has_a_ring_and_a_talk_time(calls: Calls) -> None:
    answered = value("presence_sync_calls_total", direction="inbound", result="answered")
    ring = value("presence_sync_call_ring_duration_seconds_sum", direction="inbound")
    talk = value("presence_sync_call_talk_duration_seconds_sum", direction="inbound")
    calls.event("a", CallState.RING)
    await calls.wait(4)
    calls.event("a", CallState.ANSWER)
    await calls.wait(65)
    assert value("presence_sync_calls_total", direction="inbound", result="answered") == answered
    calls.event("a", CallState.HANGUP)
    assert (
        value("presence_sync_calls_total", direction="inbound", result="answered") == answered + 1
    )
    assert value("presence_sync_call_ring_duration_seconds_sum", direction="inbound") == ring + 4
    assert value("presence_sync_call_talk_duration_seconds_sum", direction="inbound") == talk + 65
    assert len(calls.meter) == 0


async def test_a_call_nobody_answered_is_missed_and_rang_until_its_end(calls: Calls) -> None:
    missed = value("presence_sync_calls_total", direction="outbound", result="missed")
    ring = value("presence_sync_call_ring_duration_seconds_sum", direction="outbound")
    talks = value("presence_sync_call_talk_duration_seconds_count", direction="outbound")
    calls.event("m", CallState.DIAL, direction=Direction.OUTBOUND)
    calls.event("m", CallState.RING, direction=Direction.OUTBOUND)
    await calls.wait(20)
    calls.event("m", CallState.HANGUP, direction=Direction.OUTBOUND)
    assert value("presence_sync_calls_total", direction="outbound", result="missed") == missed + 1
    assert value("presence_sync_call_ring_duration_seconds_sum", direction="outbound") == ring + 20
    assert value("presence_sync_call_talk_duration_seconds_count", direction="outbound") == talks


@pytest.mark.parametrize(
    ("error", "result"),
    [
        ("busy", "busy"),
        ("reject", "rejected"),
        ("cancel", "cancelled"),
        ("timeout", "missed"),
        ("unspecified", "failed"),
        ("something-new", "failed"),
    ],
)
def test_a_call_error_names_the_result(error: str, result: str) -> None:
    assert call_result(False, error) == result
    assert call_result(True, error) == "answered"


async def test_each_leg_of_an_internal_call_counts_with_its_own_direction(calls: Calls) -> None:
    inbound = value("presence_sync_calls_total", direction="inbound", result="answered")
    outbound = value("presence_sync_calls_total", direction="outbound", result="answered")
    for state in (CallState.RING, CallState.ANSWER, CallState.HANGUP):
        calls.event("i", state, extension="100", direction=Direction.OUTBOUND)
        calls.event("i", state, extension="101", direction=Direction.INBOUND)
    assert value("presence_sync_calls_total", direction="inbound", result="answered") == inbound + 1
    assert (
        value("presence_sync_calls_total", direction="outbound", result="answered") == outbound + 1
    )


async def test_calls_under_way_before_the_stream_connected_are_not_guessed(calls: Calls) -> None:
    """NFON replays nothing: a hang-up of a call never seen is not counted,
    and a call joined answered has a talk time but no ring time."""
    total = sum(
        value("presence_sync_calls_total", direction="inbound", result=r)
        for r in ("answered", "missed")
    )
    rings = value("presence_sync_call_ring_duration_seconds_count", direction="inbound")
    calls.event("old", CallState.HANGUP)
    calls.event("joined", CallState.ANSWER)
    await calls.wait(30)
    calls.event("joined", CallState.HANGUP)
    after = sum(
        value("presence_sync_calls_total", direction="inbound", result=r)
        for r in ("answered", "missed")
    )
    assert after == total + 1
    assert value("presence_sync_call_ring_duration_seconds_count", direction="inbound") == rings


async def test_legs_whose_end_never_came_are_forgotten(calls: Calls) -> None:
    calls.event("lost", CallState.RING)
    assert len(calls.meter) == 1
    await calls.wait(3600)
    calls.event("next", CallState.RING)
    assert len(calls.meter) == 1


def test_readiness_gauges_follow_the_components_and_drop_removed_ones() -> None:
    metrics.set_readiness(
        {"nfon_stream": {"ok": True}, "nfon_login": {"ok": False}, "target:old": {"ok": True}}
    )
    assert value("presence_sync_ready", component="nfon_stream") == 1
    assert REGISTRY.get_sample_value("presence_sync_ready", {"component": "nfon_login"}) == 0
    assert value("presence_sync_ready", component="target:old") == 1
    metrics.set_readiness({"nfon_stream": {"ok": False}, "nfon_login": {"ok": True}})
    assert REGISTRY.get_sample_value("presence_sync_ready", {"component": "target:old"}) is None
    assert value("presence_sync_ready", component="nfon_login") == 1

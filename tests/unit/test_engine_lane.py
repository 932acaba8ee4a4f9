"""The lane's health (one ``Health`` value, its moves), its alarm, and the
question "does this key need a request" asked without side effects."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import pytest
from engine_helpers import BUSY, Remote, make_target, settle

from presence_sync.clock import ManualClock
from presence_sync.engine.lane import Alarm, Health, Lane, Mode
from presence_sync.engine.ledger import Record
from presence_sync.model import Applied

# --- Health: a pure value -------------------------------------------------------------


def test_a_failure_starts_an_episode_once() -> None:
    health = Health().failed()
    assert health.mode is Mode.FAILING
    assert health.failed() is health
    assert not health.paused(0.0)
    assert health.succeeded() == Health()


def test_a_throttle_pauses_and_a_longer_pause_already_on_wins() -> None:
    health = Health().throttled(now=10.0, wait=30.0)
    assert (health.mode, health.until) == (Mode.THROTTLED, 40.0)
    assert health.paused(39.9)
    assert not health.paused(40.0)
    assert health.throttled(now=20.0, wait=5.0) is health  # until 25 < 40
    assert health.throttled(now=20.0, wait=60.0).until == 80.0


def test_rejections_double_the_lock_out_up_to_the_cap() -> None:
    health = Health()
    pauses = []
    now = 0.0
    for _ in range(6):
        health = health.locked_out(now, first=300.0, cap=3600.0)
        pauses.append(health.until - now)
        now = health.until  # the probe after the pause is rejected again
    assert pauses == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0]
    assert health.mode is Mode.LOCKED_OUT
    assert health.rejections == 6
    assert health.probing


def test_a_rejection_during_the_lock_out_changes_nothing() -> None:
    health = Health().locked_out(0.0, first=300.0, cap=3600.0)
    assert health.locked_out(10.0, first=300.0, cap=3600.0) is health


def test_a_throttle_while_probing_keeps_the_rejections_until_a_success() -> None:
    locked = Health().locked_out(0.0, first=300.0, cap=3600.0)
    throttled = locked.throttled(now=400.0, wait=10.0)  # the probe got a 429
    assert (throttled.mode, throttled.rejections) == (Mode.THROTTLED, 1)
    assert throttled.probing
    assert not throttled.succeeded().probing


# --- Lane: health moves, limits and the bucket ------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def lane_for(clock: ManualClock, **info: float | int | str) -> Lane:
    target = make_target("teams", Remote(clock), **info)
    return Lane(
        "teams", target, type(target).info, clock, ring=lambda _: None, watch=lambda _: None
    )


def test_the_lane_says_when_an_episode_begins(clock: ManualClock) -> None:
    lane = lane_for(clock)
    assert lane.failed() is True
    assert lane.failed() is False
    assert lane.throttle(5.0) is False  # the same episode
    assert lane.recovered().mode is Mode.THROTTLED
    assert lane.throttle(5.0) is True  # a new one


def test_a_throttle_of_zero_seconds_still_pauses_a_second(clock: ManualClock) -> None:
    lane = lane_for(clock)
    lane.throttle(0.0)
    assert lane.paused(clock.monotonic() + 0.99)
    assert not lane.paused(clock.monotonic() + 1.0)


def test_a_lock_out_probes_with_one_request_until_a_success(clock: ManualClock) -> None:
    lane = lane_for(clock, concurrency=4)
    assert lane.limit == 4
    assert lane.lock_out(300.0, 3600.0) == 300.0
    assert lane.lock_out(300.0, 3600.0) is None  # same batch
    assert lane.limit == 1
    assert lane.recovered().rejections == 1
    assert lane.limit == 4


def test_after_a_pause_the_bucket_starts_with_one_token(clock: ManualClock) -> None:
    lane = lane_for(clock, rate=1.0, burst=5)
    lane.throttle(10.0)
    end = clock.monotonic() + 10.0
    assert lane.take_token(end) == 0.0
    assert lane.take_token(end) == pytest.approx(1.0)  # no burst into the same wall


# --- the question and the schedule --------------------------------------------------------


def test_asking_whether_a_key_needs_work_schedules_nothing(clock: ManualClock) -> None:
    lane = lane_for(clock, refresh_before=60.0)
    applied = Applied(status=BUSY, at=clock.now(), expires=clock.now() + timedelta(hours=1))
    record = Record(applied)

    for _ in range(3):
        assert not lane.needs(BUSY, record)
    assert lane.next_timer() == math.inf
    assert lane.state("k") is None

    lane.plan_refresh("k", record)
    assert lane.next_timer() == pytest.approx(clock.monotonic() + 3540.0)
    assert lane.needs(None, record)  # differs
    assert lane.needs(BUSY, Record(applied, uncertain=True))  # not sure it is there


async def test_a_refresh_is_needed_once_it_is_due(clock: ManualClock) -> None:
    lane = lane_for(clock, refresh_before=60.0)
    applied = Applied(status=BUSY, at=clock.now(), expires=clock.now() + timedelta(seconds=600))
    await clock.advance(539.0)
    assert not lane.needs(BUSY, Record(applied))
    await clock.advance(1.0)
    assert lane.needs(BUSY, Record(applied))


# --- the alarm ------------------------------------------------------------------------------


async def test_the_alarm_keeps_the_earlier_moment_and_rings_once(clock: ManualClock) -> None:
    rings: list[float] = []
    alarm = Alarm(clock, "teams", lambda: rings.append(clock.monotonic()), lambda _: None)
    loop = asyncio.get_running_loop()
    start = clock.monotonic()
    alarm.set(start + 10.0, loop)
    alarm.set(start + 20.0, loop)  # later: the earlier one stays
    alarm.set(start + 5.0, loop)  # earlier: replaces it
    await settle()
    await clock.advance(30.0)
    await settle()
    assert rings == [start + 5.0]
    assert alarm.cancel() is None  # rang: nothing left to stop


async def test_stopping_a_lane_cancels_its_alarm(clock: ManualClock) -> None:
    rings: list[float] = []
    target = make_target("teams", Remote(clock))
    lane = Lane(
        "teams",
        target,
        type(target).info,
        clock,
        ring=lambda _: rings.append(clock.monotonic()),
        watch=lambda _: None,
    )
    lane.arm(clock.monotonic() + 1.0, asyncio.get_running_loop())
    [task] = lane.stop()
    await asyncio.gather(task, return_exceptions=True)
    await clock.advance(5.0)
    await settle()
    assert rings == []
    assert task.cancelled()

"""The status documents say the same kind of thing the same way (issue 16
point 15): every key has a ``since`` (null only while NFON has not reported
the line), and a target's column shows what that target writes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar

from engine_helpers import CallRules, person

from presence_sync.api.readiness import Readiness
from presence_sync.api.status import Parts, StatusBuilder
from presence_sync.clock import ManualClock
from presence_sync.engine import Engine
from presence_sync.lines import Lines
from presence_sync.model import Line, Presence, StateEvent
from presence_sync.store import MemoryStore
from presence_sync.targets.base import TargetEnv, TargetInfo
from presence_sync.targets.log import LogOptions, LogTarget

ZONE = timezone(timedelta(hours=1))
RESYNC = datetime(2026, 12, 2, 8, 59, tzinfo=UTC)


class StatusMessageTarget(LogTarget):
    """Stands where a teams_status_message target would: it writes only text."""

    info: ClassVar[TargetInfo] = dataclasses.replace(LogTarget.info, kind="teams_status_message")


def build(
    resync: datetime | None = RESYNC,
) -> tuple[Engine, Lines, StatusBuilder, ManualClock]:
    clock = ManualClock(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
    env = TargetEnv(clock=clock, user_agent="test")
    targets = {
        "teams": LogTarget("teams", LogOptions(), env),
        "message": StatusMessageTarget("message", LogOptions(), env),
    }
    engine = Engine(targets=targets, store=MemoryStore(), rules=CallRules(targets), clock=clock)
    engine.set_people([person("anna", "100"), person("ben", "101"), person("cleo", "102")])
    lines = Lines(clock)
    ready = Readiness(True, {}, "Ready: following NFON")
    builder = StatusBuilder(lambda: Parts(clock.now(), engine, ready, resync), zone=ZONE)
    return engine, lines, builder, clock


def test_every_key_has_a_since_except_while_waiting_for_nfon() -> None:
    engine, lines, builder, _ = build()
    states = [
        StateEvent("100", Line.IN_USE, Presence.AVAILABLE),
        StateEvent("101", Line.IDLE, Presence.AVAILABLE),
    ]
    engine.resync(lines.on_full_state(states, engine), complete=False)
    doc = builder.status()
    since = {
        (p["email"], name): (k["state"], k["since"])
        for p in doc["people"]
        for name, k in p["targets"].items()
    }
    # Anna is queued (the engine does not run here): since she became so.
    assert since[("anna@example.com", "teams")] == ("queued", "2026-12-02T10:00:00+01:00")
    # Ben is in sync with nothing of ours: since the full state found him so.
    assert since[("ben@example.com", "teams")] == ("in-sync", "2026-12-02T09:59:00+01:00")
    assert since[("ben@example.com", "message")] == ("in-sync", "2026-12-02T09:59:00+01:00")
    # Cleo's line is not known yet: the one state without a time.
    assert since[("cleo@example.com", "teams")] == ("waiting", None)


def test_a_target_column_shows_only_what_that_target_writes() -> None:
    engine, lines, builder, _ = build()
    engine.resync(lines.on_full_state([StateEvent("100", Line.IN_USE, Presence.AVAILABLE)], engine))
    anna = builder.person("100")
    assert anna is not None
    assert anna["targets"]["teams"]["desired"] == 'Busy/InACall "On a call"'
    # The rule's whole value went to both; the status message target writes the text.
    assert anna["targets"]["message"]["desired"] == '"On a call"'

"""Pieces of the composition root that are not worth a whole process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from presence_sync.app import Daemon
from presence_sync.clock import ManualClock
from presence_sync.errors import TransientError
from presence_sync.lines import Lines
from presence_sync.model import Line, LineView, Presence, StateEvent


async def test_a_failing_scheduled_job_logs_once_when_it_fails_and_once_when_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = [TransientError("503 from NFON")] * 3 + [None, None]
    runs = 0

    async def job() -> None:
        nonlocal runs
        outcome = outcomes[runs]
        runs += 1
        if outcome is not None:
            raise outcome

    guarded = Daemon(tmp_path / "config.yaml")._guarded("resync", job)
    caplog.set_level(logging.INFO, logger="presence_sync.app")
    for _ in outcomes:
        await guarded()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "resync failed; will retry on schedule: 503 from NFON",
        "resync works again",
    ]
    assert runs == len(outcomes)


async def test_an_empty_snapshot_does_not_clear_everyone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    daemon = Daemon(tmp_path / "config.yaml", clock=clock)
    daemon.lines = Lines(clock)
    daemon.lines.on_full_state([StateEvent("100", Line.IN_USE, Presence.AVAILABLE)])
    resyncs: list[int] = []

    class Nfon:
        async def snapshot(self) -> list[StateEvent]:
            return []

    class Engine:
        def resync(self, views: list[LineView], *, complete: bool) -> int:
            resyncs.append(len(views))
            return 0

    daemon.nfon = Nfon()  # type: ignore[assignment]
    daemon.engine = Engine()  # type: ignore[assignment]
    await daemon.resync()
    assert resyncs == []
    assert daemon.lines.get("100") is not None
    assert "snapshot listed no extensions" in caplog.text

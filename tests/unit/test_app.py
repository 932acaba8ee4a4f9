"""Pieces of the composition root that are not worth a whole process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from presence_sync.app import Daemon
from presence_sync.errors import TransientError
from presence_sync.schedule import guarded


async def test_a_failing_scheduled_job_logs_once_when_it_fails_and_once_when_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes = [TransientError("503 from NFON")] * 3 + [None, None]
    runs = 0

    async def job() -> None:
        nonlocal runs
        outcome = outcomes[runs]
        runs += 1
        if outcome is not None:
            raise outcome

    run = guarded("resync", job)
    caplog.set_level(logging.INFO, logger="presence_sync.schedule")
    for _ in outcomes:
        await run()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "resync failed; will retry on schedule: 503 from NFON",
        "resync works again",
    ]
    assert runs == len(outcomes)


def test_the_daemon_has_no_runtime_before_it_runs(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = Daemon(tmp_path / "config.yaml").runtime

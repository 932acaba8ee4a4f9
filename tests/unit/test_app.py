"""Pieces of the composition root and the NFON feed that are not worth a whole process."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from presence_sync.app import Daemon, load, wire
from presence_sync.clock import ManualClock
from presence_sync.errors import TransientError
from presence_sync.feed import Feed
from presence_sync.model import Line, Presence, StateEvent
from presence_sync.nfon import NfonClient
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


CONFIG = """nfon:
  base_url: http://127.0.0.1:9/v1
  customer: K1234
  username: api-user
  password: api-secret
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
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG.replace("state.db", str(tmp_path / "s.db")))
    clock = ManualClock()
    runtime = await wire(load(tmp_path / "config.yaml"), clock=clock, dry_run=True)
    runtime.lines.on_full_state([StateEvent("100", Line.IN_USE, Presence.AVAILABLE)])
    async with nfon_answering([]) as nfon:
        feed = Feed(nfon, runtime.lines, runtime.engine, runtime.directory, clock)
        await feed.resync()
    assert runtime.lines.get("100") is not None
    assert "snapshot listed no extensions" in caplog.text
    await runtime.nfon.aclose()
    runtime.store.close()


def test_the_daemon_has_no_runtime_before_it_runs(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = Daemon(tmp_path / "config.yaml").runtime

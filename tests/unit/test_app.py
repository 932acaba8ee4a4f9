"""Pieces of the composition root that are not worth a whole process."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from presence_sync import app
from presence_sync.app import Daemon
from presence_sync.clock import ManualClock
from presence_sync.errors import TransientError
from presence_sync.feed import Feed
from presence_sync.rules import compiler
from presence_sync.schedule import guarded
from presence_sync.targets import base


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


CONFIG = """\
nfon:
  customer: K1234
  username: api
  password: pw
people:
  - {extension: "100", email: anna@example.com}
targets:
  log: {}
  hook: {kind: webhook, url: "https://hooks.example.com/x"}
rules:
  - when: {line: in-use}
    set: {log: {text: On a call}, hook: {text: On a call}}
state:
  path: state.db
http:
  listen: ""
"""


async def test_loading_and_wiring_resolve_each_target_and_compile_the_rules_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    compiled: list[object] = []
    builtin = dict(base.BUILTIN)

    class Counting(dict[str, str]):
        def get(self, kind: str, default: Any = None) -> Any:  # type: ignore[override]
            lookups.append(kind)
            return builtin.get(kind, default)

    real_rules = compiler._Compiler.rules

    def counting_rules(self: Any, raw: Any, zone: Any) -> Any:
        compiled.append(raw)
        return real_rules(self, raw, zone)

    monkeypatch.setattr(base, "BUILTIN", Counting(builtin))
    monkeypatch.setattr(compiler._Compiler, "rules", counting_rules)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("state.db", str(tmp_path / "s.db")))

    loaded = app.load(config)
    runtime = await app.wire(loaded, clock=ManualClock())
    try:
        assert sorted(lookups) == ["log", "webhook"]
        assert len(compiled) == 1
        assert set(runtime.targets) == {"log", "hook"}
        # The runtime's rules are the compiled ones, with the directory's names.
        assert runtime.rules.every_rule == loaded.rules.every_rule
        assert runtime.rules.names == runtime.directory.name_for_number
    finally:
        runtime.feed.close()
        await runtime.nfon.aclose()
        await app.close_targets(runtime.targets.values())
        runtime.store.close()


CALL_RULES = """\
rules:
  - when: {line: in-use, direction: outbound}
    set: {log: {text: Calling out}}
"""


async def test_a_reload_builds_a_new_feed_whole(tmp_path: Path) -> None:
    """A reload that changes NFON builds a new feed with its call settle and
    the last resync of the one it replaces; one that does not keeps the feed
    and the NFON client."""
    config = tmp_path / "config.yaml"
    plain = CONFIG.replace("state.db", str(tmp_path / "s.db"))
    config.write_text(plain)
    clock = ManualClock()
    old = await app.wire(app.load(config), clock=clock, dry_run=True)
    resynced = clock.now()
    old = dataclasses.replace(
        old, feed=Feed(old.nfon, old.lines, old.engine, old.directory, clock, last_resync=resynced)
    )
    rules = plain[: plain.index("rules:")] + CALL_RULES + plain[plain.index("state:") :]
    built: list[app.Runtime] = []
    try:
        config.write_text(rules.replace("password: pw", "password: pw\n  call_settle: 2s"))
        same, nfon_changed = await app.rewire(old, app.load(config), clock=clock, dry_run=True)
        built.append(same)
        assert not nfon_changed
        assert same.feed is old.feed
        assert same.nfon is old.nfon

        config.write_text(rules.replace("customer: K1234", "customer: K9876"))
        new, nfon_changed = await app.rewire(old, app.load(config), clock=clock, dry_run=True)
        built.append(new)
        assert nfon_changed
        assert new.feed is not old.feed
        assert new.feed.nfon is new.nfon
        assert new.feed.settle == 0.3  # nfon.call_settle's default: the rules look at calls
        assert new.feed.last_resync == resynced
        assert new.rules.names == old.directory.name_for_number
    finally:
        for runtime in [*built, old]:
            runtime.feed.close()
            await runtime.nfon.aclose()
        old.store.close()


async def test_a_reload_that_moves_the_store_is_refused(tmp_path: Path) -> None:
    """The store is opened once: a reload naming another one (a new
    state.path, state.url instead) would otherwise go on writing to the old
    one without a word."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    clock = ManualClock()
    old = await app.wire(app.load(config), clock=clock)
    try:
        config.write_text(CONFIG.replace("path: state.db", "path: elsewhere.db"))
        with pytest.raises(app.ReloadRefused, match="state: the store is opened once"):
            await app.rewire(old, app.load(config), clock=clock)

        config.write_text(CONFIG.replace("path: state.db", "url: postgresql://p@db/presence"))
        with pytest.raises(app.ReloadRefused, match="takes a restart"):
            await app.rewire(old, app.load(config), clock=clock)
    finally:
        old.feed.close()
        await old.nfon.aclose()
        await app.close_targets(old.targets.values())
        old.store.close()


class _SlowStart:
    """Just what ``Daemon._startup`` reads of a runtime: NFON's extensions
    never come, the group's members come when ``members_go`` is set."""

    def __init__(self) -> None:
        self.members_runs = 0
        self.members_cancelled = 0
        self.members_go = asyncio.Event()
        never = asyncio.Event()

        async def run_now(job: str) -> None:
            assert job == "members"
            self.members_runs += 1
            try:
                await self.members_go.wait()
            except asyncio.CancelledError:
                self.members_cancelled += 1
                raise

        self.feed = SimpleNamespace(refresh_directory=never.wait)
        self.schedules = SimpleNamespace(run_now=run_now)
        self.members = SimpleNamespace(source=object())


async def test_startup_cut_off_by_nfon_runs_one_members_refresh_that_a_stop_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "STARTUP_DIRECTORY_TIMEOUT", 0.05)
    daemon = Daemon(tmp_path / "config.yaml")
    runtime = _SlowStart()
    daemon._runtime = runtime  # type: ignore[assignment]
    assert await daemon._startup()
    task = daemon._members_task
    assert task is not None
    assert not task.done()
    # The stop path cancels the daemon's own members task: that is the one
    # refresh, cut off with NFON's wait yet going on (not a second one).
    task.cancel()
    await asyncio.wait({task})
    assert runtime.members_runs == 1
    assert runtime.members_cancelled == 1

"""The composition root: the one place that builds concrete clients and targets.

``Daemon.run()`` is ``presence-sync run``: it loads the configuration, opens
the store, builds the targets, the rules and the engine, follows both NFON
streams, schedules the full resyncs, serves ``/healthz``, ``/readyz`` and
``/metrics``, and speaks the systemd notify protocol. All long-lived work runs
under one ``asyncio.TaskGroup``: if a part dies unexpectedly the group stops
and the process exits non-zero for systemd to restart it.

Signals: SIGTERM/SIGINT drain in-flight target calls and exit 0 within
``STOP_TIMEOUT`` seconds; SIGHUP reloads the configuration and rules without
dropping the NFON streams (unless the NFON settings themselves changed). An
invalid new configuration is refused with its errors logged; the old one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presence_sync import __version__
from presence_sync.clock import Clock, SystemClock
from presence_sync.config import Settings, TargetSpec
from presence_sync.config import load as load_settings
from presence_sync.directory import Directory
from presence_sync.engine import Engine
from presence_sync.errors import ConfigError, PresenceSyncError
from presence_sync.lines import Lines
from presence_sync.nfon import Connected, FullState, NfonClient
from presence_sync.ops import logging as ops_logging
from presence_sync.ops import metrics, systemd
from presence_sync.ops.http import Listener, build_app
from presence_sync.ops.logging import kv
from presence_sync.rules import RuleSet, compile_rules
from presence_sync.schedule import Job, Schedules, Work
from presence_sync.store import MemoryStore, SqliteStore, Store
from presence_sync.targets.base import Target, TargetInfo, target_class, target_env

__all__ = ["STOP_TIMEOUT", "Daemon", "Loaded", "load"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 8.0
"""Seconds SIGTERM waits for in-flight target calls (systemd allows more)."""

STARTUP_DIRECTORY_TIMEOUT = 15.0
HOUSEKEEPING_INTERVAL = 3600.0
REEVALUATE_INTERVAL = 60.0
ID_CACHE_MAX_AGE = 7 * 86400.0


@dataclass(frozen=True)
class Loaded:
    """A configuration file with everything derived from it validated:
    settings, target classes and compiled rules."""

    settings: Settings
    rules: RuleSet
    infos: Mapping[str, TargetInfo]


def load(path: str | os.PathLike[str], *, dry_run: bool = False) -> Loaded:
    """Load and validate ``path`` completely. Raises ``ConfigError``.

    With ``dry_run`` every configured target is still validated, but each is
    later built as a ``log`` target of the same name.
    """
    settings = load_settings(path)
    infos = {name: target_class(spec.kind).info for name, spec in settings.targets.items()}
    rules = compile_rules(
        settings.rules,
        targets=infos,
        lists=settings.lists,
        timezone=settings.timezone,
        problem=settings.problem,
    )
    return Loaded(settings, rules, infos)


def user_agent(customer: str) -> str:
    return f"presence-sync/{__version__} ({customer})"


@dataclass
class _Built:
    """Live target instances with the spec each was built from."""

    targets: dict[str, Target] = field(default_factory=dict)
    specs: dict[str, TargetSpec] = field(default_factory=dict)


class Daemon:
    """``presence-sync run``: everything, wired together."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        dry_run: bool = False,
        clock: Clock | None = None,
        configure_logging: bool = True,
    ) -> None:
        self.config_path = Path(config_path)
        self.dry_run = dry_run
        self.clock: Clock = clock or SystemClock()
        self._configure_logging = configure_logging
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._states_ready = False
        self._built = _Built()
        self._stream_tasks: list[asyncio.Task[None]] = []
        self.listen_address: tuple[Any, ...] | None = None

    # --- building ------------------------------------------------------------------

    def _build_target(self, spec: TargetSpec, settings: Settings) -> Target:
        cls = target_class("log" if self.dry_run else spec.kind)
        env = target_env(
            cls.info, settings, clock=self.clock, user_agent=user_agent(settings.nfon.customer)
        )
        if self.dry_run:
            return cls(spec.name, cls.Options(), env)
        return cls(spec.name, spec.options, env)

    def _build_targets(self, settings: Settings) -> tuple[dict[str, Target], list[Target]]:
        """Targets for ``settings``, reusing instances whose spec did not
        change; returns the new map and the instances no longer used."""
        old = self._built
        fresh = _Built()
        for name, spec in settings.targets.items():
            if name in old.targets and old.specs.get(name) == spec:
                fresh.targets[name] = old.targets[name]
            else:
                fresh.targets[name] = self._build_target(spec, settings)
            fresh.specs[name] = spec
        kept = {id(t) for t in fresh.targets.values()}
        retired = [t for t in old.targets.values() if id(t) not in kept]
        self._built = fresh
        return fresh.targets, retired

    def _open_store(self, settings: Settings) -> Store:
        if self.dry_run:
            return MemoryStore()
        return SqliteStore(settings.state.path, clock=self.clock)

    # --- running -------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stop()``); returns the exit code.
        Raises ``ConfigError`` for an invalid configuration at start."""
        loaded = load(self.config_path, dry_run=self.dry_run)
        settings = loaded.settings
        if self._configure_logging:
            ops_logging.configure(settings.logging.level, settings.logging.format)
        self.loaded = loaded
        self.store = self._open_store(settings)
        try:
            return await self._run(loaded)
        finally:
            self.store.close()

    async def _run(self, loaded: Loaded) -> int:
        settings = loaded.settings
        listener = self._listener(settings)
        self.directory = Directory(settings.people)
        loaded.rules.names = self.directory.name_for_number
        targets, _ = self._build_targets(settings)
        self.engine = Engine(
            targets=targets, store=self.store, rules=loaded.rules, clock=self.clock
        )
        self.engine.set_people(self.directory.people())
        self.lines = Lines(self.clock)
        self.nfon = NfonClient.from_settings(settings, clock=self.clock)
        self.schedules = Schedules(
            [
                Job("resync", self._guarded("resync", self.resync), settings.resync.interval),
                Job(
                    "directory",
                    self._guarded("directory refresh", self.refresh_directory),
                    settings.resync.directory_interval,
                ),
                Job("reevaluate", self._reevaluate, REEVALUATE_INTERVAL),
                Job("housekeeping", self._housekeeping, HOUSEKEEPING_INTERVAL),
            ]
        )
        log.info(
            "starting",
            extra=kv(
                version=__version__,
                config=str(self.config_path),
                targets=",".join(targets),
                people=len(settings.people),
                dry_run=self.dry_run,
            ),
        )
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            async with asyncio.TaskGroup() as group:
                engine_task = group.create_task(self.engine.run(), name="engine")
                if listener is not None:
                    group.create_task(listener.serve(), name="http")
                self._start_streams(group)
                watchdog_task = group.create_task(self._watchdog(engine_task), name="watchdog")
                reload_task = group.create_task(self._reloader(group), name="reload")
                if await self._startup():
                    self.schedules.start()
                    systemd.notify("READY=1", "STATUS=Following NFON")
                    await self._stop.wait()
                systemd.notify("STOPPING=1", "STATUS=Draining")
                log.info("stopping: draining in-flight changes")
                self.schedules.shutdown()
                reload_task.cancel()
                watchdog_task.cancel()
                for task in self._stream_tasks:
                    task.cancel()
                drained = await self.engine.drain(STOP_TIMEOUT)
                if not drained:
                    log.warning(
                        "stop: some changes were still in flight and are left for the next start"
                    )
                self.engine.stop()
                if listener is not None:
                    listener.stop()
        finally:
            self._remove_signals(loop)
            await self._close_all()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        """Ask the daemon to drain and exit (what SIGTERM does)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask for a configuration reload (what SIGHUP does)."""
        self._reload_requested.set()

    async def _close_all(self) -> None:
        with contextlib.suppress(Exception):
            await self.nfon.aclose()
        for target in self._built.targets.values():
            try:
                await target.aclose()
            except Exception:
                log.exception("closing target failed", extra=kv(target=target.name))

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _listener(self, settings: Settings) -> Listener | None:
        if not settings.http.listen:
            return None
        try:
            listener = Listener(build_app(self._health, self._ready), settings.http.listen)
        except OSError as exc:
            raise PresenceSyncError(f"cannot listen on {settings.http.listen}: {exc}") from exc
        self.listen_address = listener.address
        host, port = listener.address[:2]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("listening for /healthz /readyz /metrics", extra=kv(address=shown))
        return listener

    def _start_streams(self, group: asyncio.TaskGroup) -> None:
        self._stream_tasks = [
            group.create_task(self._follow_states(), name="nfon-states"),
            group.create_task(self._follow_calls(), name="nfon-calls"),
        ]

    async def _startup(self) -> bool:
        """Learn the directory before declaring readiness, but never wait
        forever on NFON: an outage makes us degraded, not failed. False when
        a stop was asked for meanwhile."""
        fetch = asyncio.ensure_future(self.refresh_directory())
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait(
            {fetch, stop}, timeout=STARTUP_DIRECTORY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        if fetch not in done:
            fetch.cancel()
            if stop not in done:
                log.warning("NFON directory not available yet; continuing without it")
        elif fetch.exception() is not None:
            log.warning("NFON directory not available yet; continuing: %s", fetch.exception())
        return not self._stop.is_set()

    def _guarded(self, what: str, job: Work) -> Work:
        """``job`` as a scheduled job: an NFON failure is logged once when it
        starts and once when it ends, not with a traceback every interval."""
        failing = False

        async def run() -> None:
            nonlocal failing
            try:
                await job()
            except PresenceSyncError as exc:
                if not failing:
                    log.warning("%s failed; will retry on schedule: %s", what, exc)
                failing = True
                return
            if failing:
                log.info("%s works again", what)
            failing = False

        return run

    # --- NFON -> engine -------------------------------------------------------------

    async def _follow_states(self) -> None:
        async for item in self.nfon.states():
            if isinstance(item, FullState):
                # The bootstrap has no end marker (its end is inferred), so an
                # extension missing from it is not taken as gone: the periodic
                # snapshot is the complete picture.
                views = self.lines.on_full_state(item.states, complete=False)
                dirty = self.engine.resync(views, complete=False)
                self._states_ready = True
                log.info(
                    "full state from NFON",
                    extra=kv(extensions=len(views), changes=dirty, reconnect=item.reconnect),
                )
            else:
                view = self.lines.on_state(item)
                if view is not None:
                    self.engine.observe(view)

    async def _follow_calls(self) -> None:
        async for item in self.nfon.calls():
            if isinstance(item, Connected):
                continue
            view = self.lines.on_call(item)
            if view is not None:
                self.engine.observe(view)

    async def resync(self) -> None:
        """Full resync from the snapshot endpoint; nothing is sent for keys
        whose desired status already equals the applied one."""
        start = self.clock.monotonic()
        states = await self.nfon.snapshot()
        if not states and len(self.lines):
            # Taken as complete, an empty answer would clear everyone.
            log.warning("NFON snapshot listed no extensions at all; resync skipped")
            return
        views = self.lines.on_full_state(states)
        dirty = self.engine.resync(views, complete=True)
        took = self.clock.monotonic() - start
        metrics.RESYNC_DURATION.observe(took)
        metrics.RESYNC_LAST_SUCCESS.set(self.clock.now().timestamp())
        log.info("resync", extra=kv(extensions=len(views), changes=dirty, seconds=round(took, 3)))

    async def refresh_directory(self) -> None:
        infos = await self.nfon.directory()
        self.directory.update_extensions(infos)
        self.engine.set_people(self.directory.people())

    async def _reevaluate(self) -> None:
        self.engine.reevaluate()

    async def _housekeeping(self) -> None:
        removed = self.store.housekeeping(ID_CACHE_MAX_AGE)
        log.debug("housekeeping", extra=kv(id_cache_removed=removed))

    # --- reload ---------------------------------------------------------------------

    async def _reloader(self, group: asyncio.TaskGroup) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload(group)

    async def reload(self, group: asyncio.TaskGroup) -> bool:
        """Apply the configuration file again; False (old one kept) when it is invalid."""
        systemd.reloading()
        try:
            loaded = load(self.config_path, dry_run=self.dry_run)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            systemd.notify("READY=1", "STATUS=Reload refused: invalid configuration")
            return False
        old = self.loaded.settings
        settings = loaded.settings
        if self._configure_logging:
            ops_logging.configure(settings.logging.level, settings.logging.format)
        self.directory.replace_people(settings.people)
        loaded.rules.names = self.directory.name_for_number
        targets, retired = self._build_targets(settings)
        self.engine.set_targets(targets)
        self.engine.set_rules(loaded.rules)
        self.engine.set_people(self.directory.people())
        for target in retired:
            await target.aclose()
        if settings.nfon != old.nfon or settings.tls != old.tls:
            log.info("NFON settings changed: reconnecting the streams")
            for task in self._stream_tasks:
                task.cancel()
            await self.nfon.aclose()
            self.nfon = NfonClient.from_settings(settings, clock=self.clock)
            self._start_streams(group)
        self.schedules.reschedule("resync", settings.resync.interval)
        self.schedules.reschedule("directory", settings.resync.directory_interval)
        self.loaded = loaded
        log.info("configuration reloaded", extra=kv(targets=",".join(targets)))
        systemd.notify("READY=1", "STATUS=Following NFON")
        return True

    # --- health ---------------------------------------------------------------------

    async def _watchdog(self, engine_task: asyncio.Task[None]) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while not engine_task.done():
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _health(self) -> tuple[bool, Mapping[str, Any]]:
        return True, {"version": __version__}

    def _ready(self) -> tuple[bool, Mapping[str, Any]]:
        if not self._states_ready:
            return False, {"reason": "waiting for the first full state from NFON"}
        return True, {"extensions": len(self.lines)}

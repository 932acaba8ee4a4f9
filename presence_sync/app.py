"""The composition root: the one place that builds concrete clients and targets.

- ``load`` reads and validates a configuration file into a ``Loaded``;
- ``wire`` builds a ``Runtime`` from it: store, directory, rules, targets,
  engine, the admin's pauses, line book, NFON client, the NFON → engine
  ``Feed`` and the schedules, whole when it returns; ``rewire`` builds the
  ``Runtime`` of a reload beside the running one, just as whole;
- ``Daemon`` is ``presence-sync run``: it loads and wires, then runs the
  lifecycle: the engine, both NFON streams, the schedules and the HTTP
  listener under one ``asyncio.TaskGroup``, signals, the systemd notify
  protocol, readiness, reloads, drain and stop. If a part dies unexpectedly
  the group stops and the process exits non-zero for systemd to restart it.

Signals: SIGTERM/SIGINT drain in-flight target calls and exit 0 within
``STOP_TIMEOUT`` seconds; SIGHUP reloads the configuration and rules without
dropping the NFON streams (unless the NFON settings themselves changed). A
reload builds and checks everything first (the file, the people, every new
target and its limits, a new NFON client) and then switches in one step; if
anything fails the running configuration stays, what was built for the
refused reload is closed, and the reason is logged once, as one entry
(``event=reload_refused`` with ``reason`` and, for an invalid file, every
``problems`` line), and shown in systemd's ``STATUS=``. Reloads are counted
by result (``presence_sync_config_reloads_total``).

Readiness (``/readyz`` and ``STATUS=``) means working *now*; see
``presence_sync.api.readiness``. The listener and what its routes read are
``presence_sync.api`` (``api.daemon.DaemonApi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presence_sync import __version__
from presence_sync.api.daemon import DaemonApi, bind_listener
from presence_sync.api.listener import Listener
from presence_sync.api.readiness import STREAM_GRACE, Readiness, readiness
from presence_sync.clock import Clock, SystemClock
from presence_sync.config import EntraGroupSettings, Loaded, Settings, TargetSpec, resolve
from presence_sync.directory import Directory
from presence_sync.engine import Engine, check_target
from presence_sync.errors import ConfigError, KeyPath, PresenceSyncError
from presence_sync.feed import Feed
from presence_sync.lines import Lines
from presence_sync.members import GroupMembers, Refresher
from presence_sync.net import user_agent
from presence_sync.nfon import NfonClient
from presence_sync.ops import logging as ops_logging
from presence_sync.ops import metrics, systemd
from presence_sync.ops.logging import kv
from presence_sync.pauses import Pauses
from presence_sync.rules import RuleSet
from presence_sync.schedule import Job, Schedules, guarded
from presence_sync.store import MemoryStore, SqliteStore, Store
from presence_sync.targets.base import Target, TargetFactory, target_class, target_env

__all__ = [
    "STOP_TIMEOUT",
    "STREAM_GRACE",
    "Daemon",
    "Loaded",
    "ReloadRefused",
    "Runtime",
    "TargetBuildError",
    "build_targets",
    "close_targets",
    "load",
    "log_warnings",
    "rewire",
    "wire",
]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 8.0
"""Seconds SIGTERM waits for in-flight target calls (systemd allows more)."""

STARTUP_DIRECTORY_TIMEOUT = 15.0
HOUSEKEEPING_INTERVAL = 3600.0
REEVALUATE_INTERVAL = 60.0
READINESS_INTERVAL = 1.0
"""Seconds between readiness checks for ``STATUS=`` and the log (``/readyz``
looks at each request). A check costs O(targets), not O(people)."""
ID_CACHE_MAX_AGE = 7 * 86400.0


def load(
    path: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    secrets: Callable[[KeyPath], bool] | None = None,
) -> Loaded:
    """Load and validate ``path`` completely (``config.resolve``: settings,
    rules compiled once, target classes found once). Raises ``ConfigError``.

    With ``dry_run`` every configured target is still validated, but each is
    later built as a ``log`` target of the same name. ``environ`` replaces
    ``os.environ`` for ``${VAR}`` and ``$CREDENTIALS_DIRECTORY`` (``check
    --credentials``); ``secrets`` says which secret files are read (see
    ``config.resolve``).
    """
    return resolve(path, environ, secrets=secrets)


def log_warnings(settings: Settings) -> None:
    """One WARNING line per ``settings.warnings`` entry, with file, line and key."""
    for warning in settings.warnings:
        log.warning(
            "configuration: %s",
            warning,
            extra=kv(file=warning.file, line=warning.line, key=warning.key),
        )


# --- wiring ------------------------------------------------------------------------------


class TargetBuildError(PresenceSyncError):
    """A target could not be built, or declares limits the engine cannot
    honour. The message names the target."""


@dataclass(frozen=True)
class Runtime:
    """Everything one loaded configuration runs on, built by ``wire``.

    A reload makes a new ``Runtime`` (sharing what did not change) and the
    daemon switches to it in one assignment.
    """

    loaded: Loaded
    rules: RuleSet
    """``loaded.rules`` with the directory's names for ``{party_name}``."""
    store: Store
    directory: Directory
    targets: Mapping[str, Target]
    specs: Mapping[str, TargetSpec]
    engine: Engine
    pauses: Pauses
    lines: Lines
    nfon: NfonClient
    feed: Feed
    schedules: Schedules
    members: Refresher
    """The Entra group's members (a no-op without ``directory.microsoft``)."""

    @property
    def settings(self) -> Settings:
        return self.loaded.settings


def open_store(settings: Settings, *, clock: Clock) -> Store:
    """The store ``state:`` names: the SQLite file at ``state.path``, or the
    PostgreSQL database at ``state.url`` (psycopg is imported only then),
    keyed by ``nfon.customer``. Raises ``StoreError`` when it cannot be opened."""
    state = settings.state
    if state.url is None:
        assert state.path is not None  # the config gives one of the two
        return SqliteStore(state.path, clock=clock)
    from presence_sync.store.postgres import PostgresStore

    password = None if state.password is None else state.password.get_secret_value()
    return PostgresStore(state.url, customer=settings.nfon.customer, password=password, clock=clock)


async def wire(loaded: Loaded, *, clock: Clock, dry_run: bool = False) -> Runtime:
    """Build the runtime of ``loaded``: nothing runs yet and nothing is
    contacted. Raises ``TargetBuildError`` (naming the target) when a target
    cannot be built or declares limits the engine cannot honour, and
    ``PresenceSyncError`` when the store cannot be opened; nothing stays
    open then."""
    settings = loaded.settings
    targets = await build_targets(loaded, {}, {}, clock=clock, dry_run=dry_run)
    store: Store | None = None
    try:
        store = MemoryStore() if dry_run else open_store(settings, clock=clock)
        directory = Directory(settings.people, _group(settings))
        rules = loaded.rules.with_names(directory.name_for_number)
        engine = Engine(targets=targets, store=store, rules=rules, clock=clock)
        engine.set_people(directory.people())
        pauses = Pauses(store, engine, engine.people, clock)
        lines = Lines(clock)
        nfon = NfonClient.from_settings(settings, clock=clock)
        members = Refresher(_group_members(settings, clock), directory, engine.set_people, clock)
    except BaseException:
        if store is not None:
            store.close()
        await close_targets(targets.values())
        raise
    feed = _feed(loaded, nfon, lines, engine, directory, clock)
    return Runtime(
        loaded=loaded,
        rules=rules,
        store=store,
        directory=directory,
        targets=targets,
        specs=dict(settings.targets),
        engine=engine,
        pauses=pauses,
        lines=lines,
        nfon=nfon,
        feed=feed,
        schedules=_schedules(settings, feed, engine, store, members),
        members=members,
    )


def _group(settings: Settings) -> EntraGroupSettings | None:
    return None if settings.directory is None else settings.directory.microsoft


def _group_members(settings: Settings, clock: Clock) -> GroupMembers | None:
    """The Graph reader of ``directory.microsoft``, if configured."""
    directory = settings.directory
    if directory is None or settings.microsoft is None:
        return None
    ca_bundle = settings.tls.ca_bundle
    return GroupMembers(
        settings.microsoft,
        group=directory.microsoft.group,
        extension_from=directory.microsoft.extension_from,
        clock=clock,
        user_agent=user_agent(settings.nfon.customer),
        verify=str(ca_bundle) if ca_bundle else True,
    )


def _build_target(
    settings: Settings, cls: TargetFactory, spec: TargetSpec, clock: Clock, dry_run: bool
) -> Target:
    """The target of ``spec`` (of class ``cls``), handed only its own options
    and the sections its class declares (``TargetInfo.requires``); with
    ``dry_run`` a ``log`` target of the same name."""
    if dry_run:
        cls = target_class("log")
    env = target_env(cls.info, settings, clock=clock, user_agent=user_agent(settings.nfon.customer))
    return cls(spec.name, cls.Options() if dry_run else spec.options, env)


async def build_targets(
    loaded: Loaded,
    running: Mapping[str, Target],
    specs: Mapping[str, TargetSpec],
    *,
    clock: Clock,
    dry_run: bool = False,
) -> dict[str, Target]:
    """A target for every entry of ``loaded.settings.targets``, reusing the
    ``running`` one whose spec (in ``specs``) did not change, each checked
    with the engine's ``check_target``. Raises ``TargetBuildError`` naming the
    first target that fails; the targets it built before are closed then."""
    settings = loaded.settings
    built: dict[str, Target] = {}
    result: dict[str, Target] = {}
    try:
        for name, spec in settings.targets.items():
            if name in running and specs.get(name) == spec:
                result[name] = running[name]
                continue
            try:
                target = _build_target(settings, loaded.classes[name], spec, clock, dry_run)
            except Exception as exc:
                raise TargetBuildError(
                    f"target {name!r} ({spec.kind}) could not be built: {_reason(exc)}"
                ) from exc
            built[name] = result[name] = target
            try:
                check_target(name, target)
            except ValueError as exc:
                raise TargetBuildError(str(exc)) from exc
    except TargetBuildError:
        await close_targets(built.values())
        raise
    return result


async def close_targets(targets: Iterable[Target]) -> None:
    """``aclose`` each target; a failure is logged, never raised."""
    for target in targets:
        try:
            await target.aclose()
        except Exception as exc:
            log.warning(
                "closing a target failed; continuing",
                extra=kv(target=getattr(target, "name", "?"), error=_reason(exc)),
            )


def _settle(loaded: Loaded) -> float:
    return loaded.settings.nfon.call_settle if loaded.rules.uses_call_context else 0.0


def _feed(
    loaded: Loaded,
    nfon: NfonClient,
    lines: Lines,
    engine: Engine,
    directory: Directory,
    clock: Clock,
    *,
    replaces: Feed | None = None,
) -> Feed:
    """The NFON → engine feed of ``loaded``, whole: its call settle from the
    rules, and (when it ``replaces`` a feed on a reload) that one's last
    full resync, which the status page goes on showing."""
    return Feed(
        nfon,
        lines,
        engine,
        directory,
        clock,
        settle=_settle(loaded),
        last_resync=None if replaces is None else replaces.last_resync,
    )


def _schedules(
    settings: Settings, feed: Feed, engine: Engine, store: Store, members: Refresher
) -> Schedules:
    async def reevaluate() -> None:
        engine.reevaluate()

    async def housekeeping() -> None:
        removed = store.housekeeping(ID_CACHE_MAX_AGE)
        log.debug("housekeeping", extra=kv(id_cache_removed=removed))

    return Schedules(
        [
            Job("resync", guarded("resync", feed.resync), settings.resync.interval),
            Job(
                "directory",
                guarded("directory refresh", feed.refresh_directory),
                settings.resync.directory_interval,
            ),
            Job(
                "members",
                guarded("Entra group refresh (the last good members stay)", members.refresh),
                _members_interval(settings),
            ),
            Job("reevaluate", reevaluate, REEVALUATE_INTERVAL),
            Job("housekeeping", housekeeping, HOUSEKEEPING_INTERVAL),
        ]
    )


def _members_key(settings: Settings) -> tuple[object, ...]:
    """What the group's reader is built from: a new one when it changes."""
    return (settings.directory, settings.microsoft, settings.tls, settings.nfon.customer)


def _members_interval(settings: Settings) -> float:
    return settings.directory.refresh if settings.directory is not None else HOUSEKEEPING_INTERVAL


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ReloadRefused(PresenceSyncError):
    """A reload that cannot be applied; the message says why."""


def _store_moved(old: Settings, new: Settings) -> bool:
    """Whether ``new`` names another store than the running one. Its
    password is not part of that: a rotated one is handed to the running
    store (``_use_password``)."""
    if (old.state.path, old.state.url) != (new.state.path, new.state.url):
        return True
    return new.state.url is not None and old.nfon.customer != new.nfon.customer


def _use_password(old: Settings, new: Settings, store: Store) -> None:
    """Hand a changed ``state.password`` (a rotated password file) to the
    running PostgreSQL store, for the connections it opens from now on."""
    if new.state.url is None or old.state.password == new.state.password:
        return
    from presence_sync.store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):  # --dry-run: the memory store
        return
    password = None if new.state.password is None else new.state.password.get_secret_value()
    store.use_password(password)
    log.info(
        "state database password changed: used from the next connection",
        extra=kv(event="store_password_changed"),
    )


async def rewire(
    old: Runtime, loaded: Loaded, *, clock: Clock, dry_run: bool = False
) -> tuple[Runtime, bool]:
    """The runtime of ``loaded`` for a reload, whole, beside ``old`` (which
    keeps running until the daemon switches): the store, directory, engine,
    pauses and line book are ``old``'s; targets whose spec did not change are
    reused; the NFON client, feed and schedules are new only when the NFON
    settings changed (the ``bool``, which then means: reconnect). Nothing is
    switched or started here. Raises ``ReloadRefused`` (having closed what
    it built)."""
    settings = loaded.settings
    try:
        Directory(settings.people, _group(settings))  # the checks replace_people makes
    except ConfigError as exc:
        raise ReloadRefused(f"people: {exc}") from exc
    if not dry_run and _store_moved(old.settings, settings):
        raise ReloadRefused(
            "state: the store is opened once, at the start; a change of state: (or, with "
            "state.url, of nfon.customer, which keys its rows) takes a restart"
        )
    try:
        targets = await build_targets(loaded, old.targets, old.specs, clock=clock, dry_run=dry_run)
    except TargetBuildError as exc:
        raise ReloadRefused(str(exc)) from exc
    nfon_changed = NfonClient.parameters(settings) != NfonClient.parameters(old.settings)
    nfon, feed, schedules = old.nfon, old.feed, old.schedules
    if nfon_changed:
        try:
            nfon = NfonClient.from_settings(settings, clock=clock)
        except Exception as exc:
            running = {id(t) for t in old.targets.values()}
            await close_targets(t for t in targets.values() if id(t) not in running)
            raise ReloadRefused(f"NFON client could not be built: {_reason(exc)}") from exc
        feed = _feed(loaded, nfon, old.lines, old.engine, old.directory, clock, replaces=old.feed)
        schedules = _schedules(settings, feed, old.engine, old.store, old.members)
    new = dataclasses.replace(
        old,
        loaded=loaded,
        rules=loaded.rules.with_names(old.directory.name_for_number),
        targets=targets,
        specs=dict(settings.targets),
        nfon=nfon,
        feed=feed,
        schedules=schedules,
    )
    return new, nfon_changed


# --- the daemon --------------------------------------------------------------------------


def cannot_listen(settings: Settings, exc: OSError) -> ConfigError:
    """The config error, at ``http.listen``, for an address we cannot listen on."""
    listen = settings.http.listen
    if exc.errno == errno.EADDRINUSE:
        why = (
            f"{listen} is in use by another program (another presence-sync?): "
            "stop it, or choose another port"
        )
    elif exc.errno == errno.EACCES:
        why = f"not allowed to listen on {listen}: ports below 1024 need privileges"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"cannot listen on {listen}: no network interface of this machine has that address"
    else:
        why = f"cannot listen on {listen}: {exc.strerror or exc}"
    return ConfigError([settings.problem(["http", "listen"], why)])


def _bind_listen(settings: Settings) -> socket.socket | None:
    """The listener's socket, bound now and kept for it (None when off);
    ``ConfigError`` (exit 78) at ``http.listen`` when the address cannot be
    had, so that this is known before anything else exists."""
    try:
        return bind_listener(settings.http)
    except OSError as exc:
        raise cannot_listen(settings, exc) from None


class Daemon:
    """``presence-sync run``: loads ``config_path``, wires it and runs it
    until stopped (see the module docstring).

    ``stream_grace`` is how long the NFON states stream may be down before
    ``/readyz`` says not ready (tests shorten it).
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        dry_run: bool = False,
        clock: Clock | None = None,
        configure_logging: bool = True,
        stream_grace: float = STREAM_GRACE,
    ) -> None:
        self.config_path = Path(config_path)
        self.dry_run = dry_run
        self.clock: Clock = clock or SystemClock()
        self.stream_grace = stream_grace
        self._configure_logging = configure_logging
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._runtime: Runtime | None = None
        self._stream_tasks: list[asyncio.Task[None]] = []
        self._resync_task: asyncio.Task[None] | None = None
        self._members_task: asyncio.Task[None] | None = None
        self.listen_address: tuple[Any, ...] | None = None
        self.api = DaemonApi(
            lambda: self._runtime,
            readiness=self.readiness,
            resync=self.request_resync,
            clock=self.clock,
        )
        """The HTTP side: the listener's routes and what they read."""
        self.status = self.api.status
        """The documents of the status API (``/api/status``, ``/api/people/...``)."""

    @property
    def runtime(self) -> Runtime:
        """The runtime in use; only while ``run`` runs."""
        if self._runtime is None:
            raise RuntimeError("the daemon is not running")
        return self._runtime

    def stop(self) -> None:
        """Ask the daemon to drain and exit (what SIGTERM does)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask for a configuration reload (what SIGHUP does)."""
        self._reload_requested.set()

    def request_resync(self) -> None:
        """Run a full resync from NFON's snapshot now (``POST /api/resync``),
        and refresh the Entra group's members, in the background; a request
        while one runs joins that one."""
        self.refresh_members()
        if self._resync_task is not None and not self._resync_task.done():
            return
        log.info("full resync asked for through the API")
        self._resync_task = asyncio.get_running_loop().create_task(
            self.runtime.schedules.run_now("resync"), name="resync-now"
        )

    def refresh_members(self) -> None:
        """Refresh the Entra group's members now, in the background (a
        request while one runs joins that one); nothing without a group."""
        if self.runtime.members.source is None:
            return
        if self._members_task is not None and not self._members_task.done():
            return
        self._members_task = asyncio.get_running_loop().create_task(
            self.runtime.schedules.run_now("members"), name="members-now"
        )

    async def _cancel_members_task(self) -> None:
        task = self._members_task
        self._members_task = None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # --- running -------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stop()``); returns the exit code.
        Raises ``ConfigError`` for an invalid configuration at start, and
        ``PresenceSyncError`` for a target that cannot be built."""
        if self._configure_logging:
            # What loading itself warns about (a secret file others may read)
            # goes out in the daemon's format, not Python's bare default.
            ops_logging.configure()
        loaded = load(self.config_path, dry_run=self.dry_run)
        settings = loaded.settings
        if self._configure_logging:
            ops_logging.configure(settings.logging.level, settings.logging.format)
        log_warnings(settings)
        # Before anything exists (the state database above all): a port
        # that is taken is the admin's to fix, and systemd must not restart
        # into it forever.
        sock = _bind_listen(settings)
        try:
            runtime = await wire(loaded, clock=self.clock, dry_run=self.dry_run)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        self._runtime = runtime
        metrics.CONFIG_LAST_RELOAD_SUCCESS.set(self.clock.now().timestamp())
        try:
            listener = self.api.listener(settings.http, sock)
            self.listen_address = None if listener is None else listener.address
            return await self._run(listener)
        finally:
            runtime = self.runtime
            runtime.feed.close()
            with contextlib.suppress(Exception):
                await runtime.nfon.aclose()
            await close_targets(runtime.targets.values())
            if runtime.members.source is not None:
                with contextlib.suppress(Exception):
                    await runtime.members.source.aclose()
            runtime.store.close()

    async def _run(self, listener: Listener | None) -> int:
        runtime = self.runtime
        log.info(
            "starting",
            extra=kv(
                version=__version__,
                config=str(self.config_path),
                targets=",".join(runtime.targets),
                people=len(runtime.settings.people),
                dry_run=self.dry_run,
            ),
        )
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            async with asyncio.TaskGroup() as group:
                engine_task = group.create_task(runtime.engine.run(), name="engine")
                if listener is not None:
                    group.create_task(listener.serve(), name="http")
                self._start_streams(group, runtime.feed)
                helpers = [
                    group.create_task(self._watchdog(engine_task), name="watchdog"),
                    group.create_task(self._reloader(group), name="reload"),
                    group.create_task(runtime.pauses.run(), name="pauses"),
                ]
                if await self._startup():
                    if not self.runtime.schedules.running:
                        self.runtime.schedules.start()
                    systemd.notify("READY=1", f"STATUS={self.readiness().status}")
                    helpers.append(group.create_task(self._watch_readiness(), name="readiness"))
                    await self._stop.wait()
                systemd.notify("STOPPING=1", "STATUS=Draining")
                log.info("stopping: draining in-flight changes")
                for task in helpers:
                    task.cancel()
                self.runtime.schedules.shutdown()
                for task in self._stream_tasks:
                    task.cancel()
                for pending in (self._resync_task, self._members_task):
                    if pending is not None:
                        pending.cancel()
                drained = await self.runtime.engine.drain(STOP_TIMEOUT)
                if not drained:
                    log.warning(
                        "stop: some changes were still in flight and are left for the next start"
                    )
                self.runtime.engine.stop()
                if listener is not None:
                    listener.stop()
        finally:
            self._remove_signals(loop)
        log.info("stopped")
        return 0

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    def _start_streams(self, group: asyncio.TaskGroup, feed: Feed) -> None:
        self._stream_tasks = [
            group.create_task(feed.follow_states(), name="nfon-states"),
            group.create_task(feed.follow_calls(), name="nfon-calls"),
        ]

    async def _startup(self) -> bool:
        """Learn the directory before declaring readiness, but never wait
        forever on NFON: an outage makes us degraded, not failed. False when
        a stop was asked for meanwhile."""
        fetch = asyncio.ensure_future(self._first_directory())
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

    async def _first_directory(self) -> None:
        """NFON's extensions and the group's members, side by side; the
        members' failure is logged (once) and waits for the schedule.

        The members' refresh is the daemon's own task (``refresh_members``):
        cut off with NFON's wait it goes on (not a second one), and a stop
        cancels it."""
        self.refresh_members()
        directory = asyncio.ensure_future(self.runtime.feed.refresh_directory())
        members = self._members_task
        try:
            await asyncio.wait({directory} if members is None else {directory, members})
        except asyncio.CancelledError:
            directory.cancel()
            raise
        directory.result()

    # --- reload ---------------------------------------------------------------------

    async def _reloader(self, group: asyncio.TaskGroup) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload(group)
            except Exception:
                # Everything was checked before the switch; should a part still
                # fail, a half-applied reload is better than a dead daemon.
                log.exception("reload failed while switching; running on")

    async def reload(self, group: asyncio.TaskGroup) -> bool:
        """Apply the configuration file again. False when it is refused:
        the running configuration stays and the reason is logged once."""
        systemd.reloading()
        old = self.runtime
        try:
            loaded = load(self.config_path, dry_run=self.dry_run)
        except ConfigError as exc:
            return self._refuse("invalid configuration", [str(p) for p in exc.problems])
        log_warnings(loaded.settings)
        try:
            new, nfon_changed = await rewire(old, loaded, clock=self.clock, dry_run=self.dry_run)
        except ReloadRefused as exc:
            return self._refuse(str(exc))
        self._switch(old, new, nfon_changed, group)
        retired = [t for n, t in old.targets.items() if new.targets.get(n) is not t]
        await close_targets(retired)
        if _members_key(old.settings) != _members_key(new.settings):
            # A refresh still running reads with the old reader: cancel it
            # before that reader is closed, so the refresh below (with the
            # new one) is not skipped as "already running".
            await self._cancel_members_task()
            source = new.members.source
            await new.members.use(_group_members(new.settings, self.clock))
            if source is not None:
                await source.aclose()
        # A reload is also when an admin expects people who joined to appear.
        self.refresh_members()
        if nfon_changed:
            with contextlib.suppress(Exception):
                await old.nfon.aclose()
        metrics.CONFIG_RELOADS.labels(result="ok").inc()
        metrics.CONFIG_LAST_RELOAD_SUCCESS.set(self.clock.now().timestamp())
        log.info(
            "configuration reloaded",
            extra=kv(event="reload_ok", targets=",".join(new.targets)),
        )
        systemd.notify("READY=1", f"STATUS={self.readiness().status}")
        return True

    def _switch(
        self, old: Runtime, new: Runtime, nfon_changed: bool, group: asyncio.TaskGroup
    ) -> None:
        """Make ``new`` the running configuration; every part was checked."""
        settings = new.settings
        if self._configure_logging:
            ops_logging.configure(settings.logging.level, settings.logging.format)
        new.directory.replace_people(settings.people, _group(settings))
        new.engine.set_targets(new.targets)
        new.engine.set_rules(new.rules)
        new.engine.set_people(new.directory.people())
        _use_password(old.settings, settings, new.store)
        if not nfon_changed:
            # The running feed stays (its streams with it); the new rules may
            # wait for call events differently. A new feed was built so.
            new.feed.settle = _settle(new.loaded)
        if nfon_changed:
            log.info("NFON settings changed: reconnecting the streams")
            for task in self._stream_tasks:
                task.cancel()
            old.feed.close()
            started = old.schedules.running  # not yet while the startup waits
            old.schedules.shutdown()
            self._start_streams(group, new.feed)
            if started:
                new.schedules.start()
        else:
            new.schedules.reschedule("resync", settings.resync.interval)
            new.schedules.reschedule("directory", settings.resync.directory_interval)
            new.schedules.reschedule("members", _members_interval(settings))
        self._runtime = new

    def _refuse(self, why: str, problems: Sequence[str] = ()) -> bool:
        """Log a refused reload as one entry (journald splits a message at
        its line ends, so ``problems`` go into one field) and show it."""
        metrics.CONFIG_RELOADS.labels(result="refused").inc()
        fields: dict[str, Any] = {"event": "reload_refused", "reason": why}
        shown = why
        if problems:
            fields["problems"] = list(problems)
            more = f" (and {len(problems) - 1} more, see the log)" if len(problems) > 1 else ""
            shown = f"{why}: {problems[0]}{more}"
        log.error("reload refused, keeping the running configuration", extra=kv(**fields))
        systemd.notify("READY=1", f"STATUS=Reload refused: {shown}")
        return False

    # --- health ---------------------------------------------------------------------

    async def _watchdog(self, engine_task: asyncio.Task[None]) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while not engine_task.done():
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def readiness(self) -> Readiness:
        """Whether the daemon works now (see ``presence_sync.api.readiness``);
        each answer is also what ``presence_sync_ready`` shows."""
        runtime = self.runtime
        now = readiness(
            runtime.nfon,
            runtime.feed,
            runtime.engine,
            clock=self.clock,
            grace=self.stream_grace,
            store=runtime.store,
        )
        metrics.set_readiness(now.components)
        return now

    async def _watch_readiness(self) -> None:
        """Tell systemd (``STATUS=``) when readiness or its reasons change,
        and the log once when a part fails and once when all work again. A
        "Reload refused" status stays until readiness changes."""
        last = self.readiness()
        been_ready = last.ok
        while True:
            await self.clock.sleep(READINESS_INTERVAL)
            now = self.readiness()
            if now.ok != last.ok:
                if now.ok:
                    log.info(
                        "ready again" if been_ready else "ready",
                        extra=kv(event="ready", status=now.status),
                    )
                    been_ready = True
                else:
                    log.warning("not ready", extra=kv(event="not_ready", status=now.status))
            if now.status != last.status:
                systemd.notify(f"STATUS={now.status}")
            last = now

"""``presence-sync check``: will this configuration work, before the service starts?

1. The file is loaded exactly as ``run`` loads it (``app.load``): every
   problem at once (``ConfigError``, exit 78), and the warnings ``run``
   would log at start (a secret file others may read, and the file's own
   ``Settings.warnings`` such as nobody under ``people:``) are printed on
   stderr.
2. Unless offline, it logs in to NFON and to each service the targets use
   (Microsoft Graph, Slack) and resolves every person: their extension in
   NFON's directory (and the name NFON has for it), their Entra user, their
   Slack user. The table goes to stdout, progress to stderr.

With ``directory.microsoft`` the group's members are loaded and matched
to NFON's extensions as ``run`` does (``directory.Directory``): the table
says where each mapping came from (``people:``, or the group, the
attribute and the value that matched), then every conflict with what to
change, then the unmatched members and extensions.

The result is 0 only when every service accepted us, every person
resolved and nothing in the group conflicts (the unmatched are no error);
1 otherwise.

Thousands of people: lookups run concurrently but a few at a time per
service (``GRAPH_CONCURRENCY``, ``SLACK_CONCURRENCY``). A rate-limit answer
(Graph's 429, Slack's ``ratelimited``) pauses that service's lookups for the
time it asked (``Retry-After``) and they go on after it; other transient
failures are retried with backoff, and a person fails only after
``ATTEMPTS`` tries. A service that refuses our credentials stops its
lookups at once: every row then says so, instead of thousands of requests
with a dead token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

from presence_sync.app import Loaded, load
from presence_sync.clock import Clock, SystemClock
from presence_sync.config import Settings
from presence_sync.directory import Directory
from presence_sync.engine import MIN_RETRY_AFTER, Backoff
from presence_sync.entra import Matching
from presence_sync.errors import (
    AuthError,
    PermanentError,
    PresenceSyncError,
    StoreError,
    TransientError,
    UpstreamError,
)
from presence_sync.members import GroupMembers
from presence_sync.model import ExtensionInfo, Person
from presence_sync.net import user_agent
from presence_sync.nfon import NfonClient
from presence_sync.ops.logging import printable
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import target_env
from presence_sync.targets.graph import MICROSOFT_KINDS, GraphClient
from presence_sync.targets.slack import rule_text_warnings
from presence_sync.targets.slack_client import SlackClient, SlackRefused
from presence_sync.targets.webhook import WebhookOptions, WebhookTarget

__all__ = [
    "ATTEMPTS",
    "GRAPH_CONCURRENCY",
    "LIST_PAGE",
    "SLACK_CONCURRENCY",
    "Found",
    "Report",
    "Row",
    "collect_warnings",
    "load_checked",
    "resolve",
    "run",
    "table",
    "warning_text",
]

T = TypeVar("T")

GRAPH_CONCURRENCY = 8
"""Graph lookups at once: far below Graph's per-app limits, and a 429 still pauses them."""
SLACK_CONCURRENCY = 4
"""Slack lookups at once: ``users.lookupByEmail`` is Tier 3 (about 50 a minute)."""
ATTEMPTS = 4
"""Tries per lookup before a transient failure counts as the person's problem."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
"""The engine's ``Backoff`` between tries of a lookup (seconds, full jitter)."""
LIST_PAGE = 200
"""Members per ``users.list`` page: Slack recommends "no more than 200"."""
PROGRESS_INTERVAL = 5.0
"""Seconds between progress lines when stderr is no terminal (a log, a pipe)."""
_SLACK_IDS = ("slack_status", "slack_dnd")


# --- step 1: the file --------------------------------------------------------------------


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collect_warnings() -> Iterator[list[logging.LogRecord]]:
    """Gather what is logged at WARNING and above (and nothing below) while
    the block runs, instead of printing it in the daemon's log format."""
    collector = _Collector()
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    for handler in saved_handlers:
        root.removeHandler(handler)
    root.addHandler(collector)
    root.setLevel(logging.WARNING)
    try:
        yield collector.records
    finally:
        root.removeHandler(collector)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def warning_text(record: logging.LogRecord) -> str:
    """``warning: message (key=value, ...)``: one line per warning."""
    context = getattr(record, "ctx", None)
    text = f"warning: {record.getMessage()}"
    if isinstance(context, Mapping) and context:
        text += " (" + ", ".join(f"{k}={v}" for k, v in context.items()) + ")"
    return printable(text)  # a warning may quote a remote answer


def load_checked(path: str, credentials: Path | None) -> Loaded:
    """``app.load`` as ``run`` does it; with ``credentials``, relative
    ``*_file`` secrets are read from that directory instead of
    ``$CREDENTIALS_DIRECTORY`` (see ``config.secrets``)."""
    environ: Mapping[str, str] | None = None
    if credentials is not None:
        environ = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    return load(path, environ=environ)


# --- step 2: resolving people ---------------------------------------------------------


@dataclass
class Found:
    """One lookup's result: what was found, or the problem (plain words)."""

    value: str | None = None
    problem: str | None = None


@dataclass
class Row:
    """One person in the table. ``entra``/``slack`` are None when no target
    needs that service for them."""

    person: Person
    name: str | None = None
    source: str = "people:"
    """Where the mapping came from: ``people:`` or the group's match."""
    nfon: Found = field(default_factory=Found)
    entra: Found | None = None
    slack: Found | None = None

    @property
    def problems(self) -> list[str]:
        found = (self.nfon, self.entra, self.slack)
        return [f.problem for f in found if f is not None and f.problem]


@dataclass
class Report:
    """What ``resolve`` found: a line per service and a row per person."""

    services: dict[str, Found] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    unmapped: int = 0
    """Extensions NFON lists that no person is mapped to."""
    matching: Matching | None = None
    """How the group's members matched (with ``directory.microsoft``)."""

    @property
    def ok(self) -> bool:
        services_ok = all(s.problem is None for s in self.services.values())
        conflicts = self.matching is not None and bool(self.matching.conflicts)
        return services_ok and not conflicts and not any(row.problems for row in self.rows)


class _Gate:
    """One service's lookups: at most ``limit`` at once, all paused while
    the service asked us to wait, and stopped (``stopped``) once it refused
    our credentials or did not answer ``ATTEMPTS`` times in a row: thousands
    of people are not each tried with credentials that do not work, or
    against a service that is down.

    Waiting is the engine's: a ``Retry-After`` pause no shorter than
    ``MIN_RETRY_AFTER``, the engine's ``Backoff`` (full jitter) between
    failures, both on the injected ``clock``."""

    def __init__(
        self,
        limit: int,
        progress: _Progress,
        service: str,
        *,
        clock: Clock,
        backoff: Backoff,
    ) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._clock = clock
        self._backoff = backoff
        self._resume_at = -math.inf
        self._progress = progress
        self._service = service
        self.stopped: AuthError | TransientError | None = None

    def pause(self, seconds: float) -> None:
        seconds = max(seconds, MIN_RETRY_AFTER)
        self._resume_at = max(self._resume_at, self._clock.monotonic() + seconds)
        self._progress.note(f"{self._service} asked us to wait {seconds:.0f} s")

    async def run(self, work: Callable[[], Awaitable[T]], *, refuse: bool = True) -> T:
        """``work()``, retried on ``TransientError``: after the wait the
        service asked for (rate limits, however often), else with backoff,
        raising the last one after ``ATTEMPTS`` failures; ``AuthError`` when
        the service refused our credentials. Either stops the gate: every
        later call raises the same at once. ``refuse=False``: the call does
        not use the shared credentials (a person's own token), so it neither
        stops the gate nor is stopped by it."""
        failures = 0
        while True:
            async with self._slots:
                # A deadline, not an event: a pause set meanwhile extends it.
                while (wait := self._resume_at - self._clock.monotonic()) > 0:
                    await self._clock.sleep(wait)
                if refuse and self.stopped is not None:
                    raise self.stopped
                try:
                    return await work()
                except AuthError as exc:
                    if refuse:
                        self.stopped = exc
                    raise
                except TransientError as exc:
                    if exc.retry_after is not None:
                        self.pause(exc.retry_after)
                        continue
                    failures += 1
                    if failures >= ATTEMPTS:
                        if refuse:
                            self.stopped = exc
                        raise
            await self._clock.sleep(self._backoff.delay(failures))


class _Progress:
    """``resolving people: 1200/5000`` on stderr: rewritten in place on a
    terminal, a line every ``PROGRESS_INTERVAL`` s otherwise."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self._extra = ""
        self._shown = time.monotonic()
        self._dirty = False

    def note(self, text: str) -> None:
        self._extra = text
        self._show()

    def tick(self) -> None:
        self.done += 1
        self._show()

    def _show(self) -> None:
        now = time.monotonic()
        if now - self._shown < (0.1 if self.tty else PROGRESS_INTERVAL):
            return
        self._shown = now
        text = f"resolving people: {self.done}/{self.total}"
        if self._extra:
            text += f" ({self._extra})"
            self._extra = ""
        if self.tty:
            self.stream.write(f"\r\033[K{text}")
            self._dirty = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _not_checked(service: str, why: Exception) -> str:
    if isinstance(why, AuthError):
        return f"not checked: {service} refused our credentials"
    return f"not checked: {service} did not answer"


def _wanted(person: Person, names: Sequence[str], kinds: Mapping[str, str]) -> list[str]:
    """The target names of ``names`` the person did not opt out of (by name or kind)."""
    return [n for n in names if n not in person.opt_out and kinds[n] not in person.opt_out]


class _Resolver:
    """Everything ``resolve`` needs for one run; clients are closed by ``close``."""

    def __init__(self, loaded: Loaded, progress: _Progress) -> None:
        settings = loaded.settings
        self.settings = settings
        self.progress = progress
        self.kinds = {name: spec.kind for name, spec in settings.targets.items()}
        self.microsoft = [n for n, i in loaded.infos.items() if "microsoft" in i.requires]
        self.slack_targets = [n for n, i in loaded.infos.items() if "slack" in i.requires]
        self.dnd = [n for n in self.slack_targets if self.kinds[n] == "slack_dnd"]
        clock = SystemClock()
        self.store = MemoryStore(clock=clock)
        agent = user_agent(settings.nfon.customer)
        self.graph: GraphClient | None = None
        self.slack: SlackClient | None = None
        if self.microsoft:
            name = self.microsoft[0]
            env = target_env(loaded.infos[name], settings, clock=clock, user_agent=agent)
            self.graph = GraphClient(name, env)
        if self.slack_targets and settings.slack is not None:
            name = self.slack_targets[0]
            env = target_env(loaded.infos[name], settings, clock=clock, user_agent=agent)
            self.slack = SlackClient(name, settings.slack, env)
        self.slack_members: dict[str, Mapping[str, object]] | None = None
        """Slack's members by e-mail (``slack_directory``), None: unknown."""
        self.webhooks: list[WebhookTarget] = []
        for name, spec in settings.targets.items():
            if isinstance(spec.options, WebhookOptions):
                env = target_env(loaded.infos[name], settings, clock=clock, user_agent=agent)
                self.webhooks.append(WebhookTarget(name, spec.options, env))
        backoff = Backoff(random.Random(), base=BACKOFF_BASE, cap=BACKOFF_CAP)
        self.graph_gate = _Gate(
            GRAPH_CONCURRENCY, progress, "Microsoft Graph", clock=clock, backoff=backoff
        )
        self.slack_gate = _Gate(SLACK_CONCURRENCY, progress, "Slack", clock=clock, backoff=backoff)

    async def close(self) -> None:
        for hook in self.webhooks:
            await hook.aclose()
        if self.graph is not None:
            await self.graph.aclose()
        if self.slack is not None:
            self.slack.close()
        self.store.close()

    # -- services --

    async def webhook(self, report: Report, hook: WebhookTarget) -> None:
        """One ping (docs/webhook.md): the receiver answers, and accepts our
        signature, without being handed a presence change to act on."""
        service = f"Webhook {hook.name}"
        try:
            report.services[service] = Found(await hook.ping())
        except AuthError as exc:
            report.services[service] = Found(problem=f"refused: {_reason(exc)}")
        except UpstreamError as exc:
            report.services[service] = Found(problem=f"no answer we can use: {_reason(exc)}")

    async def nfon(self, report: Report) -> dict[str, str | None] | None:
        """NFON's extensions (number → name); None when NFON failed."""
        try:
            async with NfonClient.from_settings(self.settings) as client:
                infos = await client.directory()
        except AuthError as exc:
            report.services["NFON"] = Found(problem=f"login refused: {_reason(exc)}")
            return None
        except UpstreamError as exc:
            report.services["NFON"] = Found(problem=f"no answer we can use: {_reason(exc)}")
            return None
        nfon = self.settings.nfon
        report.services["NFON"] = Found(
            f"logged in as {nfon.username} ({nfon.customer}), {len(infos)} extensions listed"
        )
        return {info.extension: info.name for info in infos}

    async def state(self, report: Report) -> None:
        """Whether the PostgreSQL store of ``state.url`` answers (a SQLite
        file needs no login: the daemon creates it)."""
        settings = self.settings
        url = settings.state.url
        if url is None:
            return
        from presence_sync.store.postgres import probe

        secret = settings.state.password
        password = None if secret is None else secret.get_secret_value()
        customer = settings.nfon.customer
        try:
            found = await asyncio.to_thread(probe, url, customer=customer, password=password)
        except StoreError as exc:
            report.services["State"] = Found(problem=_reason(exc))
            return
        report.services["State"] = Found(found)

    async def microsoft_login(self, report: Report) -> None:
        graph = self.graph
        if graph is None:
            return
        where = f"app {graph.client_id} in tenant {graph.tenant}"
        try:
            await self.graph_gate.run(lambda: graph.credential.token(graph.clock))
        except AuthError as exc:
            report.services["Microsoft"] = Found(problem=_reason(exc))
            return
        except UpstreamError as exc:
            report.services["Microsoft"] = Found(problem=f"no token: {_reason(exc)}")
            return
        report.services["Microsoft"] = Found(f"token for {where}")

    async def slack_login(self, report: Report) -> None:
        if not self.slack_targets:
            return
        client, settings = self.slack, self.settings.slack
        if client is None or settings is None:
            return  # the loader refuses a Slack target without slack:
        if settings.token is None:
            report.services["Slack"] = Found(
                f"no admin token; {len(settings.user_tokens)} people have their own"
            )
            return
        token = settings.token.get_secret_value()
        anyone = Person(key="", email="the admin token", extension="")
        try:
            data = await self.slack_gate.run(lambda: client.call("auth.test", token, anyone))
        except AuthError as exc:
            report.services["Slack"] = Found(problem=f"token rejected: {_reason(exc)}")
            return
        except UpstreamError as exc:
            report.services["Slack"] = Found(problem=f"no answer we can use: {_reason(exc)}")
            return
        who, team = data.get("user") or data.get("user_id"), data.get("team")
        report.services["Slack"] = Found(f"admin token of {who} in workspace {team}")

    async def slack_directory(self, report: Report) -> None:
        """Slack's members by e-mail, from ``users.list`` (Tier 2, 200 a
        page: 25 requests for 5,000 people, where one ``users.lookupByEmail``
        each, Tier 3, would take over an hour). Left None, so people are
        looked up one by one, when the token may not list members
        (``users:read``) or their e-mail addresses (``users:read.email``)."""
        client, settings = self.slack, self.settings.slack
        if client is None or settings is None or settings.token is None:
            return
        if report.services.get("Slack", Found()).problem is not None:
            return
        token = settings.token.get_secret_value()
        anyone = Person(key="", email="the admin token", extension="")
        members: dict[str, Mapping[str, object]] = {}
        cursor = ""
        pages = 0
        while True:
            args: dict[str, Any] = {"limit": LIST_PAGE}
            if cursor:
                args["cursor"] = cursor
            page = functools.partial(client.call, "users.list", token, anyone, **args)
            try:
                data = await self.slack_gate.run(page, refuse=False)
            except (AuthError, UpstreamError):
                return
            pages += 1
            self.progress.note(f"reading Slack's member list, page {pages}")
            listed = data.get("members")
            for member in listed if isinstance(listed, list) else ():
                profile = member.get("profile") if isinstance(member, Mapping) else None
                email = profile.get("email") if isinstance(profile, Mapping) else None
                if isinstance(email, str) and email and not member.get("is_bot"):
                    members[email.lower()] = member
            meta = data.get("response_metadata")
            cursor = str(meta.get("next_cursor") or "") if isinstance(meta, Mapping) else ""
            if not cursor:
                break
        if members or not self.settings.people:
            self.slack_members = members

    # -- people --

    async def entra(self, person: Person) -> Found | None:
        graph = self.graph
        if graph is None or not _wanted(person, self.microsoft, self.kinds):
            return None
        if self.graph_gate.stopped is not None:
            return Found(problem=_not_checked("Microsoft", self.graph_gate.stopped))
        given = next(
            (person.ids[n] for n in (*self.microsoft, *MICROSOFT_KINDS) if person.ids.get(n)),
            None,
        )
        try:
            if given is not None:
                path = f"/users/{quote(given, safe='')}"
                response = await self.graph_gate.run(
                    lambda: graph.call(
                        "GET",
                        path,
                        params={"$select": "id"},
                        permission="User.Read.All",
                        ok=frozenset({404}),
                    )
                )
                if response.status_code == 404:
                    return Found(problem=f"no Entra user with the configured id {given}")
                return Found(given)
            memory = TargetMemory(self.store, graph.target, person.key)
            return Found(await self.graph_gate.run(lambda: graph.user_id(person, memory)))
        except AuthError:
            return Found(problem="not checked: Microsoft refused our credentials")
        except PermanentError as exc:
            if exc.status == 404:
                return Found(problem="no Entra user with this e-mail (UPN or mail)")
            return Found(problem=f"Entra lookup failed: {_reason(exc)}")
        except UpstreamError as exc:
            return Found(problem=f"Entra lookup failed: {_reason(exc)}")

    async def slack_user(self, person: Person) -> Found | None:
        client = self.slack
        wanted = _wanted(person, self.slack_targets, self.kinds)
        if client is None or not wanted:
            return None
        own = client.own_token(person)
        try:
            if own is not None:
                data = await self.slack_gate.run(
                    lambda: client.call("auth.test", own, person, own=True), refuse=False
                )
                return Found(f"{data.get('user_id')} (own token)")
            if any(n in self.dnd for n in wanted):
                return Found(problem="no own Slack token: slack_dnd needs one in slack.user_tokens")
            if self.slack_gate.stopped is not None:
                return Found(problem=_not_checked("Slack", self.slack_gate.stopped))
            ids = (*self.slack_targets, *_SLACK_IDS)
            configured = next((person.ids[n] for n in ids if person.ids.get(n)), None)
            if configured is not None:
                return Found(configured)
            admin = self.settings.slack.token if self.settings.slack else None
            if admin is None:
                return Found(
                    problem="no Slack token: add them to slack.user_tokens or set slack.token"
                )
            if self.slack_members is not None:
                user: object = self.slack_members.get(person.email.lower())
                if user is None:
                    return Found(problem="no Slack user with this e-mail")
            else:
                token = admin.get_secret_value()
                # The lookup the targets make (SlackClient.who), read whole:
                # it also finds deactivated accounts, which no target can change.
                data = await self.slack_gate.run(
                    lambda: client.call("users.lookupByEmail", token, person, email=person.email)
                )
                user = data.get("user")
            if not isinstance(user, Mapping) or not user.get("id"):
                return Found(problem="Slack's answer names no user")
            if user.get("deleted"):
                return Found(problem=f"the Slack account {user['id']} is deactivated")
            return Found(str(user["id"]))
        except AuthError:
            return Found(problem="not checked: Slack refused our credentials")
        except SlackRefused as exc:
            if exc.error in ("users_not_found", "user_not_found"):
                return Found(problem="no Slack user with this e-mail")
            return Found(problem=_reason(exc))
        except UpstreamError as exc:
            return Found(problem=f"Slack lookup failed: {_reason(exc)}")

    async def row(self, person: Person, nfon: Mapping[str, str | None] | None) -> Row:
        row = Row(person, name=person.name)
        if nfon is None:
            row.nfon = Found(problem="not checked: NFON failed")
        elif person.extension not in nfon:
            row.nfon = Found(problem=f"extension {person.extension} unknown to NFON")
        else:
            row.nfon = Found(person.extension)
            row.name = person.name or nfon[person.extension]
        row.entra, row.slack = await asyncio.gather(self.entra(person), self.slack_user(person))
        self.progress.tick()
        return row


async def _group(
    settings: Settings, nfon: Mapping[str, str | None] | None, report: Report
) -> tuple[list[Person], dict[str, str]]:
    """The people ``run`` would sync (``people:`` and the group's matched
    members) and, per key, where each mapping came from."""
    typed = [entry.to_person() for entry in settings.people if entry.extension is not None]
    directory_settings = settings.directory
    if directory_settings is None or settings.microsoft is None:
        return typed, {}
    group = directory_settings.microsoft
    ca_bundle = settings.tls.ca_bundle
    reader = GroupMembers(
        settings.microsoft,
        group=group.group,
        extension_from=group.extension_from,
        clock=SystemClock(),
        user_agent=user_agent(settings.nfon.customer),
        verify=str(ca_bundle) if ca_bundle else True,
    )
    try:
        members = await reader.load()
    except PresenceSyncError as exc:
        report.services["Directory"] = Found(problem=f"group not read: {_reason(exc)}")
        return typed, {}
    finally:
        await reader.aclose()
    report.services["Directory"] = Found(
        f"group {group.group!r}: {len(members)} enabled members, by {group.extension_from}"
    )
    if nfon is None:
        return typed, {}
    directory = Directory(settings.people, group)
    directory.update_extensions([ExtensionInfo(e, n) for e, n in nfon.items()])
    directory.update_members(members)
    report.matching = directory.matching
    sources: dict[str, str] = {}
    for hit in directory.matching.matches if directory.matching else ():
        sources[hit.member.key] = f"group: {group.extension_from} {hit.value}"
    people = directory.people()
    known = {p.key for p in people}
    # Typed people whose extension NFON does not list stay in the table.
    return [*people, *(p for p in typed if p.key not in known)], sources


async def resolve(loaded: Loaded, stderr: TextIO) -> Report:
    """Log in to every service ``loaded`` uses and resolve every person."""
    progress = _Progress(len(loaded.settings.people), stderr)
    resolver = _Resolver(loaded, progress)
    report = Report()
    try:

        async def slack() -> None:
            await resolver.slack_login(report)
            await resolver.slack_directory(report)

        nfon, *_ = await asyncio.gather(
            resolver.nfon(report),
            resolver.microsoft_login(report),
            slack(),
            resolver.state(report),
            *(resolver.webhook(report, hook) for hook in resolver.webhooks),
        )
        people, sources = await _group(loaded.settings, nfon, report)
        progress.total = len(people)
        report.rows = list(await asyncio.gather(*(resolver.row(p, nfon) for p in people)))
        for row in report.rows:
            row.source = sources.get(row.person.key, "people:")
        if nfon is not None:
            mapped = {p.extension for p in people}
            report.unmapped = len(set(nfon) - mapped)
    finally:
        progress.finish()
        await resolver.close()
    return report


# --- output ----------------------------------------------------------------------------


def _printable(text: str | None) -> str:
    """``text`` safe for a terminal: names come from NFON and are untrusted,
    so control characters (escape sequences) show escaped (``\\x1b``)."""
    if not text:
        return "-"
    return printable(text)


def _cell(found: Found | None) -> str:
    if found is None:
        return "(not used)"
    return _printable(found.value) if found.value else "-"


def table(report: Report, settings: Settings) -> list[str]:
    """The report as text lines: services, then one row per person."""
    lines = []
    order = ("NFON", "Microsoft", "Directory", "Slack", "State")
    ranked = sorted(
        report.services.items(),
        key=lambda i: (order.index(i[0]) if i[0] in order else len(order), i[0]),
    )
    for service, found in ranked:
        state = f"PROBLEM: {found.problem}" if found.problem else f"ok: {found.value}"
        lines.append(f"{service:<10} {_printable(state)}")
    lines.append("")
    grouped = report.matching is not None
    headers = ["EXTENSION", "NAME", "E-MAIL"] + ["FROM"] * grouped
    has_entra = any(row.entra is not None for row in report.rows)
    has_slack = any(row.slack is not None for row in report.rows)
    headers += ["ENTRA USER"] * has_entra + ["SLACK USER"] * has_slack + ["PROBLEM"]
    cells = []
    for row in report.rows:
        line = [_printable(row.person.extension), _printable(row.name)[:40]]
        line.append(_printable(row.person.email))
        line += [_printable(row.source)] * grouped
        line += [_cell(row.entra)] * has_entra + [_cell(row.slack)] * has_slack
        line.append(_printable("; ".join(row.problems)) if row.problems else "")
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    bad = sum(1 for row in report.rows if row.problems)
    people = len(report.rows)
    lines.append("")
    summary = f"{people} people: {people - bad} resolved, {bad} with problems"
    if report.unmapped:
        summary += f"; NFON lists {report.unmapped} extensions no person is mapped to"
    lines.append(summary)
    if report.matching is not None:
        lines.extend(_matching(report.matching, settings))
    nfon_ok = report.services.get("NFON", Found()).problem is None
    if people and nfon_ok and all(row.nfon.problem for row in report.rows):
        lines.append("no person sits behind an extension NFON lists: nothing would be shown")
    return lines


def _matching(matching: Matching, settings: Settings) -> list[str]:
    """The group's conflicts (each with what to change), then the unmatched."""
    source = settings.directory.microsoft.extension_from if settings.directory else "?"
    lines: list[str] = []
    if matching.conflicts:
        lines += ["", f"{len(matching.conflicts)} conflicts (these people are not synced):"]
        lines += [f"  CONFLICT: {_printable(c.describe(source))}" for c in matching.conflicts]
    if matching.unmatched_members:
        lines += ["", f"{len(matching.unmatched_members)} members on no extension (not synced):"]
        lines += [
            f"  {_printable(m.email)} ({_printable(', '.join(m.values)) or f'no {source}'})"
            for m in matching.unmatched_members
        ]
    if matching.unmatched_extensions:
        shown = ", ".join(_printable(e) for e in matching.unmatched_extensions[:50])
        more = len(matching.unmatched_extensions) - 50
        lines += [
            "",
            f"{len(matching.unmatched_extensions)} extensions without a member: {shown}"
            + (f" and {more} more" if more > 0 else ""),
        ]
    return lines


# --- the command ---------------------------------------------------------------------


async def run(
    config: str,
    *,
    offline: bool,
    credentials: Path | None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """``presence-sync check``; returns the exit code. Raises ``ConfigError``
    (the caller prints it and exits 78)."""
    with collect_warnings() as warnings:
        try:
            loaded = load_checked(config, credentials)
        finally:
            for record in warnings:
                print(warning_text(record), file=stderr)
            warnings.clear()
        settings = loaded.settings
        for warning in (*settings.warnings, *rule_text_warnings(settings)):
            print(f"warning: {warning}", file=stderr)
        targets = ", ".join(
            n if n == spec.kind else f"{n} ({spec.kind})" for n, spec in settings.targets.items()
        )
        group = (
            f" and the members of Entra group {settings.directory.microsoft.group!r}"
            if settings.directory is not None
            else ""
        )
        print(
            f"{config}: valid. {len(settings.people)} people{group}; targets: {targets}",
            file=stdout,
        )
        if offline:
            return 0
        try:
            report = await resolve(loaded, stderr)
        finally:
            for record in warnings:
                print(warning_text(record), file=stderr)
    for line in table(report, settings):
        print(line, file=stdout)
    return 0 if report.ok else 1

"""Every built-in target runs ``target_contract.TargetContract``: the Microsoft
targets against the Graph simulator (HTTPS, msal and httpx), the Slack ones
against the Slack simulator (slack_sdk), the webhook against the loopback
receiver (httpx), and ``log``, which has no remote side. Each ``Remote``
below is that target's adapter: its simulator in a thread of its own, failure
injection and read-back through the simulator's ``/_sim/`` control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import MappingProxyType, SimpleNamespace
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr
from target_contract import RETRY_AFTER, Control, Remote, TargetContract

from presence_sync.clock import ManualClock
from presence_sync.config import MicrosoftSettings, TlsSettings
from presence_sync.config.models import SlackSettings, SlackUserToken
from presence_sync.errors import PermanentError
from presence_sync.model import Applied, Person, Status
from presence_sync.sim.graph import GraphSim, SimClock
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.serve import serve_in_thread as serve_app
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import serve_in_thread as serve_slack
from presence_sync.sim.webhook import WebhookReceiver
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import Change, Target, TargetEnv, target_class, target_env
from presence_sync.targets.log import LogTarget
from presence_sync.targets.slack_client import DEFAULT_RATELIMIT_WAIT

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
USER_AGENT = "presence-sync/contract"
ON_A_CALL = Status(text="On a call", emoji=":telephone_receiver:")


class _Built(Remote):
    """What every adapter shares: a store for the targets' ``Memory`` and the
    targets built, closed after the test."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.store = MemoryStore(clock=clock)
        self.built: list[Target] = []

    def _keep(self, target: Target) -> Target:
        self.built.append(target)
        return target

    async def apply(
        self,
        target: Target,
        desired: Status | None,
        applied: Applied | None = None,
        person: Person | None = None,
    ) -> Applied:
        person = person or self.person
        memory = TargetMemory(self.store, target.name, person.key)
        return await target.apply(Change(person, desired, applied, None, memory))

    async def aclose(self) -> None:
        for target in self.built:
            await target.aclose()


# --- Microsoft: teams_presence, teams_status_message, outlook_calendar ---------------------

GRAPH_SECRET = "graph-contract-secret"
ANNA = "anna@contoso.example"


class GraphClock(SimClock):
    """The Graph simulator's clock, also a ``clock.Clock`` for the targets."""

    def monotonic(self) -> float:
        return (self.now() - START).total_seconds()

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))


class Graph(_Built):
    """A Microsoft target against the Graph simulator; ``shown``/``empty``
    read what Anna sees from ``/_sim/users/{id}/...``."""

    def __init__(self, kind: str, origin: str, ca: str, tenant: str, client_id: str, user: str,
                 clock: GraphClock) -> None:  # fmt: skip
        super().__init__(clock)
        self.kind = kind  # type: ignore[misc]
        self.control = Control(origin, ca_file=ca)
        self.tenant = tenant
        self.client_id = client_id
        self.user = user
        microsoft = MicrosoftSettings(
            tenant_id=tenant,
            client_id=client_id,
            authority=origin,
            graph_url=origin,
            client_secret=GRAPH_SECRET,
        )
        self.settings = SimpleNamespace(microsoft=microsoft, tls=TlsSettings(ca_bundle=ca))

    status: ClassVar[Status] = Status(availability="Busy", activity="InACall", text="On a call")

    @property
    def person(self) -> Person:
        return Person(key=ANNA, email=ANNA, extension="100")

    def target(self, *, timeout: float | None = None) -> Target:
        cls = target_class(self.kind)
        env = target_env(cls.info, self.settings, clock=self.clock, user_agent=USER_AGENT)
        options = cls.Options(**({} if timeout is None else {"timeout": timeout}))
        return self._keep(cls(self.kind, options, env))

    def _presence(self) -> dict[str, Any]:
        presence: dict[str, Any] = self.control.get(f"/users/{self.user}/presence")
        return presence

    def _message(self) -> str:
        message = self._presence().get("statusMessage") or {}
        return str((message.get("message") or {}).get("content") or "")

    def _events(self) -> tuple[list[str], int]:
        """Subjects of the events still open, and how many there are in all."""
        now = self.clock.now().replace(tzinfo=None)
        events = self.control.get(f"/users/{self.user}/events")["value"]
        open_ = [
            e["subject"] for e in events if datetime.fromisoformat(e["end"]["dateTime"][:19]) > now
        ]
        return open_, len(events)

    def shows(self) -> bool:
        if self.kind == "teams_presence":
            presence = self._presence()
            return (presence["availability"], presence["activity"]) == ("Busy", "InACall")
        if self.kind == "teams_status_message":
            return self._message() == "On a call"
        return self._events()[0] == ["On a call"]

    def cleared(self) -> bool:
        if self.kind == "teams_presence":
            return self.client_id not in self._presence()["sessions"]
        if self.kind == "teams_status_message":
            return self._message() == ""
        return self._events() == ([], 1)  # one event, ended: the call stays in the calendar

    def requests(self) -> int:
        return len(self.control.get("/requests", path="/v1.0/"))

    def tokens(self) -> int:
        issued = self.control.get("/requests", path=f"/{self.tenant}/oauth2/v2.0/token")
        return sum(1 for r in issued if r["status"] == 200)

    def _fail(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        self.control.post("/fail", path="/v1.0/users/", status=status, count=count,
                          retry_after=retry_after)  # fmt: skip

    def fail_next(self, status: int, count: int = 1) -> None:
        self._fail(status, count)

    def reject_token_next(self) -> None:
        self._fail(401)

    def rate_limit_next(self, kind: str, count: int) -> None:
        assert kind == "429"
        self._fail(429, count, RETRY_AFTER)

    def hang_next(self, seconds: float) -> None:
        self.control.post("/hang", seconds=seconds, path="/v1.0/users/")

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)


async def _graph(kind: str) -> AsyncIterator[Graph]:
    clock = GraphClock(START)
    sim = GraphSim(clock=clock)
    client_id = sim.register_app(secret=GRAPH_SECRET)
    user = sim.add_user(ANNA)
    with serve_graph(sim) as handle:
        remote = Graph(kind, handle.origin, str(handle.ca_path), sim.tenant, client_id, user,
                       clock)  # fmt: skip
        try:
            yield remote
        finally:
            await remote.aclose()
            remote.control.close()


class TestTeamsPresence(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        async for remote in _graph("teams_presence"):
            yield remote


class TestTeamsStatusMessage(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        async for remote in _graph("teams_status_message"):
            yield remote


class TestOutlookCalendar(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        async for remote in _graph("outlook_calendar"):
            yield remote


# --- Slack: slack_status (the admin token), slack_dnd (a person's own token) --------------


class Slack(_Built):
    """A Slack target against the Slack simulator; what a person sees is read
    from ``/_sim/people``. Slack's tokens do not rotate (docs/slack.md asks
    for rotation off), so a rejected one is reported, never renewed; Slack
    rate-limits both as HTTP 429 and as ``ratelimited`` inside an HTTP 200."""

    renews_tokens: ClassVar[bool] = False
    rate_limits: ClassVar[tuple[str, ...]] = ("429", "200")
    default_wait: ClassVar[float | None] = DEFAULT_RATELIMIT_WAIT

    def __init__(self, kind: str, base_url: str, origin: str, ids: dict[str, str],
                 secrets: dict[str, str], clock: ManualClock) -> None:  # fmt: skip
        super().__init__(clock)
        self.kind = kind  # type: ignore[misc]
        self.base_url = base_url
        self.control = Control(origin)
        self.ids = ids
        self.secrets = secrets
        self.name = "ben" if kind == "slack_status" else "anna"

    @property
    def person(self) -> Person:
        email = f"{self.name}@example.com"
        return Person(key=email, email=email, extension="100")

    def target(self, *, timeout: float | None = None) -> Target:
        settings = SlackSettings(
            token=SecretStr(self.secrets["adam"]),
            base_url=self.base_url,
            request_timeout=timeout or 5.0,
            user_tokens=[
                SlackUserToken(email="anna@example.com", token=SecretStr(self.secrets["anna"]))
            ],
        )
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        env = TargetEnv(clock=self.clock, user_agent=USER_AGENT, sections=sections)
        cls = target_class(self.kind)
        return self._keep(cls(self.kind, cls.Options(), env))

    def _seen(self) -> dict[str, Any]:
        uid = self.ids[self.name]
        (person,) = [p for p in self.control.get("/people") if p["id"] == uid]
        seen: dict[str, Any] = person
        return seen

    def shows(self) -> bool:
        seen = self._seen()
        if self.kind == "slack_dnd":
            return seen["snooze_endtime"] is not None
        return (seen["status_text"], seen["status_emoji"]) == (ON_A_CALL.text, ON_A_CALL.emoji)

    def cleared(self) -> bool:
        seen = self._seen()
        if self.kind == "slack_dnd":
            return seen["snooze_endtime"] is None
        return (seen["status_text"], seen["status_emoji"]) == ("", "")

    def requests(self) -> int:
        return len(self.control.get("/requests"))

    def fail_next(self, status: int, count: int = 1) -> None:
        error = "service_unavailable" if status == 503 else "internal_error"
        self.control.post("/fail", method="*", error=error, status=status, count=count)

    def reject_token_next(self) -> None:
        self.control.post("/fail", method="*", error="invalid_auth")

    def rate_limit_next(self, kind: str, count: int) -> None:
        if kind == "429":
            self.control.post("/fail", method="*", error="ratelimited", status=429, count=count,
                              retry_after=RETRY_AFTER)  # fmt: skip
        else:
            self.control.post("/fail", method="*", error="ratelimited", count=count)

    def hang_next(self, seconds: float) -> None:
        self.control.post("/hang", method="*", seconds=seconds)

    async def later(self, seconds: float) -> None:
        await self.clock.advance(seconds)


class SlackStatus(Slack):
    kind: ClassVar[str] = "slack_status"
    status: ClassVar[Status] = ON_A_CALL


class SlackDnd(Slack):
    """``slack_dnd`` works with people's own tokens only: one rejected parks
    that person (``PermanentError``), not the whole target."""

    kind: ClassVar[str] = "slack_dnd"
    status: ClassVar[Status] = Status(dnd=True)
    rejected_token: ClassVar[type[Exception]] = PermanentError


async def _slack(cls: type[Slack]) -> AsyncIterator[Slack]:
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    roles = {"adam": "admin"}
    ids: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for name in ("adam", "anna", "ben"):
        ids[name] = sim.add_user(name, f"{name}@example.com", role=roles.get(name, "regular"))  # type: ignore[arg-type]
        secrets[name] = sim.add_token(ids[name], token_id=name).secret
    with serve_slack(sim) as handle:
        remote = cls(cls.kind, handle.base_url, handle.origin, ids, secrets, clock)
        try:
            yield remote
        finally:
            await remote.aclose()
            remote.control.close()


class TestSlackStatus(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        async for remote in _slack(SlackStatus):
            yield remote


class TestSlackDnd(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        async for remote in _slack(SlackDnd):
            yield remote


# --- webhook -----------------------------------------------------------------------------

HOOK_SECRET = "contract-hook-secret-0123456789"


class Webhook(_Built):
    """The webhook against the loopback receiver, which checks signatures on
    the injected clock; what it shows is the last delivery it accepted
    (``/_sim/deliveries``). A webhook has a shared secret, not a token: a
    401 is reported at once. A receiver has no directory: it is sent
    whoever changes."""

    kind: ClassVar[str] = "webhook"
    status: ClassVar[Status] = Status(availability="Busy", activity="InACall", text="On a call")
    renews_tokens: ClassVar[bool] = False
    knows_people: ClassVar[bool] = False

    def __init__(self, url: str, origin: str, clock: ManualClock) -> None:
        super().__init__(clock)
        self.url = url
        self.control = Control(origin)

    @property
    def person(self) -> Person:
        return Person(key="anna@example.com", email="anna@example.com", extension="100")

    def target(self, *, timeout: float | None = None) -> Target:
        cls = target_class("webhook")
        options = cls.Options.model_validate(
            {"url": self.url, "secret": HOOK_SECRET, **({"timeout": timeout} if timeout else {})}
        )
        return self._keep(cls("hook", options, TargetEnv(clock=self.clock, user_agent=USER_AGENT)))

    def _last(self) -> dict[str, Any] | None:
        accepted = [
            d
            for d in self.control.get("/deliveries")
            if 200 <= d["answered"] < 300 and d["body"]["person"]["email"] == self.person.email
        ]
        return accepted[-1]["body"] if accepted else None

    def shows(self) -> bool:
        last = self._last()
        return last is not None and (last["status"] or {}).get("text") == "On a call"

    def cleared(self) -> bool:
        last = self._last()
        return last is not None and last["status"] is None

    def requests(self) -> int:
        return len(self.control.get("/deliveries"))

    def fail_next(self, status: int, count: int = 1) -> None:
        self.control.post("/fail", status=status, count=count)

    def reject_token_next(self) -> None:
        self.fail_next(401)

    def rate_limit_next(self, kind: str, count: int) -> None:
        assert kind == "429"
        self.control.post("/fail", status=429, count=count, retry_after=RETRY_AFTER)

    def hang_next(self, seconds: float) -> None:
        self.control.post("/delay", seconds=seconds)

    async def later(self, seconds: float) -> None:
        await self.clock.advance(seconds)


class TestWebhook(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        clock = ManualClock(START)
        receiver = WebhookReceiver(HOOK_SECRET, now=lambda: clock.now().timestamp())
        with serve_app(receiver.app) as running:
            remote = Webhook(f"{running.origin}{receiver.path}", running.origin, clock)
            try:
                yield remote
            finally:
                await remote.aclose()
                remote.control.close()


# --- log -----------------------------------------------------------------------------------


class Log(_Built):
    """``log`` shows nothing anywhere: what it "shows" is its ``history``."""

    kind: ClassVar[str] = "log"
    status: ClassVar[Status] = ON_A_CALL
    knows_people: ClassVar[bool] = False
    failures: ClassVar[str | None] = (
        "no remote side, so nothing to refuse a token, throttle, fail or time out"
    )

    @property
    def person(self) -> Person:
        return Person(key="anna@example.com", email="anna@example.com", extension="100")

    def target(self, *, timeout: float | None = None) -> Target:
        cls = target_class("log")
        return self._keep(cls("log", cls.Options(), TargetEnv(clock=self.clock, user_agent="t")))

    def _last(self) -> tuple[str, Status | None] | None:
        (target,) = self.built
        assert isinstance(target, LogTarget)
        mine = [entry for entry in target.history if entry[0] == self.person.key]
        return mine[-1] if mine else None

    def shows(self) -> bool:
        return self._last() == (self.person.key, self.status)

    def cleared(self) -> bool:
        return self._last() == (self.person.key, None)

    async def later(self, seconds: float) -> None:
        await self.clock.advance(seconds)


class TestLog(TargetContract):
    @pytest.fixture
    async def remote(self) -> AsyncIterator[Remote]:
        remote = Log(ManualClock(START))
        yield remote
        await remote.aclose()

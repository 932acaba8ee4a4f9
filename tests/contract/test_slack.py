"""Contract tests of the ``slack_status`` and ``slack_dnd`` targets against the
Slack simulator, over loopback sockets with the real ``slack_sdk`` client and
the store's real ``Memory``: what only Slack does. The cases every target
shares (apply, clear, re-apply, a rejected token, 429 asked once, 5xx, a
timeout, an unknown person) run from ``target_contract.py`` in
``test_target_contract.py``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest
from pydantic import SecretStr

from presence_sync.clock import ManualClock
from presence_sync.config import load
from presence_sync.config.models import SlackSettings, SlackUserToken, TlsSettings
from presence_sync.engine import Engine
from presence_sync.errors import AuthError, ConfigError, PermanentError, TransientError
from presence_sync.model import Applied, Line, LineView, Person, Presence, Status
from presence_sync.sim.certs import LoopbackTls
from presence_sync.sim.serve import serve_in_thread as serve_app_in_thread
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack import Status as SlackShown
from presence_sync.sim.slack_http import build_app as build_slack_app
from presence_sync.sim.slack_serve import SlackHandle, serve_in_thread
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import Change, TargetEnv, target_class
from presence_sync.targets.slack import SlackStatusOptions, SlackStatusTarget
from presence_sync.targets.slack_client import ROSTER_AFTER
from presence_sync.targets.slack_dnd import SlackDndOptions, SlackDndTarget

ON_A_CALL = Status(text="On a call", emoji=":telephone_receiver:")
START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
HOUR = 3600


@dataclass
class Slack:
    """A served simulator with an admin (``adam``), an owner (``otto``) and
    three colleagues; ``anna`` and ``otto`` have their own tokens configured."""

    handle: SlackHandle
    clock: ManualClock
    store: MemoryStore
    ids: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def sim(self) -> SlackSim:
        return self.handle.sim

    def person(self, name: str) -> Person:
        email = f"{name}@example.com"
        return Person(key=email, email=email, extension="100")

    def settings(self, *, admin: bool = True, own: tuple[str, ...] = ("anna", "otto"),
                 timeout: float = 5.0) -> SlackSettings:  # fmt: skip
        return SlackSettings(
            token=SecretStr(self.secrets["adam"]) if admin else None,
            base_url=self.handle.base_url,
            request_timeout=timeout,
            user_tokens=[
                SlackUserToken(email=f"{n}@example.com", token=SecretStr(self.secrets[n]))
                for n in own
            ],
        )

    def env(self, settings: SlackSettings) -> TargetEnv:
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        return TargetEnv(clock=self.clock, user_agent="presence-sync/test", sections=sections)

    def status_target(self, expiration: float = HOUR, **kw: object) -> SlackStatusTarget:
        options = SlackStatusOptions(expiration=expiration)
        return SlackStatusTarget("slack_status", options, self.env(self.settings(**kw)))  # type: ignore[arg-type]

    def dnd_target(self, **kw: object) -> SlackDndTarget:
        return SlackDndTarget("slack_dnd", SlackDndOptions(), self.env(self.settings(**kw)))  # type: ignore[arg-type]

    def change(self, target: str, name: str, desired: Status | None,
               applied: Applied | None = None) -> Change:  # fmt: skip
        person = self.person(name)
        memory = TargetMemory(self.store, target, person.key)
        return Change(person=person, desired=desired, applied=applied, view=None, memory=memory)

    def shown(self, name: str) -> SlackShown:
        return self.sim.status_of(self.ids[name])

    def calls(self, method: str | None = None) -> int:
        return len(self.sim.requests(method))

    async def move(self, seconds: float) -> None:
        await self.clock.advance(seconds)


@pytest.fixture
def slack() -> Iterator[Slack]:
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    roles = {"olivia": "primary_owner", "adam": "admin", "otto": "owner"}
    ws = Slack(handle=None, clock=clock, store=MemoryStore(clock=clock))  # type: ignore[arg-type]
    for name in ("olivia", "adam", "otto", "anna", "ben", "clara"):
        uid = sim.add_user(name, f"{name}@example.com", role=roles.get(name, "regular"))  # type: ignore[arg-type]
        ws.ids[name] = uid
        ws.secrets[name] = sim.add_token(uid, token_id=name).secret
    with serve_in_thread(sim) as handle:
        ws.handle = handle
        yield ws


def test_registered_by_kind() -> None:
    assert target_class("slack_status") is SlackStatusTarget
    assert target_class("slack_dnd") is SlackDndTarget


# --- slack_status: set, clear, restore ----------------------------------------------------


@pytest.mark.parametrize("name", ["ben", "anna"], ids=["admin-token", "own-token"])
async def test_set_then_clear_leaves_an_empty_status_empty(slack: Slack, name: str) -> None:
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", name, ON_A_CALL))
    shown = slack.shown(name)
    assert (shown.text, shown.emoji) == ("On a call", ":telephone_receiver:")
    assert shown.expiration == int(START.timestamp()) + HOUR
    assert applied.status == ON_A_CALL
    assert applied.expires == datetime.fromtimestamp(shown.expiration, UTC)

    await target.apply(slack.change("slack_status", name, None, applied))
    assert slack.shown(name).empty


async def test_own_status_restored_exactly(slack: Slack) -> None:
    theirs_until = int(START.timestamp()) + 8 * HOUR
    slack.sim.set_own_status(slack.ids["ben"], "Lunch", ":pizza:", theirs_until)
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert slack.shown("ben").text == "On a call"
    await slack.move(600)
    await target.apply(slack.change("slack_status", "ben", None, applied))
    assert slack.shown("ben") == SlackShown("Lunch", ":pizza:", theirs_until)


async def test_status_typed_mid_call_is_kept(slack: Slack) -> None:
    slack.sim.set_own_status(slack.ids["ben"], "Lunch", ":pizza:")
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    slack.sim.set_own_status(slack.ids["ben"], "Back at 3", ":runner:")
    # A refresh during the call does not overwrite it ...
    again = await target.apply(slack.change("slack_status", "ben", ON_A_CALL, applied))
    assert slack.shown("ben") == SlackShown("Back at 3", ":runner:", 0)
    assert again.expires is None
    # ... and the end of the call does not take it away.
    await target.apply(slack.change("slack_status", "ben", None, again))
    assert slack.shown("ben") == SlackShown("Back at 3", ":runner:", 0)


async def test_saved_status_expired_meanwhile_is_cleared(slack: Slack) -> None:
    until = int(START.timestamp()) + 900
    slack.sim.set_own_status(slack.ids["ben"], "Coffee", ":coffee:", until)
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    await slack.move(1200)
    # So that a lapsed status written back would show instead of reading empty.
    slack.sim.set_expirations_fire(False)
    await target.apply(slack.change("slack_status", "ben", None, applied))
    assert slack.shown("ben").empty


async def test_restore_after_our_expiration_fired(slack: Slack) -> None:
    """The daemon was down past our expiration: theirs still comes back."""
    slack.sim.set_own_status(slack.ids["ben"], "Lunch", ":pizza:")
    target = slack.status_target(expiration=600)
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    await slack.move(700)
    assert slack.shown("ben").empty
    await target.apply(slack.change("slack_status", "ben", None, applied))
    assert slack.shown("ben") == SlackShown("Lunch", ":pizza:", 0)


async def test_ours_is_cleared_even_when_expirations_do_not_fire(slack: Slack) -> None:
    slack.sim.set_expirations_fire(False)
    target = slack.status_target(expiration=600)
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    await slack.move(700)
    assert slack.shown("ben").text == "On a call"
    await target.apply(slack.change("slack_status", "ben", None, applied))
    assert slack.shown("ben").empty


async def test_reapply_is_one_read_and_no_write(slack: Slack) -> None:
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert (slack.calls("users.profile.get"), slack.calls("users.profile.set")) == (1, 1)
    again = await target.apply(slack.change("slack_status", "ben", ON_A_CALL, applied))
    assert (slack.calls("users.profile.get"), slack.calls("users.profile.set")) == (2, 1)
    assert again.expires == applied.expires


async def test_refresh_near_the_end_renews_the_expiration(slack: Slack) -> None:
    slack.sim.set_own_status(slack.ids["ben"], "Lunch", ":pizza:")
    target = slack.status_target()
    applied = await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    await slack.move(HOUR - 60)
    renewed = await target.apply(slack.change("slack_status", "ben", ON_A_CALL, applied))
    assert renewed.expires is not None
    assert applied.expires is not None
    assert renewed.expires > applied.expires
    assert slack.shown("ben").expiration == int(renewed.expires.timestamp())
    await target.apply(slack.change("slack_status", "ben", None, renewed))
    assert slack.shown("ben") == SlackShown("Lunch", ":pizza:", 0)


async def test_new_status_during_call_keeps_the_saved_one(slack: Slack) -> None:
    """Ours changes from one text to another: theirs stays saved."""
    slack.sim.set_own_status(slack.ids["ben"], "Lunch", ":pizza:")
    target = slack.status_target()
    first = await target.apply(slack.change("slack_status", "ben", Status(text="Ringing")))
    second = await target.apply(slack.change("slack_status", "ben", ON_A_CALL, first))
    assert slack.shown("ben").text == "On a call"
    await target.apply(slack.change("slack_status", "ben", None, second))
    assert slack.shown("ben") == SlackShown("Lunch", ":pizza:", 0)


async def test_long_text_is_cut_with_one_warning(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    target = slack.status_target()
    long = Status(text="x" * 150, emoji=":phone:")
    with caplog.at_level(logging.WARNING):
        await target.apply(slack.change("slack_status", "ben", long))
        await target.apply(slack.change("slack_status", "clara", long))
    assert len(slack.shown("ben").text) == 100
    assert sum("cut" in r.getMessage() for r in caplog.records) == 1


async def test_user_id_looked_up_once_and_ids_override(slack: Slack) -> None:
    target = slack.status_target()
    await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    await target.apply(slack.change("slack_status", "ben", None))
    assert slack.calls("users.lookupByEmail") == 1
    person = slack.person("clara")
    override = Person(key=person.key, email=person.email, extension="101",
                      ids={"slack_status": slack.ids["clara"]})  # fmt: skip
    memory = TargetMemory(slack.store, "slack_status", person.key)
    await target.apply(Change(override, ON_A_CALL, None, None, memory))
    assert slack.calls("users.lookupByEmail") == 1
    assert slack.shown("clara").text == "On a call"


# --- slack_status: errors -------------------------------------------------------------------


async def test_ratelimited_as_429_pauses_with_retry_after(slack: Slack) -> None:
    slack.sim.fail_next("users.profile.set", "ratelimited", status=429, retry_after=17)
    target = slack.status_target()
    with pytest.raises(TransientError) as caught:
        await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert caught.value.retry_after == 17
    assert slack.shown("ben").empty


async def test_ratelimited_inside_a_200_pauses_too(slack: Slack) -> None:
    slack.sim.fail_next("users.profile.get", "ratelimited")
    target = slack.status_target()
    with pytest.raises(TransientError) as caught:
        await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


@pytest.mark.parametrize("error", ["invalid_auth", "token_revoked", "token_expired"])
async def test_rejected_admin_token_is_an_auth_error(slack: Slack, error: str) -> None:
    slack.sim.fail_next("users.profile.get", error)
    target = slack.status_target()
    with pytest.raises(AuthError) as caught:
        await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert error in str(caught.value)
    assert slack.secrets["adam"] not in str(caught.value)


@pytest.mark.parametrize("error", ["invalid_auth", "token_revoked", "token_expired"])
async def test_rejected_own_token_parks_only_its_person(slack: Slack, error: str) -> None:
    slack.sim.fail_next("users.profile.get", error)
    target = slack.status_target()
    with pytest.raises(PermanentError) as caught:
        await target.apply(slack.change("slack_status", "anna", ON_A_CALL))
    assert error in str(caught.value)
    assert re.search(r"anna@example\.com.*slack\.user_tokens", str(caught.value))
    assert slack.secrets["anna"] not in str(caught.value)
    # Everyone else goes on.
    await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert slack.shown("ben").text == "On a call"


@pytest.mark.parametrize(
    ("error", "status", "raised"),
    [
        ("not_authed", 200, AuthError),
        ("missing_scope", 200, AuthError),
        ("not_allowed_token_type", 200, AuthError),
        ("account_inactive", 200, PermanentError),
        ("user_not_found", 200, PermanentError),
        ("not_admin", 200, PermanentError),
        ("paid_only", 200, PermanentError),
        ("invalid_emoji_not_allowed", 200, PermanentError),
        ("service_unavailable", 503, TransientError),
        ("fatal_error", 200, TransientError),
    ],
)
async def test_slack_errors_translated(
    slack: Slack, error: str, status: int, raised: type[Exception]
) -> None:
    slack.sim.fail_next("users.profile.set", error, status=status)
    target = slack.status_target()
    with pytest.raises(raised) as caught:
        await target.apply(slack.change("slack_status", "ben", ON_A_CALL))
    assert error in str(caught.value)
    if raised is PermanentError:
        assert "ben@example.com" in str(caught.value)


async def test_revoked_admin_token_is_an_auth_error(slack: Slack) -> None:
    slack.sim.revoke_token("adam")
    target = slack.status_target()
    with pytest.raises(AuthError, match="install the app again"):
        await target.apply(slack.change("slack_status", "ben", ON_A_CALL))


async def test_admin_token_on_an_owner_is_parked_naming_the_person(slack: Slack) -> None:
    target = slack.status_target(own=())
    with pytest.raises(PermanentError, match=r"otto@example\.com.*cannot_update_admin_user"):
        await target.apply(slack.change("slack_status", "otto", ON_A_CALL))
    assert slack.shown("otto").empty


async def test_owner_with_own_token_works(slack: Slack) -> None:
    target = slack.status_target()
    await target.apply(slack.change("slack_status", "otto", ON_A_CALL))
    assert slack.shown("otto").text == "On a call"


# --- slack_dnd -----------------------------------------------------------------------------


async def test_dnd_ours_ends_at_hang_up(slack: Slack) -> None:
    target = slack.dnd_target()
    applied = await target.apply(slack.change("slack_dnd", "anna", Status(dnd=True)))
    end = slack.sim.person(slack.ids["anna"]).snooze_endtime
    assert end == int(START.timestamp()) + 60 * 60
    assert applied.expires == datetime.fromtimestamp(end, UTC)
    await slack.move(300)
    await target.apply(slack.change("slack_dnd", "anna", None, applied))
    assert slack.sim.person(slack.ids["anna"]).snooze_endtime is None


async def test_dnd_own_snooze_is_not_ended(slack: Slack) -> None:
    own_end = slack.sim.snooze(slack.ids["anna"], 45)
    target = slack.dnd_target()
    applied = await target.apply(slack.change("slack_dnd", "anna", Status(dnd=True)))
    assert slack.sim.person(slack.ids["anna"]).snooze_endtime == own_end
    await target.apply(slack.change("slack_dnd", "anna", None, applied))
    assert slack.sim.person(slack.ids["anna"]).snooze_endtime == own_end


async def test_dnd_snooze_started_mid_call_is_not_ended(slack: Slack) -> None:
    target = slack.dnd_target()
    applied = await target.apply(slack.change("slack_dnd", "anna", Status(dnd=True)))
    own_end = slack.sim.snooze(slack.ids["anna"], 180)
    await target.apply(slack.change("slack_dnd", "anna", None, applied))
    assert slack.sim.person(slack.ids["anna"]).snooze_endtime == own_end


async def test_dnd_without_own_token_names_what_to_configure(slack: Slack) -> None:
    target = slack.dnd_target()
    with pytest.raises(PermanentError, match=r"ben@example.com.*slack.user_tokens"):
        await target.apply(slack.change("slack_dnd", "ben", Status(dnd=True)))


def test_dnd_without_any_own_token_cannot_be_built(slack: Slack) -> None:
    with pytest.raises(ValueError, match=r"slack\.user_tokens"):
        slack.dnd_target(own=())


# --- configuration: slack.user_tokens -----------------------------------------------------

CONFIG = """\
nfon:
  customer: K1234
  username: api-user
  password: nfon-secret-pw
slack:
  token_file: admin.token
  user_tokens:
    - email: Anna@Example.com
      token_file: anna.token
    - email: otto@example.com
      token_file: {otto}
people:
  - extension: "100"
    email: anna@example.com
targets:
  slack_status: {{}}
  slack_dnd: {{minutes: 30}}
"""


def write_config(tmp_path: Path, otto: str = "otto.token") -> Path:
    for name, secret in (("admin", "xoxp-admin"), ("anna", "xoxp-anna"), ("otto", "xoxp-otto")):
        token = tmp_path / f"{name}.token"
        token.write_text(secret + "\n")
        token.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(otto=otto))
    return path


def test_user_tokens_are_read_like_every_secret_file(tmp_path: Path) -> None:
    settings = load(write_config(tmp_path))
    assert settings.slack is not None
    assert settings.slack.user_token("anna@example.com") == "xoxp-anna"
    assert settings.slack.user_token("otto@example.com") == "xoxp-otto"
    assert settings.slack.user_token("ben@example.com") is None
    assert "xoxp" not in repr(settings)
    options = settings.targets["slack_dnd"].options
    assert isinstance(options, SlackDndOptions)
    assert options.minutes == 30


def test_missing_user_token_file_names_file_line_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, otto="gone.token")
    with pytest.raises(ConfigError) as caught:
        load(path)
    (problem,) = caught.value.problems
    assert problem.key == "slack.user_tokens[1].token_file"
    lines = path.read_text().splitlines()
    assert problem.line == next(i for i, t in enumerate(lines, 1) if "gone.token" in t)
    assert "gone.token" in problem.message


def test_slack_section_without_any_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.split("slack:")[0] + "slack:\n  base_url: https://slack.com/api/\n"
                    + "targets:\n  slack_status: {}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"config\.yaml:5.*slack: no token"):
        load(path)


# --- a burst: 300 people pick up within one second ---------------------------------------


class CallRules:
    """In use → "On a call" in Slack; anything else → nothing from us."""

    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> dict[str, Status | None]:
        return {"slack_status": ON_A_CALL if view.line is Line.IN_USE else None}


async def test_burst_of_300_converges_within_budgets_with_no_stale_writes() -> None:
    """300 people pick up within one second; every third hangs up 20 s later.
    The real engine and target against the simulator's published budgets
    (admin token: 30 profiles a minute): nothing is refused, everyone ends
    up right, and nobody gets a write for a state that was over before their
    turn came."""
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    admin = sim.add_user("adam", "it-admin@example.com", role="admin")
    secret = sim.add_token(admin).secret
    people = [Person(key=f"p{i}@example.com", email=f"p{i}@example.com", extension=str(1000 + i))
              for i in range(300)]  # fmt: skip
    uid = {p.key: sim.add_user(p.key, p.email) for p in people}
    with serve_in_thread(sim) as handle:
        settings = SlackSettings(token=SecretStr(secret), base_url=handle.base_url)
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        env = TargetEnv(clock=clock, user_agent="presence-sync/test", sections=sections)
        target = SlackStatusTarget("slack_status", SlackStatusOptions(), env)
        store = MemoryStore(clock=clock)
        engine = Engine(targets={"slack_status": target}, store=store, rules=CallRules(),
                        clock=clock)  # fmt: skip
        engine.set_people(people)
        engine.resync([LineView(p.extension, Line.IDLE, Presence.AVAILABLE) for p in people])
        task = asyncio.get_running_loop().create_task(engine.run())
        try:
            for i, p in enumerate(people):
                engine.observe(LineView(p.extension, Line.IN_USE, Presence.AVAILABLE))
                if i % 100 == 99:
                    await clock.advance(0.3)
            hangups = people[::3]
            hung_up_at = 0.0
            while engine.pending():
                if clock.monotonic() >= 20 and not hung_up_at:
                    hung_up_at = clock.now().timestamp()
                    for p in hangups:
                        engine.observe(LineView(p.extension, Line.IDLE, Presence.AVAILABLE))
                # The requests run in threads on real time: let them answer,
                # then move the injected clock to the engine's next deadline.
                await asyncio.sleep(0.002)
                deadline = clock.next_deadline
                step = 0.5 if deadline is None else max(0.001, deadline - clock.monotonic())
                await clock.advance(min(step, 0.5))
                assert clock.monotonic() < 3600, "no convergence within an hour"
        finally:
            engine.stop()
            await task
    refused = [r for r in sim.requests() if not r.ok]
    assert refused == []
    for p in people:
        shown = sim.status_of(uid[p.key])
        writes = sim.writes_to(uid[p.key])
        if p in hangups:
            assert shown.empty, p.key
            early = [r for r in sim.requests("users.profile.set")
                     if r.target == uid[p.key] and r.at < hung_up_at]  # fmt: skip
            # A call over before its turn costs nothing; one written before
            # the hang-up costs its write and the restore.
            assert writes == 2 * len(early), p.key
        else:
            assert (shown.text, writes) == ("On a call", 1), p.key


async def test_debug_logs_carry_no_token_number_or_profile(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    number = "+49 30 1234567"
    target = slack.status_target()
    with caplog.at_level(logging.DEBUG):
        applied = await target.apply(
            slack.change("slack_status", "anna", Status(text=f"Call with {number}"))
        )
        await target.apply(slack.change("slack_status", "anna", None, applied))
        slack.sim.fail_next("users.profile.get", "invalid_auth")
        with pytest.raises(PermanentError):
            await target.apply(slack.change("slack_status", "anna", ON_A_CALL))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert slack.secrets["anna"] not in text
    assert "1234567" not in text
    assert "anna@example.com" not in text


def test_slack_dnd_without_any_own_token_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    text = path.read_text()
    cut = text[text.index("  user_tokens:") : text.index("people:")]
    path.write_text(text.replace(cut, ""))
    with pytest.raises(ConfigError) as caught:
        load(path)
    (problem,) = caught.value.problems
    assert problem.key == "targets"
    assert problem.line == path.read_text().splitlines().index("targets:") + 1
    assert "slack.user_tokens" in problem.message


async def test_tls_ca_bundle_is_trusted(tmp_path: Path) -> None:
    """Over HTTPS with a private CA: trusted through ``tls.ca_bundle``
    (``TargetEnv.verify``), refused without it."""
    tls = LoopbackTls.create(tmp_path)
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    ben = sim.add_user("ben", "ben@example.com")
    secret = sim.add_token(ben).secret
    with serve_app_in_thread(build_slack_app(sim), **tls.serve_options()) as running:
        own = SlackUserToken(email="ben@example.com", token=SecretStr(secret))
        settings = SlackSettings(base_url=f"{running.origin}/api/", user_tokens=[own])
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        person = Person(key="ben@example.com", email="ben@example.com", extension="101")
        for verify in (True, str(tls.ca_file)):
            env = TargetEnv(clock=clock, user_agent="t", sections=sections, verify=verify)
            target = SlackStatusTarget("slack_status", SlackStatusOptions(), env)
            memory = TargetMemory(MemoryStore(clock=clock), "slack_status", person.key)
            change = Change(person, ON_A_CALL, None, None, memory)
            if verify is True:
                with pytest.raises(TransientError):
                    await target.apply(change)
                assert sim.requests() == ()
            else:
                await target.apply(change)
    assert running.origin.startswith("https://")
    assert sim.status_of(ben).text == "On a call"


async def test_stale_cached_user_id_is_looked_up_again(slack: Slack) -> None:
    target = slack.status_target()
    memory = TargetMemory(slack.store, "slack_status", "clara@example.com")
    memory.cache_id("user", "clara@example.com", "UGONE0001")
    await target.apply(slack.change("slack_status", "clara", ON_A_CALL))
    assert slack.shown("clara").text == "On a call"
    assert slack.calls("users.lookupByEmail") == 1
    assert memory.cached_id("user", "clara@example.com") == slack.ids["clara"]


async def test_many_people_get_their_ids_from_the_member_list(slack: Slack) -> None:
    # Past ROSTER_AFTER lookups, ids come from users.list (200 a page), not
    # one users.lookupByEmail each: 450 colleagues, 20 lookups, 3 pages.
    names = [f"p{i:03}" for i in range(450)]
    for name in names:
        slack.ids[name] = slack.sim.add_user(name, f"{name}@example.com")
    target = slack.status_target()
    for name in names:
        slack.sim.reset_budgets()  # Slack's per-minute limits are not under test here
        await target.apply(slack.change("slack_status", name, ON_A_CALL))
    assert all(slack.shown(name).text == "On a call" for name in names)
    assert slack.calls("users.lookupByEmail") == ROSTER_AFTER
    assert slack.calls("users.list") == 3
    await target.aclose()


async def test_failed_member_list_read_logs_why(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    # Past ROSTER_AFTER lookups the member list is read; when Slack refuses
    # it, the warning says why, in its text and in its fields.
    names = [f"p{i:03}" for i in range(ROSTER_AFTER + 1)]
    for name in names:
        slack.ids[name] = slack.sim.add_user(name, f"{name}@example.com")
    target = slack.status_target()
    for name in names[:ROSTER_AFTER]:
        await target.apply(slack.change("slack_status", name, ON_A_CALL))
    slack.sim.fail_next("users.list", "internal_error")
    with caplog.at_level(logging.WARNING, logger="presence_sync.targets.slack_client"):
        await target.apply(slack.change("slack_status", names[-1], ON_A_CALL))
    assert slack.shown(names[-1]).text == "On a call"
    [record] = [r for r in caplog.records if "member list" in r.getMessage()]
    assert "users.list: internal_error" in record.getMessage()
    assert "internal_error" in record.__dict__["ctx"]["error"]
    await target.aclose()


async def test_member_list_read_across_apply_timeouts_once() -> None:
    """450 people through the real engine, whose applies time out after 60 s,
    while Slack serves one users.list page a minute (3 pages): each page
    after the first waits out a rate limit about as long as an apply may
    take. The list is read once all the same, people it does not list yet
    are looked up by e-mail meanwhile, no apply times out, and everyone ends
    up "On a call"."""
    clock = ManualClock(START)
    sim = SlackSim(clock=clock, tier_limits={2: 1}, profiles_per_token=1000)
    admin = sim.add_user("adam", "it-admin@example.com", role="admin")
    secret = sim.add_token(admin).secret
    people = [Person(key=f"p{i}@example.com", email=f"p{i}@example.com", extension=str(1000 + i))
              for i in range(450)]  # fmt: skip
    # Slack lists them last to first: the engine's first people are on the last page.
    uid = {p.key: sim.add_user(p.key, p.email) for p in reversed(people)}
    with serve_in_thread(sim) as handle:
        settings = SlackSettings(token=SecretStr(secret), base_url=handle.base_url)
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        env = TargetEnv(clock=clock, user_agent="presence-sync/test", sections=sections)
        target = SlackStatusTarget("slack_status", SlackStatusOptions(), env)
        assert target.info.timeout == 60
        engine = Engine(targets={"slack_status": target}, store=MemoryStore(clock=clock),
                        rules=CallRules(), clock=clock)  # fmt: skip
        engine.set_people(people)
        engine.resync([LineView(p.extension, Line.IN_USE, Presence.AVAILABLE) for p in people])
        task = asyncio.get_running_loop().create_task(engine.run())
        try:
            while engine.pending():
                await asyncio.sleep(0.002)
                deadline = clock.next_deadline
                step = 0.5 if deadline is None else max(0.001, deadline - clock.monotonic())
                await clock.advance(min(step, 0.5))
                assert clock.monotonic() < 2 * 3600, "no convergence within two hours"
            stats = engine.picture().targets["slack_status"].stats
        finally:
            engine.stop()
            await task
            await target.aclose()
    shown = {p.key: sim.status_of(uid[p.key]).text for p in people}
    assert shown == {p.key: "On a call" for p in people}
    pages = [r for r in sim.requests("users.list") if r.ok]
    assert len(pages) == 3  # 451 members, 200 a page: none read twice
    assert stats.timeouts == 0
    assert stats.throttled == 0
    lookups = len(sim.requests("users.lookupByEmail"))
    assert ROSTER_AFTER < lookups < len(people)


async def test_closing_the_target_stops_reading_the_member_list(slack: Slack) -> None:
    names = [f"p{i:03}" for i in range(ROSTER_AFTER + 1)]
    for name in names:
        slack.ids[name] = slack.sim.add_user(name, f"{name}@example.com")
    target = slack.status_target()
    for name in names[:ROSTER_AFTER]:
        await target.apply(slack.change("slack_status", name, ON_A_CALL))
    slack.sim.fail_next("users.list", "ratelimited", retry_after=60, count=5)
    apply = asyncio.get_running_loop().create_task(
        target.apply(slack.change("slack_status", names[-1], ON_A_CALL))
    )
    while not apply.done():
        await asyncio.sleep(0.01)  # the requests answer on real time
        await slack.move(1)
    await apply
    # Looked up by e-mail while the list waits out Slack's rate limit.
    assert slack.shown(names[-1]).text == "On a call"
    assert slack.calls("users.lookupByEmail") == ROSTER_AFTER + 1
    assert slack.clock.sleepers == 1  # the reader, waiting for its next page
    await target.aclose()
    assert slack.clock.sleepers == 0
    asked = slack.calls("users.list")
    await slack.move(300)
    assert slack.calls("users.list") == asked

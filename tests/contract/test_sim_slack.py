"""The Slack simulator keeps Slack's published Web API contract.

Driven by the real ``slack_sdk.WebClient`` over loopback sockets (and by plain
httpx where the wire itself is the point: form bodies, a token in a form
field). aiohttp is not installed, so ``AsyncWebClient`` is not exercised.
Facts: ``/work/shared/reference/slack.md``; where the simulator had to choose
(the documentation is silent), the test says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from presence_sync.clock import ManualClock
from presence_sync.sim.slack import IssuedToken, SlackSim, Status
from presence_sync.sim.slack_serve import SlackHandle, serve, serve_in_thread

ON_A_CALL = {"status_text": "On a call", "status_emoji": ":telephone_receiver:"}


@dataclass
class Workspace:
    """A served simulator with a primary owner, an admin and three colleagues,
    each holding a user token with every scope."""

    handle: SlackHandle
    clock: ManualClock
    tokens: dict[str, IssuedToken]

    @property
    def sim(self) -> SlackSim:
        return self.handle.sim

    def client(self, who: str, timeout: float = 5.0) -> WebClient:
        return WebClient(token=self.tokens[who].secret, base_url=self.handle.base_url,
                         timeout=timeout)  # fmt: skip

    def id(self, who: str) -> str:
        return self.tokens[who].user_id

    def move(self, seconds: float) -> None:
        """Move the simulator's injected clock (nothing sleeps on it here)."""
        asyncio.run(self.clock.advance(seconds))


def make_workspace(**options: object) -> Callable[[], Iterator[Workspace]]:
    def fixture() -> Iterator[Workspace]:
        clock = ManualClock(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
        sim = SlackSim(clock=clock, **options)  # type: ignore[arg-type]
        roles = {"olivia": "primary_owner", "adam": "admin", "otto": "owner"}
        tokens = {}
        for name in ("olivia", "adam", "otto", "anna", "ben", "clara"):
            uid = sim.add_user(name, f"{name}@example.com", role=roles.get(name, "regular"))
            tokens[name] = sim.add_token(uid, token_id=name)
        with serve_in_thread(sim) as handle:
            yield Workspace(handle, clock, tokens)

    return fixture


ws = pytest.fixture(make_workspace())
free_ws = pytest.fixture(make_workspace(paid=False))
tight_ws = pytest.fixture(make_workspace(tier_limits={3: 3}))


def refused(call: Callable[[], object]) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        call()
    return info.value


# --- auth.test and users.lookupByEmail -----------------------------------------------------


def test_auth_test_names_the_tokens_user_and_team(ws: Workspace) -> None:
    answer = ws.client("anna").auth_test()
    assert answer.status_code == 200
    assert answer["ok"] is True
    assert answer["user_id"] == ws.id("anna")
    assert answer["user"] == "anna"
    assert answer["team_id"] == ws.sim.team_id
    assert answer.headers["content-type"] == "application/json; charset=utf-8"


def test_lookup_by_email_finds_the_person_and_says_when_nobody_has_it(ws: Workspace) -> None:
    found = ws.client("adam").users_lookupByEmail(email="Ben@Example.com")
    assert found["user"]["id"] == ws.id("ben")
    assert found["user"]["profile"]["email"] == "ben@example.com"
    assert found["user"]["deleted"] is False

    error = refused(lambda: ws.client("adam").users_lookupByEmail(email="nobody@example.com"))
    assert error.response["error"] == "users_not_found"


def test_a_method_without_its_scope_is_refused_with_needed_and_provided(ws: Workspace) -> None:
    uid = ws.id("clara")
    narrow = ws.sim.add_token(uid, ["users.profile:read"], token_id="narrow")
    client = WebClient(token=narrow.secret, base_url=ws.handle.base_url)
    error = refused(lambda: client.users_lookupByEmail(email="anna@example.com"))
    assert error.response.status_code == 200
    assert error.response["error"] == "missing_scope"
    assert error.response["needed"] == "users:read.email"
    assert error.response["provided"] == "users.profile:read"
    # Without users:read.email the profile carries no e-mail address.
    assert "email" not in client.users_profile_get()["profile"]


def test_users_list_pages_through_everyone_with_an_opaque_cursor(ws: Workspace) -> None:
    ws.sim.deactivate_user(ws.id("ben"))
    client = ws.client("adam")
    seen: list[dict[str, object]] = []
    cursor = None
    pages = 0
    while True:
        page = client.users_list(limit=4, cursor=cursor)
        pages += 1
        assert len(page["members"]) <= 4
        seen += page["members"]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert pages == 2
    assert [m["id"] for m in seen] == [
        ws.id(n) for n in ("olivia", "adam", "otto", "anna", "ben", "clara")
    ]
    # Deactivated people are listed too ("includes invited and deleted users").
    assert [m["name"] for m in seen if m["deleted"]] == ["ben"]
    assert all(m["profile"]["email"] == f"{m['name']}@example.com" for m in seen)

    error = refused(lambda: client.users_list(limit=4, cursor="bm90LWEtY3Vyc29y"))
    assert error.response["error"] == "invalid_cursor"


def test_users_list_needs_users_read_and_shows_emails_only_with_read_email(
    ws: Workspace,
) -> None:
    uid = ws.id("clara")
    without = ws.sim.add_token(uid, ["users:read.email"], token_id="no-read")
    client = WebClient(token=without.secret, base_url=ws.handle.base_url)
    error = refused(lambda: client.users_list(limit=10))
    assert (error.response["error"], error.response["needed"]) == ("missing_scope", "users:read")
    no_email = ws.sim.add_token(uid, ["users:read"], token_id="no-email")
    client = WebClient(token=no_email.secret, base_url=ws.handle.base_url)
    members = client.users_list(limit=10)["members"]
    assert len(members) == 6
    assert not [m for m in members if "email" in m["profile"]]


# --- users.profile.get / users.profile.set ---------------------------------------------------


def test_own_status_set_read_back_and_cleared(ws: Workspace) -> None:
    anna = ws.client("anna")
    until = int(ws.sim.now()) + 3600
    answer = anna.users_profile_set(profile={**ON_A_CALL, "status_expiration": until})
    assert answer["profile"]["status_text"] == "On a call"

    profile = anna.users_profile_get()["profile"]
    assert (profile["status_text"], profile["status_emoji"], profile["status_expiration"]) == (
        "On a call", ":telephone_receiver:", until)  # fmt: skip
    assert ws.sim.status_of(ws.id("anna")) == Status("On a call", ":telephone_receiver:", until)

    anna.users_profile_set(profile={"status_text": "", "status_emoji": ""})
    assert ws.sim.status_of(ws.id("anna")) == Status()
    assert anna.users_profile_get()["profile"]["status_expiration"] == 0


def test_re_applying_the_same_status_is_harmless_and_each_write_is_logged(ws: Workspace) -> None:
    anna = ws.client("anna")
    first = anna.users_profile_set(profile=ON_A_CALL)["profile"]
    second = anna.users_profile_set(profile=ON_A_CALL)["profile"]
    assert first == second
    assert ws.sim.writes_to(ws.id("anna")) == 2


def test_omitting_the_expiration_means_the_status_never_expires(ws: Workspace) -> None:
    anna = ws.client("anna")
    anna.users_profile_set(profile={**ON_A_CALL, "status_expiration": int(ws.sim.now()) + 60})
    anna.users_profile_set(profile={"status_text": "Lunch", "status_emoji": ":taco:"})
    assert ws.sim.status_of(ws.id("anna")).expiration == 0


def test_a_person_setting_their_own_status_shows_in_the_api(ws: Workspace) -> None:
    until = int(ws.sim.now()) + 7200
    ws.sim.set_own_status(ws.id("ben"), "Focus", ":headphones:", until)
    profile = ws.client("adam").users_profile_get(user=ws.id("ben"))["profile"]
    assert (profile["status_text"], profile["status_emoji"], profile["status_expiration"]) == (
        "Focus", ":headphones:", until)  # fmt: skip
    assert ws.sim.requests("users.profile.set") == ()


def test_an_expired_status_reads_back_empty(ws: Workspace) -> None:
    anna = ws.client("anna")
    anna.users_profile_set(profile={**ON_A_CALL, "status_expiration": int(ws.sim.now()) + 60})
    ws.move(59)
    assert anna.users_profile_get()["profile"]["status_text"] == "On a call"
    ws.move(1)
    profile = anna.users_profile_get()["profile"]
    assert (profile["status_text"], profile["status_emoji"], profile["status_expiration"]) == (
        "", "", 0)  # fmt: skip


def test_on_a_bad_day_expirations_do_not_fire(ws: Workspace) -> None:
    ws.sim.set_expirations_fire(False)
    until = int(ws.sim.now()) + 60
    ws.client("anna").users_profile_set(profile={**ON_A_CALL, "status_expiration": until})
    ws.move(120)
    assert ws.sim.status_of(ws.id("anna")) == Status("On a call", ":telephone_receiver:", until)


def test_status_text_is_at_most_100_characters(ws: Workspace) -> None:
    anna = ws.client("anna")
    anna.users_profile_set(profile={"status_text": "x" * 100, "status_emoji": ":x:"})
    error = refused(lambda: anna.users_profile_set(profile={"status_text": "y" * 101}))
    assert error.response["error"] == "too_long"
    assert ws.sim.status_of(ws.id("anna")).text == "x" * 100


def test_a_profile_that_is_not_an_object_is_invalid(ws: Workspace) -> None:
    error = refused(lambda: ws.client("anna").users_profile_set(profile="not json"))  # type: ignore[arg-type]
    assert error.response["error"] == "invalid_profile"


def test_an_admin_sets_a_colleagues_status_with_user(ws: Workspace) -> None:
    answer = ws.client("adam").users_profile_set(user=ws.id("anna"), profile=ON_A_CALL)
    assert answer["profile"]["status_text"] == "On a call"
    assert ws.sim.status_of(ws.id("anna")).text == "On a call"
    assert ws.sim.status_of(ws.id("adam")) == Status()
    [entry] = ws.sim.requests("users.profile.set")
    assert (entry.token_id, entry.user_id, entry.target, entry.ok) == (
        "adam", ws.id("adam"), ws.id("anna"), True)  # fmt: skip


def test_a_regular_member_cannot_set_someone_elses_profile(ws: Workspace) -> None:
    error = refused(lambda: ws.client("ben").users_profile_set(user=ws.id("anna"),
                                                                profile=ON_A_CALL))  # fmt: skip
    assert error.response["error"] == "not_admin"
    assert ws.sim.status_of(ws.id("anna")) == Status()


@pytest.mark.parametrize(("caller", "target"), [("adam", "otto"), ("adam", "olivia"),
                                                 ("otto", "adam"), ("otto", "olivia")])  # fmt: skip
def test_only_the_primary_owner_updates_admins_and_owners(
    ws: Workspace, caller: str, target: str
) -> None:
    error = refused(lambda: ws.client(caller).users_profile_set(user=ws.id(target),
                                                                  profile=ON_A_CALL))  # fmt: skip
    assert error.response["error"] == "cannot_update_admin_user"
    assert ws.sim.status_of(ws.id(target)) == Status()


def test_the_primary_owner_updates_an_admin(ws: Workspace) -> None:
    ws.client("olivia").users_profile_set(user=ws.id("adam"), profile=ON_A_CALL)
    assert ws.sim.status_of(ws.id("adam")).text == "On a call"


def test_anyone_may_set_their_own_profile_whatever_their_role(ws: Workspace) -> None:
    ws.client("adam").users_profile_set(user=ws.id("adam"), profile=ON_A_CALL)
    assert ws.sim.status_of(ws.id("adam")).text == "On a call"


def test_a_free_plan_refuses_user(free_ws: Workspace) -> None:
    # The error name is the simulator's choice: the docs only say "paid teams".
    error = refused(lambda: free_ws.client("adam").users_profile_set(
        user=free_ws.id("anna"), profile=ON_A_CALL))  # fmt: skip
    assert error.response["error"] == "paid_only"


def test_an_unknown_person_is_user_not_found(ws: Workspace) -> None:
    for call in (
        lambda: ws.client("adam").users_profile_get(user="UNOBODY00"),
        lambda: ws.client("adam").users_profile_set(user="UNOBODY00", profile=ON_A_CALL),
        lambda: ws.client("adam").dnd_info(user="UNOBODY00"),
    ):
        assert refused(call).response["error"] == "user_not_found"


# --- tokens ----------------------------------------------------------------------------------


def test_dead_tokens_are_refused_each_with_its_error(ws: Workspace) -> None:
    bogus = WebClient(token="xoxp-not-a-token", base_url=ws.handle.base_url)
    assert refused(bogus.auth_test).response["error"] == "invalid_auth"
    anonymous = WebClient(base_url=ws.handle.base_url)
    assert refused(anonymous.auth_test).response["error"] == "not_authed"

    ws.sim.revoke_token("anna")
    assert refused(ws.client("anna").auth_test).response["error"] == "token_revoked"
    ws.sim.expire_token("ben")
    assert refused(ws.client("ben").auth_test).response["error"] == "token_expired"
    ws.client("clara").auth_test()


def test_a_deactivated_persons_token_is_account_inactive(ws: Workspace) -> None:
    ws.sim.deactivate_user(ws.id("anna"))
    error = refused(lambda: ws.client("anna").users_profile_set(profile=ON_A_CALL))
    assert error.response["error"] == "account_inactive"
    # Choice: setting a deactivated person's profile with user= is user_not_found.
    error = refused(lambda: ws.client("adam").users_profile_set(user=ws.id("anna"),
                                                                 profile=ON_A_CALL))  # fmt: skip
    assert error.response["error"] == "user_not_found"


def test_a_bot_token_reads_but_may_not_write_a_profile(ws: Workspace) -> None:
    bot = ws.sim.add_bot_token()
    client = WebClient(token=bot.secret, base_url=ws.handle.base_url)
    assert client.users_profile_get(user=ws.id("anna"))["ok"] is True
    error = refused(lambda: client.users_profile_set(user=ws.id("anna"), profile=ON_A_CALL))
    assert error.response["error"] == "not_allowed_token_type"


# --- the wire: form bodies, token in a form field, query strings -------------------------------


def test_form_bodies_and_a_token_form_field_are_accepted(ws: Workspace) -> None:
    url = ws.handle.base_url
    form = {"token": ws.tokens["anna"].secret, "profile": json.dumps(ON_A_CALL)}
    answer = httpx.post(url + "users.profile.set", data=form).json()
    assert answer["ok"] is True, answer
    assert ws.sim.status_of(ws.id("anna")).text == "On a call"

    read = httpx.get(url + "users.profile.get", params={"user": ws.id("anna")},
                     headers={"Authorization": f"Bearer {ws.tokens['ben'].secret}"})  # fmt: skip
    assert read.json()["profile"]["status_emoji"] == ":telephone_receiver:"

    # Documented: the header or a POST parameter; a query-string token is not one.
    query = httpx.post(url + "auth.test", params={"token": ws.tokens["anna"].secret})
    assert query.json()["error"] == "not_authed"


def test_one_field_is_set_with_name_and_value(ws: Workspace) -> None:
    ws.client("anna").users_profile_set(profile=ON_A_CALL)
    ws.client("anna").users_profile_set(name="status_text", value="Still on a call")
    assert ws.sim.status_of(ws.id("anna")).text == "Still on a call"


def test_json_bodies_need_the_header_token_and_are_warned_without_charset(ws: Workspace) -> None:
    url = ws.handle.base_url + "auth.test"
    in_body = httpx.post(url, json={"token": ws.tokens["anna"].secret}).json()
    assert in_body == {"ok": False, "error": "not_authed", "warning": "missing_charset",
                       "response_metadata": {"warnings": ["missing_charset"]}}  # fmt: skip
    broken = httpx.post(url, content=b"{", headers={
        "Content-Type": "application/json; charset=utf-8",
        "Authorization": f"Bearer {ws.tokens['anna'].secret}"}).json()  # fmt: skip
    assert broken["error"] == "invalid_json"


def test_an_unknown_method_is_404_unknown_method(ws: Workspace) -> None:
    answer = httpx.post(ws.handle.base_url + "chat.postMessage")
    assert answer.status_code == 404
    assert answer.json() == {"ok": False, "error": "unknown_method"}


# --- DND -------------------------------------------------------------------------------------


def test_a_snooze_is_set_seen_and_ended_by_its_owner(ws: Workspace) -> None:
    anna = ws.client("anna")
    now = int(ws.sim.now())
    started = anna.dnd_setSnooze(num_minutes=30)
    assert started["snooze_enabled"] is True
    assert started["snooze_endtime"] == now + 1800
    info = anna.dnd_info()
    assert (info["snooze_enabled"], info["snooze_endtime"]) == (True, now + 1800)

    # "All of the snooze_* properties will only be visible if the user being
    # queried is also the current user."
    other = ws.client("adam").dnd_info(user=ws.id("anna"))
    assert not any(key.startswith("snooze_") for key in other.data)  # type: ignore[union-attr]

    assert anna.dnd_endSnooze()["snooze_enabled"] is False
    assert ws.sim.person(ws.id("anna")).snooze_endtime is None
    assert refused(anna.dnd_endSnooze).response["error"] == "snooze_not_active"


def test_dnd_acts_only_on_the_tokens_own_user(ws: Workspace) -> None:
    ws.client("adam").dnd_setSnooze(num_minutes=10, user=ws.id("anna"))
    assert ws.sim.person(ws.id("anna")).snooze_endtime is None
    assert ws.sim.person(ws.id("adam")).snooze_endtime is not None


def test_a_snooze_the_person_started_shows_and_runs_out(ws: Workspace) -> None:
    end = ws.sim.snooze(ws.id("ben"), 5)
    assert ws.client("ben").dnd_info()["snooze_endtime"] == end
    ws.move(300)
    assert ws.client("ben").dnd_info()["snooze_enabled"] is False
    assert refused(ws.client("ben").dnd_endSnooze).response["error"] == "snooze_not_active"


def test_set_snooze_needs_a_duration(ws: Workspace) -> None:
    error = refused(lambda: ws.client("anna").api_call("dnd.setSnooze", params={}))
    assert error.response["error"] == "missing_duration"


# --- rate limits -----------------------------------------------------------------------------


def test_a_spent_method_budget_is_429_with_retry_after_for_every_token(tight_ws: Workspace) -> None:
    ws = tight_ws  # users.profile.set (Tier 3) allows 3 a minute here
    for who in ("anna", "ben", "clara"):
        ws.client(who).users_profile_set(profile=ON_A_CALL)
        ws.move(10)
    error = refused(lambda: ws.client("anna").users_profile_set(profile={"status_text": "B"}))
    assert error.response.status_code == 429
    assert error.response["error"] == "ratelimited"
    # The first write is 30 s old: it leaves the window in 30 s.
    assert error.response.headers["Retry-After"] == "30"
    assert refused(lambda: ws.client("otto").users_profile_set(profile=ON_A_CALL)
                   ).response.status_code == 429  # fmt: skip
    ws.client("anna").users_profile_get()  # another method, another budget
    assert ws.sim.status_of(ws.id("anna")).text == "On a call"

    ws.move(30)
    ws.client("anna").users_profile_set(profile={"status_text": "Back", "status_emoji": ":wave:"})
    assert ws.sim.status_of(ws.id("anna")).text == "Back"


def test_a_token_writes_one_person_at_most_10_times_a_minute(ws: Workspace) -> None:
    adam = ws.client("adam")
    for n in range(10):
        adam.users_profile_set(user=ws.id("anna"), profile={"status_text": f"#{n}"})
    error = refused(lambda: adam.users_profile_set(user=ws.id("anna"), profile=ON_A_CALL))
    assert error.response.status_code == 429
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60
    assert ws.sim.status_of(ws.id("anna")).text == "#9"
    assert ws.sim.writes_to(ws.id("anna")) == 10
    # Another person, or the person's own token, has budget left.
    adam.users_profile_set(user=ws.id("ben"), profile=ON_A_CALL)
    ws.client("anna").users_profile_set(profile=ON_A_CALL)
    ws.move(60)
    adam.users_profile_set(user=ws.id("anna"), profile={"status_text": "later"})


def test_a_token_sets_at_most_30_profiles_a_minute() -> None:
    clock = ManualClock(datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
    sim = SlackSim(clock=clock, tier_limits={3: 1000})
    admin = sim.add_user("adam", "adam@example.com", role="admin")
    people = [sim.add_user(f"p{n}", f"p{n}@example.com") for n in range(31)]
    token = sim.add_token(admin)
    other = sim.add_token(admin, token_id="second")
    with serve_in_thread(sim) as handle:
        client = WebClient(token=token.secret, base_url=handle.base_url)
        for uid in people[:30]:
            client.users_profile_set(user=uid, profile=ON_A_CALL)
        client.users_profile_set(user=people[0], profile={"status_text": "again"})
        error = refused(lambda: client.users_profile_set(user=people[30], profile=ON_A_CALL))
        assert error.response.status_code == 429
        assert sim.status_of(people[30]) == Status()
        WebClient(token=other.secret, base_url=handle.base_url).users_profile_set(
            user=people[30], profile=ON_A_CALL)  # fmt: skip
        assert sim.status_of(people[30]).text == "On a call"


def test_ratelimited_inside_a_200_on_demand(ws: Workspace) -> None:
    ws.sim.fail_next("users.profile.set", "ratelimited")
    error = refused(lambda: ws.client("anna").users_profile_set(profile=ON_A_CALL))
    assert error.response.status_code == 200
    assert error.response["error"] == "ratelimited"
    assert ws.sim.status_of(ws.id("anna")) == Status()
    ws.client("anna").users_profile_set(profile=ON_A_CALL)
    assert ws.sim.status_of(ws.id("anna")).text == "On a call"


def test_scripted_failures_hit_only_the_named_method_and_count(ws: Workspace) -> None:
    ws.sim.fail_next("users.profile.get", "internal_error", count=2)
    ws.client("anna").auth_test()
    for _ in range(2):
        assert refused(ws.client("anna").users_profile_get).response["error"] == "internal_error"
    assert ws.client("anna").users_profile_get()["ok"] is True


# --- timeouts --------------------------------------------------------------------------------


def test_a_hung_request_times_the_client_out_and_only_that_one(ws: Workspace) -> None:
    ws.sim.hang_next("users.profile.get", 3.0)
    with pytest.raises(TimeoutError):
        ws.client("anna", timeout=0.3).users_profile_get()
    assert ws.client("anna", timeout=2.0).users_profile_get()["ok"] is True


async def test_served_on_the_event_loop_for_a_client_in_a_worker_thread() -> None:
    sim = SlackSim()
    token = sim.add_token(sim.add_user("anna", "anna@example.com"))
    async with serve(sim) as handle:
        client = WebClient(token=token.secret, base_url=handle.base_url, timeout=5)
        await asyncio.to_thread(client.users_profile_set, profile=ON_A_CALL)
    assert sim.status_of(token.user_id).text == "On a call"


# --- the request log and the control API ------------------------------------------------------


def test_the_request_log_names_method_token_user_and_time_without_secrets(ws: Workspace) -> None:
    ws.client("anna").users_profile_set(profile=ON_A_CALL)
    ws.move(5)
    refused(lambda: ws.client("ben").users_profile_set(profile={"status_text": "z" * 101}))
    first, second = ws.sim.requests()
    assert (first.method, first.token_id, first.user_id, first.ok) == (
        "users.profile.set", "anna", ws.id("anna"), True)  # fmt: skip
    assert (second.error, second.target) == ("too_long", ws.id("ben"))
    assert second.at - first.at == pytest.approx(5)
    assert ws.tokens["anna"].secret not in repr(ws.sim.requests())
    assert ws.tokens["anna"].secret not in repr(ws.tokens["anna"])


def test_the_http_control_api_drives_the_simulator(ws: Workspace) -> None:
    sim_url = ws.handle.origin + "/_sim"
    uid = httpx.post(f"{sim_url}/users", json={"name": "dora", "email": "dora@example.com"}
                     ).json()["id"]  # fmt: skip
    token = httpx.post(f"{sim_url}/tokens", json={"user": uid}).json()["token"]
    httpx.post(f"{sim_url}/users/{uid}/status", json={"text": "Away", "emoji": ":palm_tree:"})
    client = WebClient(token=token, base_url=ws.handle.base_url)
    assert client.users_profile_get()["profile"]["status_text"] == "Away"

    httpx.post(f"{sim_url}/fail", json={"method": "auth.test", "error": "ratelimited",
                                        "status": 429, "retry_after": 7})  # fmt: skip
    assert refused(client.auth_test).response.headers["Retry-After"] == "7"
    people = {p["email"]: p for p in httpx.get(f"{sim_url}/people").json()}
    assert people["dora@example.com"]["status_text"] == "Away"
    assert httpx.get(f"{sim_url}/requests").json()[-1]["error"] == "ratelimited"
    assert httpx.post(f"{sim_url}/users/UNOBODY/status", json={}).status_code == 404
    assert httpx.post(f"{sim_url}/users", json={"name": "x"}).status_code == 400


# --- presence-sync sim slack --------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "presence_sync", "sim", "slack", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def test_sim_slack_prints_its_url_tokens_and_a_config_block() -> None:
    proc = _cli("--port", "0", "--people", "2")
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("  token:"):
            line = proc.stdout.readline()
            assert line, "".join(lines)  # EOF before the config block ended
            lines.append(line)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    text = "".join(lines)
    base_url = re.search(r"base_url=(\S+)", text)
    admin = re.search(r"admin token \((\w+), [^)]+\): (\S+)", text)
    assert base_url, text
    assert admin, text
    assert base_url[1].endswith("/api/")
    assert f"slack:\n  base_url: {base_url[1]}\n  token: {admin[2]}\n" in text
    assert text.count("user token (") == 2


def test_sim_slack_serves_the_tokens_it_printed() -> None:
    proc = _cli("--port", "0", "--people", "1")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        admin_line = proc.stdout.readline()
        base_url = re.search(r"base_url=(\S+)", first)
        token = admin_line.rsplit(" ", 1)[-1].strip()
        assert base_url, first
        answer = WebClient(token=token, base_url=base_url[1]).auth_test()
        assert answer["user"] == "it-admin"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_sim_slack_bad_arguments_are_a_usage_message() -> None:
    proc = _cli("--port", "http")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "usage:" in err
    assert "not a port number" in err
    assert "Traceback" not in err

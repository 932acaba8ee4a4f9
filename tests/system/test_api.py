"""The daemon's JSON API (docs/api.md) on the real ``presence-sync run``
process against the NFON simulator and a webhook receiver: the documents'
shape, lookups, search, the "not in sync" filter, paging, resync now, and
the bearer token that guards changes on a listener that is not loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import HOOK_SECRET, PEOPLE, Daemon, Hook, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"
CALLER = "4930123456"
TOKEN = "s3cret-api-token-for-tests"


def get(daemon: Daemon, path: str, **params: Any) -> httpx.Response:
    return httpx.get(daemon.url() + path, params=params, timeout=5)


def status(daemon: Daemon, **params: Any) -> dict[str, Any]:
    response = get(daemon, "/api/status", **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def person(doc: dict[str, Any], email: str) -> dict[str, Any]:
    return next(p for p in doc["people"] if p["email"] == email)


def timestamp(value: str) -> datetime:
    """An API time stamp: ISO 8601 with its zone offset."""
    when = datetime.fromisoformat(value)
    assert when.utcoffset() is not None, value
    assert re.search(r"[+-]\d\d:\d\d$", value), value
    return when


def start(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon], **kw: Any
) -> Daemon:
    config = write_config(tmp_path / "config.yaml", nfon, hook, **kw)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    return daemon


def test_status_shows_the_daemon_and_every_person_through_a_call(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    doc = status(daemon)
    timestamp(doc["at"])
    assert (doc["total"], doc["matched"], doc["offset"], doc["limit"]) == (3, 3, 0, 100)
    assert [p["email"] for p in doc["people"]] == [email for _, _, email in PEOPLE]
    health = doc["daemon"]
    assert health["ok"] is True
    assert health["status"] == "Ready: following NFON"
    assert health["components"]["nfon_stream"]["ok"] is True
    assert health["components"]["nfon_login"] == {"ok": True, "reason": "accepted"}
    # The periodic one is an hour away; the stream's first full state was one.
    timestamp(health["last_resync"])
    assert health["targets"] == {
        "webhook": {
            "kind": "webhook",
            "state": "running",
            "until": None,
            "reason": None,
            "queued": 0,
            "in_flight": 0,
            "backoff": 0,
            "parked": 0,
        }
    }
    anna = person(doc, ANNA)
    assert anna == {
        "key": ANNA,
        "email": ANNA,
        "name": "Anna Schmidt",
        "extension": "100",
        "line": "idle",
        "presence": "available",
        "direction": None,
        "paused": None,
        "targets": {
            "webhook": {
                "desired": None,
                "applied": None,
                "state": "in-sync",
                # Nothing of ours there: in sync since the full state found it so.
                "since": health["last_resync"],
                "retry_at": None,
                "reason": None,
                "rule": None,
            }
        },
    }

    call = nfon.sim.call("100", direction="outbound", party=CALLER)
    hook.wait_status(ANNA, "InACall")

    def on_the_call() -> dict[str, Any] | None:
        anna = person(status(daemon), ANNA)
        return anna if anna["targets"]["webhook"]["applied"] else None

    anna = eventually(on_the_call, "Anna's call in the API")
    assert anna["line"] == "in-use"
    assert anna["direction"] == "outbound"
    webhook = anna["targets"]["webhook"]
    assert webhook["state"] == "in-sync"
    assert webhook["desired"] == webhook["applied"]
    assert "InACall" in webhook["applied"]
    timestamp(webhook["since"])
    # The other party's number is personal data: not in any document.
    assert CALLER not in get(daemon, "/api/status").text
    assert CALLER not in get(daemon, f"/api/people/{ANNA}").text

    nfon.sim.hangup(call)
    hook.wait_status(ANNA, None)

    def cleared() -> dict[str, Any] | None:
        anna = person(status(daemon), ANNA)
        return anna if anna["targets"]["webhook"]["applied"] is None else None

    anna = eventually(cleared, "Anna's call to end in the API")
    assert (anna["line"], anna["direction"]) == ("idle", None)


def test_a_person_is_found_by_key_email_or_extension(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    by_key = get(daemon, "/api/people/ben@example.com")
    assert by_key.status_code == 200
    assert by_key.json()["name"] == "Ben Müller"
    assert get(daemon, "/api/people/Ben@Example.COM").json() == by_key.json()
    assert get(daemon, "/api/people/101").json() == by_key.json()
    assert by_key.json() == person(status(daemon), "ben@example.com")

    missing = get(daemon, "/api/people/nobody@example.com")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "nobody with the key, e-mail or extension 'nobody@example.com'"
    }
    unknown_path = get(daemon, "/api/nothing-here")
    assert unknown_path.status_code == 404
    assert "error" in unknown_path.json()


def test_search_filter_and_paging(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    assert [p["email"] for p in status(daemon, q="MÜLLER")["people"]] == ["ben@example.com"]
    assert [p["email"] for p in status(daemon, q="clara@")["people"]] == ["clara@example.com"]
    assert [p["name"] for p in status(daemon, q="100")["people"]] == ["Anna Schmidt"]
    nobody = status(daemon, q="zz-no-such-person")
    assert (nobody["total"], nobody["matched"], nobody["people"]) == (3, 0, [])

    page = status(daemon, offset=1, limit=1)
    assert (page["matched"], page["offset"], page["limit"]) == (3, 1, 1)
    assert [p["email"] for p in page["people"]] == ["ben@example.com"]
    assert status(daemon, offset=3)["people"] == []

    assert status(daemon, filter="not-in-sync")["matched"] == 0
    # The receiver fails: Anna's change backs off and shows as not in sync.
    hook.receiver.fail_next(500, count=1000)
    nfon.sim.call("100")

    def backing_off() -> dict[str, Any] | None:
        doc = status(daemon, filter="not-in-sync")
        return doc if doc["matched"] == 1 else None

    doc = eventually(backing_off, "Anna not in sync")
    anna = doc["people"][0]
    assert anna["email"] == ANNA

    def anna_backing_off() -> dict[str, Any] | None:
        webhook: dict[str, Any] = person(status(daemon, filter="not-in-sync"), ANNA)["targets"][
            "webhook"
        ]
        return webhook if webhook["state"] == "backoff" else None

    webhook = eventually(anna_backing_off, "Anna's key backing off")
    # A 500 leaves it open whether the receiver took it: the worse case shows.
    assert webhook["applied"].endswith("(not confirmed)")
    assert "InACall" in webhook["desired"]
    assert timestamp(webhook["retry_at"]) >= timestamp(webhook["since"])
    assert webhook["reason"]
    assert status(daemon, filter="not-in-sync", q="ben")["matched"] == 0
    assert status(daemon)["daemon"]["targets"]["webhook"]["backoff"] == 1

    for params, message in [
        ({"limit": 0}, "limit must be 1..1000"),
        ({"limit": 1001}, "limit must be 1..1000"),
        ({"offset": -1}, "offset must not be negative"),
        ({"offset": "x"}, "offset and limit must be whole numbers"),
        ({"filter": "broken"}, "filter must be one of all, not-in-sync, not 'broken'"),
    ]:
        response = get(daemon, "/api/status", **params)
        assert response.status_code == 400, params
        assert response.json() == {"error": message}


def snapshots(nfon: SimHandle) -> int:
    """``GET /extensions/phone/states`` answered as a snapshot (not a stream)."""
    stats = nfon.sim.stats
    return stats.requests_by_path.get(
        "GET /extensions/phone/states", 0
    ) - stats.stream_connects.get("states", 0)


def test_resync_now_fetches_the_snapshot(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    before = snapshots(nfon)
    bootstrap = status(daemon)["daemon"]["last_resync"]
    timestamp(bootstrap)  # the stream's first full state
    eventually(lambda: status(daemon)["at"] > bootstrap, "a second to pass")
    response = httpx.post(daemon.url() + "/api/resync", timeout=5)
    assert response.status_code == 202
    assert response.json() == {"ok": True}
    last = eventually(
        lambda: (t := status(daemon)["daemon"]["last_resync"]) != bootstrap and t,
        "last_resync to move",
    )
    timestamp(last)
    assert snapshots(nfon) == before + 1
    daemon.wait_line(r"resync.*extensions=3")


def test_changes_need_the_token_on_a_listener_that_is_not_loopback(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    daemon = start(
        tmp_path, nfon, hook, daemons, http='  listen: "0.0.0.0:0"\n  token_file: api-token\n'
    )
    port = daemon.url().rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    # Reading stays open.
    assert httpx.get(url + "/api/status", timeout=5).status_code == 200
    assert httpx.get(url + "/", timeout=5).status_code == 200

    refused = httpx.post(url + "/api/resync", timeout=5)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in refused.json()["error"]
    wrong = httpx.post(url + "/api/resync", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    basic = httpx.post(url + "/api/resync", auth=("admin", TOKEN), timeout=5)
    assert basic.status_code == 401
    # Even an unknown path answers 401, not 404: nothing is told without the token.
    assert httpx.post(url + "/api/nothing", timeout=5).status_code == 401
    bootstrap = status(daemon)["daemon"]["last_resync"]  # the stream's first full state
    eventually(lambda: status(daemon)["at"] > bootstrap, "a second to pass")
    assert status(daemon)["daemon"]["last_resync"] == bootstrap  # nothing ran

    accepted = httpx.post(
        url + "/api/resync", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert accepted.status_code == 202
    eventually(lambda: status(daemon)["daemon"]["last_resync"] != bootstrap, "the resync to run")
    assert TOKEN not in daemon.output()


def test_a_listener_that_is_not_loopback_without_a_token_refuses_every_change(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons, http='  listen: "0.0.0.0:0"\n')
    daemon.wait_line(r"WARNING.*not a loopback address and no http\.token is set")
    port = daemon.url().rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(url + "/api/status", timeout=5).status_code == 200
    for headers in ({}, {"Authorization": "Bearer anything"}):
        refused = httpx.post(url + "/api/resync", headers=headers, timeout=5)
        assert refused.status_code == 403
        assert "no http.token" in refused.json()["error"]


def test_a_web_page_from_another_site_cannot_make_changes(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    refused = httpx.post(
        daemon.url() + "/api/resync", headers={"Origin": "https://evil.example"}, timeout=5
    )
    assert refused.status_code == 403
    same = httpx.post(
        daemon.url() + "/api/resync",
        headers={"Origin": daemon.url()},
        timeout=5,
    )
    assert same.status_code == 202


def test_no_secret_and_no_caller_number_in_any_answer(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    daemon = start(
        tmp_path, nfon, hook, daemons, http='  listen: "127.0.0.1:0"\n  token_file: api-token\n'
    )
    nfon.sim.call("100", party=CALLER)
    nfon.sim.call("101", direction="outbound", party="0301234567")
    eventually(
        lambda: sum(p["line"] == "in-use" for p in status(daemon)["people"]) == 2, "two calls"
    )
    hook.wait_status(ANNA, "InACall")
    bodies = [
        get(daemon, path).text
        for path in (
            "/",
            "/api/status",
            "/api/people/100",
            "/api/people/101",
            "/readyz",
            "/healthz",
        )
    ]
    bodies.append(json.dumps(status(daemon, filter="not-in-sync")))
    for secret in (TOKEN, HOOK_SECRET, "api-secret", "api-user", CALLER, "0301234567", "1234567"):
        for body in bodies:
            assert secret not in body

"""The real daemon against the NFON and Slack simulators and a webhook receiver:
an admin pauses a person with ``presence-sync pause`` and resumes them.

While paused, the person has their own status back and nothing is sent for
them. "Nothing is sent" is checked against a marker: Ben's call, made after
Anna's, goes through the same targets in order; once Ben's call and hang-up
have been delivered, anything the daemon had meant to send for Anna would have
been sent before them.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Daemon, Hook, cli, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.slack import SlackSim, Status
from presence_sync.sim.slack_serve import SlackHandle, serve_in_thread

pytestmark = pytest.mark.system

RULES = (
    "rules:\n"
    "  - when: {line: in-use}\n"
    "    set:\n"
    "      webhook: {availability: Busy, activity: InACall}\n"
    '      slack_status: {text: "On a call", emoji: ":telephone_receiver:"}\n'
)
ON_A_CALL = "On a call"
THEIRS = Status("Working from Lisbon", ":palm_tree:", 0)
TOKEN = "pause-test-api-token"
TIME_WITH_OFFSET = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


@pytest.fixture
def slack() -> Iterator[SlackHandle]:
    sim = SlackSim()
    sim.add_user("adam", "it-admin@example.com", role="admin")
    for name in ("anna", "ben", "clara"):
        sim.add_user(name, f"{name}@example.com")
    with serve_in_thread(sim) as handle:
        yield handle


class Setup:
    """The simulators, the configuration and the people's Slack ids."""

    def __init__(
        self,
        tmp_path: Path,
        nfon: SimHandle,
        hook: Hook,
        slack: SlackHandle,
        http: str = '  listen: "127.0.0.1:0"\n',
    ) -> None:
        self.nfon, self.hook, self.slack = nfon, hook, slack
        ids = {p.name: p.id for p in slack.sim.people()}
        self.anna, self.ben = ids["anna"], ids["ben"]
        (tmp_path / "slack.token").write_text(slack.sim.add_token(ids["adam"]).secret + "\n")
        (tmp_path / "slack.token").chmod(0o600)
        extra = f"slack:\n  base_url: {slack.base_url}\n  token_file: slack.token\n"
        self.config = write_config(tmp_path / "config.yaml", nfon, hook, rules=RULES, extra=extra,
                                   targets="  slack_status: {}\n", http=http)  # fmt: skip
        slack.sim.set_own_status(self.anna, THEIRS.text, THEIRS.emoji)

    def slack_shows(self, uid: str, text: str) -> Status:
        def check() -> Status | None:
            status = self.slack.sim.status_of(uid)
            return status if status.text == text else None

        return eventually(check, f"{uid} shows {text!r} in Slack", 15)

    def slack_requests_about(self, uid: str) -> int:
        return sum(1 for r in self.slack.sim.requests() if r.target == uid)

    def anna_on_a_call(self, daemon: Daemon) -> str:
        """A call to Anna, shown by both targets."""
        before = self.hook_count("anna")
        call = self.nfon.sim.call("100")
        self.slack_shows(self.anna, ON_A_CALL)
        self.hook.wait_status("anna@example.com", "InACall", after=before)
        return call

    def hook_count(self, name: str) -> int:
        return len(self.hook.for_person(f"{name}@example.com"))

    def ben_call_and_hangup(self) -> None:
        """The marker: a call to Ben and its end, seen by both targets."""
        before = self.hook_count("ben")
        call = self.nfon.sim.call("101")
        self.hook.wait_status("ben@example.com", "InACall", after=before)
        self.slack_shows(self.ben, ON_A_CALL)
        self.nfon.sim.hangup(call)
        self.hook.wait_status("ben@example.com", None, after=before + 1)
        eventually(lambda: self.slack.sim.status_of(self.ben).empty or None, "ben cleared", 15)


@pytest.fixture
def setup(tmp_path: Path, nfon: SimHandle, hook: Hook, slack: SlackHandle) -> Setup:
    return Setup(tmp_path, nfon, hook, slack)


def pause(setup: Setup, daemon: Daemon, who: str, *options: str) -> str:
    done = cli("pause", who, "-c", str(setup.config), "--url", daemon.url(), *options)
    assert done.returncode == 0, done.stderr
    return done.stdout


def resume(setup: Setup, daemon: Daemon, who: str) -> str:
    done = cli("resume", who, "-c", str(setup.config), "--url", daemon.url())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_paused_mid_call_gets_their_status_back_is_left_alone_and_synced_after_resume(
    setup: Setup, daemons: Any
) -> None:
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()
    first = setup.anna_on_a_call(daemon)
    docs = setup.hook_count("anna")

    said = pause(setup, daemon, "anna@example.com")

    assert said.splitlines()[0] == (
        "Paused anna@example.com (Anna Schmidt) at every target, until resumed."
    )
    assert setup.slack_shows(setup.anna, THEIRS.text) == THEIRS
    setup.hook.wait_status("anna@example.com", None, after=docs)
    line = daemon.wait_line(r"paused: their own status is given back")
    assert "person=anna@example.com" in line
    assert 'targets="every target"' in line
    assert "until=resumed" in line
    doc = httpx.get(daemon.url() + "/api/people/anna@example.com").json()
    assert doc["paused"] == {"until": None, "targets": None}
    assert {t["state"] for t in doc["targets"].values()} == {"paused"}

    # The call ends and a new one starts while she is paused: nothing is sent.
    docs, asked = setup.hook_count("anna"), setup.slack_requests_about(setup.anna)
    setup.nfon.sim.hangup(first)
    second = setup.nfon.sim.call("100")
    setup.ben_call_and_hangup()
    assert setup.hook_count("anna") == docs
    assert setup.slack_requests_about(setup.anna) == asked
    assert setup.slack.sim.status_of(setup.anna) == THEIRS

    said = resume(setup, daemon, "100")

    assert (
        said == "Resumed anna@example.com (Anna Schmidt): presence-sync shows their line again.\n"
    )
    setup.slack_shows(setup.anna, ON_A_CALL)
    setup.hook.wait_status("anna@example.com", "InACall", after=docs)
    assert daemon.count(r"resumed: syncing again.*person=anna@example.com") == 1
    setup.nfon.sim.hangup(second)
    assert setup.slack_shows(setup.anna, THEIRS.text) == THEIRS
    assert daemon.count(r"paused: |resumed: |pause ended") == 2


def test_a_pause_ends_by_itself_when_its_time_is_up(setup: Setup, daemons: Any) -> None:
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()
    setup.anna_on_a_call(daemon)
    docs = setup.hook_count("anna")

    said = pause(setup, daemon, "anna@example.com", "--for", "3s")

    match = re.search(rf"every target, until ({TIME_WITH_OFFSET})\.", said)
    assert match, said
    until = match.group(1)
    setup.slack_shows(setup.anna, THEIRS.text)
    setup.hook.wait_status("anna@example.com", None, after=docs)
    assert f"until={until}" in daemon.wait_line(r"paused: .*person=anna@example.com")

    ended = daemon.wait_line(r"pause ended: its time is up", timeout=20)
    # Not before its time: the line's own time (it leads every text line) is
    # past the end the pause was given (printed to the second, cut down).
    assert datetime.fromisoformat(ended.split(" ", 1)[0]) >= datetime.fromisoformat(until)
    assert "person=anna@example.com" in ended
    assert f"until={until}" in ended
    setup.slack_shows(setup.anna, ON_A_CALL)
    setup.hook.wait_status("anna@example.com", "InACall", after=docs)


def test_a_pause_survives_a_restart(setup: Setup, daemons: Any) -> None:
    first = daemons("run", "-c", str(setup.config))
    first.wait_ready()
    setup.anna_on_a_call(first)
    pause(setup, first, "anna@example.com")
    setup.slack_shows(setup.anna, THEIRS.text)
    first.signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0
    # While it is down, the stored view shows the pause.
    shown = cli("status", "anna@example.com", "-c", str(setup.config), "--url", first.url())
    assert shown.returncode == 1
    assert "Paused: anna@example.com until resumed." in shown.stdout

    docs, asked = setup.hook_count("anna"), setup.slack_requests_about(setup.anna)
    second = daemons("run", "-c", str(setup.config))
    second.wait_ready()
    line = second.wait_line(r"still paused from before the restart")
    assert "person=anna@example.com" in line
    setup.ben_call_and_hangup()
    assert setup.hook_count("anna") == docs
    assert setup.slack_requests_about(setup.anna) == asked

    resume(setup, second, "anna@example.com")
    setup.slack_shows(setup.anna, ON_A_CALL)
    setup.hook.wait_status("anna@example.com", "InACall", after=docs)


def test_a_pause_of_one_target_leaves_the_others_working(setup: Setup, daemons: Any) -> None:
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()
    call = setup.anna_on_a_call(daemon)
    docs = setup.hook_count("anna")

    said = pause(setup, daemon, "anna@example.com", "--target", "slack_status", "--for", "2h")

    assert re.match(
        rf"Paused anna@example.com \(Anna Schmidt\) at slack_status, until {TIME_WITH_OFFSET}\.",
        said,
    ), said
    setup.slack_shows(setup.anna, THEIRS.text)
    doc = httpx.get(daemon.url() + "/api/people/100").json()
    assert doc["paused"]["targets"] == ["slack_status"]
    assert re.fullmatch(TIME_WITH_OFFSET, doc["paused"]["until"])
    assert doc["targets"]["webhook"]["state"] == "in-sync"
    assert doc["targets"]["slack_status"]["state"] == "paused"
    asked = setup.slack_requests_about(setup.anna)
    setup.nfon.sim.hangup(call)
    setup.hook.wait_status("anna@example.com", None, after=docs)
    setup.nfon.sim.call("100")
    setup.hook.wait_status("anna@example.com", "InACall", after=docs + 1)
    setup.ben_call_and_hangup()
    assert setup.slack_requests_about(setup.anna) == asked
    assert setup.slack.sim.status_of(setup.anna) == THEIRS

    resume(setup, daemon, "anna@example.com")
    setup.slack_shows(setup.anna, ON_A_CALL)


def test_bad_pauses_are_refused_with_a_clear_message(setup: Setup, daemons: Any) -> None:
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()
    url = daemon.url()

    nobody = cli("pause", "nobody@example.com", "-c", str(setup.config), "--url", url)
    assert nobody.returncode == 1
    assert "nobody configured is 'nobody@example.com'" in nobody.stderr
    assert "Traceback" not in nobody.stderr
    # Every bad option is a usage error (exit 2), said one way (issue 16 point 15).
    target = cli("pause", "anna@example.com", "--target", "teams", "--url", url)
    assert target.returncode == 2
    assert (
        "presence-sync pause: error: argument --target: no target is called 'teams'; "
        "configured targets: webhook, slack_status" in target.stderr
    )
    banana = cli("pause", "anna@example.com", "--for", "banana", "--url", url)
    assert banana.returncode == 2
    assert "usage: presence-sync pause" in banana.stderr
    assert "presence-sync pause: error: argument --for: 'banana' is not a duration" in (
        banana.stderr
    )
    for duration in ("400d", "-5m", "0s"):
        wrong = cli("pause", "anna@example.com", "--for", duration, "--url", url)
        assert wrong.returncode == 2, wrong.stderr
        assert (
            f"presence-sync pause: error: argument --for: {duration}: a pause must last "
            "more than 0s and at most 366d" in wrong.stderr
        ), wrong.stderr
        assert "Traceback" not in wrong.stderr
    gone = cli("resume", "anna@example.com", "--url", "http://127.0.0.1:9")
    assert gone.returncode == 1
    assert "nothing answers at http://127.0.0.1:9" in gone.stderr

    api = url + "/api/people"
    answer = httpx.post(f"{api}/nobody@example.com/pause", json={})
    assert answer.status_code == 404
    assert "nobody configured is" in answer.json()["error"]
    answer = httpx.post(f"{api}/100/pause", json={"target": "teams"})
    assert answer.status_code == 400
    assert "configured targets: webhook, slack_status" in answer.json()["error"]
    answer = httpx.post(f"{api}/100/pause", json={"for": "banana"})
    assert answer.status_code == 400
    assert "'banana' is not a duration" in answer.json()["error"]
    answer = httpx.post(f"{api}/100/pause", json={"for": "0s"})
    assert answer.status_code == 400
    answer = httpx.post(f"{api}/100/pause", json={"for": "1h", "who": "ben"})
    assert answer.status_code == 400
    assert "unknown field 'who'" in answer.json()["error"]
    answer = httpx.post(f"{api}/100/pause", content=b"[1]")
    assert answer.status_code == 400
    # Nothing of it paused anyone.
    assert daemon.count(r"paused: ") == 0
    answer = httpx.post(f"{api}/ANNA@example.com/pause", json={"for": "1h"})
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["key"] == "anna@example.com"
    assert doc["paused"]["targets"] is None
    assert re.fullmatch(TIME_WITH_OFFSET, doc["paused"]["until"])
    answer = httpx.post(f"{api}/anna@example.com/resume")
    assert answer.status_code == 200
    assert answer.json()["paused"] is None


def test_resume_of_someone_not_paused_says_they_were_not(setup: Setup, daemons: Any) -> None:
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()

    said = resume(setup, daemon, "anna@example.com")

    assert said == "anna@example.com (Anna Schmidt) was not paused: nothing to resume.\n"
    assert daemon.count(r"resumed: ") == 0
    api = daemon.url() + "/api/people/anna@example.com"
    assert httpx.post(f"{api}/resume").json()["was_paused"] is False
    assert httpx.post(f"{api}/pause", json={}).status_code == 200
    assert httpx.post(f"{api}/resume").json()["was_paused"] is True


def test_off_loopback_a_pause_needs_the_token_which_the_command_reads_from_the_config(
    tmp_path: Path, nfon: SimHandle, hook: Hook, slack: SlackHandle, daemons: Any
) -> None:
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    (tmp_path / "api-token").chmod(0o600)
    http = '  listen: "0.0.0.0:0"\n  token_file: api-token\n'
    setup = Setup(tmp_path, nfon, hook, slack, http=http)
    daemon = daemons("run", "-c", str(setup.config))
    daemon.wait_ready()
    port = daemon.url().rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"

    refused = httpx.post(f"{url}/api/people/anna@example.com/pause", json={})
    assert refused.status_code == 401
    without = cli("pause", "anna@example.com", "--url", url, "-c", str(tmp_path / "none.yaml"))
    assert without.returncode == 1
    assert "needs the API token" in without.stderr
    assert daemon.count(r"paused: ") == 0

    done = cli("pause", "anna@example.com", "--url", url, "-c", str(setup.config))
    assert done.returncode == 0, done.stderr
    daemon.wait_line(r"paused: .*person=anna@example.com")
    done = cli("resume", "anna@example.com", "--url", url, "-c", str(setup.config))
    assert done.returncode == 0, done.stderr
    assert TOKEN not in daemon.output()

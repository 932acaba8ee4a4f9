"""The real daemon against the NFON and Slack simulators: a person's own Slack
status survives the daemon being killed in the middle of a call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Daemon, Hook, shows, user_id, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.slack import SlackSim, Status
from presence_sync.sim.slack_serve import SlackHandle, serve_in_thread

RULES = (
    "rules:\n"
    "  - when: {line: in-use}\n"
    '    set: {slack_status: {text: "On a call", emoji: ":telephone_receiver:"}}\n'
)


class WatchedSim(SlackSim):
    """The simulator, telling when it starts holding a request (``hang_next``)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()

    def hang_for(self, method: str) -> float:
        seconds = super().hang_for(method)
        if seconds > 0:
            self.holding.set()
        return seconds


@pytest.fixture
def slack() -> Iterator[SlackHandle]:
    sim = WatchedSim()
    sim.add_user("adam", "it-admin@example.com", role="admin")
    for name in ("anna", "ben", "clara"):
        sim.add_user(name, f"{name}@example.com")
    with serve_in_thread(sim) as handle:
        yield handle


def slack_config(tmp_path: Path, nfon: SimHandle, hook: Hook, slack: SlackHandle) -> Path:
    admin = next(p for p in slack.sim.people() if p.name == "adam")
    token = slack.sim.add_token(admin.id).secret
    (tmp_path / "slack.token").write_text(token + "\n")
    (tmp_path / "slack.token").chmod(0o600)
    extra = f"slack:\n  base_url: {slack.base_url}\n  token_file: slack.token\n"
    return write_config(tmp_path / "config.yaml", nfon, hook, rules=RULES, extra=extra,
                        targets="  slack_status: {}\n")  # fmt: skip


@pytest.mark.parametrize("when", ["after-the-write", "during-the-write"])
def test_sigkill_mid_call_then_hangup_while_down_gives_their_status_back(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    slack: SlackHandle,
    daemons: Callable[..., Daemon],
    when: str,
) -> None:
    anna = user_id(slack, "anna")
    theirs = Status("Working from Lisbon", ":palm_tree:", int(time.time()) + 86400)
    slack.sim.set_own_status(anna, theirs.text, theirs.emoji, theirs.expiration)
    config = slack_config(tmp_path, nfon, hook, slack)
    first = daemons("run", "-c", str(config))
    first.wait_ready()

    if when == "during-the-write":
        # Slack has the write, the daemon dies before it hears back.
        slack.sim.hang_next("users.profile.set", 2.0)
    call = nfon.sim.call("100")
    if when == "during-the-write":
        sim = slack.sim
        assert isinstance(sim, WatchedSim)
        eventually(lambda: sim.holding.is_set() or None, "the write to reach Slack")
        first.kill()  # SIGKILL: no drain, no goodbye
    ours = eventually(shows(slack, anna, "On a call"), "anna on a call in Slack", 15)
    assert ours.emoji == ":telephone_receiver:"
    assert ours.expiration > time.time()
    first.kill()

    nfon.sim.hangup(call)
    daemons("run", "-c", str(config))
    back = eventually(shows(slack, anna, theirs.text), "anna's own status back", 15)
    assert back == theirs


def test_dnd_and_status_with_own_tokens_through_the_daemon(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    slack: SlackHandle,
    daemons: Callable[..., Daemon],
) -> None:
    """People's own tokens from files: Anna's snooze follows her NFON DND and
    ends with it; Ben's own snooze is left alone."""
    anna, ben = user_id(slack, "anna"), user_id(slack, "ben")
    tokens = ""
    for name, uid in (("anna", anna), ("ben", ben)):
        (tmp_path / f"{name}.token").write_text(slack.sim.add_token(uid).secret + "\n")
        (tmp_path / f"{name}.token").chmod(0o600)
        tokens += f"    - email: {name}@example.com\n      token_file: {name}.token\n"
    extra = f"slack:\n  base_url: {slack.base_url}\n  user_tokens:\n{tokens}"
    rules = RULES + "  - when: {presence: dnd}\n    set: {slack_dnd: {dnd: true}}\n"
    config = write_config(tmp_path / "config.yaml", nfon, hook, rules=rules, extra=extra,
                          targets="  slack_status: {}\n  slack_dnd: {minutes: 30}\n")  # fmt: skip
    own_end = slack.sim.snooze(ben, 90)
    daemons("run", "-c", str(config)).wait_ready()

    nfon.sim.set_state("100", presence="dnd")
    nfon.sim.set_state("101", presence="dnd")
    snoozed = eventually(lambda: slack.sim.person(anna).snooze_endtime, "anna snoozed", 15)
    assert abs(snoozed - (time.time() + 30 * 60)) < 120
    nfon.sim.set_state("100", presence="available")
    nfon.sim.set_state("101", presence="available")
    eventually(lambda: slack.sim.person(anna).snooze_endtime is None or None, "anna's ended", 15)
    assert slack.sim.person(ben).snooze_endtime == own_end
    call = nfon.sim.call("101")
    eventually(shows(slack, ben, "On a call"), "ben on a call", 15)
    nfon.sim.hangup(call)
    eventually(lambda: slack.sim.status_of(ben).empty or None, "ben's status cleared", 15)
    # No admin token is configured: every call about Ben was made with his own.
    about_ben = [r for r in slack.sim.requests() if r.target == ben]
    assert {r.method for r in about_ben} >= {"dnd.info", "users.profile.set"}
    assert {r.user_id for r in about_ben} == {ben}

"""Remote text cannot forge log lines or drive a terminal: the real daemon
under journald (``<N>`` priorities on stdout) against the simulators, with
Slack and Graph answering error texts that carry a newline and a forged
``<2>`` priority, and NFON names that carry ANSI escapes and a bidi override.
Each record stays one line with the escapes visible as ``\\n`` and ``\\x1b``,
and ``presence-sync status`` prints them the same way."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Daemon, Hook, cli, write_config

from presence_sync.sim.graph import GraphHandle, GraphSim
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import SlackHandle
from presence_sync.sim.slack_serve import serve_in_thread as serve_slack

pytestmark = pytest.mark.system

FORGED = "\n<2>presence_sync: FORGED critical entry"
RED = "\x1b[31m"
# Names as NFON sends them: an escape sequence that recolours a terminal,
# and a right-to-left override that reorders what follows it.
NAMES = {"100": f"Anna {RED}Red\x1b[0m", "101": "Ben \u202emoc.live"}
PEOPLE = [("100", None, "anna@example.com"), ("101", None, "ben@example.com")]
JOURNAL = {"JOURNAL_STREAM": "8:12345"}
CLIENT_ID = "66666666-7777-8888-9999-000000000000"
RECORD = re.compile(r"^<[0-7]>[\w.]+: ")


@pytest.fixture
def nfon() -> Iterator[SimHandle]:
    with serve_nfon(NfonSim(extensions=list(NAMES.items()), keepalive=5.0)) as handle:
        yield handle


def assert_one_line_per_record(daemon: Daemon) -> None:
    """Every line the daemon wrote is a record of its own, with its own
    priority; nothing raw from a remote text is in it."""
    lines = daemon.output().splitlines()
    assert lines
    assert [line for line in lines if not RECORD.match(line)] == []
    assert [line for line in lines if "FORGED" in line and "\\n<2>" not in line] == []
    assert [line for line in lines if "\x1b" in line or "\u202e" in line] == []


def status_of(daemon: Daemon, config: Path, who: str) -> str:
    shown = cli("status", "-c", str(config), "--url", daemon.url(), who)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout
    assert "\u202e" not in shown.stdout
    lines = shown.stdout.splitlines()
    assert [line for line in lines if "FORGED" in line and "\\n<2>" not in line] == []
    return shown.stdout


@pytest.fixture
def slack() -> Iterator[SlackHandle]:
    sim = SlackSim()
    sim.add_user("adam", "it-admin@example.com", role="admin")
    for name in ("anna", "ben"):
        sim.add_user(name, f"{name}@example.com")
    with serve_slack(sim) as handle:
        yield handle


@pytest.fixture
def graph() -> Iterator[GraphHandle]:
    sim = GraphSim()
    sim.register_app(client_id=CLIENT_ID, secret="graph-secret")
    for _, _, email in PEOPLE:
        sim.add_user(email)
    with serve_graph(sim) as handle:
        yield handle


def test_slack_error_text_and_nfon_names_stay_inside_their_lines(
    tmp_path: Path, nfon: SimHandle, hook: Hook, slack: SlackHandle, daemons: Callable[..., Daemon]
) -> None:
    sim = slack.sim
    admin = next(p.id for p in sim.people() if p.name == "adam")
    (tmp_path / "slack.token").write_text(sim.add_token(admin).secret + "\n")
    (tmp_path / "slack.token").chmod(0o600)
    rules = (
        "rules:\n  - when: {line: in-use}\n"
        '    set: {slack_status: {text: "On a call ({name})", emoji: ":telephone_receiver:"}}\n'
    )
    config = write_config(
        tmp_path / "config.yaml",
        nfon,
        hook,
        people=PEOPLE,
        rules=rules,
        targets="  slack_status: {}\n",
        extra=f"slack:\n  base_url: {slack.base_url}\n  token_file: slack.token\n",
        log_format="auto",
        log_level="debug",
    )
    daemon = daemons("run", "-c", str(config), env=JOURNAL)
    daemon.wait_ready()
    sim.fail_next("users.profile.set", "invalid_profile" + FORGED)
    nfon.sim.call("100")
    refused = daemon.wait_line(r"anna@example\.com cannot be set")
    assert refused.startswith("<3>")
    assert "invalid_profile\\n<2>presence_sync: FORGED" in refused
    # NFON's name, in the status quoted as JSON quotes it (model.describe).
    assert '"On a call (Anna \\u001b[31mRed\\u001b[0m)"' in refused

    nfon.sim.call("101")
    applied = daemon.wait_line(r"ben@example\.com .*→ .*On a call")
    assert "On a call (Ben \\u202emoc.live)" in applied
    assert_one_line_per_record(daemon)

    anna = status_of(daemon, config, "anna@example.com")
    assert "Anna \\x1b[31mRed\\x1b[0m <anna@example.com>" in anna
    why = next(line for line in anna.splitlines() if line.strip().startswith("why:"))
    assert "invalid_profile\\n<2>presence_sync: FORGED" in why
    assert "Ben \\u202emoc.live" in status_of(daemon, config, "ben@example.com")


def test_graph_error_message_stays_inside_its_line(
    tmp_path: Path, nfon: SimHandle, hook: Hook, graph: GraphHandle, daemons: Callable[..., Daemon]
) -> None:
    sim = graph.sim
    microsoft = (
        "microsoft:\n"
        f"  tenant_id: {sim.tenant}\n"
        f"  client_id: {CLIENT_ID}\n"
        "  client_secret: graph-secret\n"
        f"  authority: {graph.origin}\n"
        f"  graph_url: {graph.graph_url}\n"
        f"tls:\n  ca_bundle: {graph.ca_path}\n"
    )
    config = write_config(
        tmp_path / "config.yaml",
        nfon,
        hook,
        people=PEOPLE,
        targets="  teams_presence: {}\n",
        extra=microsoft,
        log_format="auto",
    )
    daemon = daemons("run", "-c", str(config), env=JOURNAL)
    daemon.wait_ready()
    sim.fail_next("/v1.0/users", status=400, retry_after=None, message="Bad" + FORGED)
    nfon.sim.call("100")
    refused = daemon.wait_line(r"anna@example\.com cannot be set")
    assert "(Bad\\n<2>presence_sync: FORGED critical entry)" in refused
    assert_one_line_per_record(daemon)

    anna = status_of(daemon, config, "anna@example.com")
    assert "Bad\\n<2>presence_sync: FORGED" in anna

"""``presence-sync check`` as an admin runs it before starting the service:
the real command in its own process against the NFON, Graph and Slack
simulators over real sockets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import HOOK_SECRET, PEOPLE, Daemon, Hook

from presence_sync.sim.graph import GraphHandle, GraphSim
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import SlackHandle
from presence_sync.sim.slack_serve import serve_in_thread as serve_slack
from presence_sync.sim.webhook_cli import describe_delivery

pytestmark = pytest.mark.system

MS_SECRET = "check-graph-secret"


@dataclass
class Services:
    nfon: SimHandle
    graph: GraphHandle
    client_id: str
    entra: dict[str, str]
    slack: SlackHandle
    slack_ids: dict[str, str]
    admin_token: str


@pytest.fixture
def services(nfon: SimHandle) -> Iterator[Services]:
    """The three simulators; everyone in PEOPLE has an Entra and a Slack
    user, and ``adam`` (a Slack admin) has the admin token."""
    graph = GraphSim()
    client_id = graph.register_app(secret=MS_SECRET)
    entra = {email: graph.add_user(email) for _, _, email in PEOPLE}
    slack = SlackSim()
    slack_ids = {email: slack.add_user(email.split("@")[0], email) for _, _, email in PEOPLE}
    adam = slack.add_user("adam", "adam@example.com", role="admin")
    token = slack.add_token(adam).secret
    with serve_graph(graph) as graph_handle, serve_slack(slack) as slack_handle:
        yield Services(nfon, graph_handle, client_id, entra, slack_handle, slack_ids, token)


def config(
    path: Path,
    s: Services,
    *,
    people: list[tuple[str, str]] | None = None,
    nfon_password: str = "password: api-secret",
    ms_secret: str = f"client_secret: {MS_SECRET}",
    slack_token: str | None = None,
    nfon_url: str | None = None,
    targets: str = "  teams_presence: {}\n  slack_status: {}\n",
    extra: str = "",
) -> Path:
    """A configuration for ``check``: no names under people:, so the names
    shown are NFON's."""
    entries = people if people is not None else [(ext, email) for ext, _, email in PEOPLE]
    listed = "".join(f'  - extension: "{ext}"\n    email: {email}\n' for ext, email in entries)
    path.write_text(
        f"""nfon:
  base_url: {nfon_url or s.nfon.base_url}
  customer: K1234
  username: api-user
  {nfon_password}
microsoft:
  tenant_id: {s.graph.sim.tenant}
  client_id: {s.client_id}
  {ms_secret}
  authority: {s.graph.origin}
  graph_url: {s.graph.graph_url}
slack:
  {slack_token or "token: " + s.admin_token}
  base_url: {s.slack.base_url}
tls:
  ca_bundle: {s.graph.ca_path}
people:
{listed or "  []"}
targets:
{targets}state:
  path: {path.parent / "state.db"}
{extra}"""
    )
    return path


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "presence_sync", "check", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**environ, **(env or {})},
    )


def row(output: str, extension: str) -> str:
    """The table row of ``extension``."""
    [line] = [ln for ln in output.splitlines() if re.match(rf"{extension}\s", ln)]
    return line


def test_everyone_resolves_and_the_table_shows_who_is_who(
    tmp_path: Path, services: Services
) -> None:
    result = check("-c", str(config(tmp_path / "config.yaml", services)))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for ext, name, email in PEOPLE:
        line = row(out, ext)
        assert name in line  # from NFON's directory
        assert email in line
        assert services.entra[email] in line
        assert services.slack_ids[email] in line
    assert re.search(r"^NFON\s+ok: logged in as api-user \(K1234\), 3 extensions", out, re.M)
    assert re.search(r"^Slack\s+ok: admin token", out, re.M)
    assert "3 people: 3 resolved, 0 with problems" in out
    assert services.admin_token not in out + result.stderr
    assert MS_SECRET not in out + result.stderr


def test_a_person_slack_and_nfon_do_not_know_is_named_with_why(
    tmp_path: Path, services: Services
) -> None:
    people = [(ext, email) for ext, _, email in PEOPLE]
    people += [("100200", "nobody@example.com")]
    services.slack.sim.deactivate_user(services.slack_ids["ben@example.com"])
    path = config(tmp_path / "config.yaml", services, people=people)
    # Ben's Slack account is gone; nobody@ is unknown everywhere.
    result = check("-c", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "no problems" not in out
    assert row(out, "100").endswith(services.slack_ids["anna@example.com"])
    ben = services.slack_ids["ben@example.com"]
    assert f"the Slack account {ben} is deactivated" in row(out, "101")
    unknown = row(out, "100200")
    assert "extension 100200 unknown to NFON" in unknown
    assert "no Entra user with this e-mail" in unknown
    assert "no Slack user with this e-mail" in unknown
    assert "4 people: 2 resolved, 2 with problems" in out


def test_rejected_slack_token_is_said_once_and_no_lookups_follow(
    tmp_path: Path, services: Services
) -> None:
    path = config(tmp_path / "config.yaml", services, slack_token="token: xoxp-not-a-token")
    result = check("-c", str(path))
    assert result.returncode == 1
    assert re.search(r"^Slack\s+PROBLEM: token rejected: .*invalid_auth", result.stdout, re.M)
    assert "not checked: Slack refused our credentials" in row(result.stdout, "100")
    assert not services.slack.sim.requests("users.lookupByEmail")
    assert not services.slack.sim.requests("users.list")


def test_own_tokens_are_tried_even_when_the_admin_token_is_rejected(
    tmp_path: Path, services: Services
) -> None:
    sim = services.slack.sim
    anna = sim.add_token(services.slack_ids["anna@example.com"]).secret
    path = config(
        tmp_path / "config.yaml",
        services,
        slack_token=(
            "token: xoxp-not-a-token\n"
            f"  user_tokens:\n    - {{email: anna@example.com, token: {anna}}}"
        ),
    )
    result = check("-c", str(path))
    assert result.returncode == 1
    assert row(result.stdout, "100").endswith(
        f"{services.slack_ids['anna@example.com']} (own token)"
    )
    assert "not checked: Slack refused our credentials" in row(result.stdout, "101")


def test_a_service_that_does_not_answer_is_tried_a_few_times_then_reported(
    tmp_path: Path, services: Services
) -> None:
    path = config(tmp_path / "config.yaml", services)
    text = path.read_text().replace(services.graph.origin, "https://127.0.0.1:9")
    path.write_text(text)
    result = check("-c", str(path))
    assert result.returncode == 1
    assert re.search(r"^Microsoft\s+PROBLEM: no token: .*unreachable", result.stdout, re.M)
    for ext, _, _ in PEOPLE:
        assert "not checked: Microsoft did not answer" in row(result.stdout, ext)
    assert re.search(r"^Slack\s+ok:", result.stdout, re.M)
    assert "3 people: 0 resolved, 3 with problems" in result.stdout


def test_rate_limits_are_waited_out_not_failed(tmp_path: Path, services: Services) -> None:
    services.slack.sim.fail_next("users.list", "ratelimited", count=2, retry_after=1)
    services.graph.sim.fail_next("/v1.0/users", status=429, count=2, retry_after=1.0)
    result = check("-c", str(config(tmp_path / "config.yaml", services)))
    assert result.returncode == 0, result.stdout + result.stderr
    listing = services.slack.sim.requests("users.list")
    assert [r.error for r in listing] == ["ratelimited", "ratelimited", None]
    # Slack asked for a second's pause each time: nobody asked again before it was over.
    assert listing[1].at >= listing[0].at + 0.9
    assert listing[2].at >= listing[1].at + 0.9
    graph = services.graph.sim.requests("/v1.0/users")
    assert len([r for r in graph if r.status == 200]) == 3


def test_thousands_of_people_cost_a_page_of_slack_per_200(
    tmp_path: Path, services: Services
) -> None:
    people = [(ext, email) for ext, _, email in PEOPLE]
    for i in range(250):
        email = f"colleague{i}@example.com"
        services.nfon.sim.add_extension(str(2000 + i), f"Colleague {i}")
        services.slack.sim.add_user(f"colleague{i}", email)
        services.graph.sim.add_user(email)
        people.append((str(2000 + i), email))
    result = check("-c", str(config(tmp_path / "config.yaml", services, people=people)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "253 people: 253 resolved, 0 with problems" in result.stdout
    assert len(services.slack.sim.requests("users.list")) == 2
    assert not services.slack.sim.requests("users.lookupByEmail")


def test_without_users_read_people_are_looked_up_one_by_one(
    tmp_path: Path, services: Services
) -> None:
    sim = services.slack.sim
    narrow = sim.add_token(
        sim.add_user("root", "root@example.com", role="admin"),
        scopes=("users.profile:read", "users.profile:write", "users:read.email"),
    ).secret
    path = config(tmp_path / "config.yaml", services, slack_token=f"token: {narrow}")
    result = check("-c", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [r.error for r in sim.requests("users.list")] == ["missing_scope"]
    assert len(sim.requests("users.lookupByEmail")) == 3
    assert services.slack_ids["clara@example.com"] in row(result.stdout, "102")


def test_offline_needs_no_network(tmp_path: Path, services: Services) -> None:
    path = config(tmp_path / "config.yaml", services, nfon_url="http://127.0.0.1:9/v1")
    offline = check("-c", str(path), "--offline")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "valid. 3 people; targets: teams_presence" in offline.stdout
    assert not services.slack.sim.requests()
    assert not services.graph.sim.requests()
    online = check("-c", str(path))
    assert online.returncode == 1
    assert re.search(r"^NFON\s+PROBLEM:", online.stdout, re.M)
    assert "not checked: NFON failed" in row(online.stdout, "100")


def test_credentials_dir_serves_relative_secret_files(tmp_path: Path, services: Services) -> None:
    creds = tmp_path / "credstore"
    creds.mkdir()
    for name, secret in (
        ("nfon-password", "api-secret"),
        ("ms-client-secret", MS_SECRET),
        ("slack-token", services.admin_token),
    ):
        (creds / name).write_text(secret + "\n")
        (creds / name).chmod(0o600)
    path = config(
        tmp_path / "config.yaml",
        services,
        nfon_password="password_file: nfon-password",
        ms_secret="client_secret_file: ms-client-secret",
        slack_token="token_file: slack-token",
    )
    result = check("-c", str(path), "--credentials", str(creds))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 people: 3 resolved" in result.stdout
    assert "warning" not in result.stderr

    # Without it they are looked for beside the file (no $CREDENTIALS_DIRECTORY).
    missing = check("-c", str(path))
    assert missing.returncode == 78
    for key in ("nfon.password_file", "microsoft.client_secret_file", "slack.token_file"):
        assert key in missing.stderr

    # What run would warn about, check warns about too.
    (creds / "slack-token").chmod(0o640)
    exposed = check("-c", str(path), "--credentials", str(creds), "--offline")
    assert exposed.returncode == 0
    assert re.search(r"warning: secret file is readable by others.*slack-token", exposed.stderr)

    not_a_dir = check("-c", str(path), "--credentials", str(tmp_path / "nope"))
    assert not_a_dir.returncode == 2
    assert "not a directory" in not_a_dir.stderr


def test_invalid_configuration_is_78_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "nfon:\n  customer: K1234\n  username: u\n  password: p\n  colour: blue\n"
        "people:\n  - extension: '100'\n    email: not-an-address\n"
        "targets:\n  log: {}\n"
    )
    result = check("-c", str(path), "--offline")
    assert result.returncode == 78
    assert "invalid configuration" in result.stderr
    assert re.search(r"config\.yaml:5.*nfon\.colour", result.stderr)
    assert re.search(r"config\.yaml:8.*people\[0\]\.email", result.stderr)
    assert "Traceback" not in result.stderr


def test_nobody_under_people_is_a_warning(tmp_path: Path, services: Services) -> None:
    result = check("-c", str(config(tmp_path / "config.yaml", services, people=[])), "--offline")
    assert result.returncode == 0
    assert re.search(r"^warning: .*config\.yaml:\d+.*people.*no one is listed", result.stderr, re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--callee", "101"], "only go with --test-call"),
        (["--test-call", "100"], "--test-call needs --callee"),
        (["--test-call", "100", "--callee", "101", "--offline"], "cannot be --offline"),
        (["--test-call", "100", "--callee", "101", "--timeout", "0"], "more than 0"),
    ],
)
def test_option_mistakes_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = check("-c", str(tmp_path / "config.yaml"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# --- check --test-call against the running daemon ---------------------------------------

DAEMON = """http:
  listen: "127.0.0.1:0"
logging:
  level: info
  format: text
resync:
  interval: 1h
"""


def _steps(output: str) -> list[str]:
    """The step lines (``  0.12 s  text``) without their times."""
    return [m.group(1) for m in re.finditer(r"^\s*\d+\.\d\d s  (.*)$", output, re.M)]


def test_test_call_shows_each_target_taking_the_call_and_letting_go(
    tmp_path: Path, services: Services, daemons: Callable[..., Daemon]
) -> None:
    path = config(tmp_path / "config.yaml", services, extra=DAEMON)
    daemon = daemons("run", "-c", str(path))
    daemon.wait_ready()
    result = check("-c", str(path), "--test-call", "100", "--callee", "101", "--url", daemon.url())
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _steps(result.stdout)
    requests = services.nfon.sim.stats.requests_by_path
    assert requests["POST /extensions/phone/calls"] == 1
    assert steps[0].startswith("call placed (NFON call ")
    assert steps[1:3] == [
        "100's phone rings: answer the call on 100's phone now",
        "100's line is in use",
    ]
    assert set(steps[3:5]) == {
        "teams_presence shows Busy/InACall",
        'slack_status shows :telephone_receiver: "On a call"',
    }
    assert steps[5:7] == ["call cancelled", "100's line is idle"]
    assert set(steps[7:9]) == {
        "teams_presence cleared: the person's own status is back",
        "slack_status cleared: the person's own status is back",
    }
    assert "test call passed" in result.stdout
    assert "NFON rings 100's phone first. Answer it there" in result.stdout.splitlines()[0]
    placed = re.search(r"NFON call ([0-9a-f-]{36})", steps[0])
    assert placed, steps[0]
    assert requests[f"DELETE /extensions/phone/calls/{placed.group(1)}"] == 1
    assert services.nfon.sim.active_calls() == []
    anna = services.entra["anna@example.com"]
    posted = services.graph.sim.requests(f"/v1.0/users/{anna}/presence/")
    assert [r.path.rsplit("/", 1)[-1] for r in posted] == ["setPresence", "clearPresence"]
    times = [float(t) for t in re.findall(r"^\s*(\d+\.\d\d) s  ", result.stdout, re.M)]
    assert times == sorted(times)


def test_test_call_does_not_claim_to_clear_a_target_the_call_never_changed(
    tmp_path: Path, services: Services, daemons: Callable[..., Daemon]
) -> None:
    rules = (
        "rules:\n  - name: on a call\n    when: {line: in-use}\n"
        "    set: {teams_presence: {availability: Busy, activity: InACall}}\n"
    )
    targets = "  teams_presence: {}\n  log: {}\n"
    path = config(tmp_path / "config.yaml", services, targets=targets, extra=DAEMON + rules)
    daemon = daemons("run", "-c", str(path))
    daemon.wait_ready()

    result = check("-c", str(path), "--test-call", "100", "--callee", "101", "--url", daemon.url())

    assert result.returncode == 0, result.stdout + result.stderr
    steps = _steps(result.stdout)
    assert "log: the rules show nothing there for this call" in steps
    assert "teams_presence cleared: the person's own status is back" in steps
    assert not [step for step in steps if step.startswith("log cleared")], steps
    assert (
        "test call passed: 1 of 2 targets showed the call and were cleared again; "
        "the rules show nothing at the others for it"
    ) in result.stdout


def test_test_call_nobody_answers_names_the_step_and_cancels_the_call(
    tmp_path: Path, services: Services, daemons: Callable[..., Daemon]
) -> None:
    path = config(tmp_path / "config.yaml", services, extra=DAEMON)
    daemon = daemons("run", "-c", str(path))
    daemon.wait_ready()
    services.nfon.sim.set_answer_delay(None)
    result = check(
        "-c", str(path), "--test-call", "100", "--callee", "101",
        "--url", daemon.url(), "--timeout", "3",
    )  # fmt: skip
    assert result.returncode == 1
    assert re.search(
        r"^FAILED: nobody answered 100's phone \(line ringing\) within 3 s", result.stdout, re.M
    )
    assert services.nfon.sim.active_calls() == []
    assert services.nfon.sim.state_of("100")["line"] == "idle"


def test_test_call_without_a_daemon_or_for_a_stranger_says_so(
    tmp_path: Path, services: Services, daemons: Callable[..., Daemon]
) -> None:
    path = config(tmp_path / "config.yaml", services, extra=DAEMON)
    down = check(
        "-c", str(path), "--test-call", "100", "--callee", "101", "--url", "http://127.0.0.1:9"
    )
    assert down.returncode == 1
    assert "cannot reach the daemon at http://127.0.0.1:9" in down.stdout
    assert not services.nfon.sim.stats.requests_by_path.get("POST /extensions/phone/calls")

    daemon = daemons("run", "-c", str(path))
    daemon.wait_ready()
    stranger = check(
        "-c", str(path), "--test-call", "555", "--callee", "101", "--url", daemon.url()
    )
    assert stranger.returncode == 1
    assert "the daemon does not know 555" in stranger.stdout


def test_ctrl_c_during_a_test_call_cancels_the_call_and_exits_130(
    tmp_path: Path, services: Services, daemons: Callable[..., Daemon]
) -> None:
    path = config(tmp_path / "config.yaml", services, extra=DAEMON)
    daemon = daemons("run", "-c", str(path))
    daemon.wait_ready()
    services.nfon.sim.set_answer_delay(None)
    url = daemon.url()
    probe = daemons("check", "-c", str(path), "--test-call", "100", "--callee", "101", "--url", url)
    probe.wait_line(r"100's phone rings")
    assert services.nfon.sim.state_of("100")["line"] == "ringing"
    probe.signal(signal.SIGINT)
    assert probe.wait_exit(15) == 130
    assert services.nfon.sim.active_calls() == []
    assert services.nfon.sim.state_of("100")["line"] == "idle"


def test_the_webhook_is_reached_with_a_signed_ping_that_carries_no_change(
    tmp_path: Path, services: Services, hook: Hook
) -> None:
    """issue 16 point 18: the online check proves the receiver answers and
    takes our signature, and hands it nothing to act on."""
    targets = f"  webhook: {{url: {hook.url}, secret: {HOOK_SECRET}}}\n"
    path = config(tmp_path / "config.yaml", services, targets=targets)
    result = check("-c", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        rf"^Webhook webhook\s+ok: {re.escape(hook.url)} answered 200 to a signed ping$",
        result.stdout,
        re.M,
    ), result.stdout
    [ping] = hook.deliveries()
    assert ping.signature == "valid"
    assert ping.headers["x-presence-sync-event"] == "ping"
    assert ping.body["event"] == "ping"
    assert "person" not in ping.body
    assert "status" not in ping.body
    assert HOOK_SECRET not in result.stdout + result.stderr

    # A receiver that refuses our signature, and one that is not there.
    hook.receiver.fail_next(401)
    refused = check("-c", str(path))
    assert refused.returncode == 1
    assert re.search(r"^Webhook webhook\s+PROBLEM: refused: .*401", refused.stdout, re.M), (
        refused.stdout
    )
    gone = path.read_text().replace(hook.url, "http://127.0.0.1:9/hook")
    path.write_text(gone)
    down = check("-c", str(path))
    assert down.returncode == 1
    assert re.search(r"^Webhook webhook\s+PROBLEM: no answer we can use: ", down.stdout, re.M), (
        down.stdout
    )


def test_the_receiver_command_shows_a_ping_as_a_ping() -> None:
    line = describe_delivery(
        {"version": 1, "event": "ping", "id": "x", "target": "crm_hook", "at": "..."},
        "valid",
        200,
    )
    assert "ping for crm_hook · signature valid · answered 200" in line
    assert "cleared" not in line

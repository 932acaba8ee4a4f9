"""The real ``presence-sync run`` with only ``directory:`` (nobody under
``people:``): who is synced comes from an Entra group in the Graph
simulator, and a call shows in Teams and Slack. Members who join are synced
after a resync, members who leave in a call get their own status back, and
a Graph error during a refresh keeps everyone."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import Daemon, Hook, cli, write_config
from polling import eventually

from presence_sync.sim.graph import GraphHandle, GraphSim
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.graph_sim import DIRECTORY_ROLES
from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import SlackHandle
from presence_sync.sim.slack_serve import serve_in_thread as serve_slack

pytestmark = pytest.mark.system

SECRET = "graph-directory-system-secret"
PREFIX = "+49 89 45300"
STAFF = [  # extension, name, e-mail, how the number is written in Entra
    ("100", "Anna Schmidt", "anna@example.com", "+49 89 45300-100"),
    ("101", "Ben Müller", "ben@example.com", "+49 (0)89 45300 101"),
    ("102", "Clara Weber", "clara@example.com", "0049 89 45300 102"),
]
DORA = ("103", "Dora Frank", "dora@example.com", "+49 89 45300 103")
RULES = (
    "rules:\n"
    "  - when: {line: in-use}\n"
    "    set:\n"
    "      teams_presence: {availability: Busy, activity: InACall}\n"
    '      slack_status: {text: "On a call", emoji: ":telephone_receiver:"}\n'
)


@dataclass
class World:
    nfon: SimHandle
    graph: GraphHandle
    slack: SlackHandle
    client_id: str
    group: str
    users: dict[str, str]
    """e-mail → Entra object id"""

    def add(self, person: tuple[str, str, str, str]) -> str:
        _, name, email, number = person
        user = self.graph.sim.add_user(email, display_name=name)
        self.graph.sim.change_user(user, businessPhones=[number])
        self.graph.sim.sign_in_client(user, "Available")
        self.users[email] = user
        return user

    def slack_id(self, email: str) -> str:
        return next(p.id for p in self.slack.sim.people() if p.email == email)

    def teams(self, email: str) -> tuple[str, str]:
        presence = self.graph.sim.presence(self.users[email])
        return presence["availability"], presence["activity"]

    def ours(self, email: str) -> bool:
        return self.client_id in self.graph.sim.sessions(self.users[email])

    def slack_text(self, email: str) -> str:
        return self.slack.sim.status_of(self.slack_id(email)).text


@pytest.fixture
def world() -> Iterator[World]:
    nfon = NfonSim(extensions=[(e, n) for e, n, _, _ in [*STAFF, DORA]], keepalive=5.0)
    graph = GraphSim()
    client_id = graph.register_app(secret=SECRET, roles=DIRECTORY_ROLES)
    group = graph.add_group("Phone users")
    slack = SlackSim()
    slack.add_user("adam", "it-admin@example.com", role="admin")
    for _, name, email, _ in [*STAFF, DORA]:
        slack.add_user(name.split()[0].lower(), email)
    with serve_nfon(nfon) as n, serve_graph(graph) as g, serve_slack(slack) as s:
        world = World(n, g, s, client_id, group, {})
        for person in STAFF:
            graph.add_member(group, world.add(person))
        yield world


def _config(tmp_path: Path, world: World, hook: Hook, refresh: str = "1h") -> Path:
    admin = next(p for p in world.slack.sim.people() if p.name == "adam")
    (tmp_path / "slack.token").write_text(world.slack.sim.add_token(admin.id).secret + "\n")
    (tmp_path / "slack.token").chmod(0o600)
    extra = (
        f"slack:\n  base_url: {world.slack.base_url}\n  token_file: slack.token\n"
        "microsoft:\n"
        f"  tenant_id: {world.graph.sim.tenant}\n"
        f"  client_id: {world.client_id}\n"
        f"  client_secret: {SECRET}\n"
        f"  authority: {world.graph.origin}\n"
        f"  graph_url: {world.graph.graph_url}\n"
        "tls:\n"
        f"  ca_bundle: {world.graph.ca_path}\n"
        "directory:\n"
        "  microsoft:\n"
        "    group: Phone users\n"
        "    extension_from: businessPhones\n"
        f'    number_prefix: "{PREFIX}"\n'
        f"  refresh: {refresh}\n"
    )
    return write_config(
        tmp_path / "config.yaml",
        world.nfon,
        hook,
        people=(),
        rules=RULES,
        extra=extra,
        targets="  teams_presence: {}\n  slack_status: {}\n",
    )


def _resync(daemon: Daemon) -> None:
    response = httpx.post(daemon.url() + "/api/resync", timeout=5)
    assert response.status_code == 202, response.text


def _synced(daemon: Daemon) -> set[str]:
    status = httpx.get(daemon.url() + "/api/status", timeout=5).json()
    return {p["email"] for p in status["people"]}


def test_a_call_reaches_teams_and_slack_for_a_directory_person(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    call = world.nfon.sim.call("101")
    eventually(lambda: world.teams("ben@example.com") == ("Busy", "InACall"), "Ben in Teams")
    eventually(lambda: world.slack_text("ben@example.com") == "On a call", "Ben in Slack")
    # The Entra id came with the group: nobody was looked up by e-mail.
    assert not [r for r in world.graph.sim.requests("/v1.0/users") if r.path == "/v1.0/users"]
    assert not world.graph.sim.requests(f"/v1.0/users/{'ben@example.com'}")
    world.nfon.sim.hangup(call)
    eventually(lambda: not world.ours("ben@example.com"), "Ben's Teams session cleared")
    eventually(lambda: world.slack_text("ben@example.com") == "", "Ben's Slack status cleared")
    assert SECRET not in daemon.output()


def test_a_member_added_is_synced_after_resync(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    assert "dora@example.com" not in _synced(daemon)
    world.graph.sim.add_member(world.group, world.add(DORA))
    _resync(daemon)
    eventually(lambda: "dora@example.com" in _synced(daemon), "Dora synced after resync")
    world.nfon.sim.call("103")
    eventually(lambda: world.teams("dora@example.com") == ("Busy", "InACall"), "Dora in Teams")


def test_a_member_added_is_synced_after_sighup(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    world.graph.sim.add_member(world.group, world.add(DORA))
    daemon.signal(signal.SIGHUP)
    eventually(lambda: "dora@example.com" in _synced(daemon), "Dora synced after SIGHUP")


def test_a_sighup_to_another_group_during_a_refresh_reads_the_new_group_at_once(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = _config(tmp_path, world, hook)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    everyone = {email for _, _, email, _ in STAFF}
    eventually(lambda: _synced(daemon) == everyone, "everyone synced")
    sales = world.graph.sim.add_group("Sales phones")
    for email in [*sorted(everyone)]:
        world.graph.sim.add_member(sales, world.users[email])
    world.graph.sim.add_member(sales, world.add(DORA))
    # A refresh of the old group is under way (Graph is slow) when the
    # admin switches to the new group.
    world.graph.sim.hang_next(6.0, f"/v1.0/groups/{world.group}/transitiveMembers")
    _resync(daemon)
    eventually(lambda: world.graph.sim.hangs_left() == 0, "the old group's refresh held")
    config.write_text(config.read_text().replace("group: Phone users", "group: Sales phones"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_line("configuration reloaded")
    eventually(lambda: "dora@example.com" in _synced(daemon), "Dora synced after SIGHUP", 5.0)
    assert _synced(daemon) == {*everyone, "dora@example.com"}
    # The old group's read was cancelled, not failed on a closed reader.
    assert daemon.count(r"Entra group refresh .*failed") == 0
    assert "Traceback" not in daemon.output()


def test_a_member_removed_in_a_call_gets_their_own_status_back(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    anna_slack = world.slack_id("anna@example.com")
    world.slack.sim.set_own_status(anna_slack, "Lunch", ":sandwich:")
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    world.nfon.sim.call("100")
    eventually(lambda: world.ours("anna@example.com"), "Anna's Teams session set")
    eventually(lambda: world.slack_text("anna@example.com") == "On a call", "Anna in Slack")

    world.graph.sim.remove_member(world.group, world.users["anna@example.com"])
    _resync(daemon)
    eventually(lambda: not world.ours("anna@example.com"), "Anna's Teams session cleared")
    eventually(lambda: world.slack_text("anna@example.com") == "Lunch", "Anna's own status back")
    assert world.slack.sim.status_of(anna_slack).emoji == ":sandwich:"
    eventually(lambda: "anna@example.com" not in _synced(daemon), "Anna forgotten")
    assert _synced(daemon) == {"ben@example.com", "clara@example.com"}


def test_a_graph_error_during_a_refresh_keeps_everyone_synced(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    everyone = {email for _, _, email, _ in STAFF}
    eventually(lambda: _synced(daemon) == everyone, "everyone synced")
    world.graph.sim.fail_next("/v1.0/groups", status=500, retry_after=None, count=10)
    _resync(daemon)
    daemon.wait_line(r"Entra group refresh .*failed")
    assert _synced(daemon) == everyone
    world.nfon.sim.call("102")
    eventually(lambda: world.teams("clara@example.com") == ("Busy", "InACall"), "Clara in Teams")
    assert daemon.count(r"Entra group refresh .*failed") == 1


def test_check_shows_where_each_mapping_came_from_and_fails_on_a_conflict(
    tmp_path: Path, world: World, hook: Hook
) -> None:
    config = _config(tmp_path, world, hook)
    clean = cli("check", "-c", str(config))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    [ben] = [line for line in clean.stdout.splitlines() if "ben@example.com" in line]
    assert "group: businessPhones +49 (0)89 45300 101" in ben
    assert "1 extensions without a member: 103" in clean.stdout

    twin = world.add(("102", "Zoe Twin", "zoe@example.com", "+49 89 45300 102"))
    world.graph.sim.add_member(world.group, twin)
    lonely = world.add(("-", "Eve Fax", "eve@example.com", "+49 30 999"))
    world.graph.sim.add_member(world.group, lonely)
    conflicted = cli("check", "-c", str(config))
    assert conflicted.returncode == 1
    out = conflicted.stdout
    assert "CONFLICT: extension 102 matches 2 members" in out
    assert "clara@example.com" in out
    assert "zoe@example.com" in out
    assert "eve@example.com (+49 30 999)" in out
    assert not [line for line in out.splitlines() if line.startswith("102 ")]


def test_conflicts_and_unmatched_show_in_the_api_and_metrics(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    world.graph.sim.add_member(
        world.group, world.add(("102", "Zoe Twin", "zoe@example.com", "+49 89 45300 102"))
    )
    # In a zone ahead of UTC, so that a time given in UTC shows.
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)), env={"TZ": "Asia/Kolkata"})
    daemon.wait_ready()
    eventually(lambda: _synced(daemon) == {"anna@example.com", "ben@example.com"}, "two synced")
    response = httpx.get(daemon.url() + "/api/status", timeout=5)
    group = response.json()["directory"]
    # Local time with its offset, like every other time in the document.
    assert response.json()["at"].endswith("+05:30")
    assert group["last_refresh"].endswith("+05:30")
    assert group["group"] == "Phone users"
    assert group["people"] == 2
    [conflict] = group["conflicts"]
    assert conflict["kind"] == "extension"
    assert conflict["extensions"] == ["102"]
    assert conflict["members"] == ["clara@example.com", "zoe@example.com"]
    assert "people:" in conflict["change"]
    assert group["unmatched_extensions"] == {"count": 1, "extensions": ["103"]}
    assert group["error"] is None
    assert "45300" not in response.text  # no phone numbers in the API
    metrics = httpx.get(daemon.url() + "/metrics", timeout=5).text
    assert "presence_sync_directory_conflicts 1.0" in metrics
    assert 'presence_sync_directory_unmatched{kind="extension"} 1.0' in metrics


def test_a_refresh_removing_most_people_is_held_until_the_next_confirms_it(
    tmp_path: Path, world: World, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(_config(tmp_path, world, hook)))
    daemon.wait_ready()
    everyone = {email for _, _, email, _ in STAFF}
    eventually(lambda: _synced(daemon) == everyone, "everyone synced")
    for email in ("anna@example.com", "ben@example.com"):
        world.graph.sim.remove_member(world.group, world.users[email])

    def held() -> dict[str, int] | None:
        doc = httpx.get(daemon.url() + "/api/status", timeout=5).json()["directory"]
        return doc["held"]  # type: ignore[no-any-return]

    _resync(daemon)
    assert eventually(held, "the refresh held") == {"removing": 2, "people": 3}
    assert _synced(daemon) == everyone
    _resync(daemon)  # says the same: taken
    eventually(lambda: _synced(daemon) == {"clara@example.com"}, "the removal taken")
    assert held() is None

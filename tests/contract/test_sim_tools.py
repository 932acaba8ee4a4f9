"""The simulators as tools (``presence-sync sim nfon|microsoft|slack|webhook``):
each starts, prints where it is and its control endpoint, whose index lists
exactly the control calls it serves; ``docs/simulators.md`` documents the
same calls (both ways round), and every documented curl example works
against the running command; Ctrl-C stops it with exit 0."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from polling import eventually

from presence_sync.cli import build_parser
from presence_sync.sim import graph_http, nfon_http, slack_http
from presence_sync.sim.control import control_calls
from presence_sync.sim.graph import GraphSim
from presence_sync.sim.nfon import NfonSim
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.webhook import WebhookReceiver

DOCS = Path(__file__).resolve().parents[2] / "docs" / "simulators.md"
SIMULATORS = ["nfon", "microsoft", "slack", "webhook"]
DEFAULT_ORIGIN = {
    "nfon": "http://127.0.0.1:8080",
    "microsoft": "https://127.0.0.1:8443",
    "slack": "http://127.0.0.1:8090",
    "webhook": "http://127.0.0.1:8070",
}


def route_table(simulator: str) -> list[dict[str, str]]:
    """The control calls the simulator's app serves, from its route table."""
    if simulator == "nfon":
        routes = nfon_http.build_app(NfonSim(extensions=1)).routes
    elif simulator == "microsoft":
        routes = graph_http.build_app(GraphSim()).routes
    elif simulator == "slack":
        routes = slack_http.build_app(SlackSim()).routes
    else:
        routes = WebhookReceiver().app.routes
    return control_calls(routes)


@dataclass(frozen=True)
class Documented:
    method: str
    path: str
    curl: list[str]


def documented(simulator: str) -> list[Documented]:
    """The control calls in the docs' section on ``simulator``, each with
    the curl example that follows it."""
    text = DOCS.read_text()
    heading = f"### Control calls of `presence-sync sim {simulator}`"
    assert heading in text
    section = text.split(heading, 1)[1]
    section = re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    found: list[Documented] = []
    for entry in re.split(r"^- ", section, flags=re.MULTILINE)[1:]:
        head = re.match(r"`(GET|POST|PUT|PATCH|DELETE) (/_sim/\S*)`", entry)
        assert head, f"entry without `METHOD /_sim/...`: {entry[:60]!r}"
        curls = [line.strip() for line in entry.splitlines() if line.strip().startswith("curl ")]
        assert len(curls) == 1, f"{head.group(0)} needs exactly one curl example"
        found.append(Documented(head.group(1), head.group(2), shlex.split(curls[0])))
    return found


def curl_request(argv: list[str]) -> tuple[str, str, str | None, str | None]:
    """(method, url, body, cacert) of a documented ``curl`` line."""
    method, url, body, cacert = None, None, None, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-d":
            body = next(args)
        elif arg == "--cacert":
            cacert = next(args)
        elif arg == "-s":
            continue
        else:
            assert url is None, f"unexpected curl argument {arg!r}"
            url = arg
    assert url is not None
    return method or ("POST" if body is not None else "GET"), url, body, cacert


def _template(path: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(path)) + r"(\?.*)?")


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_docs_list_exactly_the_control_calls_each_simulator_serves(simulator: str) -> None:
    served = {(c["method"], c["path"]) for c in route_table(simulator)}
    docs = [(d.method, d.path) for d in documented(simulator)]
    assert len(docs) == len(set(docs)), "a control call is documented twice"
    assert set(docs) - served == set(), "documented but not served"
    assert served - set(docs) == set(), "served but not documented in docs/simulators.md"


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_every_control_call_says_what_it_does(simulator: str) -> None:
    for call in route_table(simulator):
        assert call["description"].strip(), call
        assert "\n" not in call["description"], call


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_each_documented_example_is_the_call_it_documents(simulator: str) -> None:
    for doc in documented(simulator):
        method, url, _, _ = curl_request(doc.curl)
        assert method == doc.method, doc
        origin = DEFAULT_ORIGIN[simulator]
        assert url.startswith(origin + "/_sim/"), f"{url}: examples use {origin}"
        assert _template(doc.path).fullmatch(url[len(origin) :]), (url, doc.path)


class Command:
    """``presence-sync sim NAME`` in a process of its own, output collected."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presence_sync", "sim", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> str:
        def found() -> str | None:
            if self.proc.poll() is not None:
                pytest.fail(f"exited {self.proc.returncode}:\n" + "\n".join(self.lines))
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match.group(1)
            return None

        return eventually(found, f"/{pattern}/ in the output", within=20)

    def close(self) -> None:
        """Kill it if it still runs; read the rest of its output."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Command]:
    simulator: str = request.param
    extra = ["--tls-dir", str(tmp_path)] if simulator == "microsoft" else []
    command = Command(simulator, "--port", "0", *extra)
    yield command
    command.close()


def _fill(simulator: str, client: httpx.Client, control: str, doc: Documented) -> str | None:
    """A body with the placeholder ``UUID`` replaced by a call that exists now."""
    _, _, body, _ = curl_request(doc.curl)
    if body is not None and "UUID" in body:
        assert simulator == "nfon"
        uuid = client.post(control + "call", json={"extension": "100"}).json()["uuid"]
        body = body.replace("UUID", uuid)
    return body


@pytest.mark.parametrize("running", SIMULATORS, indirect=True)
def test_a_sim_command_prints_where_it_is_its_index_answers_and_ctrl_c_exits_0(
    running: Command, request: pytest.FixtureRequest
) -> None:
    simulator = request.node.callspec.params["running"]
    control = running.find(r"control(?: API)?[=:] ?(\S+/_sim/)")
    verify: Any = True
    if simulator == "microsoft":
        verify = ssl.create_default_context(cafile=running.find(r"CA certificate: (\S+)"))
    origin = control[: -len("/_sim/")]

    with httpx.Client(verify=verify, timeout=10) as client:
        index = client.get(control)
        assert index.status_code == 200
        listed = index.json()["calls"]
        assert listed == route_table(simulator)

        # Every documented example, in the documented order, on this port.
        for doc in documented(simulator):
            method, url, _, _ = curl_request(doc.curl)
            body = _fill(simulator, client, control, doc)
            url = origin + url[len(DEFAULT_ORIGIN[simulator]) :]
            answer = client.request(method, url, content=body)
            allowed = {200}
            if doc.path in ("/_sim/answer-caller", "/_sim/clock/advance"):
                # Not a click-to-dial call / the command runs on the real clock.
                allowed = {409}
            assert answer.status_code in allowed, (doc, answer.status_code, answer.text)
            json.loads(answer.text)

    assert running.stop(signal.SIGINT) == 0
    assert not [line for line in running.lines if "Traceback" in line]


def _signed(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers as docs/webhook.md describes them, signed with ``secret``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-Presence-Sync-Delivery": "d-1",
        "X-Presence-Sync-Timestamp": str(timestamp),
        "X-Presence-Sync-Signature": "sha256=" + mac.hexdigest(),
    }


def test_sim_webhook_checks_signatures_with_the_secret_it_prints() -> None:
    command = Command("webhook", "--port", "0")
    try:
        url = command.find(r"url=(\S+)")
        secret = command.find(r"secret=(\S+)")
        command.find(rf"^(    url: {re.escape(url)})$")  # the block to paste
        command.find(rf"^(    secret: {re.escape(secret)})$")
        document = {
            "version": 1,
            "person": {"email": "anna@example.com", "name": "Anna Schmidt", "extension": "100"},
            "status": {"availability": "Busy", "activity": "InACall", "text": "On a call"},
        }
        body = json.dumps(document).encode()
        now = int(time.time())
        genuine = httpx.post(url, content=body, headers=_signed(secret, body, now))
        assert genuine.status_code == 200
        command.find(
            r"(Anna Schmidt · Busy/InACall \"On a call\" · signature valid · answered 200)"
        )

        forged = httpx.post(url, content=body, headers=_signed("not-the-secret", body, now))
        assert forged.status_code == 401
        command.find(r"(Anna Schmidt · .* · signature invalid · answered 401)")

        control = command.find(r"control=(\S+)")
        seen = httpx.get(control + "deliveries").json()
        assert [(d["signature"], d["answered"]) for d in seen] == [("valid", 200), ("invalid", 401)]
        assert command.stop(signal.SIGINT) == 0
    finally:
        command.close()


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_the_examples_use_each_command_s_default_port(simulator: str) -> None:
    args = build_parser().parse_args(["sim", simulator])
    assert DEFAULT_ORIGIN[simulator].endswith(f":{args.port}")
    assert f"`presence-sync sim {simulator} --port {args.port}" in DOCS.read_text()


WORLD = """\
- {extension: "100", name: Anna Schmidt, email: anna@example.com}
- {extension: "101", name: Ben Müller, email: ben@example.com, phone: "+49 (0)89 45300-101"}
- {extension: "102", name: Reception, email: desk@example.com, phone: "+49 30 1"}
"""


def test_three_sims_started_by_hand_share_one_world(tmp_path: Path) -> None:
    world = tmp_path / "world.yaml"
    world.write_text(WORLD)
    nfon = Command("nfon", "--port", "0", "--world", str(world))
    graph = Command("microsoft", "--port", "0", "--tls-dir", str(tmp_path), "--world", str(world))
    slack = Command("slack", "--port", "0", "--world", str(world))
    try:
        base_url = nfon.find(r"NFON simulator: base_url=(\S+)")
        slack_url = slack.find(r"base_url=(\S+)")
        admin = slack.find(r"admin token \([^)]*\): (\S+)")
        graph.find(r"(refresh: 1h)")  # the whole block is printed
        start = next(i for i, line in enumerate(graph.lines) if line == "microsoft:")
        block = "\n".join(graph.lines[start:]) + "\n"
        config = tmp_path / "config.yaml"
        config.write_text(
            f"nfon:\n  base_url: {base_url}\n  customer: K1234\n"
            "  username: api-user\n  password: api-secret\n"
            f"slack:\n  base_url: {slack_url}\n  token: {admin}\n"
            + block
            + "targets:\n  teams_presence: {}\n  slack_status: {}\n"
            f"state:\n  path: {tmp_path / 'state.db'}\n"
        )
        check = subprocess.run(
            [sys.executable, "-m", "presence_sync", "check", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        for command in (nfon, graph, slack):
            command.close()
    out = check.stdout
    assert check.returncode == 0, out + check.stderr
    assert "2 people: 2 resolved, 0 with problems" in out
    assert "group: businessPhones +49 89 45300 100" in out
    assert "desk@example.com (+49 30 1)" in out  # on no extension: listed, no error
    assert "extensions without a member: 102" in out

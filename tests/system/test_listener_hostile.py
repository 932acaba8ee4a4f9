"""The daemon's listener against hostile clients, on the real ``presence-sync
run`` process over real sockets (issue 16, points 1-3 and 7):

- DNS rebinding: a request whose ``Host`` does not name the listener gets
  421 on every route, GETs included, also in a real Chromium;
- idle connections: sockets that never finish a request, more of them than
  the process has file descriptors, neither starve the daemon nor flood its
  log, and each is closed with a JSON answer;
- bodies: bounded (413), deeply nested JSON is a 400, every failure of the
  listener is JSON, and the listener's own log lines are the daemon's;
- every answer carries ``nosniff`` and ``no-store``.

docs/security.md cites these tests for the listener's claims.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Daemon, Hook, write_config
from polling import eventually

from presence_sync.api.http import BODY_TIMEOUT
from presence_sync.api.listener import HEAD_TIMEOUT
from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

BEN = "ben@example.com"
EVIL = "rebind.evil.test"


def start(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    http: str = '  listen: "127.0.0.1:0"\n',
) -> Daemon:
    config = write_config(tmp_path / "config.yaml", nfon, hook, http=http, log_format="json")
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    return daemon


def port_of(daemon: Daemon) -> int:
    return int(daemon.url().rsplit(":", 1)[1])


def get(daemon: Daemon, path: str, host: str | None = None) -> httpx.Response:
    headers = {} if host is None else {"Host": host}
    return httpx.get(daemon.url() + path, headers=headers, timeout=5)


def paused(daemon: Daemon, who: str) -> Any:
    response = get(daemon, f"/api/people/{who}")
    assert response.status_code == 200, response.text
    return response.json()["paused"]


def json_error(response: httpx.Response, status: int) -> str:
    """The ``error`` text of a JSON error answer with ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    return message


def assert_no_cache_no_sniff(headers: httpx.Headers | dict[str, str]) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


# --- raw HTTP, for what httpx will not send ------------------------------------------------


def connect(daemon: Daemon) -> socket.socket:
    host, port = daemon.url().removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything ``sock`` receives until the daemon closes it."""
    sock.settimeout(timeout)
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    head = raw.partition(b"\r\n\r\n")[0]
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def parse(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-case names) and JSON body of one raw answer."""
    status, headers = parse_head(raw)
    assert headers["content-type"] == "application/json", raw
    body = raw.partition(b"\r\n\r\n")[2]
    return status, headers, json.loads(body[: int(headers["content-length"])])


def exchange(
    daemon: Daemon, request: bytes, timeout: float = 10.0
) -> tuple[int, dict[str, str], Any]:
    sock = connect(daemon)
    sock.sendall(request)
    return parse(read_all(sock, timeout))


# --- 1. DNS rebinding ----------------------------------------------------------------------


def test_the_rebinding_request_of_the_issue_is_refused_and_pauses_nobody(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    port = port_of(daemon)
    evil = f"{EVIL}:{port}"

    # curl -X POST -H 'Host: rebind.evil.test:PORT' -H 'Origin: http://rebind.evil.test:PORT'
    #      -H 'Content-Type: text/plain' -d '{"for":"366d"}' http://127.0.0.1:PORT/api/people/ben/pause
    response = httpx.post(
        f"{daemon.url()}/api/people/{BEN}/pause",
        headers={"Host": evil, "Origin": f"http://{evil}", "Content-Type": "text/plain"},
        content='{"for":"366d"}',
        timeout=5,
    )

    assert "http.allowed_hosts" in json_error(response, 421)
    assert paused(daemon, BEN) is None
    # Reading is refused as well: the rebound page would read every person.
    for path in ("/", "/api/status", f"/api/people/{BEN}", "/healthz", "/readyz", "/metrics", "/x"):
        refused = get(daemon, path, host=evil)
        json_error(refused, 421)
        assert "example.com" not in refused.text
        assert_no_cache_no_sniff(refused.headers)
    # Eight refusals, one log line (a flood of them costs one a minute).
    assert len(daemon.records(event="http_host_refused")) == 1
    assert daemon.records(event="http_host_refused")[0]["host"] == evil


def test_the_listener_answers_to_its_own_names_only(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    port = port_of(daemon)

    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost.:{port}", f"[::1]:{port}"):
        assert get(daemon, "/api/status", host=host).status_code == 200, host
    for host in (
        "localhost",  # port 80
        f"localhost:{port + 1}",
        f"127.0.0.2:{port}",
        f"presence.example.com:{port}",
        f"localhost.{EVIL}:{port}",
        "",
        "a b",
    ):
        json_error(get(daemon, "/api/status", host=host), 421)


def test_public_url_and_allowed_hosts_name_the_listener_too(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    http = (
        '  listen: "127.0.0.1:0"\n'
        "  public_url: https://presence.example.com/status\n"
        '  allowed_hosts: [presence.internal, "status.example.org:8080"]\n'
    )
    daemon = start(tmp_path, nfon, hook, daemons, http=http)

    for host in ("presence.example.com", "presence.internal:1234", "status.example.org:8080"):
        assert get(daemon, "/healthz", host=host).status_code == 200, host
    json_error(get(daemon, "/healthz", host="status.example.org:9090"), 421)
    # Behind the proxy a change from its own page passes the Origin check too.
    response = httpx.post(
        f"{daemon.url()}/api/people/{BEN}/pause",
        headers={"Host": "presence.example.com", "Origin": "https://presence.example.com"},
        json={"for": "1h"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    assert paused(daemon, BEN) is not None


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: install Debian's chromium package (.ci/run does)")
    with sync_api.sync_playwright() as playwright:
        # The attacker's name resolves to 127.0.0.1, as after DNS rebinding.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", f"--host-resolver-rules=MAP {EVIL} 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            browser.close()


def test_a_page_rebound_to_the_listener_reads_nothing_in_chromium(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon], chromium: Any
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    port = port_of(daemon)
    page = chromium.new_page()

    # Its own name, resolving to us: the browser sees one site.
    response = page.goto(f"http://{EVIL}:{port}/")
    assert response.status == 421
    read = page.evaluate(
        """async () => {
            const r = await fetch("/api/status");
            return [r.status, await r.text()];
        }"""
    )
    assert read[0] == 421
    assert "example.com" not in read[1]
    posted = page.evaluate(
        f"""async () => (await fetch("/api/people/{BEN}/pause", {{
            method: "POST", headers: {{"Content-Type": "text/plain"}}, body: '{{"for": "366d"}}'
        }})).status"""
    )
    assert posted == 421
    assert paused(daemon, BEN) is None
    # The listener's own address still works in the same browser.
    assert page.goto(f"{daemon.url()}/").status == 200


# --- 2. idle connections -------------------------------------------------------------------


class LimitedDaemon(Daemon):
    """The daemon started with ``RLIMIT_NOFILE`` at ``nofile`` (``ulimit -n``),
    its output collected as ``harness.Daemon`` does."""

    def __init__(self, config: Path, nofile: int) -> None:
        def lower() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presence_sync", "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lower,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle_sockets(daemon: Daemon, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (those the kernel does
    not take while the daemon's queue is full are left out)."""
    host, port = daemon.url().removeprefix("http://").rsplit(":", 1)
    opened = []
    for _ in range(count):
        try:
            opened.append(socket.create_connection((host, int(port)), timeout=1))
        except OSError:
            continue
    return opened


def call_reaches_the_webhook(nfon: SimHandle, hook: Hook) -> None:
    """NFON stream → engine → state database → webhook still work."""
    before = len(hook.for_person(BEN))
    call = nfon.sim.call("101")
    hook.wait_status(BEN, "InACall", after=before)
    nfon.sim.hangup(call)
    hook.wait_status(BEN, None, after=before + 1)


def test_more_idle_connections_than_file_descriptors_leave_the_daemon_working(
    tmp_path: Path, nfon: SimHandle, hook: Hook
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook, log_format="json")
    daemon = LimitedDaemon(config, nofile=128)
    try:
        daemon.wait_ready()
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+128\s+128", limits), limits
        baseline = open_files(daemon.proc.pid)

        idle = idle_sockets(daemon, 200)

        assert len(idle) > 128
        # The listener keeps a bounded number open (16 of 128 files), so
        # nothing else runs out; a request still gets through meanwhile.
        assert get(daemon, "/healthz").status_code == 200
        assert open_files(daemon.proc.pid) <= baseline + 16 + 1
        # A request whose body never comes, among them.
        slow = connect(daemon)
        host = daemon.url().removeprefix("http://")
        slow.sendall(
            f"POST /api/resync HTTP/1.1\r\nHost: {host}\r\nContent-Length: 50\r\n\r\n{{".encode()
        )
        assert daemon.wait_ready()["components"]["nfon_stream"]["ok"] is True
        call_reaches_the_webhook(nfon, hook)
        # Every idle one is closed with a JSON answer: the oldest to make
        # room (503), the rest once their time for a request head is up (408).
        answers = {parse(read_all(s, HEAD_TIMEOUT + 10))[0] for s in idle}
        assert answers == {503, 408}
        status, _, body = parse(read_all(slow, BODY_TIMEOUT + 10))
        assert status == 408
        assert "did not arrive" in body["error"]
        # Logged once (then at most once a minute), not per connection.
        assert len(daemon.records(event="http_connections_full")) == 1
        assert get(daemon, "/healthz").status_code == 200
        assert "Traceback" not in daemon.output()
    finally:
        daemon.kill()


def test_running_out_of_file_descriptors_is_logged_once_and_the_daemon_recovers(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    pid = daemon.proc.pid
    # Lowered under the running daemon, below what its connection limit
    # allows: accept() itself fails (EMFILE), as with a too tight ulimit.
    limit = open_files(pid) + 12
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))

    idle = idle_sockets(daemon, 100)
    failed = daemon.wait_record(event="http_accept_failed")

    assert "Too many open files" in failed["msg"]
    # The daemon closes the ones it took after their time for a request head:
    # meanwhile asyncio retried accept() every second, thousands of tries.
    first = read_all(idle[0], HEAD_TIMEOUT + 10)
    assert parse(first)[0] == 408
    assert len(daemon.records(event="http_accept_failed")) == 1
    assert len(daemon.lines) < 100
    for sock in idle:
        sock.close()
    eventually(lambda: get(daemon, "/healthz").status_code == 200, "/healthz", 30)
    call_reaches_the_webhook(nfon, hook)
    assert daemon.proc.poll() is None


# --- 3. bodies and errors ------------------------------------------------------------------


def test_request_bodies_are_bounded(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    host = daemon.url().removeprefix("http://")
    head = f"POST /api/people/{BEN}/pause HTTP/1.1\r\nHost: {host}\r\n"

    # 400 MB announced: refused at once, not read.
    status, headers, body = exchange(daemon, (head + "Content-Length: 400000000\r\n\r\n{").encode())
    assert status == 413
    assert "4096 bytes" in body["error"]
    assert headers["connection"] == "close"
    # No length given (chunked): refused once it passes the limit.
    chunk = b"400\r\n" + b"a" * 1024 + b"\r\n"
    status, _, _ = exchange(
        daemon, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunk * 5
    )
    assert status == 413
    assert paused(daemon, BEN) is None
    # Within the limit a pause still works.
    url = f"{daemon.url()}/api/people/{BEN}/pause"
    assert httpx.post(url, json={"for": "1h"}, timeout=5).status_code == 200


def test_deeply_nested_json_is_a_400_in_json_not_a_traceback(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    nested = '{"for": ' + "[" * 1500 + "]" * 1500 + "}"
    assert len(nested) < 4096

    response = httpx.post(f"{daemon.url()}/api/people/{BEN}/pause", content=nested, timeout=5)

    assert "nested too deeply" in json_error(response, 400)
    assert paused(daemon, BEN) is None
    assert "RecursionError" not in daemon.output()
    assert "Traceback" not in daemon.output()


def test_every_failure_of_the_listener_is_json_and_its_log_lines_are_the_daemons(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    host = daemon.url().removeprefix("http://")

    json_error(get(daemon, "/no/such/page"), 404)
    json_error(get(daemon, "/api/resync"), 405)
    for _ in range(20):
        status, headers, body = exchange(daemon, b"GARBAGE \x01\r\n\r\n")
        assert status == 400
        assert "invalid HTTP request" in body["error"]
        assert_no_cache_no_sniff(headers)
    # A head still not ended after 16 KiB (uvicorn would buffer it all).
    endless = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Big: {'a' * 20000}"
    status, _, _ = exchange(daemon, endless.encode())
    assert status == 400

    # uvicorn's warning, in the daemon's JSON log format, once for 21 requests.
    warned = daemon.records(logger="uvicorn.error")
    assert len(warned) == 1
    assert warned[0]["level"] == "warning"
    assert [line for line in daemon.lines if not line.startswith("{")] == []


# --- 7. headers ----------------------------------------------------------------------------


def test_probes_metrics_and_the_api_are_never_cached_nor_sniffed(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)

    for path in ("/healthz", "/readyz", "/metrics", "/", "/api/status", f"/api/people/{BEN}"):
        response = get(daemon, path)
        assert response.status_code == 200, path
        assert_no_cache_no_sniff(response.headers)
    assert_no_cache_no_sniff(get(daemon, "/nope").headers)
    host = daemon.url().removeprefix("http://")
    status, headers, _ = exchange(
        daemon,
        f"POST /api/resync HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5000\r\n\r\n".encode(),
    )
    assert status == 413
    assert_no_cache_no_sniff(headers)

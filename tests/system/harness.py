"""System-test harness: a webhook receiver view, the configuration writer, and the
real ``presence-sync`` process with its output collected."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from polling import eventually

from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.serve import Running
from presence_sync.sim.slack import Status
from presence_sync.sim.slack_serve import SlackHandle
from presence_sync.sim.webhook import Delivery, WebhookReceiver

T = TypeVar("T")

PEOPLE = [
    ("100", "Anna Schmidt", "anna@example.com"),
    ("101", "Ben Müller", "ben@example.com"),
    ("102", "Clara Weber", "clara@example.com"),
]
HOOK_SECRET = "system-test-secret"


def user_id(slack: SlackHandle, name: str) -> str:
    """The simulated Slack member called ``name``."""
    return next(p.id for p in slack.sim.people() if p.name == name)


def shows(slack: SlackHandle, uid: str, text: str) -> Callable[[], Status | None]:
    """A check for ``eventually``: ``uid``'s Slack status once its text is ``text``."""

    def check() -> Status | None:
        status = slack.sim.status_of(uid)
        return status if status.text == text else None

    return check


class Hook:
    """The webhook receiver, readable from the test thread."""

    def __init__(self, receiver: WebhookReceiver, running: Running) -> None:
        self.receiver = receiver
        self.running = running
        self.url = running.origin + "/hook"

    def deliveries(self) -> list[Delivery]:
        return list(self.receiver.deliveries)

    def for_person(self, email: str) -> list[dict[str, Any]]:
        return [
            d.body
            for d in self.deliveries()
            if d.accepted and isinstance(d.body, dict) and d.body["person"]["email"] == email
        ]

    def wait_status(self, email: str, activity: str | None, after: int = 0) -> dict[str, Any]:
        """The first document for ``email`` past the ``after``-th one whose
        status activity is ``activity`` (``None``: status null)."""

        def found() -> dict[str, Any] | None:
            for doc in self.for_person(email)[after:]:
                status = doc["status"]
                if (status is None and activity is None) or (
                    status is not None and status.get("activity") == activity
                ):
                    return doc
            return None

        return eventually(found, f"webhook {email} → {activity}")


def write_config(
    path: Path,
    nfon: SimHandle,
    hook: Hook,
    *,
    resync: str = "1h",
    directory: str = "1h",
    rules: str = "",
    extra: str = "",
    targets: str = "",
    nfon_extra: str = "",
    log_level: str = "info",
    log_format: str = "text",
    people: Sequence[tuple[str, str | None, str]] = PEOPLE,
    http: str = '  listen: "127.0.0.1:0"\n',
    state: str | None = None,
) -> Path:
    """A configuration for the simulator and the webhook receiver. ``targets``
    adds lines under ``targets:``, ``nfon_extra`` under ``nfon:``, ``http``
    replaces the lines under ``http:``, ``extra`` goes at the top level.
    ``people`` are (extension, name, email); a name None is left to NFON.
    ``state`` replaces the lines under ``state:`` (default: a SQLite file
    beside the configuration).
    With ``log_format="json"`` the daemon's log lines can be read as records
    (``Daemon.records``)."""
    listed = "".join(
        f'  - extension: "{ext}"\n    email: {email}\n'
        + ("" if name is None else f"    name: {name}\n")
        for ext, name, email in people
    )
    path.write_text(
        f"""nfon:
  base_url: {nfon.base_url}
  customer: K1234
  username: api-user
  password: api-secret
{nfon_extra}people:
{listed}targets:
  webhook:
    url: {hook.url}
    secret: {HOOK_SECRET}
{targets}resync:
  interval: {resync}
  directory_interval: {directory}
state:
{state or f"  path: {path.parent / 'state.db'}{chr(10)}"}http:
{http}logging:
  level: {log_level}
  format: {log_format}
{rules}{extra}"""
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``presence-sync ARGS`` run to its end, as an admin runs it (one-shot commands)."""
    return subprocess.run(
        [sys.executable, "-m", "presence_sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Daemon:
    """A ``presence-sync`` process with its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presence_sync", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        with self._lock:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def wait_line(self, pattern: str, timeout: float = 15.0, nth: int = 1) -> str:
        def found() -> str | None:
            with self._lock:
                hits = [line for line in self.lines if re.search(pattern, line)]
            if self.proc.poll() is not None and len(hits) < nth:
                pytest.fail(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            return hits[nth - 1] if len(hits) >= nth else None

        return eventually(found, f"output /{pattern}/", timeout)

    def records(self, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log records (``logging.format: json``) whose fields
        include ``fields``: tests match what a line says by its fields, not
        by its wording."""
        found = []
        with self._lock:
            lines = list(self.lines)
        for line in lines:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if all(record.get(k) == v for k, v in fields.items()):
                found.append(record)
        return found

    def wait_record(self, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """The first JSON log record with ``fields``, waiting for it."""

        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None and not self.records(**fields):
                pytest.fail(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            hits = self.records(**fields)
            return hits[0] if hits else None

        return eventually(found, f"log record {fields}", timeout)

    def url(self) -> str:
        """The daemon's HTTP listener (``http.listen`` on port 0: read from its log)."""
        line = self.wait_line(r"listening for /healthz")
        # The text log says address=HOST:PORT, the JSON log "address": "HOST:PORT".
        match = re.search(r'address=(\S+)|"address": "([^"]+)"', line)
        assert match, line
        return f"http://{match.group(1) or match.group(2)}"

    def readyz(self) -> httpx.Response:
        return httpx.get(self.url() + "/readyz", timeout=5)

    def wait_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Until ``/readyz`` answers 200 (the daemon works now); its body."""

        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            response = self.readyz()
            return response.json() if response.status_code == 200 else None

        return eventually(ready, "/readyz 200", timeout)

    def wait_not_ready(self, timeout: float = 15.0) -> dict[str, Any]:
        """Until ``/readyz`` answers 503; its body."""

        def degraded() -> dict[str, Any] | None:
            response = self.readyz()
            return response.json() if response.status_code == 503 else None

        return eventually(degraded, "/readyz 503", timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon did not exit within {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


PLUGIN = '''
"""Third-party targets that misbehave, as a package outside presence-sync would ship them."""
import logging
from typing import ClassVar

from presence_sync.model import Applied
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions


class Options(TargetOptions):
    pass


class Sticky:
    """Works, but cannot be closed."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="sticky", description="fails to close", fields=frozenset({"text"}), remote_state=False
    )
    Options: ClassVar[type[TargetOptions]] = Options

    def __init__(self, name: str, options: Options, env: TargetEnv) -> None:
        self.name = name
        self.env = env

    async def apply(self, change: Change) -> Applied:
        return Applied(status=change.desired, at=self.env.clock.now())

    async def aclose(self) -> None:
        raise OSError("the pager socket is stuck")


class Broken(Sticky):
    """Cannot even be built."""

    async def aclose(self) -> None:
        pass

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="broken", description="raises when built", fields=frozenset({"text"})
    )

    def __init__(self, name: str, options: Options, env: TargetEnv) -> None:
        raise RuntimeError("no pager service configured on this host")


class Stalled(Broken):
    """Declares a rate the engine cannot honour."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="stalled", description="rate 0", fields=frozenset({"text"}), rate=0
    )

    def __init__(self, name: str, options: Options, env: TargetEnv) -> None:
        Sticky.__init__(self, name, options, env)

    async def aclose(self) -> None:
        logging.getLogger("acme_misfits").warning("stalled target %s closed", self.name)
'''


def install_plugin(site: Path) -> Path:
    """Install the ``acme_misfits`` package with its entry points into
    ``site``, the way pip would; put ``site`` on the daemon's ``PYTHONPATH``."""
    (site / "acme_misfits").mkdir(parents=True)
    (site / "acme_misfits" / "__init__.py").write_text(PLUGIN)
    dist = site / "acme_misfits-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-misfits\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[presence_sync.targets]\n"
        "sticky = acme_misfits:Sticky\n"
        "broken = acme_misfits:Broken\n"
        "stalled = acme_misfits:Stalled\n"
    )
    return site


class Notifications:
    """A systemd notify socket: what the daemon told the service manager."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def _drain(self) -> None:
        while True:
            try:
                self.received.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return

    def mark(self) -> int:
        """How many datagrams arrived so far (for ``wait(after=...)``)."""
        self._drain()
        return len(self.received)

    def wait(self, pattern: str, timeout: float = 15.0, after: int = 0) -> str:
        """The first datagram past the ``after``-th one matching ``pattern``
        (one ``KEY=VALUE`` per line, ``^``/``$`` match at each line)."""

        def found() -> str | None:
            self._drain()
            hits = (d for d in self.received[after:] if re.search(pattern, d, re.MULTILINE))
            return next(hits, None)

        return eventually(found, f"notify /{pattern}/", timeout)

    def close(self) -> None:
        self.sock.close()

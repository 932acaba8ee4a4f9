"""System-test harness: a webhook receiver view, the configuration writer, and the
real ``presence-sync`` process with its output collected."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar

import pytest
from polling import eventually

from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.serve import Running
from presence_sync.sim.webhook import Delivery, WebhookReceiver

T = TypeVar("T")

PEOPLE = [
    ("100", "Anna Schmidt", "anna@example.com"),
    ("101", "Ben Müller", "ben@example.com"),
    ("102", "Clara Weber", "clara@example.com"),
]
HOOK_SECRET = "system-test-secret"


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
) -> Path:
    people = "".join(
        f'  - extension: "{ext}"\n    email: {email}\n    name: {name}\n'
        for ext, name, email in PEOPLE
    )
    path.write_text(
        f"""nfon:
  base_url: {nfon.base_url}
  customer: K1234
  username: api-user
  password: api-secret
people:
{people}targets:
  webhook:
    url: {hook.url}
    secret: {HOOK_SECRET}
resync:
  interval: {resync}
  directory_interval: {directory}
state:
  path: {path.parent / "state.db"}
http:
  listen: "127.0.0.1:0"
logging:
  level: info
  format: text
{rules}{extra}"""
    )
    return path


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

    def wait_ready(self) -> None:
        """Until the daemon has the first full state from NFON."""
        self.wait_line(r"full state from NFON")

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

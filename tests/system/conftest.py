"""System-test fixtures: the NFON simulator and a webhook receiver on loopback,
and a factory for real ``presence-sync`` processes (killed after the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import HOOK_SECRET, PEOPLE, Daemon, Hook, Notifications

from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon
from presence_sync.sim.serve import serve_in_thread
from presence_sync.sim.webhook import WebhookReceiver


@pytest.fixture
def nfon() -> Iterator[SimHandle]:
    sim = NfonSim(extensions=[(ext, name) for ext, name, _ in PEOPLE], keepalive=5.0)
    with serve_nfon(sim) as handle:
        yield handle


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = WebhookReceiver(secret=HOOK_SECRET)
    with serve_in_thread(receiver.app) as running:
        yield Hook(receiver, running)


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(*args, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notifications]:
    """A systemd notify socket; pass ``notify.path`` as ``NOTIFY_SOCKET``."""
    notifications = Notifications(tmp_path / "notify.sock")
    yield notifications
    notifications.close()

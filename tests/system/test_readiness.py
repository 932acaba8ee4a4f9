"""``/readyz`` and systemd's ``STATUS=`` say whether the daemon works *now*:
an NFON outage makes it not ready within the grace, and it is ready again by
itself when NFON is back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Daemon, Hook, Notifications, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

GRACE = "2"  # seconds the state stream may be down (the daemon's default: 30)
FOREVER = 1_000_000
RETRIES = 10  # reconnects to wait for during the outage: seconds of it, several checks


def reconnects(nfon: SimHandle) -> int:
    """Attempts to open the states stream so far (refused during the outage)."""
    return nfon.sim.stats.requests_by_path.get("GET /extensions/phone/states", 0)


def test_an_nfon_outage_makes_the_daemon_not_ready_until_nfon_is_back(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    notify: Notifications,
) -> None:
    config = write_config(
        tmp_path / "config.yaml", nfon, hook, nfon_extra="  reconnect_max_delay: 1s\n"
    )
    daemon = daemons(
        "run",
        "-c",
        str(config),
        env={"PRESENCE_SYNC_STREAM_GRACE": GRACE, "NOTIFY_SOCKET": notify.path},
    )
    body = daemon.wait_ready()
    assert body["components"]["nfon_stream"]["ok"] is True
    notify.wait(r"^STATUS=Ready: following NFON$")

    # NFON goes down: logins fail, tokens expire, streams are dropped and refused.
    nfon.sim.fail_next("/login", 500, count=FOREVER)
    nfon.sim.fail_next("/extensions", 503, count=FOREVER)
    nfon.sim.expire_tokens(refresh=True)
    nfon.sim.drop_streams()
    body = daemon.wait_not_ready(timeout=30)
    stream = body["components"]["nfon_stream"]
    assert stream["ok"] is False
    assert stream["reason"].startswith("NFON stream down since")
    assert body["status"].startswith("Degraded: NFON stream down since")
    notify.wait(r"STATUS=Degraded: NFON stream down since")
    # Logged once, however long the outage lasts (stdout may trail the notify
    # socket): counted after the daemon has tried and failed several more times.
    daemon.wait_line(r"not ready")
    tried = reconnects(nfon)
    eventually(
        lambda: reconnects(nfon) >= tried + RETRIES,
        f"{RETRIES} more reconnects while NFON is down",
        within=60,
    )
    daemon.readyz()  # and asked again meanwhile
    assert daemon.wait_not_ready()["components"]["nfon_stream"]["ok"] is False
    assert daemon.count(r"not ready") == 1

    mark = notify.mark()
    nfon.sim.clear_failures()
    body = daemon.wait_ready(timeout=30)
    assert all(component["ok"] for component in body["components"].values())
    notify.wait(r"^STATUS=Ready: following NFON$", after=mark)
    daemon.wait_line(r"ready again")
    assert daemon.count(r"ready again") == 1
    assert daemon.proc.poll() is None

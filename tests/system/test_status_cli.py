"""``presence-sync status`` and ``presence-sync resync`` as an admin runs
them: against the running daemon (found from the configuration's
``http.listen``), and ``status`` with the daemon down (the stored view)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from harness import Daemon, Hook, cli, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"
CALLER = "4930123456"
TIME = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d[+-]\d\d:\d\d"
"""The one way every time is shown (issue 16 point 15), the readiness reasons' way."""


def one_time_format(text: str) -> list[str]:
    """Every time of day in ``text``, each checked to be shown as ``TIME``."""
    times = re.findall(
        r"(?:\d{4}-\d\d-\d\d[ T])?\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?(?: [+-]\d\d:\d\d)?", text
    )
    for found in times:
        assert re.fullmatch(TIME, found), f"{found!r} is not shown as {TIME}"
    return times


def stored(directory: Path) -> dict[str, bytes]:
    """The state database and its write-ahead log, byte for byte (the shared
    memory index beside them is SQLite's scratch space, written by readers)."""
    return {
        p.name: p.read_bytes() for p in directory.glob("state.db*") if not p.name.endswith("-shm")
    }


def running(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> tuple[Daemon, Path]:
    """A daemon on a fixed free port, so the configuration names its address."""
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    port = daemon.url().rsplit(":", 1)[1]
    # The same file, naming the port the daemon got, is what the commands read.
    text = config.read_text().replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"')
    config.write_text(text)
    return daemon, config


def test_status_shows_everyone_and_one_person_from_the_running_daemon(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon, config = running(tmp_path, nfon, hook, daemons)
    call = nfon.sim.call("100", party=CALLER)
    hook.wait_status(ANNA, "InACall")
    eventually(
        lambda: httpx.get(daemon.url() + f"/api/people/{ANNA}").json()["targets"]["webhook"][
            "applied"
        ],
        "the API to show Anna's call",
    )

    shown = cli("status", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"presence-sync at {daemon.url()}: Ready: following NFON" in out
    assert "NFON login: accepted" in out
    # A target named after its kind is not named twice.
    assert "Target webhook: running; 0 queued" in out
    # The stream's first full state is a full resync.
    assert re.search(r"Last full resync: " + TIME + "\n", out), out
    assert re.search(r"NFON stream: connected since " + TIME + "\n", out), out
    assert len(one_time_format(out)) >= 5, out
    anna = next(line for line in out.splitlines() if ANNA in line)
    assert re.search(
        r"Anna Schmidt\s+anna@example\.com\s+100\s+in-use\s+available\s+inbound\s+webhook"
        + r"\s+in sync since "
        + TIME
        + r"\s+Busy/InACall",
        anna,
    ), anna
    ben = next(line for line in out.splitlines() if "ben@example.com" in line)
    # In sync with nothing of ours: since the full state found Ben so.
    assert re.search(
        r"idle\s+available\s+-\s+webhook\s+in sync since " + TIME + r"\s+\(their own\)", ben
    ), ben
    assert "3 people." in out
    assert CALLER not in out

    one = cli("status", "-c", str(config), "100")
    assert one.returncode == 0, one.stderr
    assert "Anna Schmidt <anna@example.com>, extension 100" in one.stdout
    assert "Line: in-use, presence available, inbound call" in one.stdout
    assert re.search(r"webhook: in sync since .*\n    wants: Busy/InACall", one.stdout), one.stdout
    one_time_format(one.stdout)
    assert "ben@example.com" not in one.stdout

    nobody = cli("status", "-c", str(config), "nobody@example.com")
    assert nobody.returncode == 1
    assert "nobody with the key, e-mail or extension 'nobody@example.com'" in nobody.stderr

    unsynced = cli("status", "-c", str(config), "--not-in-sync")
    assert unsynced.returncode == 0
    assert "Nobody is out of sync." in unsynced.stdout
    nfon.sim.hangup(call)


def test_resync_asks_the_running_daemon(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon, config = running(tmp_path, nfon, hook, daemons)
    done = cli("resync", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert "Full resync started" in done.stdout
    daemon.wait_line(r"full resync asked for through the API")
    daemon.wait_line(r"resync.*extensions=3")
    last = eventually(
        lambda: httpx.get(daemon.url() + "/api/status").json()["daemon"]["last_resync"],
        "last_resync",
    )
    assert last


def test_status_reads_the_stored_view_when_the_daemon_is_down(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon, config = running(tmp_path, nfon, hook, daemons)
    nfon.sim.call("100", party=CALLER)
    hook.wait_status(ANNA, "InACall")
    eventually(
        lambda: httpx.get(daemon.url() + f"/api/people/{ANNA}").json()["targets"]["webhook"][
            "applied"
        ],
        "the API to show Anna's call",
    )
    daemon.kill()
    state = tmp_path / "state.db"
    before = stored(tmp_path)

    shown = cli("status", "-c", str(config))
    assert shown.returncode == 1
    url = daemon.url()
    assert (
        f"the daemon is not running or not reachable: nothing answers at {url} "
        f"(http.listen in {config})" in shown.stderr
    )
    assert f"Stored view (the daemon is down), read from {state}" in shown.stdout
    anna = next(line for line in shown.stdout.splitlines() if ANNA in line)
    assert re.search(
        r"Anna Schmidt\s+anna@example\.com\s+100\s+webhook\s+Busy/InACall .*" + TIME + "$",
        anna,
    ), anna
    assert CALLER not in shown.stdout
    one_time_format(shown.stdout)

    one = cli("status", "-c", str(config), "ANNA@example.com")
    assert one.returncode == 1
    assert "Busy/InACall" in one.stdout
    assert "ben@example.com" not in one.stdout
    # Read only: the database and its log hold what the daemon left there.
    assert stored(tmp_path) == before

    refused = cli("resync", "-c", str(config))
    assert refused.returncode == 1
    assert f"nothing answers at {url} (http.listen in {config})" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_status_without_the_daemon_or_the_store_says_so(
    tmp_path: Path, nfon: SimHandle, hook: Hook
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook).read_text()
    path = tmp_path / "config.yaml"
    path.write_text(config.replace('listen: "127.0.0.1:0"', 'listen: "127.0.0.1:1"'))
    shown = cli("status", "-c", str(path))
    assert shown.returncode == 1
    assert "nothing answers at http://127.0.0.1:1" in shown.stderr
    assert f"no state database at {tmp_path / 'state.db'}" in shown.stderr
    assert not (tmp_path / "state.db").exists()
    assert "Traceback" not in shown.stderr

    port_zero = tmp_path / "zero.yaml"
    port_zero.write_text(config)
    picked = cli("resync", "-c", str(port_zero))
    assert picked.returncode == 1
    assert "lets the daemon pick a free port: give --url" in picked.stderr

"""A daemon whose ``http.listen`` another program holds: the real process,
started as systemd would. It must stop at once with exit 78 (which the unit
does not restart on), name the key and where it is in the file, and leave
nothing behind (no state database)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Daemon, Hook, write_config

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def test_taken_port_is_exit_78_naming_http_listen_before_the_store_exists(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon], taken: int
) -> None:
    config = write_config(
        tmp_path / "config.yaml", nfon, hook, http=f'  listen: "127.0.0.1:{taken}"\n'
    )
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "listen:" in text)

    daemon = daemons("run", "-c", str(config))

    assert daemon.wait_exit(30) == 78, daemon.output()
    out = daemon.output()
    assert f"{config}:{line}:" in out
    assert f"http.listen: 127.0.0.1:{taken} is in use by another program" in out
    assert "Traceback" not in out
    assert "Errno" not in out
    assert not (tmp_path / "state.db").exists()


def test_unit_does_not_restart_on_78() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "presence-sync.service"
    prevent = [
        line.split("=", 1)[1].split()
        for line in unit.read_text().splitlines()
        if line.startswith("RestartPreventExitStatus=")
    ]
    assert any("78" in codes for codes in prevent)

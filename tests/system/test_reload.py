"""SIGHUP with a configuration whose targets cannot run: the daemon refuses it
once, says why, keeps the running configuration and keeps syncing."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Daemon, Hook, Notifications, install_plugin, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"


def a_call_still_reaches_the_webhook(nfon: SimHandle, hook: Hook) -> None:
    seen = len(hook.for_person(ANNA))
    call = nfon.sim.call("100")
    hook.wait_status(ANNA, "InACall", after=seen)
    nfon.sim.hangup(call)
    hook.wait_status(ANNA, None, after=seen + 1)


def test_a_reload_with_targets_that_cannot_run_is_refused_and_syncing_goes_on(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    notify: Notifications,
) -> None:
    site = install_plugin(tmp_path / "site")
    config = tmp_path / "config.yaml"

    def configure(kind: str) -> None:
        write_config(config, nfon, hook, targets=f"  misfit:\n    kind: {kind}\n")

    configure("sticky")
    daemon = daemons(
        "run",
        "-c",
        str(config),
        env={"PYTHONPATH": str(site), "NOTIFY_SOCKET": notify.path},
    )
    daemon.wait_ready()
    a_call_still_reaches_the_webhook(nfon, hook)

    # A target whose constructor raises.
    configure("broken")
    daemon.signal(signal.SIGHUP)
    notify.wait(r"STATUS=Reload refused: target 'misfit' \(broken\) could not be built")
    # systemd may hear of it before the log line is read from the daemon's output.
    daemon.wait_line(r"reload refused")
    assert daemon.count(r"reload refused") == 1
    assert re.search(
        r"event=reload_refused reason=\"target 'misfit' \(broken\) "
        r"could not be built: RuntimeError: no pager service configured on this host\"",
        daemon.output(),
    )
    a_call_still_reaches_the_webhook(nfon, hook)

    # A target declaring limits the engine cannot honour.
    configure("stalled")
    daemon.signal(signal.SIGHUP)
    notify.wait(r"STATUS=Reload refused: target 'misfit' \(stalled\) declares rate 0")
    daemon.wait_line(r"reload refused", nth=2)
    assert daemon.count(r"reload refused") == 2
    # What was built for the refused reload is closed again.
    daemon.wait_line(r"stalled target misfit closed")
    assert daemon.count(r"stalled target misfit closed") == 1
    a_call_still_reaches_the_webhook(nfon, hook)

    # The running target was never replaced: retiring it now fails to close
    # it, which is logged and nothing more.
    write_config(config, nfon, hook)
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"configuration reloaded")
    assert daemon.count(r"closing a target failed.*the pager socket is stuck") == 1
    a_call_still_reaches_the_webhook(nfon, hook)

    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.output()


def test_a_reload_that_changes_the_nfon_settings_reconnects_and_syncing_goes_on(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    connects = nfon.sim.stats.stream_connects["states"]

    write_config(config, nfon, hook, nfon_extra="  request_timeout: 5s\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"configuration reloaded")
    assert daemon.count(r"NFON settings changed: reconnecting the streams") == 1
    eventually(lambda: nfon.sim.stats.stream_connects["states"] > connects, "a new stream")
    daemon.wait_ready()
    a_call_still_reaches_the_webhook(nfon, hook)

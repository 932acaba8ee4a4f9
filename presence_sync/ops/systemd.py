"""The systemd notify protocol (``Type=notify``, watchdog) without libsystemd.

sd_notify(3) documents the protocol as stable: one datagram of ``KEY=VALUE``
lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET``. Outside systemd every
call is a no-op, so the daemon runs the same from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "reloading", "watchdog_interval"]

log = logging.getLogger(__name__)
_warned = False


def notify(*assignments: str) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) to the service
    manager. Returns False when not running under systemd or when sending
    failed (logged once: a broken notify socket must not stop the daemon)."""
    global _warned
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    elif addr[0] != "/":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), addr)
    except OSError as exc:
        if not _warned:
            log.warning("cannot notify systemd: %s", exc)
            _warned = True
        return False
    return True


def reloading() -> bool:
    """Tell systemd a reload started; send ``READY=1`` when it is done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or
    ``None`` when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit():
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6

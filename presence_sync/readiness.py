"""Readiness: whether the daemon works *now*, part by part.

``/readyz`` answers it at each request and systemd's ``STATUS=`` line shows
it. It is observed, never remembered: each part is ready again by itself
when its cause ends.

- ``nfon_stream``: the NFON states stream delivered a full state and is
  connected, or was lost less than ``grace`` seconds ago (a reconnect is
  normal; a long gap means statuses go stale);
- ``nfon_login``: NFON accepts the API credentials (a refused login counts
  at once: waiting will not fix it);
- ``target:<name>``: the target is not paused because it rejected our
  credentials;
- ``store``: the last write to the state database was committed (a full
  disk or an I/O error makes every change wait: the engine keeps the
  records and retries, and the first commit that succeeds makes it ready).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from presence_sync.clock import Clock
from presence_sync.engine import Engine
from presence_sync.feed import Feed
from presence_sync.nfon import NfonClient
from presence_sync.store import Store

__all__ = ["STREAM_GRACE", "Readiness", "readiness"]

STREAM_GRACE = 30.0
"""Seconds the NFON states stream may be down before the daemon is not ready."""


@dataclass(frozen=True)
class Readiness:
    """``ok`` when every part works; ``components`` maps each part to
    ``{"ok": bool, "reason": str}``; ``status`` is the one line for systemd
    (``Ready: following NFON`` or ``Degraded: <each failing reason>``)."""

    ok: bool
    components: Mapping[str, Mapping[str, Any]]
    status: str


def readiness(
    nfon: NfonClient,
    feed: Feed,
    engine: Engine,
    *,
    clock: Clock,
    grace: float = STREAM_GRACE,
    store: Store | None = None,
) -> Readiness:
    """Readiness of the daemon following ``nfon`` through ``feed`` into
    ``engine`` (see the module docstring); times are local, with the zone offset."""
    mono, wall = clock.monotonic(), clock.now()

    def at(when: float) -> str:
        return _clock_time(wall - timedelta(seconds=mono - when))

    components: dict[str, dict[str, Any]] = {}
    health = nfon.states_health
    if health.up_since is not None and feed.bootstrapped:
        stream = {"ok": True, "reason": f"connected since {at(health.up_since)}"}
    elif health.up_since is not None or health.down_since is None:
        stream = {"ok": False, "reason": "waiting for the first full state from NFON"}
    elif not feed.bootstrapped:
        stream = {
            "ok": False,
            "reason": f"NFON stream not connected yet ({health.detail or health.reason}), "
            f"trying since {at(health.down_since)}",
        }
    else:
        stream = {
            "ok": mono - health.down_since <= grace,
            "reason": f"NFON stream down since {at(health.down_since)} "
            f"({health.detail or health.reason})",
        }
    components["nfon_stream"] = stream
    refused = nfon.login_refused_since
    components["nfon_login"] = (
        {"ok": True, "reason": "accepted"}
        if refused is None
        else {"ok": False, "reason": f"NFON login refused since {_clock_time(refused)}"}
    )
    for name, target in engine.target_states().items():
        if target.pause_reason == "auth":
            until = target.paused_until
            reason = f"{name} rejects our credentials"
            if until is not None:
                reason += f"; paused until {_clock_time(until)}"
            components[f"target:{name}"] = {"ok": False, "reason": reason}
        else:
            components[f"target:{name}"] = {"ok": True, "reason": "working"}
    if store is not None:
        failure = store.write_failure
        components["store"] = (
            {"ok": True, "reason": "writable"}
            if failure is None
            else {"ok": False, "reason": f"store: cannot commit: {failure}"}
        )
    failing = [c["reason"] for c in components.values() if not c["ok"]]
    status = "Degraded: " + "; ".join(failing) if failing else "Ready: following NFON"
    return Readiness(not failing, components, status)


def _clock_time(when: datetime) -> str:
    """Local clock time with the zone offset (``08:25:01+01:00``), as the log
    stamps it: a reason read beside a log line must not look an hour off."""
    return when.astimezone().isoformat(timespec="seconds")[11:]

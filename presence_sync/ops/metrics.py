"""Every Prometheus metric of presence-sync, in one place.

Names follow the Prometheus conventions: ``presence_sync_`` prefix, base units,
counters ending in ``_total``. Labels have small fixed value sets (stream,
target, result, reason, component); never a person, e-mail, extension or
number. ``docs/metrics.md`` lists every one, and a test holds the two together.

The ``_created`` series prometheus_client adds beside every counter and
histogram are switched off: they double the output and no alert uses them.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from presence_sync import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "BUILD_INFO",
    "CALLS",
    "CALL_DIRECTIONS",
    "CALL_RESULTS",
    "CALL_RING_DURATION",
    "CALL_TALK_DURATION",
    "CONFIG_LAST_RELOAD_SUCCESS",
    "CONFIG_RELOADS",
    "DIRECTORY_CONFLICTS",
    "DIRECTORY_PEOPLE",
    "DIRECTORY_UNMATCHED",
    "DIRTY_KEYS",
    "EVENT_TO_APPLY",
    "NFON_LOGINS",
    "READY",
    "RESYNC_DURATION",
    "RESYNC_LAST_SUCCESS",
    "STREAM_EVENTS",
    "STREAM_FRAMES_REJECTED",
    "STREAM_LAST_EVENT",
    "STREAM_RECONNECTS",
    "STREAM_STATE",
    "STREAM_UNKNOWN_VALUES",
    "TARGET_APPLIES",
    "TARGET_PAUSED_UNTIL",
    "TARGET_REQUEST_DURATION",
    "TARGET_THROTTLED",
    "set_readiness",
]

BUILD_INFO = Info("presence_sync_build", "Version of the running presence-sync")
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

STREAM_STATE = Enum(
    "presence_sync_stream_state",
    "Connection state of each NFON event stream",
    ["stream"],
    states=["connecting", "connected", "backoff", "stopped"],
)
STREAM_RECONNECTS = Counter(
    "presence_sync_stream_reconnects_total",
    "NFON stream reconnects, by what ended the previous connection",
    ["stream", "reason"],
)
STREAM_EVENTS = Counter(
    "presence_sync_stream_events_total",
    "Events received on the NFON streams",
    ["stream"],
)
STREAM_FRAMES_REJECTED = Counter(
    "presence_sync_stream_frames_rejected_total",
    "Stream frames skipped because they could not be understood",
    ["stream", "reason"],
)
STREAM_UNKNOWN_VALUES = Counter(
    "presence_sync_stream_unknown_values_total",
    "Values outside the documented enums (mapped to unknown; the event still counts)",
    ["stream", "field"],
)
STREAM_LAST_EVENT = Gauge(
    "presence_sync_stream_last_event_timestamp_seconds",
    "When the last event arrived on each stream (Unix time)",
    ["stream"],
)
NFON_LOGINS = Counter(
    "presence_sync_nfon_token_requests_total",
    "NFON token requests (login and refresh) by outcome",
    ["kind", "result"],
)
DIRTY_KEYS = Gauge(
    "presence_sync_reconcile_dirty_keys",
    "(person, target) keys waiting for the reconciler",
    ["target"],
)
TARGET_APPLIES = Counter(
    "presence_sync_target_applies_total",
    "Reconciles of one (person, target) key by result",
    ["target", "result"],
)
TARGET_REQUEST_DURATION = Histogram(
    "presence_sync_target_apply_duration_seconds",
    "Time a target took to apply one change",
    ["target"],
)
TARGET_THROTTLED = Counter(
    "presence_sync_target_throttled_total",
    "Times a target asked us to slow down (429 / Retry-After)",
    ["target"],
)
TARGET_PAUSED_UNTIL = Gauge(
    "presence_sync_target_paused_until_timestamp_seconds",
    "Until when a target is paused by Retry-After or an auth failure (Unix time)",
    ["target"],
)
EVENT_TO_APPLY = Histogram(
    "presence_sync_event_to_apply_seconds",
    "From an NFON event to the start of the target call it caused",
    ["target"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RESYNC_DURATION = Histogram(
    "presence_sync_resync_duration_seconds",
    "Duration of a full resync from the NFON snapshot",
)
RESYNC_LAST_SUCCESS = Gauge(
    "presence_sync_resync_last_success_timestamp_seconds",
    "When the last full resync succeeded (Unix time)",
)
DIRECTORY_PEOPLE = Gauge(
    "presence_sync_directory_extensions",
    "Extensions known from NFON, by whether a configured person sits behind them",
    ["mapping"],
)
DIRECTORY_CONFLICTS = Gauge(
    "presence_sync_directory_conflicts",
    "Ambiguous matches of group members to extensions (people in them are not synced)",
)
DIRECTORY_UNMATCHED = Gauge(
    "presence_sync_directory_unmatched",
    "Group members on no extension (kind=member), extensions with no member (kind=extension)",
    ["kind"],
)

# --- calls (from the NFON call stream; see ops/calls.py) ----------------------------------

CALL_DIRECTIONS = ("inbound", "outbound")
CALL_RESULTS = ("answered", "missed", "busy", "rejected", "cancelled", "failed")
CALLS = Counter(
    "presence_sync_calls_total",
    "Calls on the NFON call stream, counted when they end, by direction and result "
    "(each extension's leg counts)",
    ["direction", "result"],
)
CALL_RING_DURATION = Histogram(
    "presence_sync_call_ring_duration_seconds",
    "From the first ring to the answer, or to the end of a call nobody answered",
    ["direction"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300),
)
CALL_TALK_DURATION = Histogram(
    "presence_sync_call_talk_duration_seconds",
    "From the answer to the hang-up",
    ["direction"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400),
)
for _direction in CALL_DIRECTIONS:
    for _result in CALL_RESULTS:
        CALLS.labels(direction=_direction, result=_result)
    CALL_RING_DURATION.labels(direction=_direction)
    CALL_TALK_DURATION.labels(direction=_direction)

# --- configuration and readiness -----------------------------------------------------------

CONFIG_RELOADS = Counter(
    "presence_sync_config_reloads_total",
    "Configuration reloads (SIGHUP) by result: ok, or refused (the running one stays)",
    ["result"],
)
for _result in ("ok", "refused"):
    CONFIG_RELOADS.labels(result=_result)
CONFIG_LAST_RELOAD_SUCCESS = Gauge(
    "presence_sync_config_last_reload_success_timestamp_seconds",
    "When the configuration in use was loaded: the start, or the last good reload (Unix time)",
)
READY = Gauge(
    "presence_sync_ready",
    "1 while a part of the daemon works now, else 0, by component "
    "(nfon_stream, nfon_login, target:<name>), as /readyz reports them",
    ["component"],
)
_ready_components: set[str] = set()


def set_readiness(components: Mapping[str, Mapping[str, Any]]) -> None:
    """Show ``/readyz``'s components (``{name: {"ok": bool, ...}}``) as
    ``presence_sync_ready``; a component no longer listed (a target removed
    by a reload) loses its series."""
    for gone in _ready_components - set(components):
        READY.remove(gone)
    _ready_components.clear()
    for name, part in components.items():
        READY.labels(component=name).set(1 if part.get("ok") else 0)
        _ready_components.add(name)

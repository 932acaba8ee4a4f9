"""Every Prometheus metric of presence-sync, in one place.

Names follow the Prometheus conventions: ``presence_sync_`` prefix, base units,
counters ending in ``_total``. Labels have small fixed value sets (stream,
target, result, reason); never a person, e-mail, extension or number.
"""

from __future__ import annotations

from prometheus_client import Counter, Enum, Gauge, Histogram, Info

from presence_sync import __version__

__all__ = [
    "BUILD_INFO",
    "DIRECTORY_PEOPLE",
    "DIRTY_KEYS",
    "EVENT_TO_APPLY",
    "NFON_LOGINS",
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
]

BUILD_INFO = Info("presence_sync_build", "Version of the running presence-sync")
BUILD_INFO.info({"version": __version__})

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

"""Pieces the Graph simulator's modules share: Graph's error
(``{"error": {"code", "message", "innerError"}}``), ISO-8601 durations,
Graph's ``dateTimeTimeZone`` values, the request log's record and the
settable clock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "GraphError",
    "RecordedRequest",
    "SimClock",
    "format_datetime_tz",
    "parse_datetime_tz",
    "parse_duration",
]

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
# Graph takes Windows zone names as well as IANA ones; these are the ones
# its own examples use, plus the usual European ones.
_WINDOWS_ZONES = {
    "utc": "UTC",
    "coordinated universal time": "UTC",
    "pacific standard time": "America/Los_Angeles",
    "eastern standard time": "America/New_York",
    "central standard time": "America/Chicago",
    "gmt standard time": "Europe/London",
    "w. europe standard time": "Europe/Berlin",
    "central europe standard time": "Europe/Budapest",
    "romance standard time": "Europe/Paris",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it (control API excluded); secrets
    in token requests are replaced by ``***``."""

    method: str
    path: str
    query: str
    body: Any
    status: int
    at: datetime
    client_id: str | None


class SimClock:
    """A wall clock that moves only when told to; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


class GraphError(Exception):
    """A Graph error response: status, ``error.code``, ``error.message`` and
    any extra headers (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self, request_id: str, now: datetime) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "innerError": {
                    "date": now.strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": request_id,
                },
            }
        }


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def parse_duration(text: object) -> timedelta:
    """``PT5M``-style durations (days, hours, minutes, seconds)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or text in ("P", "PT"):
        raise bad_request(f"Invalid ISO-8601 duration: {text!r}.")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def _zone(name: str) -> ZoneInfo:
    key = _WINDOWS_ZONES.get(name.strip().lower(), name.strip())
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise bad_request(f"Invalid time zone '{name}'.", "ErrorInvalidTimeZone") from exc


def parse_datetime_tz(value: object, what: str) -> datetime:
    """A ``{"dateTime": "...", "timeZone": "..."}`` value as an aware UTC
    datetime. The ``dateTime`` carries no offset: the zone is in ``timeZone``."""
    if not isinstance(value, Mapping):
        raise bad_request(f"{what} must be a dateTimeTimeZone object.")
    text, zone = value.get("dateTime"), value.get("timeZone", "UTC")
    if not isinstance(text, str) or not isinstance(zone, str):
        raise bad_request(f"{what}.dateTime and {what}.timeZone must be strings.")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise bad_request(f"{what}.dateTime is not a valid date and time: {text!r}.") from exc
    if parsed.tzinfo is not None:
        raise bad_request(
            f"{what}.dateTime must not carry a zone offset; give the zone in timeZone."
        )
    return parsed.replace(tzinfo=_zone(zone)).astimezone(UTC)


def format_datetime_tz(moment: datetime) -> dict[str, str]:
    """An aware datetime as Graph returns it: UTC, seven fractional digits."""
    utc = moment.astimezone(UTC)
    return {"dateTime": utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0", "timeZone": "UTC"}

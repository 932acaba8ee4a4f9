"""The NFON CTI wire format, and its translation into the domain model.

Owns what the JSON on the wire looks like (``state``, ``call``,
``extensionData`` and ``tokens`` objects of the OpenAPI spec, described here as
``TypedDict``\\ s) and the functions that turn one decoded frame into a
``model`` value. Nothing outside ``nfon/`` sees wire field names.

The stream parsers run for every SSE frame (tens of thousands a second during
a bootstrap of a large tenant), so they are plain ``json.loads`` plus dict
access, with no validation library in the way. Their failure contract:

- input that is not JSON, not an object, or lacks the identifying field
  raises ``FrameError`` with a short ``reason`` (``json``, ``shape``,
  ``field``); nothing else escapes;
- an enum value we do not know becomes the ``UNKNOWN`` member and is reported
  through the optional ``unknown`` callback, so the caller can count it;
- ``updated`` is parsed leniently (see ``parse_time``) and is never fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Final, Literal, TypedDict, TypeVar

from presence_sync.model import (
    CallEvent,
    CallState,
    Direction,
    ExtensionInfo,
    Line,
    Presence,
    StateEvent,
)

__all__ = [
    "FrameError",
    "UnknownValue",
    "WireCall",
    "WireExtension",
    "WireState",
    "WireTokens",
    "call_from_wire",
    "extension_from_wire",
    "parse_call",
    "parse_state",
    "parse_time",
    "state_from_wire",
    "tokens_from_wire",
]

FrameReason = Literal["json", "shape", "field"]

UnknownValue = Callable[[str, object], None]
"""Called as ``unknown(field, raw_value)`` when an enum value is not known."""


class WireState(TypedDict, total=False):
    """``components.schemas.state``: one element of ``/extensions/phone/states``."""

    customer: str
    extension: str
    line: str
    presence: str
    updated: str


class WireCall(TypedDict, total=False):
    """``components.schemas.call`` as the ``GET /extensions/phone/calls`` stream sends it."""

    uuid: str
    state: str
    caller: str
    caller_context: str
    callee: str
    callee_context: str
    direction: str
    extension: str
    customer: str
    updated: str
    error: str


class WireExtension(TypedDict, total=False):
    """``components.schemas.extensionData``: one entry of ``/extensions/phone/data``."""

    uuid: str
    extension_number: str
    name: str


WireTokens = TypedDict("WireTokens", {"access-token": str, "refresh-token": str})
"""``components.schemas.tokens``: the reply of ``POST``/``PUT /login``."""


class FrameError(ValueError):
    """One frame could not be understood. ``reason`` is a short, fixed label
    (``json``, ``shape``, ``field``) fit for a metric; ``detail`` says more
    for a log line and never contains field values."""

    def __init__(self, reason: FrameReason, detail: str = "") -> None:
        self.reason: FrameReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# "unknown" is a real NFON line state but no presence, call state or
# direction: there it would mean a value we do not understand, so only
# ``Line`` maps it.
_LINES: Final[Mapping[str, Line]] = {m.value: m for m in Line}
_PRESENCES: Final[Mapping[str | None, Presence]] = {
    None: Presence.NONE,  # a JSON null where the spec has the string "null"
    **{m.value: m for m in Presence if m is not Presence.UNKNOWN},
}
_CALL_STATES: Final[Mapping[str, CallState]] = {
    m.value: m for m in CallState if m is not CallState.UNKNOWN
}
_DIRECTIONS: Final[Mapping[str, Direction]] = {
    m.value: m for m in Direction if m is not Direction.UNKNOWN
}

# The spec's own examples look like ``2013-10-27T13:01:10:00.069620809+02:00``
# (one ``:NN`` too many). We read the first three clock fields and ignore extra
# ones, which is the most plausible reading and never worse than no time.
_LENIENT_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2}))?(?::\d{2})*"
    r"(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def _text(value: object) -> str | None:
    """A wire string field: strings pass, numbers are tolerated, the rest is absent."""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    return None


E = TypeVar("E", bound=StrEnum)
_ABSENT: Final = object()


def _member(
    obj: Mapping[str, Any],
    field: str,
    members: Mapping[Any, E],
    fallback: E,
    unknown: UnknownValue | None,
) -> E:
    """The enum member for ``obj[field]``; ``fallback`` (reported to
    ``unknown``) when the field is absent or holds a value we do not know."""
    raw = obj.get(field, _ABSENT)
    member = members.get(raw) if raw is None or type(raw) is str else None
    if member is not None:
        return member
    if unknown is not None:
        unknown(field, None if raw is _ABSENT else raw)
    return fallback


def parse_time(raw: object) -> datetime | None:
    """``updated`` as an aware datetime, or ``None`` when absent or unreadable.

    Accepts RFC 3339 with any number of fractional digits (nanoseconds are
    truncated to microseconds), ``Z`` or a numeric offset; a time without an
    offset is taken as UTC; the malformed shape of the spec's examples is read
    best effort. Never raises.
    """
    if type(raw) is not str or not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return _parse_time_lenient(raw)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parse_time_lenient(raw: str) -> datetime | None:
    match = _LENIENT_TIME.fullmatch(raw.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    tz: timezone = UTC
    if offset and offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        if minutes >= 24 * 60:
            return None
        tz = timezone(sign * timedelta(minutes=minutes))
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _loads(data: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise FrameError("json", type(exc).__name__) from None
    except RecursionError:
        raise FrameError("json", "nesting too deep") from None
    if type(obj) is not dict:
        raise FrameError("shape", f"expected an object, got {type(obj).__name__}")
    return obj


def state_from_wire(obj: Mapping[str, Any], unknown: UnknownValue | None = None) -> StateEvent:
    """One decoded ``state`` object as a ``StateEvent``.

    Raises ``FrameError("field")`` when ``extension`` is missing or not a
    string. A missing or unknown ``line``/``presence`` becomes ``UNKNOWN``
    (reported to ``unknown``); a JSON ``null`` presence is NFON's "null".
    """
    extension = _text(obj.get("extension"))
    if not extension:
        raise FrameError("field", "extension missing")
    line = _member(obj, "line", _LINES, Line.UNKNOWN, unknown)
    presence = _member(obj, "presence", _PRESENCES, Presence.UNKNOWN, unknown)
    updated = obj.get("updated")
    return StateEvent(
        extension,
        line,
        presence,
        _text(obj.get("customer")),
        parse_time(updated) if updated is not None else None,
    )


def call_from_wire(obj: Mapping[str, Any], unknown: UnknownValue | None = None) -> CallEvent:
    """One decoded ``call`` object as a ``CallEvent``.

    Raises ``FrameError("field")`` when ``uuid`` (the key of a call) is
    missing. ``extension`` may be absent (``None``); unknown or missing
    ``state``/``direction`` become ``UNKNOWN`` and are reported to ``unknown``.
    """
    uuid = _text(obj.get("uuid"))
    if not uuid:
        raise FrameError("field", "uuid missing")
    state = _member(obj, "state", _CALL_STATES, CallState.UNKNOWN, unknown)
    direction = _member(obj, "direction", _DIRECTIONS, Direction.UNKNOWN, unknown)
    updated = obj.get("updated")
    return CallEvent(
        uuid=uuid,
        state=state,
        extension=_text(obj.get("extension")) or None,
        direction=direction,
        caller=_text(obj.get("caller")),
        caller_context=_text(obj.get("caller_context")),
        callee=_text(obj.get("callee")),
        callee_context=_text(obj.get("callee_context")),
        customer=_text(obj.get("customer")),
        updated=parse_time(updated) if updated is not None else None,
        error=_text(obj.get("error")),
    )


def extension_from_wire(obj: object) -> ExtensionInfo:
    """One ``extensionData`` entry. Raises ``FrameError`` when it is not an
    object (``shape``) or has no ``extension_number`` (``field``)."""
    if not isinstance(obj, Mapping):
        raise FrameError("shape", f"expected an object, got {type(obj).__name__}")
    extension = _text(obj.get("extension_number"))
    if not extension:
        raise FrameError("field", "extension_number missing")
    return ExtensionInfo(extension, _text(obj.get("name")), _text(obj.get("uuid")))


def parse_state(data: str | bytes, unknown: UnknownValue | None = None) -> StateEvent:
    """One SSE ``data`` payload of the states stream as a ``StateEvent``.
    Raises only ``FrameError``."""
    return state_from_wire(_loads(data), unknown)


def parse_call(data: str | bytes, unknown: UnknownValue | None = None) -> CallEvent:
    """One SSE ``data`` payload of the calls stream as a ``CallEvent``.
    Raises only ``FrameError``."""
    return call_from_wire(_loads(data), unknown)


def tokens_from_wire(obj: object) -> tuple[str, str | None]:
    """``(access_token, refresh_token)`` from a ``tokens`` reply. Raises
    ``FrameError`` when there is no access token; the refresh token may be
    absent (then the next renewal is a full login)."""
    if not isinstance(obj, Mapping):
        raise FrameError("shape", "tokens reply is not an object")
    access = obj.get("access-token")
    if type(access) is not str or not access:
        raise FrameError("field", "access-token missing")
    refresh = obj.get("refresh-token")
    return access, refresh if type(refresh) is str and refresh else None

"""The domain model: frozen values that every other module speaks.

Nothing here knows about HTTP, YAML or SQLite. The NFON wire format lives in
``nfon/schema.py`` and is translated into these types at the edge.

- ``LineView``: what we know about one extension right now (line state,
  presence, the current call).
- ``Person``: who sits behind an extension, with the ids each target needs.
- ``Status``: what one target should show for a person; ``None`` in its place
  means "cleared: nothing from us, the person has their own status back".
- ``Applied``: what a target confirmed it shows, as remembered by the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

__all__ = [
    "CLEARED",
    "OWN_STATUS",
    "Applied",
    "Call",
    "CallEvent",
    "CallState",
    "Direction",
    "ExtensionInfo",
    "Line",
    "LineView",
    "Person",
    "Presence",
    "StateEvent",
    "Status",
    "describe",
    "find_person",
    "frozen_map",
]


class Line(StrEnum):
    """Telephony line state, as NFON reports it. ``UNKNOWN`` also stands in
    for any value the API may add later."""

    UNKNOWN = "unknown"
    OFFLINE = "offline"
    IDLE = "idle"
    RINGING = "ringing"
    IN_USE = "in-use"


class Presence(StrEnum):
    """Presence as NFON reports it. ``NONE`` is NFON's literal string "null";
    ``UNKNOWN`` is a value we do not know (yet)."""

    UNKNOWN = "unknown"
    NONE = "null"
    OFFLINE = "offline"
    AVAILABLE = "available"
    AWAY = "away"
    BUSY = "busy"
    DND = "dnd"


class Direction(StrEnum):
    """Call direction from the extension's point of view."""

    UNKNOWN = "unknown"
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CallState(StrEnum):
    """Call event states of ``GET /extensions/phone/calls`` (and the POST
    stream's framing markers), plus ``UNKNOWN`` for anything new."""

    UNKNOWN = "unknown"
    START = "start"
    CALLER_WAIT = "caller-wait"
    CALLER_DIAL = "caller-dial"
    CALLER_RING = "caller-ring"
    CALLER_ANSWER = "caller-answer"
    DIAL = "dial"
    RING = "ring"
    ANSWER = "answer"
    HANGUP = "hangup"
    END = "end"


def frozen_map(items: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only view of a copy of ``items``, for mapping fields of frozen values."""
    return MappingProxyType(dict(items or {}))


# --- what the NFON source reports -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateEvent:
    """One ``state`` object: an extension's line and presence."""

    extension: str
    line: Line
    presence: Presence
    customer: str | None = None
    updated: datetime | None = None


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One ``call`` object from the call event stream.

    ``caller``/``callee`` are personal data: they travel in memory only and
    reach a status, a log line or a webhook only where a rule asks for them.
    """

    uuid: str
    state: CallState
    extension: str | None
    direction: Direction
    caller: str | None = None
    caller_context: str | None = None
    callee: str | None = None
    callee_context: str | None = None
    customer: str | None = None
    updated: datetime | None = None
    error: str | None = None

    @property
    def party(self) -> str | None:
        """The other party's number, seen from ``extension``."""
        return self.caller if self.direction is Direction.INBOUND else self.callee

    @property
    def party_context(self) -> str | None:
        return self.caller_context if self.direction is Direction.INBOUND else self.callee_context

    @property
    def external(self) -> bool | None:
        """True when the other party is outside the K-Account (context
        ``global``), False for an internal extension, None when unknown."""
        context = self.party_context
        if not context:
            return None
        return context == "global"


@dataclass(frozen=True, slots=True)
class ExtensionInfo:
    """One entry of ``GET /extensions/phone/data``."""

    extension: str
    name: str | None = None
    uuid: str | None = None


# --- what we know about a line ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """The call an extension is in (or being rung for)."""

    uuid: str
    direction: Direction
    external: bool | None
    party: str | None = field(default=None, repr=False)
    """The other party's number. Personal data: kept out of repr and logs."""
    answered: bool = False
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class LineView:
    """Everything known about one extension: the input of the rules."""

    extension: str
    line: Line = Line.UNKNOWN
    presence: Presence = Presence.UNKNOWN
    call: Call | None = None
    since: datetime | None = None
    """When ``line`` last changed (NFON's ``updated``, or when we saw it)."""


# --- who and what ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A person whose line we mirror.

    ``key`` is the stable identity used by the store (the lower-cased e-mail
    address), so a person keeps their applied state when their extension
    number changes. ``ids`` holds per-target ids the admin configured
    (``{"slack_status": "U123"}``); ``opt_out`` names targets the person
    does not want.
    """

    key: str
    email: str
    extension: str
    name: str | None = None
    groups: frozenset[str] = frozenset()
    ids: Mapping[str, str] = field(default_factory=frozen_map)
    opt_out: frozenset[str] = frozenset()

    def __hash__(self) -> int:
        return hash(self.key)


def find_person(people: Iterable[Person], who: str) -> Person | None:
    """The person an admin names with ``who``: their key or e-mail address
    (any case), else their extension. The one lookup behind ``explain``,
    ``pause``/``resume`` and the status API."""
    wanted = who.strip()
    folded = wanted.casefold()
    by_extension = None
    for person in people:
        if person.key == folded or person.email.casefold() == folded:
            return person
        if by_extension is None and person.extension == wanted:
            by_extension = person
    return by_extension


STATUS_FIELDS = ("availability", "activity", "text", "emoji", "dnd")


@dataclass(frozen=True, slots=True)
class Status:
    """What one target should show. Each target reads the fields it
    understands (``TargetInfo.fields``); rules may not set the others.

    - ``availability``/``activity``: Teams presence pair, e.g. Busy/InACall;
    - ``text``: status message, Slack status text, calendar subject;
    - ``emoji``: Slack status emoji, e.g. ``:telephone_receiver:``;
    - ``dnd``: do-not-disturb on (Slack snooze).
    """

    availability: str | None = None
    activity: str | None = None
    text: str | None = None
    emoji: str | None = None
    dnd: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, for JSON documents and the store."""
        out: dict[str, Any] = {}
        for name in STATUS_FIELDS:
            value = getattr(self, name)
            if value is not None and value is not False:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Status:
        return cls(**{k: data[k] for k in STATUS_FIELDS if k in data})


@dataclass(frozen=True, slots=True)
class Applied:
    """What a target confirmed for one person.

    ``status`` is ``None`` once ours is removed (the person has their own
    back). ``expires`` is when the remote side forgets ours by itself (a
    Teams session, a Slack expiration): the engine re-applies before then.
    ``data`` is the target's own small JSON-able memo (a session id, an
    event id); the store keeps it with the status, atomically.
    """

    status: Status | None
    at: datetime
    expires: datetime | None = None
    data: Mapping[str, Any] = field(default_factory=frozen_map)


OWN_STATUS = "own status"
"""``describe(None)``: we show nothing, the person has their own status."""
CLEARED = "cleared, own status restored"
"""A change to ``None`` as logs say it: ours removed, the person's own status back."""
_NUMBER = re.compile(r"\+?\(?\d(?:[\s()./-]*\d){4,}")


def describe(status: Status | None) -> str:
    """``status`` in one line for people: ``Busy/InACall :phone: "On a call" dnd``,
    or ``own status`` for ``None``. Digit runs that could be a phone
    number are replaced by ``…``, so the result is safe to log."""
    if status is None:
        return OWN_STATUS
    parts: list[str] = []
    if status.availability or status.activity:
        parts.append(f"{status.availability or '-'}/{status.activity or '-'}")
    if status.emoji:
        parts.append(status.emoji)
    if status.text is not None:
        parts.append(json.dumps(_NUMBER.sub("…", status.text), ensure_ascii=False))
    if status.dnd:
        parts.append("dnd")
    return " ".join(parts) if parts else "(empty status)"

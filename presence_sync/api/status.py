"""The status documents of the daemon's API (``/api/status``,
``/api/people/{who}``), which the status page, ``presence-sync status`` and
``check --test-call`` read. The shape is documented in ``docs/api.md``.

A document shows the engine's picture (desired and applied status per
person and target, and where each key is), each person's line as NFON
reports it (line, presence, call direction: never the other party's
number), the daemon's readiness and when the last full resync ran. Statuses
are short texts (``model.describe``, which masks digit runs that could be a
phone number); ``null`` means "nothing from us: the person's own status".

Cost: a poll filters people on cheap lookups (their texts, and the engine's
``unsettled`` set) and builds target pictures only for the page it returns,
so it stays fast with 10,000 people.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Final

from presence_sync.api.readiness import Readiness
from presence_sync.engine import Engine, KeyPicture, TargetPicture
from presence_sync.model import (
    STATUS_FIELDS,
    Direction,
    Line,
    Person,
    Presence,
    Status,
    describe,
    find_person,
)
from presence_sync.targets.base import UnknownTargetError, target_class

__all__ = [
    "DEFAULT_LIMIT",
    "FILTERS",
    "MAX_LIMIT",
    "Parts",
    "PauseView",
    "StatusBuilder",
    "iso",
]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
FILTERS: Final = ("all", "not-in-sync")

_STATES: Final = {"dirty": "queued", "unknown": "waiting"}
"""Engine key states → API states (the others keep their name)."""


@dataclass(frozen=True, slots=True)
class PauseView:
    """A person's pause as the API shows it: until when (None: until
    resumed) and for which targets (None: all)."""

    until: datetime | None
    targets: tuple[str, ...] | None = None

    def covers(self, target: str) -> bool:
        return self.targets is None or target in self.targets


def _no_pauses(_: str) -> PauseView | None:
    return None


@dataclass(frozen=True)
class Parts:
    """What the documents are built from, as the daemon runs right now
    (a reload may swap any of them, so the builder asks for them anew at
    each request)."""

    now: datetime
    engine: Engine
    readiness: Readiness
    last_resync: datetime | None
    paused: Callable[[str], PauseView | None] = field(default=_no_pauses)
    """The pause of a person key, if any."""
    directory: Callable[[], Mapping[str, Any] | None] = field(default=lambda: None)
    """The Entra group's matching (``Directory.summary``), None without one."""


def iso(when: datetime | None, zone: tzinfo | None = None) -> str | None:
    """``when`` in ``zone`` (default: the machine's) as ISO 8601 with its
    offset, to the second; None stays None."""
    if when is None:
        return None
    return when.astimezone(zone).isoformat(timespec="seconds")


class StatusBuilder:
    """Builds the API's JSON documents from ``parts()``; ``zone`` is the
    zone of the time stamps (default: the machine's)."""

    def __init__(self, parts: Callable[[], Parts], *, zone: tzinfo | None = None) -> None:
        self._parts = parts
        self._zone = zone
        self._texts: dict[str, tuple[Person, str]] = {}
        self._fields: dict[str, frozenset[str]] = {}
        self._parked: dict[tuple[str, str], datetime] = {}

    # --- documents --------------------------------------------------------------------

    def status(
        self,
        *,
        q: str = "",
        filter: str = "all",
        offset: int = 0,
        limit: int = DEFAULT_LIMIT,
    ) -> dict[str, Any]:
        """``GET /api/status``: the daemon's health and one page of people
        matching ``q`` (name, e-mail or extension, any case) and ``filter``.
        Raises ``ValueError`` for a filter, offset or limit out of range."""
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, not {filter!r}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        parts = self._parts()
        engine = parts.engine
        people = engine.people()
        matched = self._search(people, q)
        if filter == "not-in-sync":
            unsettled = engine.unsettled()
            matched = [p for p in matched if p.key in unsettled]
        page = matched[offset : offset + limit]
        docs = self._people(parts, page)
        return {
            "at": iso(parts.now, self._zone),
            "daemon": self._daemon(parts),
            "total": len(people),
            "matched": len(matched),
            "offset": offset,
            "limit": limit,
            "people": docs,
            "directory": parts.directory(),
        }

    def person(self, who: str) -> dict[str, Any] | None:
        """``GET /api/people/{who}``: one person by key, e-mail (any case)
        or extension; None when nobody matches."""
        parts = self._parts()
        found = find_person(parts.engine.people(), who)
        if found is None:
            return None
        return self._people(parts, [found])[0]

    # --- parts ------------------------------------------------------------------------

    def _search(self, people: list[Person], q: str) -> list[Person]:
        texts = self._texts
        if len(texts) > 2 * len(people) + MAX_LIMIT:
            texts.clear()  # people who left since
        needle = q.strip().casefold()
        if not needle:
            return people
        found: list[Person] = []
        for person in people:
            hit = texts.get(person.key)
            if hit is None or hit[0] is not person:
                hit = texts[person.key] = (person, _haystack(person))
            if needle in hit[1]:
                found.append(person)
        return found

    def _daemon(self, parts: Parts) -> dict[str, Any]:
        ready = parts.readiness
        return {
            "ok": ready.ok,
            "status": ready.status,
            "components": {name: dict(c) for name, c in ready.components.items()},
            "last_resync": iso(parts.last_resync, self._zone),
            "targets": {name: self._target(t) for name, t in parts.engine.target_states().items()},
        }

    def _target(self, t: TargetPicture) -> dict[str, Any]:
        if t.pause_reason == "auth":
            state, reason = "refused", f"{t.name} rejects our credentials"
        elif t.pause_reason is not None:
            state, reason = "throttled", f"{t.name} asked us to wait (rate limit)"
        else:
            state, reason = "running", None
        return {
            "kind": t.kind,
            "state": state,
            "until": iso(t.paused_until, self._zone),
            "reason": reason,
            "queued": t.dirty,
            "in_flight": t.in_flight,
            "backoff": t.backoff,
            "parked": t.parked,
        }

    def _people(self, parts: Parts, page: Sequence[Person]) -> list[dict[str, Any]]:
        keys: dict[str, list[KeyPicture]] = {p.key: [] for p in page}
        for snap in parts.engine.key_pictures(keys):
            keys[snap.person].append(snap)
        kinds = {name: t.kind for name, t in parts.engine.target_states().items()}
        return [self._person(parts, p, keys[p.key], kinds) for p in page]

    def _person(
        self,
        parts: Parts,
        person: Person,
        snaps: Iterable[KeyPicture],
        kinds: dict[str, str],
    ) -> dict[str, Any]:
        view = parts.engine.line(person.extension)
        line = presence = direction = None
        if view is not None:
            line = None if view.line is Line.UNKNOWN else view.line.value
            presence = _presence(view.presence)
            call = view.call
            if call is not None and call.direction is not Direction.UNKNOWN:
                direction = call.direction.value
        pause = parts.paused(person.key)
        return {
            "key": person.key,
            "email": person.email,
            "name": person.name,
            "extension": person.extension,
            "line": line,
            "presence": presence,
            "direction": direction,
            "paused": None
            if pause is None
            else {
                "until": iso(pause.until, self._zone),
                "targets": None if pause.targets is None else list(pause.targets),
            },
            "targets": {
                s.target: self._key(parts, s, kinds.get(s.target, ""), pause) for s in snaps
            },
        }

    def _since(self, parts: Parts, snap: KeyPicture, state: str) -> datetime | None:
        """When the key came to ``state`` (as ``docs/api.md`` says): null
        only while waiting for NFON."""
        key = (snap.person, snap.target)
        if state != "parked":
            self._parked.pop(key, None)
        if state == "waiting":
            return None
        if state == "parked":
            # The engine keeps no time for a parked key: the first document
            # that showed it so, at most one poll late.
            return snap.since or self._parked.setdefault(key, parts.now)
        if state == "in-sync" or snap.since is None:
            # Since the target confirmed what it shows; nothing of ours there:
            # since the last full state from NFON found it so.
            if snap.applied is not None:
                return snap.applied.at
            return parts.last_resync or parts.now
        return snap.since

    def _shows(self, kind: str, status: Status) -> str:
        """``status`` as the target of ``kind`` shows it: only the fields it
        writes (a ``"*"`` rule hands every target the whole status)."""
        fields = self._fields.get(kind)
        if fields is None:
            try:
                fields = target_class(kind).info.fields
            except UnknownTargetError:
                fields = frozenset(STATUS_FIELDS)
            self._fields[kind] = fields
        if fields.issuperset(STATUS_FIELDS):
            return describe(status)
        return describe(
            Status.from_dict({k: v for k, v in status.to_dict().items() if k in fields})
        )

    def _key(
        self, parts: Parts, snap: KeyPicture, kind: str, pause: PauseView | None
    ) -> dict[str, Any]:
        applied = snap.applied
        state = _STATES.get(snap.state, snap.state)
        reason = snap.last_error
        if pause is not None and pause.covers(snap.target) and state in ("in-sync", "paused"):
            state, reason = "paused", "paused by an admin"
        if state == "waiting":
            reason = "waiting for NFON to report this line"
        elif state == "in-sync":
            reason = None
        applied_text = None
        if applied is not None and applied.status is not None:
            applied_text = self._shows(kind, applied.status)
        if applied_text is not None and snap.uncertain:
            applied_text += " (not confirmed)"
        return {
            "desired": None if snap.desired is None else self._shows(kind, snap.desired),
            "applied": applied_text,
            "state": state,
            "since": iso(self._since(parts, snap, state), self._zone),
            "retry_at": iso(snap.retry_at, self._zone),
            "reason": reason,
            "rule": snap.rule,
        }


def _haystack(person: Person) -> str:
    """What a search looks in: key, e-mail, name and extension, case-folded."""
    return "\n".join((person.key, person.email, person.name or "", person.extension)).casefold()


def _presence(presence: Presence) -> str | None:
    if presence is Presence.UNKNOWN:
        return None
    if presence is Presence.NONE:
        return "none"
    return presence.value

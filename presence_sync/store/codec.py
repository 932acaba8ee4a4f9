"""How every backend encodes what it keeps: JSON documents, UTC timestamps.

One encoding for all, so a value the memory store accepts is one SQLite and
PostgreSQL accept, and all give back values equal to what was put in.
Encoding raises ``ValueError`` for a value that would not come back as it was
(a naive datetime, ``data`` JSON cannot carry exactly), before anything is
written; decoding a stored row that no longer decodes gives ``None`` and a
warning, so one damaged row does not keep the daemon from starting.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.ops.logging import kv
from presence_sync.store.base import AppliedRow, PauseRow

log = logging.getLogger(__name__)


# One encoder built once: ``json.dumps`` with keyword arguments builds a new
# encoder per call, which is measurable on the write-through path.
ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    default=lambda o: dict(o) if isinstance(o, Mapping) else _not_json(o),
)


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_doc(doc: Mapping[str, Any], what: str) -> str:
    """``doc`` as JSON text that decodes to a value equal to ``doc``.

    Raises ``ValueError`` for anything JSON would not give back as it was
    (tuples, non-string keys, datetimes, NaN), before anything is written.
    """
    if not doc:
        return "{}"
    # Small flat memos repeat (the engine's flag, a session id per person):
    # their text is kept by value, types included (1, 1.0 and True are equal).
    try:
        key: tuple[Any, ...] | None = tuple((k, type(v), v) for k, v in doc.items())
        hit = _DOC_TEXT.get(key)  # type: ignore[arg-type]
    except TypeError:  # a list or dict inside: not hashable, not cached
        key = hit = None
    if hit is not None:
        return hit
    try:
        text = ENCODER.encode(dict(doc))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-able: {exc}") from None
    # Tuples become lists and int keys become strings without complaint;
    # comparing the decoded copy is what makes "equal after a restart" a
    # promise. Values made only of types JSON gives back as they were need no
    # decoding to know that (the common case, and it is on the engine's path).
    if not _exact(doc) and json.loads(text) != doc:
        raise ValueError(
            f"{what} does not survive JSON unchanged (use dict with str keys, "
            "list, str, int, float, bool, None)"
        )
    if key is not None:
        if len(_DOC_TEXT) >= 1024:
            _DOC_TEXT.clear()
        _DOC_TEXT[key] = text
    return text


_DOC_TEXT: dict[tuple[Any, ...], str] = {}


def _exact(value: object) -> bool:
    """Whether JSON gives ``value`` back equal, by its types alone: str keys,
    and str, int, finite float, bool, None, lists and mappings of those."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if isinstance(value, float):
        return kind is float and math.isfinite(value)
    if isinstance(value, list):
        return kind is list and all(_exact(item) for item in value)
    if isinstance(value, Mapping):
        return all(type(k) is str and _exact(v) for k, v in value.items())
    return False


def _status_text(status: Status) -> str:
    """JSON of a status; the few distinct statuses are encoded once."""
    last = _LAST_STATUS[0]
    if last[0] is status:  # rules hand out the same objects again and again
        return last[1]
    text = _STATUS_TEXT.get(status)
    if text is None:
        if len(_STATUS_TEXT) >= 256:
            _STATUS_TEXT.clear()
        text = _STATUS_TEXT[status] = ENCODER.encode(status.to_dict())
    _LAST_STATUS[0] = (status, text)
    return text


_STATUS_TEXT: dict[Status, str] = {}
_LAST_STATUS: list[tuple[Status | None, str]] = [(None, "")]


def time_text(value: datetime, what: str) -> str:
    """UTC, fixed width, so that text order is time order (housekeeping
    compares the text in SQL)."""
    if value.tzinfo is UTC:
        return value.isoformat(timespec="microseconds")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _person_json(person: Person) -> str:
    return ENCODER.encode(
        {
            "key": person.key,
            "email": person.email,
            "extension": person.extension,
            "name": person.name,
            "groups": sorted(person.groups),
            "ids": dict(person.ids),
            "opt_out": sorted(person.opt_out),
        }
    )


def _person_from(text: str) -> Person:
    doc = json.loads(text)
    return Person(
        key=doc["key"],
        email=doc["email"],
        extension=doc["extension"],
        name=doc.get("name"),
        groups=frozenset(doc.get("groups") or ()),
        ids=frozen_map(doc.get("ids")),
        opt_out=frozenset(doc.get("opt_out") or ()),
    )


Row = tuple[str, str, str, str | None, str, str | None, str, int]
"""(target, person_key, person, status, at, expires, data), as stored."""


class PersonCache:
    """Encoded persons by key: the engine passes the same ``Person`` object
    for every apply, so it is encoded once per object, not per write."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[Person, str]] = {}

    def text(self, person: Person) -> str:
        hit = self._by_key.get(person.key)
        if hit is not None and hit[0] is person:
            return hit[1]
        text = _person_json(person)
        self._by_key[person.key] = (person, text)
        return text


def applied_row(
    target: str, person_text: str, person: Person, applied: Applied, uncertain: bool
) -> Row:
    """Encode one applied row; raises ``ValueError`` for bad input."""
    status = applied.status
    try:
        return (
            target,
            person.key,
            person_text,
            None if status is None else _status_text(status),
            time_text(applied.at, ".at"),
            None if applied.expires is None else time_text(applied.expires, ".expires"),
            json_doc(applied.data, ".data"),
            1 if uncertain else 0,
        )
    except ValueError as exc:
        # The name of the row is only spelled out when something is wrong.
        raise ValueError(f"applied({target!r}, {person.key!r}){exc}") from None


def decode_applied(row: Row) -> AppliedRow | None:
    """Decode one stored row; ``None`` (and a warning) for a row that no
    longer decodes, so one damaged row does not keep the daemon from starting."""
    target, person_key, person_text, status_text, at, expires, data, uncertain = row
    try:
        memo = json.loads(data)
        # A database from before schema version 3 read without migrating
        # (``read_stored``) still carries the flag inside the memo.
        flagged = bool(uncertain) or memo.pop(LEGACY_UNCERTAIN, None) is not None
        applied = Applied(
            status=None if status_text is None else Status.from_dict(json.loads(status_text)),
            at=parse_time(at),
            expires=None if expires is None else parse_time(expires),
            data=frozen_map(memo),
        )
        return AppliedRow(
            target=target, person=_person_from(person_text), applied=applied, uncertain=flagged
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning(
            "skipping an applied row that does not decode; it stays in the store",
            extra=kv(target=target, person=person_key, error=repr(exc)),
        )
        return None


def is_fresh(fetched: datetime, now: datetime, max_age: float | None) -> bool:
    return max_age is None or (now - fetched).total_seconds() <= max_age


PauseTuple = tuple[str, str | None, str | None, str]
"""(person_key, targets, until, since), as stored."""


def pause_tuple(pause: PauseRow) -> PauseTuple:
    """Encode a pause; raises ``ValueError`` for naive datetimes."""
    what = f"pause({pause.person_key!r})"
    return (
        pause.person_key,
        None if pause.targets is None else ENCODER.encode(sorted(pause.targets)),
        None if pause.until is None else time_text(pause.until, f"{what}.until"),
        time_text(pause.since, f"{what}.since"),
    )


def decode_pause(row: PauseTuple) -> PauseRow | None:
    """Decode one stored pause; ``None`` (and a warning) when it no longer decodes."""
    person_key, targets, until, since = row
    try:
        names = None if targets is None else json.loads(targets)
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"targets is not a list of names: {targets!r}")
        return PauseRow(
            person_key=person_key,
            targets=None if names is None else frozenset(names),
            until=None if until is None else parse_time(until),
            since=parse_time(since),
        )
    except (ValueError, TypeError) as exc:
        log.warning(
            "skipping a pause that does not decode; it stays in the store",
            extra=kv(person=person_key, error=repr(exc)),
        )
        return None


LEGACY_UNCERTAIN: Final = "presence_sync.uncertain"
"""Where schema versions 1 and 2 kept the uncertain flag: a key of ``data``."""

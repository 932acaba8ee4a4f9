"""Durable memory of the reconciler: what each target shows, and what to give back.

This module owns the ``Store`` contract and its backends:

- ``SqliteStore``: the daemon's store, one SQLite file in WAL mode;
- ``MemoryStore``: the same contract in memory, for tests and ``--dry-run``;
- ``StoreMemory``: the ``targets.base.Memory`` of one (target, person),
  delegating to a store.

What is kept, per table of the SQLite schema:

- ``applied``: what each target confirmed for each person, with the person as
  they were then (so someone removed from the configuration can still be
  cleared), the target's memo (``Applied.data``), the expiry, and whether the
  engine is sure of it (``uncertain``, schema version 3: a write-ahead record
  or a request with an unknown outcome);
- ``saved``: the person's own status, saved by a target before it overwrote it;
- ``objects``: external objects a target created and must remove (calendar
  events), kind → external id;
- ``ids``: cached id lookups (e-mail → Slack user id) with when they were fetched;
- ``pauses`` (schema version 2): people an admin paused (``presence-sync
  pause``), with the targets and until when, so a pause outlives a restart.

Both backends encode values the same way (JSON documents, UTC timestamps), so
a value the memory store accepts is one the SQLite store accepts, and both
give back values equal to what was put in. Every write is one small
transaction (``write_applied``: one for the whole group): a crash between two
calls leaves a state from which the next start converges.

Errors: ``StoreError`` (a ``PresenceSyncError``) for everything the admin must
act on (a database from a newer presence-sync, a file that is not a database,
a full disk, a closed store); ``ValueError`` for a programming error in what
is written (a naive datetime, ``data`` JSON cannot carry exactly).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Final, NamedTuple, ParamSpec, Protocol, TypeVar

from presence_sync.clock import Clock, SystemClock
from presence_sync.errors import StoreError
from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.ops.logging import kv

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AppliedRow",
    "AppliedWrite",
    "MemoryStore",
    "PauseRow",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreMemory",
    "read_applied",
    "read_stored",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AppliedRow:
    """One remembered (target, person) with the person as they were when
    applied, so a person who left the configuration can still be cleared.
    ``uncertain``: the engine does not know whether the target shows
    ``applied`` (see ``engine.ledger``); ``applied.data`` is only the target's."""

    target: str
    person: Person
    applied: Applied
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class PauseRow:
    """An admin's pause of one person: the engine leaves ``targets`` (``None``:
    every target) alone for them from ``since`` until ``until`` (``None``:
    until resumed). Times are timezone-aware."""

    person_key: str
    targets: frozenset[str] | None
    until: datetime | None
    since: datetime


class AppliedWrite(NamedTuple):
    """One change of the applied rows, for ``Store.write_applied``:
    ``applied`` replaces the (target, person) row, ``None`` deletes it;
    ``uncertain`` as in ``AppliedRow``. (A named tuple: the engine builds one
    per record, on its hot path.)"""

    target: str
    person: Person
    applied: Applied | None
    uncertain: bool = False


class Store(Protocol):
    """Everything the engine and the targets persist. Each call is its own
    small transaction; a crash between two calls leaves a state from which
    the next start converges."""

    def load_applied(self) -> list[AppliedRow]:
        """Every remembered (target, person), for the engine's start."""
        ...

    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        """Remember what ``target`` confirmed for ``person`` (replaces);
        ``uncertain`` as in ``AppliedRow``."""
        ...

    def delete_applied(self, target: str, person_key: str) -> None:
        """Forget (target, person) once nothing of ours is left there."""
        ...

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Put and delete applied rows in order, in ONE transaction: when the
        call returns all of them are committed; when it raises, none is. The
        engine groups the records of one loop turn this way, so a commit is
        paid per turn, not per key. ``ValueError`` for a bad value, before
        anything is written."""
        ...

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        """``write_applied`` if it needs no wait: False, with nothing
        written, when it would have to wait for a lock held elsewhere (or
        for ``awrite_applied`` calls still under way, to keep the order).
        Same errors as ``write_applied`` otherwise."""
        ...

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """``write_applied`` without blocking the event loop while the
        database waits for a lock or a checkpoint: same contract, same
        errors (``ValueError`` before anything is written). Calls are
        committed in the order they were made. If the awaiting task is
        cancelled, the write may still complete."""
        ...

    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None: ...

    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        """Save the person's own status (``None`` deletes it)."""
        ...

    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        """Open external objects: kind → external id."""
        ...

    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None: ...

    def delete_object(self, target: str, person_key: str, kind: str) -> None: ...

    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        """A cached id lookup, ``None`` when missing or older than ``max_age`` seconds."""
        ...

    def put_id(self, namespace: str, key: str, value: str) -> None: ...

    def housekeeping(self, max_id_age: float) -> int:
        """Drop id cache entries older than ``max_id_age`` seconds; returns how many."""
        ...

    def load_pauses(self) -> list[PauseRow]:
        """Every pause, ordered by person key; a row that no longer decodes
        is skipped with a warning (and kept)."""
        ...

    def put_pause(self, pause: PauseRow) -> None:
        """Remember a pause (replaces the person's earlier one). ``ValueError``
        for a naive datetime."""
        ...

    def delete_pause(self, person_key: str) -> None:
        """Forget a person's pause; nothing happens when there is none."""
        ...

    @property
    def write_failure(self) -> str | None:
        """Why the last write could not be committed (the database's own
        words, e.g. ``database or disk is full``), or ``None`` when it was
        (and before any write). Readiness shows it: while writes fail, every
        change waits."""
        ...

    def close(self) -> None: ...


# --- encoding shared by every backend ----------------------------------------------

# One encoder built once: ``json.dumps`` with keyword arguments builds a new
# encoder per call, which is measurable on the write-through path.
_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    default=lambda o: dict(o) if isinstance(o, Mapping) else _not_json(o),
)


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json_doc(doc: Mapping[str, Any], what: str) -> str:
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
        text = _ENCODER.encode(dict(doc))
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
        text = _STATUS_TEXT[status] = _ENCODER.encode(status.to_dict())
    _LAST_STATUS[0] = (status, text)
    return text


_STATUS_TEXT: dict[Status, str] = {}
_LAST_STATUS: list[tuple[Status | None, str]] = [(None, "")]


def _time_text(value: datetime, what: str) -> str:
    """UTC, fixed width, so that text order is time order (housekeeping
    compares the text in SQL)."""
    if value.tzinfo is UTC:
        return value.isoformat(timespec="microseconds")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _person_json(person: Person) -> str:
    return _ENCODER.encode(
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


_Row = tuple[str, str, str, str | None, str, str | None, str, int]
"""(target, person_key, person, status, at, expires, data), as stored."""


class _PersonCache:
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


def _applied_row(
    target: str, person_text: str, person: Person, applied: Applied, uncertain: bool
) -> _Row:
    """Encode one applied row; raises ``ValueError`` for bad input."""
    status = applied.status
    try:
        return (
            target,
            person.key,
            person_text,
            None if status is None else _status_text(status),
            _time_text(applied.at, ".at"),
            None if applied.expires is None else _time_text(applied.expires, ".expires"),
            _json_doc(applied.data, ".data"),
            1 if uncertain else 0,
        )
    except ValueError as exc:
        # The name of the row is only spelled out when something is wrong.
        raise ValueError(f"applied({target!r}, {person.key!r}){exc}") from None


def _decode_applied(row: _Row) -> AppliedRow | None:
    """Decode one stored row; ``None`` (and a warning) for a row that no
    longer decodes, so one damaged row does not keep the daemon from starting."""
    target, person_key, person_text, status_text, at, expires, data, uncertain = row
    try:
        memo = json.loads(data)
        # A database from before schema version 3 read without migrating
        # (``read_stored``) still carries the flag inside the memo.
        flagged = bool(uncertain) or memo.pop(_LEGACY_UNCERTAIN, None) is not None
        applied = Applied(
            status=None if status_text is None else Status.from_dict(json.loads(status_text)),
            at=_parse_time(at),
            expires=None if expires is None else _parse_time(expires),
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


def _is_fresh(fetched: datetime, now: datetime, max_age: float | None) -> bool:
    return max_age is None or (now - fetched).total_seconds() <= max_age


_PauseTuple = tuple[str, str | None, str | None, str]
"""(person_key, targets, until, since), as stored."""


def _pause_tuple(pause: PauseRow) -> _PauseTuple:
    """Encode a pause; raises ``ValueError`` for naive datetimes."""
    what = f"pause({pause.person_key!r})"
    return (
        pause.person_key,
        None if pause.targets is None else _ENCODER.encode(sorted(pause.targets)),
        None if pause.until is None else _time_text(pause.until, f"{what}.until"),
        _time_text(pause.since, f"{what}.since"),
    )


def _decode_pause(row: _PauseTuple) -> PauseRow | None:
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
            until=None if until is None else _parse_time(until),
            since=_parse_time(since),
        )
    except (ValueError, TypeError) as exc:
        log.warning(
            "skipping a pause that does not decode; it stays in the store",
            extra=kv(person=person_key, error=repr(exc)),
        )
        return None


# --- SQLite ------------------------------------------------------------------------

APPLICATION_ID: Final = 0x50535943
"""``PRAGMA application_id`` of a presence-sync state database ("PSYC")."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE applied (
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            person      TEXT NOT NULL,
            status      TEXT,
            at          TEXT NOT NULL,
            expires     TEXT,
            data        TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (target, person_key)
        ) WITHOUT ROWID""",
        """CREATE TABLE saved (
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            doc         TEXT NOT NULL,
            saved_at    TEXT NOT NULL,
            PRIMARY KEY (target, person_key)
        ) WITHOUT ROWID""",
        """CREATE TABLE objects (
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            external_id TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (target, person_key, kind)
        ) WITHOUT ROWID""",
        """CREATE TABLE ids (
            namespace   TEXT NOT NULL,
            key         TEXT NOT NULL,
            value       TEXT NOT NULL,
            fetched_at  TEXT NOT NULL,
            PRIMARY KEY (namespace, key)
        ) WITHOUT ROWID""",
    ),
    (
        # targets: JSON list of target names, NULL for every target;
        # until: NULL while the pause lasts until resumed.
        """CREATE TABLE pauses (
            person_key  TEXT NOT NULL PRIMARY KEY,
            targets     TEXT,
            until       TEXT,
            since       TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
    (
        # The engine's own flag moves out of the target's memo into a column.
        "ALTER TABLE applied ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0",
        """UPDATE applied
            SET uncertain = 1, data = json_remove(data, '$."presence_sync.uncertain"')
            WHERE json_type(data, '$."presence_sync.uncertain"') IS NOT NULL""",
    ),
)
"""Schema migrations: entry ``n`` brings ``PRAGMA user_version`` from ``n`` to
``n + 1`` and runs in one transaction with the version bump. Released entries
are never edited; a schema change appends one. JSON lives in TEXT columns and
timestamps are UTC ISO-8601 text, so the same layout maps onto PostgreSQL."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this presence-sync writes."""

_PAUSES_SINCE: Final = 2
"""The schema version that brought the ``pauses`` table."""
_UNCERTAIN_SINCE: Final = 3
"""The schema version that brought the ``uncertain`` column of ``applied``."""
_LEGACY_UNCERTAIN: Final = "presence_sync.uncertain"
"""Where schema versions 1 and 2 kept the uncertain flag: a key of ``data``."""

BUSY_TIMEOUT_MS: Final = 5000
"""How long a statement waits for another process's lock (``presence-sync
check`` reading while the daemon writes) before it fails."""
CHECKPOINT_EVERY: Final = 200
"""Group commits between two WAL checkpoints (a few pages each; SQLite's
own automatic checkpoint comes every 1,000 pages)."""

_PUT_APPLIED: Final = (
    "INSERT OR REPLACE INTO applied"
    " (target, person_key, person, status, at, expires, data, uncertain)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_LOAD_APPLIED: Final = (
    "SELECT target, person_key, person, status, at, expires, data, uncertain"
    " FROM applied ORDER BY target, person_key"
)
_LOAD_APPLIED_V2: Final = (
    "SELECT target, person_key, person, status, at, expires, data, 0"
    " FROM applied ORDER BY target, person_key"
)
_DELETE_APPLIED: Final = "DELETE FROM applied WHERE target = ? AND person_key = ?"
_GET_SAVED: Final = "SELECT doc FROM saved WHERE target = ? AND person_key = ?"
_PUT_SAVED: Final = (
    "INSERT OR REPLACE INTO saved (target, person_key, doc, saved_at) VALUES (?, ?, ?, ?)"
)
_DELETE_SAVED: Final = "DELETE FROM saved WHERE target = ? AND person_key = ?"
_GET_OBJECTS: Final = "SELECT kind, external_id FROM objects WHERE target = ? AND person_key = ?"
_PUT_OBJECT: Final = (
    "INSERT OR REPLACE INTO objects (target, person_key, kind, external_id, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_DELETE_OBJECT: Final = "DELETE FROM objects WHERE target = ? AND person_key = ? AND kind = ?"
_GET_ID: Final = "SELECT value, fetched_at FROM ids WHERE namespace = ? AND key = ?"
_PUT_ID: Final = (
    "INSERT OR REPLACE INTO ids (namespace, key, value, fetched_at) VALUES (?, ?, ?, ?)"
)
_EXPIRE_IDS: Final = "DELETE FROM ids WHERE fetched_at < ?"
_LOAD_PAUSES: Final = "SELECT person_key, targets, until, since FROM pauses ORDER BY person_key"
_PUT_PAUSE: Final = (
    "INSERT OR REPLACE INTO pauses (person_key, targets, until, since) VALUES (?, ?, ?, ?)"
)
_DELETE_PAUSE: Final = "DELETE FROM pauses WHERE person_key = ?"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[SqliteStore, _P], _R],
) -> Callable[Concatenate[SqliteStore, _P], _R]:
    """Turn SQLite's errors (disk full, I/O error, closed connection) into a
    ``StoreError`` that names the file."""

    def guarded(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    guarded.__name__ = method.__name__
    guarded.__qualname__ = method.__qualname__
    guarded.__doc__ = method.__doc__
    return guarded


def _write(
    method: Callable[Concatenate[SqliteStore, _P], _R],
) -> Callable[Concatenate[SqliteStore, _P], _R]:
    """``_guarded`` for a write: its outcome is the store's ``write_failure``."""

    def write(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            result = method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._write_failure = str(exc)
            raise StoreError(f"state database {self.path}: {exc}") from exc
        self._write_failure = None
        return result

    write.__name__ = method.__name__
    write.__qualname__ = method.__qualname__
    write.__doc__ = method.__doc__
    return write


@contextmanager
def _private_umask() -> Iterator[None]:
    # The umask is process-wide; it is held only while files are created, and
    # only ever narrows what another thread creates meanwhile.
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700; existing ones keep their mode."""
    missing: list[Path] = []
    walk = directory
    while not walk.exists():
        missing.append(walk)
        if walk.parent == walk:
            break
        walk = walk.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to chmod
        os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` as 0600, or narrow an existing one (and say so)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        return
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
            continue
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        try:
            os.chmod(candidate, 0o600)
        except OSError as exc:
            log.warning(
                "state file is readable by others and could not be fixed",
                extra=kv(path=str(candidate), mode=mode, error=str(exc)),
            )
        else:
            log.warning(
                "state file was readable by others; changed to 0600",
                extra=kv(path=str(candidate), mode=mode),
            )


def _damaged(path: Path, detail: str) -> StoreError:
    return StoreError(
        f"{path} is not a SQLite database or is damaged ({detail}). Move it aside to "
        "start with an empty state; presence-sync then re-applies every status, but "
        "the statuses it saved to give back stay in the old file."
    )


def _open_failure(path: Path, exc: sqlite3.Error) -> StoreError:
    """The admin's reading of why ``path`` could not be opened."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return _damaged(path, str(exc))
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(f"state database {path} stays locked by another process: {exc}")
    return StoreError(f"cannot open state database {path}: {exc}")


def _commit_runs(
    db: sqlite3.Connection, runs: list[tuple[str, list[tuple[Any, ...]]]], begin: str = "BEGIN"
) -> None:
    """Execute ``runs`` (statement, rows) in one transaction on ``db``."""
    if not runs:
        return
    db.execute(begin)
    try:
        for sql, rows in runs:
            db.executemany(sql, rows)
        db.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (disk full does).
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class _Writer:
    """One thread with its own connection to ``path``, committing groups of
    applied rows in the order they are given. A ``sqlite3`` connection is
    bound to the thread that opened it, so the thread opens it itself."""

    def __init__(self, path: Path, busy_ms: int, synchronous: str) -> None:
        self._path = path
        self._busy_ms = busy_ms
        self._synchronous = synchronous
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presence-sync-store")

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self._path,
                isolation_level=None,
                timeout=self._busy_ms / 1000,
                cached_statements=64,
            )
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA journal_size_limit = 4194304")
            self._local.db = db
        return db

    def _commit(self, runs: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        try:
            _commit_runs(self._connection(), runs)
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self._path}: {exc}") from exc

    async def commit(self, runs: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        try:
            future = self._pool.submit(self._commit, runs)
        except RuntimeError as exc:  # shut down meanwhile
            raise StoreError(f"state database {self._path}: store is closed") from exc
        await asyncio.wrap_future(future)

    def _checkpoint(self) -> None:
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            # The next one, or the next commit here, tries again.
            log.warning("WAL checkpoint failed", extra=kv(path=str(self._path), error=str(exc)))

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, in the thread, unawaited."""
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._pool.submit(self._checkpoint)

    def _close_connection(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def close(self) -> None:
        """Finish the queued commits, close the connection, end the thread."""
        self._pool.submit(self._close_connection)
        self._pool.shutdown(wait=True)


class SqliteStore:
    """The daemon's store: one SQLite database file.

    Durability: WAL journal with ``synchronous=FULL``. Every write has
    committed to the WAL file, and the file is synced to the disk, when the
    call returns: it survives a crash or kill of the process at any instant,
    and a power cut or kernel crash too. That matters for the write-ahead
    record (a status we are about to set, which a power cut must not make us
    forget, or nobody would take it back), the person's own saved status
    (lost, it could not be given back), the objects we created and the
    pauses. Only the id cache is written with ``synchronous=NORMAL``: a
    lookup lost to a power cut is made again. The price is one sync of the
    WAL file per commit (the engine groups its records, one commit per loop
    turn; ``benchmarks/engine.py`` measures it). ``sync=False`` writes
    everything with ``NORMAL`` (the last commits before a power cut may be
    lost, never the database): for benchmarks and tests. ``busy_timeout``
    (seconds, default 5) is how long a write waits for a second process
    holding the file (``presence-sync status``, a backup) before it fails.

    Files: the database and its ``-wal``/``-shm`` files are created 0600 and
    missing parent directories 0700, whatever the umask. An existing directory
    keeps its mode; an existing database file others can read is set to 0600
    with a warning in the log.

    Schema: ``PRAGMA user_version`` counts the ``MIGRATIONS`` applied, each in
    one transaction. Opening raises ``StoreError``, naming the path, for a
    database written by a newer presence-sync (upgrade, nothing is changed),
    for a file that is not a SQLite database or is damaged, for a SQLite
    database of another application, and when the file cannot be opened.
    Every other SQLite failure (disk full, I/O error, use after ``close``)
    raises ``StoreError`` too. Writing bad values raises ``ValueError`` (see
    the module docstring) and changes nothing.

    Threads: use one instance from one thread, the asyncio loop's (SQLite's
    ``check_same_thread`` enforces it). Calls are short (tens of microseconds)
    and run on the loop directly, except that the engine's grouped commits
    never wait there: ``try_write_applied`` commits only if the write lock is
    free at once, and ``awrite_applied`` hands a group to a writer thread
    with its own connection, so another process holding the lock (up to
    ``busy_timeout``) never stalls the loop. Once either was first called,
    WAL checkpoints run only in that thread. Another thread or process wanting
    the data opens its own ``SqliteStore``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = BUSY_TIMEOUT_MS / 1000,
        sync: bool = True,
    ) -> None:
        self.path = Path(path)
        self._clock: Clock = clock or SystemClock()
        self._synchronous = "FULL" if sync else "NORMAL"
        self._persons = _PersonCache()
        self._busy_ms = round(busy_timeout * 1000)
        self._writer: _Writer | None = None
        self._now: sqlite3.Connection | None = None
        self._backlog = 0
        self._commits = 0
        self._closed = False
        self._write_failure: str | None = None
        try:
            with _private_umask():
                _make_dirs(self.path.parent)
                _private_file(self.path)
                self._db = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    timeout=self._busy_ms / 1000,
                    cached_statements=64,
                )
                try:
                    self._open()
                except BaseException:
                    self._db.close()
                    raise
        except OSError as exc:
            raise StoreError(f"cannot create state database {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise _open_failure(self.path, exc) from exc

    def _open(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        # Reading the header first is what tells a foreign or newer file apart
        # before this process changes anything in it.
        version = self._check_identity()
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning(
                "state database cannot use WAL; writes are slower",
                extra=kv(path=str(self.path), journal_mode=mode),
            )
        db.execute(f"PRAGMA synchronous = {self._synchronous}")
        # Bounds the WAL file after a burst of writes.
        db.execute("PRAGMA journal_size_limit = 4194304")
        if version:
            problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise _damaged(self.path, "; ".join(problems))
        self._migrate()

    def _check_identity(self) -> int:
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path} belongs to another application (application_id {app_id:#x}), "
                "not presence-sync: point state.path at another file"
            )
        known = len(MIGRATIONS)
        if version > known:
            raise StoreError(
                f"state database {self.path} has schema version {version}, written by a newer "
                f"presence-sync; this one understands up to version {known}. "
                "Upgrade presence-sync (the file was left unchanged)."
            )
        if version == 0 and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(
                f"{self.path} is a SQLite database of another application, not presence-sync: "
                "point state.path at another file"
            )
        return version

    def _migrate(self) -> None:
        db = self._db
        while True:
            # The version is read again under the write lock: two processes
            # opening a new file at once must not both run a migration.
            db.execute("BEGIN IMMEDIATE")
            step = 0
            try:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version >= len(MIGRATIONS):
                    db.execute("COMMIT")
                    return
                step = version + 1
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {step}")
                db.execute("COMMIT")
            except BaseException as exc:
                # SQLite may have rolled back already (disk full does).
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if step and isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"state database {self.path}: migration to schema version {step} "
                        f"failed, the file is unchanged: {exc}"
                    ) from exc
                raise
            log.info(
                "state database migrated",
                extra=kv(path=str(self.path), schema_version=step),
            )

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    @_guarded
    def load_applied(self) -> list[AppliedRow]:
        """Every remembered (target, person), ordered by target and person key.
        A row that no longer decodes is skipped with a warning and kept."""
        rows = (_decode_applied(row) for row in self._db.execute(_LOAD_APPLIED))
        return [row for row in rows if row is not None]

    @_write
    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        """Remember what ``target`` confirmed for ``person`` (replaces).
        Raises ``ValueError`` for naive datetimes or ``data`` JSON cannot carry."""
        row = _applied_row(target, self._persons.text(person), person, applied, uncertain)
        self._db.execute(_PUT_APPLIED, row)

    @_write
    def delete_applied(self, target: str, person_key: str) -> None:
        """Forget (target, person); nothing happens when it is not there."""
        self._db.execute(_DELETE_APPLIED, (target, person_key))

    @_write
    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Every put and delete in one transaction (see ``Store.write_applied``)."""
        _commit_runs(self._db, self._runs(writes))

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        """Every put and delete in one transaction, now, if the write lock is
        free (see ``Store.try_write_applied``). In WAL mode such a commit
        appends to the WAL file and syncs it (one fsync on the loop's thread:
        a fraction of a millisecond on an idle SSD, milliseconds on a busy
        disk; none with ``sync=False``). False, with nothing written, while another
        connection holds the lock or groups given to ``awrite_applied`` are
        still being written."""
        runs = self._runs(writes)
        if not runs:
            return True
        if self._backlog:
            return False
        writer = self._start_writer()
        try:
            _commit_runs(self._now_db(), runs, begin="BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False  # not a failure: the writer thread waits for the lock
            self._write_failure = str(exc)
            raise StoreError(f"state database {self.path}: {exc}") from exc
        self._write_failure = None
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            writer.checkpoint()
        return True

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Every put and delete in one transaction on the writer thread, which
        waits up to ``busy_timeout`` for the lock (see
        ``Store.awrite_applied``). Values are encoded here, so a
        ``ValueError`` comes before anything is queued."""
        runs = self._runs(writes)
        if not runs:
            return
        writer = self._start_writer()
        self._backlog += 1
        try:
            await writer.commit(runs)
        except StoreError as exc:
            cause = exc.__cause__
            self._write_failure = str(cause if isinstance(cause, sqlite3.Error) else exc)
            raise
        finally:
            self._backlog -= 1
        self._write_failure = None

    @property
    def write_failure(self) -> str | None:
        """Why the last write failed (SQLite's words), ``None`` once one
        succeeds (see ``Store.write_failure``). A write that waits for
        another process's lock is not a failure until ``busy_timeout`` ends."""
        return self._write_failure

    def _start_writer(self) -> _Writer:
        writer = self._writer
        if writer is None:
            if self._closed:
                raise StoreError(f"state database {self.path}: store is closed")
            writer = self._writer = _Writer(self.path, self._busy_ms, self._synchronous)
            # Checkpoints now run in the writer thread, off the loop; this
            # connection's few other writes only append to the WAL.
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
        return writer

    def _now_db(self) -> sqlite3.Connection:
        """The loop's connection for commits that must not wait: busy timeout 0."""
        db = self._now
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=0, cached_statements=64)
            db.execute("PRAGMA busy_timeout = 0")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA wal_autocheckpoint = 0")
            self._now = db
        return db

    def _runs(self, writes: Sequence[AppliedWrite]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        # Runs of puts and of deletes, in order, each one executemany: the
        # engine's groups are written with a few calls into SQLite, not one per row.
        runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        args: tuple[Any, ...]
        for w in writes:
            if w.applied is None:
                sql, args = _DELETE_APPLIED, (w.target, w.person.key)
            else:
                text = self._persons.text(w.person)
                row = _applied_row(w.target, text, w.person, w.applied, w.uncertain)
                sql, args = _PUT_APPLIED, row
            if runs and runs[-1][0] is sql:
                runs[-1][1].append(args)
            else:
                runs.append((sql, [args]))
        return runs

    @_guarded
    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None:
        """The person's own status as saved by ``target`` (a fresh copy), if any."""
        row = self._db.execute(_GET_SAVED, (target, person_key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    @_write
    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        """Save the person's own status (``None`` deletes it). Raises
        ``ValueError`` when ``doc`` does not survive JSON unchanged."""
        if doc is None:
            self._db.execute(_DELETE_SAVED, (target, person_key))
            return
        text = _json_doc(doc, f"saved({target!r}, {person_key!r})")
        now = _time_text(self._clock.now(), "clock.now()")
        self._db.execute(_PUT_SAVED, (target, person_key, text, now))

    @_guarded
    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        """Open external objects: kind → external id (a fresh dict)."""
        return dict(self._db.execute(_GET_OBJECTS, (target, person_key)).fetchall())

    @_write
    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None:
        """Remember an external object (replaces the one of the same kind)."""
        now = _time_text(self._clock.now(), "clock.now()")
        self._db.execute(_PUT_OBJECT, (target, person_key, kind, external_id, now))

    @_write
    def delete_object(self, target: str, person_key: str, kind: str) -> None:
        """Forget an external object; nothing happens when it is not there."""
        self._db.execute(_DELETE_OBJECT, (target, person_key, kind))

    @_guarded
    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        """A cached id lookup, ``None`` when missing or older than ``max_age`` seconds."""
        row = self._db.execute(_GET_ID, (namespace, key)).fetchone()
        if row is None or not _is_fresh(_parse_time(row[1]), self._clock.now(), max_age):
            return None
        return str(row[0])

    @_write
    def put_id(self, namespace: str, key: str, value: str) -> None:
        """Cache an id lookup, fetched now (replaces)."""
        now = _time_text(self._clock.now(), "clock.now()")
        with self._unsynced():
            self._db.execute(_PUT_ID, (namespace, key, value, now))

    @_write
    def housekeeping(self, max_id_age: float) -> int:
        """Drop id cache entries older than ``max_id_age`` seconds; returns how many."""
        cutoff = self._clock.now() - timedelta(seconds=max_id_age)
        with self._unsynced():
            return self._db.execute(_EXPIRE_IDS, (_time_text(cutoff, "cutoff"),)).rowcount

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        # The id cache is the one thing a power cut may take back: a lost
        # lookup is made again, so its writes skip the sync of the WAL file
        # (a thousand people looked up at the first start would be a
        # thousand syncs on the loop).
        if self._synchronous == "NORMAL":
            yield
            return
        self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self._db.execute(f"PRAGMA synchronous = {self._synchronous}")

    @_guarded
    def load_pauses(self) -> list[PauseRow]:
        """Every pause, ordered by person key (see ``Store.load_pauses``)."""
        rows = (_decode_pause(row) for row in self._db.execute(_LOAD_PAUSES))
        return [row for row in rows if row is not None]

    @_write
    def put_pause(self, pause: PauseRow) -> None:
        """Remember a pause (replaces); ``ValueError`` for a naive datetime."""
        self._db.execute(_PUT_PAUSE, _pause_tuple(pause))

    @_write
    def delete_pause(self, person_key: str) -> None:
        """Forget a person's pause; nothing happens when there is none."""
        self._db.execute(_DELETE_PAUSE, (person_key,))

    def close(self) -> None:
        """Close the database (idempotent); later calls raise ``StoreError``.
        Waits for the writer thread to finish what it was given."""
        self._closed = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        now, self._now = self._now, None
        if now is not None:
            now.close()
        self._db.close()


def read_applied(path: str | os.PathLike[str]) -> list[AppliedRow]:
    """Every applied row of the state database at ``path``, read the way
    ``presence-sync status`` does while the daemon is down (see ``read_stored``)."""
    return read_stored(path)[0]


def read_stored(path: str | os.PathLike[str]) -> tuple[list[AppliedRow], list[PauseRow]]:
    """Every applied row and every pause of the state database at ``path``,
    read the way ``presence-sync status`` does while the daemon is down:
    opened read-only (SQLite ``mode=ro``), so nothing is created, migrated
    or changed (a database from before pauses has none). Raises
    ``StoreError`` naming the path when there is no database yet, it cannot
    be read, or it is not (or a newer) presence-sync database."""
    file = Path(path)
    if not file.exists():
        raise StoreError(f"no state database at {file} (the daemon has not stored anything yet)")
    try:
        db = sqlite3.connect(
            file.resolve().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {file}: {exc}") from exc
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        if app_id != APPLICATION_ID:
            raise StoreError(f"{file} is not a presence-sync state database")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"state database {file} was written by a newer presence-sync "
                f"(schema version {version}); upgrade presence-sync to read it"
            )
        load = _LOAD_APPLIED if version >= _UNCERTAIN_SINCE else _LOAD_APPLIED_V2
        rows = (_decode_applied(row) for row in db.execute(load).fetchall())
        pauses = (
            (_decode_pause(row) for row in db.execute(_LOAD_PAUSES).fetchall())
            if version >= _PAUSES_SINCE
            else ()
        )
        return [row for row in rows if row is not None], [p for p in pauses if p is not None]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read state database {file}: {exc}") from exc
    finally:
        db.close()


# --- memory -------------------------------------------------------------------------


class MemoryStore:
    """The ``Store`` contract in memory, for tests and ``--dry-run``.

    It encodes values exactly as ``SqliteStore`` does, so it raises the same
    ``ValueError`` for values the database could not keep, and hands out
    copies. ``clock`` ages the id cache (a ``ManualClock`` in tests). After
    ``close`` every call raises ``StoreError``. One thread, like ``SqliteStore``.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._persons = _PersonCache()
        self._applied: dict[tuple[str, str], _Row] = {}
        self._saved: dict[tuple[str, str], str] = {}
        self._objects: dict[tuple[str, str], dict[str, str]] = {}
        self._ids: dict[tuple[str, str], tuple[str, datetime]] = {}
        self._pauses: dict[str, _PauseTuple] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(applied={len(self._applied)})"

    @property
    def write_failure(self) -> str | None:
        """Always ``None``: memory does not fill up the way a disk does."""
        return None

    def _check(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")

    def load_applied(self) -> list[AppliedRow]:
        self._check()
        rows = (_decode_applied(self._applied[k]) for k in sorted(self._applied))
        return [row for row in rows if row is not None]

    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        self._check()
        row = _applied_row(target, self._persons.text(person), person, applied, uncertain)
        self._applied[target, person.key] = row

    def delete_applied(self, target: str, person_key: str) -> None:
        self._check()
        self._applied.pop((target, person_key), None)

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        self._check()
        # Encode everything first: a bad value must leave every row as it was.
        rows = [
            (w.target, w.person.key, None)
            if w.applied is None
            else (
                w.target,
                w.person.key,
                _applied_row(
                    w.target, self._persons.text(w.person), w.person, w.applied, w.uncertain
                ),
            )
            for w in writes
        ]
        for target, key, row in rows:
            if row is None:
                self._applied.pop((target, key), None)
            else:
                self._applied[target, key] = row

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        # Nothing here can wait for a lock: the write happens at once.
        self.write_applied(writes)
        return True

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        self.write_applied(writes)

    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None:
        self._check()
        text = self._saved.get((target, person_key))
        return None if text is None else dict(json.loads(text))

    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        self._check()
        if doc is None:
            self._saved.pop((target, person_key), None)
        else:
            self._saved[target, person_key] = _json_doc(doc, f"saved({target!r}, {person_key!r})")

    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        self._check()
        return dict(self._objects.get((target, person_key), {}))

    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None:
        self._check()
        self._objects.setdefault((target, person_key), {})[kind] = external_id

    def delete_object(self, target: str, person_key: str, kind: str) -> None:
        self._check()
        objects = self._objects.get((target, person_key))
        if objects is not None:
            objects.pop(kind, None)
            if not objects:
                del self._objects[target, person_key]

    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        self._check()
        hit = self._ids.get((namespace, key))
        if hit is None or not _is_fresh(hit[1], self._clock.now(), max_age):
            return None
        return hit[0]

    def put_id(self, namespace: str, key: str, value: str) -> None:
        self._check()
        self._ids[namespace, key] = (value, _parse_time(_time_text(self._clock.now(), "now")))

    def housekeeping(self, max_id_age: float) -> int:
        self._check()
        now = self._clock.now()
        old = [
            k for k, (_, fetched) in self._ids.items() if not _is_fresh(fetched, now, max_id_age)
        ]
        for k in old:
            del self._ids[k]
        return len(old)

    def load_pauses(self) -> list[PauseRow]:
        self._check()
        rows = (_decode_pause(self._pauses[k]) for k in sorted(self._pauses))
        return [row for row in rows if row is not None]

    def put_pause(self, pause: PauseRow) -> None:
        self._check()
        self._pauses[pause.person_key] = _pause_tuple(pause)

    def delete_pause(self, person_key: str) -> None:
        self._check()
        self._pauses.pop(person_key, None)

    def close(self) -> None:
        self._closed = True


# --- the targets' view --------------------------------------------------------------


class StoreMemory:
    """The ``targets.base.Memory`` of one (target, person), backed by a store.

    Id cache namespaces are prefixed with the target name (``"slack:user"``
    for namespace ``user`` of target ``slack``), so two targets never read
    each other's entries. Errors are the store's.
    """

    __slots__ = ("_person_key", "_store", "_target")

    def __init__(self, store: Store, target: str, person_key: str) -> None:
        self._store = store
        self._target = target
        self._person_key = person_key

    def __repr__(self) -> str:
        return f"StoreMemory(target={self._target!r}, person={self._person_key!r})"

    def saved(self) -> Mapping[str, Any] | None:
        return self._store.get_saved(self._target, self._person_key)

    def save(self, doc: Mapping[str, Any] | None) -> None:
        self._store.put_saved(self._target, self._person_key, doc)

    def objects(self) -> Mapping[str, str]:
        return self._store.get_objects(self._target, self._person_key)

    def put_object(self, kind: str, external_id: str) -> None:
        self._store.put_object(self._target, self._person_key, kind, external_id)

    def drop_object(self, kind: str) -> None:
        self._store.delete_object(self._target, self._person_key, kind)

    def cached_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        return self._store.get_id(f"{self._target}:{namespace}", key, max_age)

    def cache_id(self, namespace: str, key: str, value: str) -> None:
        self._store.put_id(f"{self._target}:{namespace}", key, value)

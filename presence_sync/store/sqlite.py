"""The daemon's default store: one SQLite file in WAL mode (``SqliteStore``).

Also here: the file modes it creates its files with, the writer thread that
keeps the engine's grouped commits off the event loop, and ``read_stored``,
which reads a database read-only the way ``presence-sync status`` does.
Errors: ``StoreError`` for everything the admin must act on (a database from
a newer presence-sync, a file that is not a database, a full disk, a closed
store); ``ValueError`` for a programming error in what is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from presence_sync.clock import Clock, SystemClock
from presence_sync.errors import StoreError
from presence_sync.model import Applied, Person
from presence_sync.ops.logging import kv
from presence_sync.store.base import AppliedRow, AppliedWrite, PauseRow
from presence_sync.store.codec import (
    PersonCache,
    applied_row,
    decode_applied,
    decode_pause,
    is_fresh,
    json_doc,
    parse_time,
    pause_tuple,
    time_text,
)
from presence_sync.store.schema import (
    APPLICATION_ID,
    MIGRATIONS,
    PAUSES_SINCE,
    UNCERTAIN_SINCE,
)

__all__ = ["BUSY_TIMEOUT_MS", "CHECKPOINT_EVERY", "SqliteStore", "read_applied", "read_stored"]

log = logging.getLogger(__name__)


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
        self._persons = PersonCache()
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
        rows = (decode_applied(row) for row in self._db.execute(_LOAD_APPLIED))
        return [row for row in rows if row is not None]

    @_write
    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        """Remember what ``target`` confirmed for ``person`` (replaces).
        Raises ``ValueError`` for naive datetimes or ``data`` JSON cannot carry."""
        row = applied_row(target, self._persons.text(person), person, applied, uncertain)
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
                row = applied_row(w.target, text, w.person, w.applied, w.uncertain)
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
        text = json_doc(doc, f"saved({target!r}, {person_key!r})")
        now = time_text(self._clock.now(), "clock.now()")
        self._db.execute(_PUT_SAVED, (target, person_key, text, now))

    @_guarded
    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        """Open external objects: kind → external id (a fresh dict)."""
        return dict(self._db.execute(_GET_OBJECTS, (target, person_key)).fetchall())

    @_write
    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None:
        """Remember an external object (replaces the one of the same kind)."""
        now = time_text(self._clock.now(), "clock.now()")
        self._db.execute(_PUT_OBJECT, (target, person_key, kind, external_id, now))

    @_write
    def delete_object(self, target: str, person_key: str, kind: str) -> None:
        """Forget an external object; nothing happens when it is not there."""
        self._db.execute(_DELETE_OBJECT, (target, person_key, kind))

    @_guarded
    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        """A cached id lookup, ``None`` when missing or older than ``max_age`` seconds."""
        row = self._db.execute(_GET_ID, (namespace, key)).fetchone()
        if row is None or not is_fresh(parse_time(row[1]), self._clock.now(), max_age):
            return None
        return str(row[0])

    @_write
    def put_id(self, namespace: str, key: str, value: str) -> None:
        """Cache an id lookup, fetched now (replaces)."""
        now = time_text(self._clock.now(), "clock.now()")
        with self._unsynced():
            self._db.execute(_PUT_ID, (namespace, key, value, now))

    @_write
    def housekeeping(self, max_id_age: float) -> int:
        """Drop id cache entries older than ``max_id_age`` seconds; returns how many."""
        cutoff = self._clock.now() - timedelta(seconds=max_id_age)
        with self._unsynced():
            return self._db.execute(_EXPIRE_IDS, (time_text(cutoff, "cutoff"),)).rowcount

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
        rows = (decode_pause(row) for row in self._db.execute(_LOAD_PAUSES))
        return [row for row in rows if row is not None]

    @_write
    def put_pause(self, pause: PauseRow) -> None:
        """Remember a pause (replaces); ``ValueError`` for a naive datetime."""
        self._db.execute(_PUT_PAUSE, pause_tuple(pause))

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
        load = _LOAD_APPLIED if version >= UNCERTAIN_SINCE else _LOAD_APPLIED_V2
        rows = (decode_applied(row) for row in db.execute(load).fetchall())
        pauses = (
            (decode_pause(row) for row in db.execute(_LOAD_PAUSES).fetchall())
            if version >= PAUSES_SINCE
            else ()
        )
        return [row for row in rows if row is not None], [p for p in pauses if p is not None]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read state database {file}: {exc}") from exc
    finally:
        db.close()

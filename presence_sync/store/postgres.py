"""The store in a PostgreSQL database (``PostgresStore``), for ``state.url``.

Rows are keyed by the NFON customer (``nfon.customer``) first: daemons of
several customers share one database without seeing each other's rows.
The layout and its migrations are ``schema.POSTGRES_MIGRATIONS``; values are
encoded by ``codec`` exactly as SQLite keeps them.

Connections: one for the event loop's short calls (reads, the targets'
saved statuses and objects, pauses), and one in a writer thread for the
engine's grouped commits (``awrite_applied``), so a slow database never
stalls the loop on the engine's hot path. A connection that breaks is
opened again at the next call; the call that met the break raises
``StoreError``, and ``write_failure`` says why until a write succeeds.

Every write goes through ``PostgresStore._write``: one transaction per call
(``write_applied``: one for the group), pipelined, so one round trip. That
one place is where a check that this daemon may still write (a lease, an
epoch) joins each write's transaction; the rows are keyed by customer
already, as such a lease would be.

Session state: the connections keep psycopg's prepared statements and
``statement_timeout``, so a pooler must hand each connection one server
session for its life (PgBouncer's session pooling; transaction pooling is
not supported).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg import conninfo as pg_conninfo

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
from presence_sync.store.schema import APPLICATION_ID, POSTGRES_MIGRATIONS

__all__ = [
    "CONNECT_TIMEOUT",
    "STATEMENT_TIMEOUT",
    "PostgresStore",
    "describe",
    "probe",
    "read_stored",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 10
"""Seconds to wait for a connection to the database (libpq's ``connect_timeout``)."""
STATEMENT_TIMEOUT: Final = 5000
"""Milliseconds a statement may wait (a lock held elsewhere, a stalled
server) before it fails, as ``SqliteStore``'s busy timeout."""

_CONNECT_DEFAULTS: Final[Mapping[str, Any]] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "application_name": "presence-sync",
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq parameters used unless the URL gives its own."""

_MIGRATION_LOCK: Final = APPLICATION_ID
"""Key of the transaction-scoped advisory lock that serialises migrations:
two daemons starting at once on an empty database take turns."""

_PUT_APPLIED: Final = (
    "INSERT INTO presence_sync_applied"
    " (customer, target, person_key, person, status, at, expires, data, uncertain)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::integer <> 0)"
    " ON CONFLICT (customer, target, person_key) DO UPDATE SET"
    " person = EXCLUDED.person, status = EXCLUDED.status, at = EXCLUDED.at,"
    " expires = EXCLUDED.expires, data = EXCLUDED.data, uncertain = EXCLUDED.uncertain"
)
_LOAD_APPLIED: Final = (
    "SELECT target, person_key, person, status, at, expires, data, uncertain::integer"
    " FROM presence_sync_applied WHERE customer = %s ORDER BY target, person_key"
)
_DELETE_APPLIED: Final = (
    "DELETE FROM presence_sync_applied WHERE customer = %s AND target = %s AND person_key = %s"
)
_GET_SAVED: Final = (
    "SELECT doc FROM presence_sync_saved WHERE customer = %s AND target = %s AND person_key = %s"
)
_PUT_SAVED: Final = (
    "INSERT INTO presence_sync_saved (customer, target, person_key, doc, saved_at)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (customer, target, person_key)"
    " DO UPDATE SET doc = EXCLUDED.doc, saved_at = EXCLUDED.saved_at"
)
_DELETE_SAVED: Final = (
    "DELETE FROM presence_sync_saved WHERE customer = %s AND target = %s AND person_key = %s"
)
_GET_OBJECTS: Final = (
    "SELECT kind, external_id FROM presence_sync_objects"
    " WHERE customer = %s AND target = %s AND person_key = %s"
)
_PUT_OBJECT: Final = (
    "INSERT INTO presence_sync_objects"
    " (customer, target, person_key, kind, external_id, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (customer, target, person_key, kind)"
    " DO UPDATE SET external_id = EXCLUDED.external_id, created_at = EXCLUDED.created_at"
)
_DELETE_OBJECT: Final = (
    "DELETE FROM presence_sync_objects"
    " WHERE customer = %s AND target = %s AND person_key = %s AND kind = %s"
)
_GET_ID: Final = (
    "SELECT value, fetched_at FROM presence_sync_ids"
    " WHERE customer = %s AND namespace = %s AND key = %s"
)
_PUT_ID: Final = (
    "INSERT INTO presence_sync_ids (customer, namespace, key, value, fetched_at)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (customer, namespace, key)"
    " DO UPDATE SET value = EXCLUDED.value, fetched_at = EXCLUDED.fetched_at"
)
_EXPIRE_IDS: Final = "DELETE FROM presence_sync_ids WHERE customer = %s AND fetched_at < %s"
_LOAD_PAUSES: Final = (
    "SELECT person_key, targets, until, since FROM presence_sync_pauses"
    " WHERE customer = %s ORDER BY person_key"
)
_PUT_PAUSE: Final = (
    "INSERT INTO presence_sync_pauses (customer, person_key, targets, until, since)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (customer, person_key)"
    " DO UPDATE SET targets = EXCLUDED.targets, until = EXCLUDED.until, since = EXCLUDED.since"
)
_DELETE_PAUSE: Final = "DELETE FROM presence_sync_pauses WHERE customer = %s AND person_key = %s"

_Runs = list[tuple[str, list[tuple[Any, ...]]]]


def describe(url: str) -> str:
    """``url`` as it may be shown: user, host, port and database, never a
    password (a URL that cannot be parsed is shown as ``postgresql://?``)."""
    try:
        parts = pg_conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def probe(url: str, *, customer: str, password: str | None = None) -> str:
    """Connect to the database at ``url`` and say what is there, changing
    nothing (for ``presence-sync check``): the server's version, the schema
    version, and how many applied rows ``customer`` has. Raises
    ``StoreError`` (naming the database, never a password) when it cannot
    connect, or when the schema is newer than this presence-sync knows."""
    where = describe(url)
    db = _Connection(url, password, where, read_only=True)
    try:
        server = db.rows("SHOW server_version", ())[0][0]
        exists = db.rows("SELECT to_regclass('presence_sync_schema') IS NOT NULL", ())[0][0]
        if not exists:
            return (
                f"{where}: PostgreSQL {server}, no presence-sync tables yet "
                "(the daemon creates them when it starts)"
            )
        version = int(db.rows("SELECT version FROM presence_sync_schema", ())[0][0])
        known = len(POSTGRES_MIGRATIONS)
        if version > known:
            raise StoreError(
                f"state database {where} has schema version {version}, written by a newer "
                f"presence-sync; this one understands up to version {known}"
            )
        if version < 1:
            return f"{where}: PostgreSQL {server}, schema version {version} of {known}"
        rows = db.rows(
            "SELECT count(*) FROM presence_sync_applied WHERE customer = %s", (customer,)
        )[0][0]
        return (
            f"{where}: PostgreSQL {server}, schema version {version} of {known}, "
            f"{rows} applied rows of {customer}"
        )
    finally:
        db.close()


def _schema_version(cur: psycopg.Cursor[tuple[Any, ...]], where: str) -> int | None:
    """The schema version stored in the database, ``None`` when there is
    none (no ``presence_sync_schema`` table, or no row in it yet); reads
    only. Raises ``StoreError`` for a version newer than this presence-sync
    knows."""
    made = cur.execute("SELECT to_regclass('presence_sync_schema') IS NOT NULL").fetchone()
    if made is None or not made[0]:
        return None
    row = cur.execute("SELECT version FROM presence_sync_schema").fetchone()
    if row is None:
        return None
    version, known = int(row[0]), len(POSTGRES_MIGRATIONS)
    if version > known:
        raise StoreError(
            f"state database {where} has schema version {version}, written by a newer "
            f"presence-sync; this one understands up to version {known}. "
            "Upgrade presence-sync (the database was left unchanged)."
        )
    return version


def read_stored(
    url: str, *, customer: str, password: str | None = None
) -> tuple[list[AppliedRow], list[PauseRow]] | None:
    """Every applied row and every pause of ``customer`` in the database at
    ``url``, read the way ``presence-sync status`` does while the daemon is
    down: on a read-only connection (``default_transaction_read_only``), in
    one read-only transaction of SELECTs only, so nothing is created,
    migrated or changed, whatever the role may do. ``None`` when the
    database has no presence-sync tables yet (nothing was stored). Raises
    ``StoreError`` (naming the database, never a password) when it cannot
    connect, or when the schema is newer than this presence-sync knows."""
    where = describe(url)
    db = _Connection(url, password, where, read_only=True)
    try:
        with db.transaction(pipelined=False) as cur:
            version = _schema_version(cur, where)
            if version is None or version < 1:
                return None
            # Every version up to ``known`` has these columns (one so far;
            # a migration that changes them adds a query for the old layout).
            applied = cur.execute(_LOAD_APPLIED, (customer,)).fetchall()
            paused = cur.execute(_LOAD_PAUSES, (customer,)).fetchall()
    finally:
        db.close()
    rows = [r for r in (decode_applied(row) for row in applied) if r is not None]
    pauses = [p for p in (decode_pause(row) for row in paused) if p is not None]
    return rows, pauses


class _Connection:
    """One connection, opened again after it broke. Used by one thread at a time.
    ``read_only``: every transaction of the connection is read-only, so the
    server refuses any write, whatever the role may do."""

    def __init__(
        self, url: str, password: str | None, where: str, *, read_only: bool = False
    ) -> None:
        self._url = url
        self.password = password
        """Used by the next connection opened (``PostgresStore.use_password``)."""
        self._where = where
        self._read_only = read_only
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None

    def _open(self) -> psycopg.Connection[tuple[Any, ...]]:
        db = self._db
        if db is not None and not db.closed:
            return db
        given = pg_conninfo.conninfo_to_dict(self._url)
        # What the URL does not set itself. A server that stops answering
        # (a network partition: no reset, no reply) must not hold the loop
        # forever: the kernel gives up on unacknowledged data after
        # tcp_user_timeout, keepalives find a silent peer while we wait.
        extra: dict[str, Any] = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
        if self.password is not None:
            extra["password"] = self.password
        db = psycopg.connect(self._url, autocommit=True, **extra)
        db.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT}")
        if self._read_only:
            db.execute("SET default_transaction_read_only = on")
        self._db = db
        return db

    def _failure(self, exc: psycopg.Error) -> StoreError:
        return StoreError(f"state database {self._where}: {str(exc).strip()}")

    @contextmanager
    def transaction(self, *, pipelined: bool = True) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """A cursor in one transaction: committed when the block ends,
        rolled back when it raises. Every write of the store runs here.
        ``StoreError`` for the database's failures.

        ``pipelined``: the block's statements, with ``BEGIN`` and ``COMMIT``,
        are sent together and answered together (libpq's pipeline mode):
        one round trip to the server per transaction, not one per statement.
        Their results (``rowcount``) are there once the block has ended; a
        block that needs a result in between says ``pipelined=False``."""
        try:
            db = self._open()
            with contextlib.ExitStack() as stack:
                if pipelined:
                    stack.enter_context(db.pipeline())
                stack.enter_context(db.transaction())
                yield stack.enter_context(db.cursor())
        except psycopg.Error as exc:
            raise self._failure(exc) from exc

    def rows(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of one read; ``StoreError`` for the database's failures."""
        try:
            return self._open().execute(sql, args).fetchall()
        except psycopg.Error as exc:
            raise self._failure(exc) from exc

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


class PostgresStore:
    """The store in PostgreSQL, one customer's rows (see the module docstring).

    ``url`` is a libpq connection string or ``postgresql://`` URL; its
    parameters (``sslmode``, ``sslrootcert``, ...) reach libpq unchanged, as
    do libpq's environment variables (``PGPASSFILE``, ``PGSSLMODE``).
    ``password`` (from ``state.password_file``), when given, is used instead
    of libpq's own ways of finding one. ``customer`` keys every row.

    Opening connects, creates the schema or migrates it forward, in one
    transaction under an advisory lock, so that daemons starting at once on
    an empty database take turns. Raises ``StoreError`` (naming the
    database, never a password) when it cannot connect, when the schema is
    newer than this presence-sync knows (nothing is changed), and when a
    migration fails (nothing is changed).

    Durability: every call returns once PostgreSQL committed (the server's
    ``synchronous_commit`` decides what that means; its default syncs the
    WAL). Threads: as ``SqliteStore``, one instance from the loop's thread;
    ``awrite_applied`` runs on its own thread and connection.
    """

    def __init__(
        self,
        url: str,
        *,
        customer: str,
        password: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.url = url
        self.customer = customer
        self._where = describe(url)
        self._password = password
        self._clock: Clock = clock or SystemClock()
        self._persons = PersonCache()
        self._db = _Connection(url, password, self._where)
        self._pool: ThreadPoolExecutor | None = None
        self._writer_local = threading.local()
        self._writers: list[_Connection] = []
        self._writers_lock = threading.Lock()  # writers made, and use_password
        self._backlog = 0
        self._closed = False
        self._write_failure: str | None = None
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r}, customer={self.customer!r})"

    def use_password(self, password: str | None) -> None:
        """Connect with ``password`` from now on (``None``: libpq finds one
        itself), for a rotated ``state.password_file`` on reload: every
        connection opened after this call uses it, the writer thread's too;
        the open ones carry on as they are (PostgreSQL keeps a session
        whose role's password changed)."""
        with self._writers_lock:
            self._password = password
            for db in (self._db, *self._writers):
                db.password = password

    # --- schema ----------------------------------------------------------------------

    def _migrate(self) -> None:
        known = len(POSTGRES_MIGRATIONS)
        with self._db.transaction(pipelined=False) as cur:
            # Held to the end of the transaction: the second daemon reads the
            # version only after the first committed its migration.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            stored = _schema_version(cur, self._where)
            if stored is None:
                # Created only when missing: a database already at this
                # version needs no CREATE privilege to be opened.
                made = cur.execute("SELECT to_regclass('presence_sync_schema')").fetchone()
                if made is None or made[0] is None:
                    cur.execute("CREATE TABLE presence_sync_schema (version INTEGER NOT NULL)")
                cur.execute("INSERT INTO presence_sync_schema (version) VALUES (0)")
            version = stored or 0
            for step in range(version, known):
                try:
                    for statement in POSTGRES_MIGRATIONS[step]:
                        cur.execute(statement)
                except psycopg.Error as exc:
                    raise StoreError(
                        f"state database {self._where}: migration to schema version "
                        f"{step + 1} failed, the database is unchanged: {str(exc).strip()}"
                    ) from exc
            if version < known:
                cur.execute("UPDATE presence_sync_schema SET version = %s", (known,))
        if version < known:
            log.info(
                "state database migrated",
                extra=kv(database=self._where, schema_version=known),
            )

    # --- the one way to write ---------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"state database {self._where}: store is closed")

    def _write(self, runs: _Runs, db: _Connection | None = None, *, no_wait: bool = False) -> int:
        """Execute ``runs`` (statement, rows) in one transaction; returns
        the rows the last statement changed. Every write goes through here,
        and its outcome is ``write_failure``. ``no_wait``: fail with
        ``LockNotAvailable`` at once rather than wait for a row lock."""
        self._check()
        try:
            with (db or self._db).transaction() as cur:
                if no_wait:
                    cur.execute("SET LOCAL lock_timeout = 1")
                for sql, rows in runs:
                    if len(rows) == 1:
                        cur.execute(sql, rows[0])
                    else:
                        cur.executemany(sql, rows)
            # Pipelined: the results came with the commit.
            changed = cur.rowcount
        except StoreError as exc:
            cause = exc.__cause__
            self._write_failure = str(cause).strip() if cause is not None else str(exc)
            raise
        self._write_failure = None
        return changed

    def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        self._check()
        return self._db.rows(sql, (self.customer, *args))

    @property
    def write_failure(self) -> str | None:
        """Why the last write failed (PostgreSQL's or libpq's words), ``None``
        once one succeeds (see ``Store.write_failure``)."""
        return self._write_failure

    # --- applied ---------------------------------------------------------------------

    def load_applied(self) -> list[AppliedRow]:
        """Every remembered (target, person) of this customer, ordered by
        target and person key; a row that no longer decodes is skipped."""
        rows = (decode_applied(row) for row in self._rows(_LOAD_APPLIED))
        return [row for row in rows if row is not None]

    def put_applied(
        self, target: str, person: Person, applied: Applied, *, uncertain: bool = False
    ) -> None:
        self.write_applied([AppliedWrite(target, person, applied, uncertain)])

    def delete_applied(self, target: str, person_key: str) -> None:
        self._write([(_DELETE_APPLIED, [(self.customer, target, person_key)])])

    def _runs(self, writes: Sequence[AppliedWrite]) -> _Runs:
        # Runs of puts and of deletes, in order; ValueError before anything is sent.
        runs: _Runs = []
        args: tuple[Any, ...]
        for w in writes:
            if w.applied is None:
                sql, args = _DELETE_APPLIED, (self.customer, w.target, w.person.key)
            else:
                text = self._persons.text(w.person)
                row = applied_row(w.target, text, w.person, w.applied, w.uncertain)
                sql, args = _PUT_APPLIED, (self.customer, *row)
            if runs and runs[-1][0] is sql:
                runs[-1][1].append(args)
            else:
                runs.append((sql, [args]))
        return runs

    def write_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Every put and delete in one transaction (see ``Store.write_applied``)."""
        runs = self._runs(writes)
        if runs:
            self._write(runs)

    def try_write_applied(self, writes: Sequence[AppliedWrite]) -> bool:
        """Every put and delete in one transaction, now, on the loop's
        connection (one round trip to the server), unless groups given to
        ``awrite_applied`` are still being written or a row is locked by
        another session: then False, with nothing written."""
        runs = self._runs(writes)
        if not runs:
            return True
        if self._backlog:
            return False
        try:
            self._write(runs, no_wait=True)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
                self._write_failure = None  # not a failure: the writer thread waits
                return False
            raise
        return True

    async def awrite_applied(self, writes: Sequence[AppliedWrite]) -> None:
        """Every put and delete in one transaction on the writer thread, in
        the order of the calls (see ``Store.awrite_applied``)."""
        runs = self._runs(writes)
        if not runs:
            return
        self._check()
        pool = self._pool
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="presence-sync-store"
            )
        try:
            future = pool.submit(self._write_in_thread, runs)
        except RuntimeError as exc:  # shut down meanwhile
            raise StoreError(f"state database {self._where}: store is closed") from exc
        self._backlog += 1
        try:
            await asyncio.wrap_future(future)
        finally:
            self._backlog -= 1

    def _write_in_thread(self, runs: _Runs) -> None:
        db: _Connection | None = getattr(self._writer_local, "db", None)
        if db is None:
            with self._writers_lock:
                db = self._writer_local.db = _Connection(self.url, self._password, self._where)
                self._writers.append(db)
        self._write(runs, db)

    # --- the targets' memory -----------------------------------------------------------

    def get_saved(self, target: str, person_key: str) -> Mapping[str, Any] | None:
        rows = self._rows(_GET_SAVED, target, person_key)
        return None if not rows else dict(json.loads(rows[0][0]))

    def put_saved(self, target: str, person_key: str, doc: Mapping[str, Any] | None) -> None:
        """Save the person's own status (``None`` deletes it); ``ValueError``
        when ``doc`` does not survive JSON unchanged."""
        if doc is None:
            self._write([(_DELETE_SAVED, [(self.customer, target, person_key)])])
            return
        text = json_doc(doc, f"saved({target!r}, {person_key!r})")
        now = time_text(self._clock.now(), "clock.now()")
        self._write([(_PUT_SAVED, [(self.customer, target, person_key, text, now)])])

    def get_objects(self, target: str, person_key: str) -> Mapping[str, str]:
        return {str(k): str(v) for k, v in self._rows(_GET_OBJECTS, target, person_key)}

    def put_object(self, target: str, person_key: str, kind: str, external_id: str) -> None:
        now = time_text(self._clock.now(), "clock.now()")
        row = (self.customer, target, person_key, kind, external_id, now)
        self._write([(_PUT_OBJECT, [row])])

    def delete_object(self, target: str, person_key: str, kind: str) -> None:
        self._write([(_DELETE_OBJECT, [(self.customer, target, person_key, kind)])])

    def get_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        rows = self._rows(_GET_ID, namespace, key)
        if not rows or not is_fresh(parse_time(rows[0][1]), self._clock.now(), max_age):
            return None
        return str(rows[0][0])

    def put_id(self, namespace: str, key: str, value: str) -> None:
        now = time_text(self._clock.now(), "clock.now()")
        self._write([(_PUT_ID, [(self.customer, namespace, key, value, now)])])

    def housekeeping(self, max_id_age: float) -> int:
        cutoff = time_text(self._clock.now() - timedelta(seconds=max_id_age), "cutoff")
        return self._write([(_EXPIRE_IDS, [(self.customer, cutoff)])])

    # --- pauses ----------------------------------------------------------------------

    def load_pauses(self) -> list[PauseRow]:
        rows = (decode_pause(row) for row in self._rows(_LOAD_PAUSES))
        return [row for row in rows if row is not None]

    def put_pause(self, pause: PauseRow) -> None:
        self._write([(_PUT_PAUSE, [(self.customer, *pause_tuple(pause))])])

    def delete_pause(self, person_key: str) -> None:
        self._write([(_DELETE_PAUSE, [(self.customer, person_key)])])

    def close(self) -> None:
        """Close the connections (idempotent); later calls raise ``StoreError``.
        Waits for the writer thread to finish what it was given."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._closed = True
        for db in self._writers:
            db.close()
        self._db.close()

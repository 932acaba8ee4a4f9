"""The stored layout and its migrations, per database.

SQLite counts the migrations applied in ``PRAGMA user_version``; PostgreSQL
in the one-row table ``presence_sync_schema``. Each entry runs in one
transaction with its version bump. Released entries are never edited; a
schema change appends one (to both tuples). JSON lives in TEXT columns and
timestamps are UTC ISO-8601 text of fixed width (text order is time order),
so both databases keep the same values and ``codec`` serves both.
"""

from __future__ import annotations

from typing import Final

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

PAUSES_SINCE: Final = 2
"""The schema version that brought the ``pauses`` table."""
UNCERTAIN_SINCE: Final = 3
"""The schema version that brought the ``uncertain`` column of ``applied``."""


POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Every row is keyed by the NFON customer (K-account) first, so daemons
        # of several customers share one database without touching each other.
        """CREATE TABLE presence_sync_applied (
            customer    TEXT NOT NULL,
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            person      TEXT NOT NULL,
            status      TEXT,
            at          TEXT NOT NULL,
            expires     TEXT,
            data        TEXT NOT NULL DEFAULT '{}',
            uncertain   BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (customer, target, person_key)
        )""",
        """CREATE TABLE presence_sync_saved (
            customer    TEXT NOT NULL,
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            doc         TEXT NOT NULL,
            saved_at    TEXT NOT NULL,
            PRIMARY KEY (customer, target, person_key)
        )""",
        """CREATE TABLE presence_sync_objects (
            customer    TEXT NOT NULL,
            target      TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            kind        TEXT NOT NULL,
            external_id TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            PRIMARY KEY (customer, target, person_key, kind)
        )""",
        """CREATE TABLE presence_sync_ids (
            customer    TEXT NOT NULL,
            namespace   TEXT NOT NULL,
            key         TEXT NOT NULL,
            value       TEXT NOT NULL,
            fetched_at  TEXT NOT NULL,
            PRIMARY KEY (customer, namespace, key)
        )""",
        """CREATE TABLE presence_sync_pauses (
            customer    TEXT NOT NULL,
            person_key  TEXT NOT NULL,
            targets     TEXT,
            until       TEXT,
            since       TEXT NOT NULL,
            PRIMARY KEY (customer, person_key)
        )""",
    ),
)
"""PostgreSQL's migrations: entry ``n`` brings ``presence_sync_schema.version``
from ``n`` to ``n + 1``. Version 1 is SQLite's version 3 with a customer
column; table names carry a ``presence_sync_`` prefix so the tables can share
a schema with others."""

POSTGRES_SCHEMA_VERSION: Final = len(POSTGRES_MIGRATIONS)
"""The PostgreSQL schema version this presence-sync writes."""

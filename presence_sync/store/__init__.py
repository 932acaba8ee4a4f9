"""Durable memory of the reconciler: what each target shows, and what to give back.

The ``Store`` contract (``base``) and its backends:

- ``SqliteStore`` (``sqlite``): the default, one SQLite file in WAL mode;
- ``PostgresStore`` (``postgres``): a PostgreSQL database, for ``state.url``
  (imported from its module, so that psycopg loads only when it is used);
- ``MemoryStore`` (``memory``): the same contract in memory, for tests and
  ``--dry-run``;
- ``TargetMemory`` (``base``): the ``targets.base.Memory`` of one
  (target, person), delegating to a store.

What is kept, per table (``schema`` holds the layout and its migrations):

- ``applied``: what each target confirmed for each person, with the person as
  they were then (so someone removed from the configuration can still be
  cleared), the target's memo (``Applied.data``), the expiry, and whether the
  engine is sure of it (``uncertain``: a write-ahead record or a request with
  an unknown outcome);
- ``saved``: the person's own status, saved by a target before it overwrote it;
- ``objects``: external objects a target created and must remove (calendar
  events), kind → external id;
- ``ids``: cached id lookups (e-mail → Slack user id) with when they were fetched;
- ``pauses``: people an admin paused (``presence-sync pause``), with the
  targets and until when, so a pause outlives a restart.

Every backend encodes values the same way (``codec``: JSON documents, UTC
timestamps), so a value the memory store accepts is one the databases
accept, and all give back values equal to what was put in. Every write is one
small transaction (``write_applied``: one for the whole group): a crash
between two calls leaves a state from which the next start converges.

Errors: ``StoreError`` (a ``PresenceSyncError``) for everything the admin must
act on (a database from a newer presence-sync, a file that is not a database,
a full disk, a closed store, a database that cannot be reached);
``ValueError`` for a programming error in what is written (a naive datetime,
``data`` JSON cannot carry exactly).
"""

from presence_sync.errors import StoreError
from presence_sync.store.base import AppliedRow, AppliedWrite, PauseRow, Store, TargetMemory
from presence_sync.store.memory import MemoryStore
from presence_sync.store.schema import MIGRATIONS, SCHEMA_VERSION
from presence_sync.store.sqlite import SqliteStore, read_applied, read_stored

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
    "TargetMemory",
    "read_applied",
    "read_stored",
]

"""What the SQLite store syncs to the disk before it returns: the write-ahead
record the engine commits before a request, the person's own saved status,
the objects we created and the pauses (``synchronous=FULL``: a power cut
cannot take them back); only the id cache is written without a sync.

The probe is a connection factory that reads each connection's ``PRAGMA
synchronous`` at the moment it commits a write: what SQLite itself will do
with that commit, not what the code meant to ask for."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from polling import eventually_async

from presence_sync.clock import SystemClock
from presence_sync.engine import Engine
from presence_sync.model import STATUS_FIELDS, Applied, Line, LineView, Person, Presence, Status
from presence_sync.store import AppliedWrite, PauseRow, SqliteStore, TargetMemory
from presence_sync.targets.base import Change, TargetInfo

FULL, NORMAL = 2, 1
ANNA = Person(key="anna@example.com", email="anna@example.com", extension="100")
BUSY = Status(availability="Busy", activity="InACall")


@dataclass
class Commit:
    """One committed write: the tables it touched and the connection's
    ``PRAGMA synchronous`` as SQLite read it at that moment."""

    tables: frozenset[str]
    synchronous: int


@dataclass
class Probe:
    commits: list[Commit] = field(default_factory=list)

    def levels(self, table: str) -> set[int]:
        return {c.synchronous for c in self.commits if table in c.tables}


def _table(sql: str) -> str | None:
    words = sql.replace("(", " ").split()
    upper = [w.upper() for w in words]
    for keyword in ("INTO", "FROM"):
        if keyword in upper and upper[0] in ("INSERT", "DELETE"):
            return words[upper.index(keyword) + 1]
    return None


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    found = Probe()

    class Recording(sqlite3.Connection):
        tables: set[str]

        def _note(self, sql: str) -> None:
            if not hasattr(self, "tables"):
                self.tables = set()
            table = _table(sql)
            if table is not None:
                self.tables.add(table)
            ends = sql.strip().upper() == "COMMIT" or (table and not self.in_transaction)
            if ends and self.tables:
                level = sqlite3.Connection.execute(self, "PRAGMA synchronous").fetchone()[0]
                found.commits.append(Commit(frozenset(self.tables), level))
                self.tables = set()

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            # A statement outside a transaction commits as it runs: noted first,
            # so the level is the one its commit is made with.
            if sql.strip().upper() != "COMMIT":
                cursor = super().execute(sql, *args)
                self._note(sql)
                return cursor
            self._note(sql)
            return super().execute(sql, *args)

        def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            cursor = super().executemany(sql, *args)
            self._note(sql)
            return cursor

    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, factory=Recording, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return found


class Remote:
    """A target with remote state that notes, at each request, what the
    store had committed until then."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="remote", description="test double", fields=frozenset(STATUS_FIELDS)
    )

    def __init__(self, probe: Probe) -> None:
        self.name = "teams"
        self.probe = probe
        self.before: list[list[Commit]] = []

    async def apply(self, change: Change) -> Applied:
        self.before.append(list(self.probe.commits))
        return Applied(status=change.desired, at=datetime.now().astimezone())

    async def aclose(self) -> None:
        pass


class InCall:
    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> dict[str, Status | None]:
        return {"teams": BUSY if view.line is Line.IN_USE else None}


async def test_the_write_ahead_record_is_synced_before_the_request_leaves(
    probe: Probe, tmp_path: Path
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    target = Remote(probe)
    engine = Engine(targets={"teams": target}, store=store, rules=InCall(), clock=SystemClock())
    engine.set_people([ANNA])
    runner = asyncio.get_running_loop().create_task(engine.run())
    try:
        engine.observe(LineView(extension="100", line=Line.IN_USE, presence=Presence.AVAILABLE))
        await eventually_async(lambda: target.before, "the request to the target")
        await eventually_async(lambda: not engine.pending(), "the confirmed record")
    finally:
        engine.stop()
        await runner
    [before] = target.before
    ahead = [c for c in before if "applied" in c.tables]
    assert ahead, "the write-ahead record was committed before the request"
    assert [c.synchronous for c in ahead] == [FULL] * len(ahead)
    assert probe.levels("applied") == {FULL}  # the confirmed record too
    [row] = store.load_applied()
    assert row.applied.status == BUSY
    # The confirmed record is certain (schema 3 keeps the flag in a column).
    assert not row.uncertain
    assert "presence_sync.uncertain" not in row.applied.data
    store.close()


def test_saved_statuses_objects_and_pauses_are_synced_the_id_cache_is_not(
    probe: Probe, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "state.db")
    memory = TargetMemory(store, "slack_status", ANNA.key)
    memory.save({"text": "Working from Lisbon", "emoji": ":palm_tree:"})
    memory.put_object("event", "AAMk-1")
    store.put_pause(PauseRow(ANNA.key, None, None, datetime.now().astimezone()))
    memory.cache_id("slack", ANNA.email, "U0ANNA")
    memory.save(None)
    store.close()
    assert probe.levels("saved") == {FULL}
    assert probe.levels("objects") == {FULL}
    assert probe.levels("pauses") == {FULL}
    assert probe.levels("ids") == {NORMAL}


def test_without_sync_every_commit_is_normal(probe: Probe, tmp_path: Path) -> None:
    """The probe tells the two apart (the benchmark's unsynced store)."""
    store = SqliteStore(tmp_path / "state.db", sync=False)
    TargetMemory(store, "slack_status", ANNA.key).save({"text": "x"})
    row = Applied(status=BUSY, at=datetime.now().astimezone())
    assert store.try_write_applied([AppliedWrite("teams", ANNA, row)])
    store.close()
    assert probe.levels("saved") == {NORMAL}
    assert probe.levels("applied") == {NORMAL}

"""The store contract, run against every backend, and what only SQLite promises.

``StoreContract`` holds the behaviour every ``Store`` owes the engine and the
targets; ``TestSqliteStore``, ``TestPostgresStore`` (on a throwaway cluster,
``pgcluster.py``) and ``TestMemoryStore`` run it. What only PostgreSQL
promises is ``test_store_postgres.py``'s. The SQLite-only part covers file
modes, schema versioning, refusing files it must not touch, and surviving a
SIGKILL at random moments (``store_writer.py`` is the child).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pgcluster import ROLE_PASSWORD, Cluster

from presence_sync.clock import ManualClock
from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AppliedRow,
    AppliedWrite,
    MemoryStore,
    PauseRow,
    SqliteStore,
    Store,
    StoreError,
    TargetMemory,
    read_stored,
)
from presence_sync.store import sqlite as sqlite_module
from presence_sync.store.postgres import PostgresStore
from presence_sync.targets.base import Memory

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))
REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("store_writer.py")

ANNA = Person(
    key="anna@example.com",
    email="Anna@Example.com",
    extension="100",
    name="Anna Ä. Weiß",
    groups=frozenset({"sales", "support"}),
    ids=frozen_map({"slack_status": "U0ANNA", "teams_presence": "8f2e"}),
    opt_out=frozenset({"outlook_calendar"}),
)
BOB = Person(key="bob@example.com", email="bob@example.com", extension="101")

ON_A_CALL = Applied(
    status=Status(
        availability="Busy",
        activity="InACall",
        text="On a call",
        emoji=":telephone_receiver:",
        dnd=True,
    ),
    at=datetime(2026, 1, 5, 11, 30, 15, 123456, tzinfo=CEST),
    expires=datetime(2026, 1, 5, 9, 45, tzinfo=UTC),
    data=frozen_map(
        {
            "session": "abc-123",
            "attempt": 3,
            "ratio": 0.1,
            "flag": False,
            "none": None,
            "nested": {"list": [1, "zwei", None, True, 2.5, {"deep": []}]},
        }
    ),
)
RESTORED = Applied(status=None, at=T0)


def by_key(rows: list[AppliedRow]) -> dict[tuple[str, str], AppliedRow]:
    return {(row.target, row.person.key): row for row in rows}


class StoreContract:
    """What every ``Store`` backend guarantees. Subclasses provide ``store``
    (built on ``clock``) and ``reopen`` (the same data, as after a restart)."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(start=T0)

    @pytest.fixture
    def store(self, clock: ManualClock, tmp_path: Path) -> Iterator[Store]:
        raise NotImplementedError

    @pytest.fixture
    def reopen(self, store: Store, request: pytest.FixtureRequest) -> Callable[[], Store]:
        raise NotImplementedError

    # --- applied -------------------------------------------------------------------

    def test_a_new_store_is_empty(self, store: Store) -> None:
        assert store.load_applied() == []
        assert store.get_saved("slack_status", ANNA.key) is None
        assert store.get_objects("outlook_calendar", ANNA.key) == {}
        assert store.get_id("slack:user", ANNA.email) is None

    def test_applied_comes_back_equal_after_a_restart(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)

        [row] = reopen().load_applied()

        assert row == AppliedRow("teams_presence", ANNA, ON_A_CALL)
        assert row.person.ids == {"slack_status": "U0ANNA", "teams_presence": "8f2e"}
        assert row.person.groups == {"sales", "support"}
        assert row.applied.at == ON_A_CALL.at
        assert row.applied.at.utcoffset() is not None
        assert row.applied.expires is not None
        assert row.applied.expires.utcoffset() is not None
        assert row.applied.data["nested"] == {"list": [1, "zwei", None, True, 2.5, {"deep": []}]}

    def test_the_uncertain_flag_is_kept_beside_the_target_memo(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL, uncertain=True)
        store.write_applied([AppliedWrite("slack_status", ANNA, ON_A_CALL, uncertain=True)])
        store.write_applied([AppliedWrite("slack_status", BOB, RESTORED)])

        rows = by_key(reopen().load_applied())

        assert rows == {
            ("teams_presence", ANNA.key): AppliedRow(
                "teams_presence", ANNA, ON_A_CALL, uncertain=True
            ),
            ("slack_status", ANNA.key): AppliedRow("slack_status", ANNA, ON_A_CALL, uncertain=True),
            ("slack_status", BOB.key): AppliedRow("slack_status", BOB, RESTORED),
        }
        assert rows["teams_presence", ANNA.key].applied.data == ON_A_CALL.data

    @pytest.mark.parametrize(
        "applied",
        [
            pytest.param(RESTORED, id="ours-removed"),
            pytest.param(Applied(status=Status(), at=T0), id="empty-status-is-not-none"),
            pytest.param(Applied(status=Status(text="Ünïcödé ☎"), at=T0), id="unicode"),
            pytest.param(Applied(status=Status(dnd=True), at=T0, expires=T0), id="dnd-only"),
        ],
    )
    def test_applied_variants_round_trip(
        self, store: Store, reopen: Callable[[], Store], applied: Applied
    ) -> None:
        store.put_applied("slack_status", BOB, applied)

        [row] = reopen().load_applied()

        assert row.applied == applied
        assert (row.applied.status is None) is (applied.status is None)

    def test_put_applied_replaces_the_row_and_the_person(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)
        moved = Person(key=ANNA.key, email=ANNA.email, extension="200", name="Anna")
        store.put_applied("teams_presence", moved, RESTORED)

        assert reopen().load_applied() == [AppliedRow("teams_presence", moved, RESTORED)]

    def test_rows_are_kept_per_target_and_person(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)
        store.put_applied("slack_status", ANNA, RESTORED)
        store.put_applied("teams_presence", BOB, RESTORED)

        rows = by_key(reopen().load_applied())

        assert rows == {
            ("teams_presence", ANNA.key): AppliedRow("teams_presence", ANNA, ON_A_CALL),
            ("slack_status", ANNA.key): AppliedRow("slack_status", ANNA, RESTORED),
            ("teams_presence", BOB.key): AppliedRow("teams_presence", BOB, RESTORED),
        }

    def test_delete_applied_forgets_one_row(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)
        store.put_applied("slack_status", ANNA, ON_A_CALL)
        store.delete_applied("teams_presence", ANNA.key)
        store.delete_applied("teams_presence", "nobody@example.com")

        assert reopen().load_applied() == [AppliedRow("slack_status", ANNA, ON_A_CALL)]

    def test_write_applied_puts_and_deletes_in_order(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        carl = Person(key="carl@example.com", email="carl@example.com", extension="102")
        store.put_applied("teams_presence", ANNA, RESTORED)
        store.put_applied("teams_presence", BOB, ON_A_CALL)
        store.write_applied(
            [
                AppliedWrite("teams_presence", ANNA, ON_A_CALL),
                AppliedWrite("teams_presence", BOB, None),
                AppliedWrite("slack_status", carl, RESTORED),
                AppliedWrite("slack_status", carl, None),
                AppliedWrite("slack_status", BOB, RESTORED),
            ]
        )
        store.write_applied([])

        assert by_key(reopen().load_applied()) == {
            ("teams_presence", ANNA.key): AppliedRow("teams_presence", ANNA, ON_A_CALL),
            ("slack_status", BOB.key): AppliedRow("slack_status", BOB, RESTORED),
        }

    def test_write_applied_with_a_bad_value_writes_none_of_it(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", BOB, ON_A_CALL)
        naive = Applied(status=None, at=datetime(2026, 1, 5, 9, 0))
        with pytest.raises(ValueError, match=r"teams_presence.*bob@example\.com.*timezone-aware"):
            store.write_applied(
                [
                    AppliedWrite("teams_presence", ANNA, ON_A_CALL),
                    AppliedWrite("teams_presence", BOB, None),
                    AppliedWrite("teams_presence", BOB, naive),
                ]
            )
        assert reopen().load_applied() == [AppliedRow("teams_presence", BOB, ON_A_CALL)]

    async def test_awrite_applied_puts_and_deletes_in_order(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", BOB, ON_A_CALL)
        await store.awrite_applied(
            [
                AppliedWrite("teams_presence", ANNA, RESTORED),
                AppliedWrite("teams_presence", BOB, None),
                AppliedWrite("teams_presence", ANNA, ON_A_CALL),
            ]
        )
        await store.awrite_applied([AppliedWrite("slack_status", BOB, RESTORED)])
        await store.awrite_applied([])

        # The store's own reads see them at once, and so does a restart.
        expected = {
            ("teams_presence", ANNA.key): AppliedRow("teams_presence", ANNA, ON_A_CALL),
            ("slack_status", BOB.key): AppliedRow("slack_status", BOB, RESTORED),
        }
        assert by_key(store.load_applied()) == expected
        assert by_key(reopen().load_applied()) == expected

    async def test_awrite_applied_with_a_bad_value_writes_none_of_it(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        naive = Applied(status=None, at=datetime(2026, 1, 5, 9, 0))
        with pytest.raises(ValueError, match=r"timezone-aware"):
            await store.awrite_applied(
                [
                    AppliedWrite("teams_presence", ANNA, ON_A_CALL),
                    AppliedWrite("teams_presence", BOB, naive),
                ]
            )
        assert reopen().load_applied() == []

    def test_try_write_applied_writes_at_once_when_nothing_holds_the_store(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        assert store.try_write_applied([AppliedWrite("teams_presence", ANNA, ON_A_CALL)])
        assert store.try_write_applied([])
        assert reopen().load_applied() == [AppliedRow("teams_presence", ANNA, ON_A_CALL)]

    def test_a_person_removed_from_the_config_still_comes_back(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)
        store.put_applied("slack_status", BOB, ON_A_CALL)

        # After the restart only Anna is configured; Bob must still be found,
        # with the ids needed to clear what we set for him.
        configured = {ANNA.key}
        leftovers = [r for r in reopen().load_applied() if r.person.key not in configured]

        assert leftovers == [AppliedRow("slack_status", BOB, ON_A_CALL)]
        assert leftovers[0].person.email == "bob@example.com"
        assert leftovers[0].person.extension == "101"

    # --- bad input -----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("applied", "message"),
        [
            pytest.param(Applied(status=None, at=datetime(2026, 1, 5, 9)), "timezone", id="naive"),
            pytest.param(
                Applied(status=None, at=T0, expires=datetime(2026, 1, 5)), "timezone", id="expires"
            ),
            pytest.param(
                Applied(status=None, at=T0, data=frozen_map({"ids": ("a", "b")})),
                "JSON",
                id="tuple",
            ),
            pytest.param(
                Applied(status=None, at=T0, data=frozen_map({"when": T0})), "JSON", id="datetime"
            ),
            pytest.param(
                Applied(status=None, at=T0, data=frozen_map({"m": {1: "x"}})), "JSON", id="int-key"
            ),
            pytest.param(
                Applied(status=None, at=T0, data=frozen_map({"x": math.nan})), "JSON", id="nan"
            ),
        ],
    )
    def test_values_that_would_not_come_back_equal_are_refused(
        self, store: Store, reopen: Callable[[], Store], applied: Applied, message: str
    ) -> None:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)

        with pytest.raises(ValueError, match=message):
            store.put_applied("teams_presence", ANNA, applied)

        assert reopen().load_applied() == [AppliedRow("teams_presence", ANNA, ON_A_CALL)]

    def test_a_saved_doc_that_is_not_json_is_refused(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_saved("slack_status", ANNA.key, {"text": "Lunch"})

        with pytest.raises(ValueError, match="JSON"):
            store.put_saved("slack_status", ANNA.key, {"text": "Lunch", "until": T0})

        assert reopen().get_saved("slack_status", ANNA.key) == {"text": "Lunch"}

    def test_a_closed_store_raises_store_error(self, store: Store) -> None:
        store.close()
        store.close()

        with pytest.raises(StoreError):
            store.load_applied()
        with pytest.raises(StoreError):
            store.put_id("slack:user", ANNA.email, "U0ANNA")

    async def test_a_closed_store_refuses_awrite_applied(self, store: Store) -> None:
        await store.awrite_applied([AppliedWrite("teams_presence", ANNA, ON_A_CALL)])
        store.close()

        with pytest.raises(StoreError):
            await store.awrite_applied([AppliedWrite("teams_presence", BOB, ON_A_CALL)])

    # --- saved statuses ------------------------------------------------------------

    def test_saved_status_round_trip_replace_and_delete(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        own = {"status_text": "Lunch 🍔", "status_emoji": ":hamburger:", "status_expiration": 0}
        store.put_saved("slack_status", ANNA.key, own)
        store.put_saved("slack_status", BOB.key, {"status_text": "old"})
        store.put_saved("slack_status", BOB.key, {"status_text": "new"})
        store.put_saved("teams_status_message", ANNA.key, {"message": {"content": "hi"}})

        again = reopen()
        assert again.get_saved("slack_status", ANNA.key) == own
        assert again.get_saved("slack_status", BOB.key) == {"status_text": "new"}
        assert again.get_saved("teams_status_message", ANNA.key) == {"message": {"content": "hi"}}

        again.put_saved("slack_status", ANNA.key, None)
        again.put_saved("slack_status", "nobody@example.com", None)
        assert again.get_saved("slack_status", ANNA.key) is None
        assert again.get_saved("teams_status_message", ANNA.key) is not None

    def test_a_saved_doc_handed_out_is_a_copy(self, store: Store) -> None:
        store.put_saved("slack_status", ANNA.key, {"status_text": "Lunch"})
        doc = store.get_saved("slack_status", ANNA.key)
        assert isinstance(doc, dict)

        doc["status_text"] = "changed by a careless caller"

        assert store.get_saved("slack_status", ANNA.key) == {"status_text": "Lunch"}

    # --- open objects --------------------------------------------------------------

    def test_objects_round_trip_replace_and_delete(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        store.put_object("outlook_calendar", ANNA.key, "event", "AAMk-1")
        store.put_object("outlook_calendar", ANNA.key, "event", "AAMk-2")
        store.put_object("outlook_calendar", ANNA.key, "series", "AAMk-S")
        store.put_object("outlook_calendar", BOB.key, "event", "AAMk-B")

        again = reopen()
        assert again.get_objects("outlook_calendar", ANNA.key) == {
            "event": "AAMk-2",
            "series": "AAMk-S",
        }
        assert again.get_objects("teams_presence", ANNA.key) == {}

        again.delete_object("outlook_calendar", ANNA.key, "event")
        again.delete_object("outlook_calendar", ANNA.key, "never-there")
        assert again.get_objects("outlook_calendar", ANNA.key) == {"series": "AAMk-S"}
        assert again.get_objects("outlook_calendar", BOB.key) == {"event": "AAMk-B"}

    # --- id cache ------------------------------------------------------------------

    async def test_a_cached_id_expires_after_max_age(
        self, store: Store, reopen: Callable[[], Store], clock: ManualClock
    ) -> None:
        store.put_id("slack:user", ANNA.email, "U0ANNA")
        await clock.advance(3600)

        again = reopen()
        assert again.get_id("slack:user", ANNA.email, max_age=3600) == "U0ANNA"
        await clock.advance(1)
        assert again.get_id("slack:user", ANNA.email, max_age=3600) is None
        assert again.get_id("slack:user", ANNA.email, max_age=7200) == "U0ANNA"
        assert again.get_id("slack:user", ANNA.email) == "U0ANNA"

        again.put_id("slack:user", ANNA.email, "U0ANNA2")
        assert again.get_id("slack:user", ANNA.email, max_age=1) == "U0ANNA2"

    def test_id_namespaces_do_not_mix(self, store: Store) -> None:
        store.put_id("slack:user", ANNA.email, "U0ANNA")
        store.put_id("graph:user", ANNA.email, "8f2e")

        assert store.get_id("slack:user", ANNA.email) == "U0ANNA"
        assert store.get_id("graph:user", ANNA.email) == "8f2e"
        assert store.get_id("slack:user", BOB.email) is None

    async def test_housekeeping_drops_only_old_ids(
        self, store: Store, reopen: Callable[[], Store], clock: ManualClock
    ) -> None:
        store.put_id("slack:user", ANNA.email, "U0ANNA")
        store.put_id("graph:user", ANNA.email, "8f2e")
        await clock.advance(100)
        store.put_id("slack:user", BOB.email, "U0BOB")
        await clock.advance(50)

        again = reopen()
        assert again.housekeeping(max_id_age=120) == 2
        assert again.housekeeping(max_id_age=120) == 0

        assert again.get_id("slack:user", ANNA.email) is None
        assert again.get_id("graph:user", ANNA.email) is None
        assert again.get_id("slack:user", BOB.email) == "U0BOB"

    # --- the targets' memory -------------------------------------------------------

    async def test_store_memory_is_one_target_and_person(
        self, store: Store, reopen: Callable[[], Store], clock: ManualClock
    ) -> None:
        slack: Memory = TargetMemory(store, "slack_status", ANNA.key)
        outlook: Memory = TargetMemory(store, "outlook_calendar", ANNA.key)
        slack.save({"status_text": "Lunch"})
        slack.put_object("reminder", "Rm1")
        outlook.put_object("event", "AAMk-1")
        slack.cache_id("user", ANNA.email, "U0ANNA")
        outlook.cache_id("user", ANNA.email, "8f2e")

        again = reopen()
        slack = TargetMemory(again, "slack_status", ANNA.key)
        outlook = TargetMemory(again, "outlook_calendar", ANNA.key)
        assert slack.saved() == {"status_text": "Lunch"}
        assert outlook.saved() is None
        assert slack.objects() == {"reminder": "Rm1"}
        assert outlook.objects() == {"event": "AAMk-1"}
        assert slack.cached_id("user", ANNA.email) == "U0ANNA"
        assert outlook.cached_id("user", ANNA.email) == "8f2e"
        assert again.get_id("slack_status:user", ANNA.email) == "U0ANNA"

        await clock.advance(61)
        assert slack.cached_id("user", ANNA.email, max_age=60) is None
        outlook.drop_object("event")
        slack.save(None)
        assert outlook.objects() == {}
        assert slack.saved() is None
        assert again.get_objects("slack_status", ANNA.key) == {"reminder": "Rm1"}

    # --- pauses ----------------------------------------------------------------------

    def test_pauses_come_back_equal_after_a_restart(
        self, store: Store, reopen: Callable[[], Store]
    ) -> None:
        anna = PauseRow(
            person_key=ANNA.key,
            targets=frozenset({"slack_status", "teams_presence"}),
            until=datetime(2026, 1, 5, 13, 0, tzinfo=CEST),
            since=T0,
        )
        bob = PauseRow(person_key=BOB.key, targets=None, until=None, since=T0)
        store.put_pause(bob)
        store.put_pause(anna)

        again = reopen()
        assert again.load_pauses() == [anna, bob]

    def test_a_pause_replaces_the_earlier_one_and_delete_forgets_it(self, store: Store) -> None:
        store.put_pause(PauseRow(ANNA.key, frozenset({"slack_status"}), None, T0))
        later = PauseRow(ANNA.key, None, T0 + timedelta(hours=2), T0)
        store.put_pause(later)
        assert store.load_pauses() == [later]

        store.delete_pause(ANNA.key)
        store.delete_pause(BOB.key)  # none: nothing happens
        assert store.load_pauses() == []

    def test_a_pause_with_a_naive_time_is_refused(self, store: Store) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            store.put_pause(PauseRow(ANNA.key, None, datetime(2026, 1, 5, 13, 0), T0))
        assert store.load_pauses() == []


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, tmp_path: Path) -> Iterator[Store]:
        store = MemoryStore(clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def reopen(self, store: Store, request: pytest.FixtureRequest) -> Callable[[], Store]:
        return lambda: store


class TestPostgresStore(StoreContract):
    """On one database for the whole class, each test with a customer of
    its own: that the rows of one customer are not another's is part of
    what this shows (see also ``test_customers_share_a_database_apart``)."""

    @pytest.fixture
    def customer(self, postgres: Cluster) -> str:
        return postgres.customer()

    @pytest.fixture
    def store(self, clock: ManualClock, postgres: Cluster, customer: str) -> Iterator[Store]:
        url = postgres.shared()
        store = PostgresStore(url, customer=customer, password=ROLE_PASSWORD, clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def reopen(self, store: Store, request: pytest.FixtureRequest) -> Callable[[], Store]:
        clock: ManualClock = request.getfixturevalue("clock")
        url = request.getfixturevalue("postgres").shared()
        customer: str = request.getfixturevalue("customer")

        def again() -> Store:
            store.close()
            fresh = PostgresStore(url, customer=customer, password=ROLE_PASSWORD, clock=clock)
            request.addfinalizer(fresh.close)
            return fresh

        return again


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, tmp_path: Path) -> Iterator[Store]:
        store = SqliteStore(tmp_path / "state.db", clock=clock)
        yield store
        store.close()

    @pytest.fixture
    def reopen(self, store: Store, request: pytest.FixtureRequest) -> Callable[[], Store]:
        clock: ManualClock = request.getfixturevalue("clock")
        path: Path = request.getfixturevalue("tmp_path") / "state.db"

        def again() -> Store:
            store.close()
            fresh = SqliteStore(path, clock=clock)
            request.addfinalizer(fresh.close)
            return fresh

        return again


# --- SQLite only: files, schema, refusals ----------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def read_back(path: Path, sql: str) -> list[Any]:
    db = raw(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.usefixtures("permissive_umask")
def test_new_files_and_directories_are_private(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "var" / "presence-sync" / "state.db"

    store = SqliteStore(path)
    try:
        store.put_applied("teams_presence", ANNA, ON_A_CALL)

        assert mode(tmp_path) == 0o755
        assert mode(tmp_path / "var") == 0o700
        assert mode(tmp_path / "var" / "presence-sync") == 0o700
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-wal")) == 0o600
        assert mode(Path(f"{path}-shm")) == 0o600
    finally:
        store.close()


@pytest.mark.usefixtures("permissive_umask")
def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o750)

    SqliteStore(state / "state.db").close()

    assert mode(state) == 0o750
    assert mode(state / "state.db") == 0o600


def test_a_readable_database_file_is_made_private_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="presence_sync.store"):
        SqliteStore(path).close()

    assert mode(path) == 0o600
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "readable by others" in warning.getMessage()
    assert warning.__dict__["ctx"] == {"path": str(path), "mode": "0644"}


def test_wal_mode_synchronous_full_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    try:
        # FULL: a commit is on the disk when it returns (test_store_sync.py).
        assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)
        assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        store.close()

    assert read_back(path, "PRAGMA journal_mode") == [("wal",)]
    assert read_back(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    tables = {name for (name,) in read_back(path, "SELECT name FROM sqlite_master")}
    assert {"applied", "saved", "objects", "ids", "pauses"} <= tables


def test_a_database_of_the_first_schema_opens_and_gains_the_pauses_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file written before pauses existed (schema version 1): its
    rows stay, and it can keep pauses from now on."""
    path = tmp_path / "state.db"
    db = raw(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO applied (target, person_key, person, status, at, data)"
        " VALUES ('teams_presence', 'bob@example.com',"
        """ '{"key":"bob@example.com","email":"bob@example.com","extension":"101"}',"""
        """ '{"availability":"Busy","activity":"InACall"}', '2026-01-05T09:00:00+00:00', '{}')"""
    )
    db.execute("INSERT INTO saved VALUES ('slack_status', 'bob@example.com', '{}', 'x')")
    db.commit()
    db.close()
    # Read-only (presence-sync status while the daemon is down): no pauses yet.
    applied, pauses = read_stored(path)
    assert [r.person for r in applied] == [BOB]
    assert pauses == []
    assert read_back(path, "PRAGMA user_version") == [(1,)]

    with caplog.at_level(logging.INFO, logger="presence_sync.store"):
        store = SqliteStore(path)
    try:
        (row,) = store.load_applied()
        assert row.person == BOB
        assert row.applied.status == Status(availability="Busy", activity="InACall")
        assert store.get_saved("slack_status", BOB.key) == {}
        pause = PauseRow(BOB.key, None, None, T0)
        store.put_pause(pause)
        assert store.load_pauses() == [pause]
    finally:
        store.close()
    assert read_stored(path)[1] == [pause]

    assert read_back(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
    migrated = [r for r in caplog.records if "migrated" in r.getMessage()]
    assert [r.__dict__["ctx"]["schema_version"] for r in migrated] == [2, 3]


def test_a_database_of_the_second_schema_keeps_its_uncertain_records_in_a_column(
    tmp_path: Path,
) -> None:
    """Schema version 2 kept the engine's "not confirmed" flag as a key of the
    target's memo. Read as it is and after the migration, such a record is
    still uncertain, and the target's memo is only the target's again."""
    path = tmp_path / "state.db"
    db = raw(path)
    for step in MIGRATIONS[:2]:
        for statement in step:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    person = """'{"key":"bob@example.com","email":"bob@example.com","extension":"101"}'"""
    busy = """'{"availability":"Busy","activity":"InACall"}'"""
    db.execute(
        "INSERT INTO applied (target, person_key, person, status, at, data) VALUES"
        f" ('teams_presence', 'bob@example.com', {person}, {busy}, '2026-01-05T09:00:00+00:00',"
        """ '{"presence_sync.uncertain":true,"session":"s-1"}'),"""
        f" ('slack_status', 'bob@example.com', {person}, {busy}, '2026-01-05T09:00:00+00:00',"
        """ '{"session":"s-2"}')"""
    )
    db.commit()
    db.close()

    def seen(rows: list[AppliedRow]) -> dict[str, tuple[bool, dict[str, object]]]:
        return {r.target: (r.uncertain, dict(r.applied.data)) for r in rows}

    expected = {
        "teams_presence": (True, {"session": "s-1"}),
        "slack_status": (False, {"session": "s-2"}),
    }
    assert seen(read_stored(path)[0]) == expected  # read-only: not migrated
    assert read_back(path, "PRAGMA user_version") == [(2,)]

    store = SqliteStore(path)
    try:
        assert seen(store.load_applied()) == expected
    finally:
        store.close()
    assert read_back(path, "PRAGMA user_version") == [(3,)]
    assert sorted(read_back(path, "SELECT target, uncertain, data FROM applied")) == [
        ("slack_status", 0, '{"session":"s-2"}'),
        ("teams_presence", 1, '{"session":"s-1"}'),
    ]
    assert seen(read_stored(path)[0]) == expected


def test_a_pause_that_no_longer_decodes_is_skipped_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    db = raw(path)
    db.execute("INSERT INTO pauses VALUES ('anna@example.com', '{\"no\": 1}', NULL, 'x')")
    db.execute("INSERT INTO pauses VALUES ('bob@example.com', NULL, NULL, ?)", (T0.isoformat(),))
    db.commit()
    db.close()

    store = SqliteStore(path)
    try:
        with caplog.at_level(logging.WARNING, logger="presence_sync.store"):
            assert store.load_pauses() == [PauseRow(BOB.key, None, None, T0)]
    finally:
        store.close()
    assert "pause that does not decode" in caplog.records[0].getMessage()
    assert read_back(path, "SELECT count(*) FROM pauses") == [(2,)]


def test_opening_again_migrates_nothing_and_keeps_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.put_applied("teams_presence", ANNA, ON_A_CALL)
    store.close()

    with caplog.at_level(logging.INFO, logger="presence_sync.store"):
        again = SqliteStore(path)
    try:
        assert again.load_applied() == [AppliedRow("teams_presence", ANNA, ON_A_CALL)]
        assert not [r for r in caplog.records if "migrated" in r.getMessage()]
    finally:
        again.close()


def test_a_database_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.put_applied("teams_presence", ANNA, ON_A_CALL)
    store.close()
    db = raw(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError) as caught:
        SqliteStore(path)

    message = str(caught.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert "Upgrade presence-sync" in message
    assert read_back(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert read_back(path, "SELECT count(*) FROM applied") == [(1,)]


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    junk = b"people:\n  - extension: '100'\n" * 200
    path.write_bytes(junk)

    with pytest.raises(StoreError) as caught:
        SqliteStore(path)

    assert str(path) in str(caught.value)
    assert "not a SQLite database" in str(caught.value)
    assert path.read_bytes() == junk


def test_a_damaged_database_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    for n in range(200):
        store.put_applied("teams_presence", Person(f"p{n}", f"p{n}", "1"), ON_A_CALL)
    store.close()
    page_size = read_back(path, "PRAGMA page_size")[0][0]
    with path.open("r+b") as f:
        f.seek(page_size)  # page 2: the root of the first table
        f.write(b"\xff" * page_size)

    with pytest.raises(StoreError) as caught:
        SqliteStore(path)

    assert str(path) in str(caught.value)
    assert "damaged" in str(caught.value)


def test_a_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = raw(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.close()

    with pytest.raises(StoreError, match="another application"):
        SqliteStore(path)

    tables = read_back(path, "SELECT name FROM sqlite_master")
    assert tables == [("invoices",)]
    assert read_back(path, "PRAGMA user_version") == [(0,)]


def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    broken = (*MIGRATIONS, ("CREATE TABLE half_done (x TEXT)", "CREATE TABLE applied (x TEXT)"))
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", broken)

    with pytest.raises(StoreError, match=f"migration to schema version {len(broken)} failed"):
        SqliteStore(path)

    assert read_back(path, "PRAGMA user_version") == [(len(broken) - 1,)]
    assert read_back(path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []


def test_a_row_that_no_longer_decodes_is_skipped_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.put_applied("teams_presence", ANNA, ON_A_CALL)
    store.put_applied("teams_presence", BOB, RESTORED)
    db = raw(path)
    db.execute("UPDATE applied SET person = '{\"key\":' WHERE person_key = ?", (BOB.key,))
    db.close()

    with caplog.at_level(logging.WARNING, logger="presence_sync.store"):
        rows = store.load_applied()
    store.close()

    assert rows == [AppliedRow("teams_presence", ANNA, ON_A_CALL)]
    assert [r.__dict__["ctx"]["person"] for r in caplog.records] == [BOB.key]
    assert read_back(path, "SELECT count(*) FROM applied") == [(2,)]


def test_a_failing_write_applied_commits_none_of_it(tmp_path: Path) -> None:
    """The database refuses the third row (a trigger standing in for a full
    disk): the first two, in the same call, must not be there either."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.put_applied("teams_presence", BOB, ON_A_CALL)
    db = raw(path)
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON applied WHEN NEW.target = 'slack_status'"
        " BEGIN SELECT RAISE(ABORT, 'disk full, say'); END"
    )
    db.close()
    with pytest.raises(StoreError, match="disk full, say"):
        store.write_applied(
            [
                AppliedWrite("teams_presence", ANNA, ON_A_CALL),
                AppliedWrite("teams_presence", BOB, None),
                AppliedWrite("slack_status", ANNA, ON_A_CALL),
            ]
        )
    assert store.load_applied() == [AppliedRow("teams_presence", BOB, ON_A_CALL)]
    store.write_applied([AppliedWrite("teams_presence", ANNA, ON_A_CALL)])  # usable after
    assert len(store.load_applied()) == 2
    store.close()


# --- SQLite only: a kill at any moment -------------------------------------------------


class Child:
    """The writer subprocess and what it has reported on stdout."""

    def __init__(self, path: Path, first: int) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(first)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        self.out = self.proc.stdout
        self.lines: list[str] = []
        self._partial = b""

    def _take(self, chunk: bytes) -> None:
        *done, self._partial = (self._partial + chunk).split(b"\n")
        self.lines.extend(line.decode() for line in done)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Read stdout until ``count`` lines arrived; fail at the deadline or
        when the child exits first."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.out, selectors.EVENT_READ)
            while len(self.lines) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"writer did not get there in {timeout}s: {self.lines[-3:]}"
                if sel.select(left):
                    chunk = os.read(self.out.fileno(), 65536)
                    assert chunk, f"writer exited early with {self.proc.wait()}"
                    self._take(chunk)

    def kill(self) -> None:
        """SIGKILL, then read what it printed before it died."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._take(self.out.read())
        self.out.close()

    def committed(self) -> list[int]:
        return [int(line) for line in self.lines if line.isdigit()]


def check_after_crash(path: Path, reported: list[int]) -> None:
    store = SqliteStore(path)
    try:
        assert read_back(path, "PRAGMA integrity_check") == [("ok",)]
        applied = by_key(store.load_applied())
        for i in reported:
            key = f"p{i}"
            kind = i % 4
            if kind == 0:
                assert applied["crash", key].applied.data == {"n": i}, i
            elif kind == 1:
                assert store.get_saved("crash", key) == {"n": i}, i
            elif kind == 2:
                assert store.get_objects("crash", key) == {"event": f"e{i}"}, i
            else:
                assert store.get_id("crash", key) == f"v{i}", i
        if reported:
            assert applied["hot", "hot"].applied.data["n"] >= max(reported)
        # Written together or not at all, reported or not: no applied row
        # without the hot row of its transaction.
        hot = applied["hot", "hot"].applied.data["n"] if ("hot", "hot") in applied else -1
        assert all(row.applied.data["n"] <= hot for (t, _), row in applied.items() if t == "crash")
    finally:
        store.close()


async def test_a_held_write_lock_sends_the_group_to_the_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, busy_timeout=10.0)
    backup = sqlite3.connect(path, isolation_level=None)
    backup.execute("BEGIN IMMEDIATE")
    try:
        # Nothing is written, and the lock stays the other connection's.
        assert not store.try_write_applied([AppliedWrite("teams_presence", ANNA, ON_A_CALL)])
        assert backup.in_transaction
        writing = asyncio.get_running_loop().create_task(
            store.awrite_applied([AppliedWrite("teams_presence", ANNA, ON_A_CALL)])
        )
        # One step of the task hands the group to the writer thread and gives
        # the loop back. Committed on the loop instead, that step would sit in
        # SQLite's busy wait for the 10 s and end with the task failed.
        await asyncio.sleep(0)
        assert not writing.done()
        assert store.load_applied() == []  # the loop reads meanwhile
        backup.execute("ROLLBACK")
        # The lock is free now, yet a later row does not overtake the queued
        # group (no await since: the group is still the writer's).
        assert not store.try_write_applied([AppliedWrite("slack_status", BOB, RESTORED)])
        await writing
    finally:
        backup.close()
    assert store.try_write_applied([AppliedWrite("slack_status", BOB, RESTORED)])
    assert by_key(store.load_applied()) == {
        ("teams_presence", ANNA.key): AppliedRow("teams_presence", ANNA, ON_A_CALL),
        ("slack_status", BOB.key): AppliedRow("slack_status", BOB, RESTORED),
    }
    store.close()


def test_every_reported_write_survives_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "state" / "state.db"
    reported: list[int] = []

    # First a kill while the store is being created, then kills mid-writing.
    child = Child(path, 0)
    try:
        child.wait_for(1)  # "open"
    finally:
        child.kill()
    check_after_crash(path, reported)

    for _ in range(4):
        first = max(reported, default=-1) + 1
        goal = rng.randrange(1, 3000)
        child = Child(path, first)
        try:
            child.wait_for(goal + 2)  # after "open" and "ready", one line a write
        finally:
            child.kill()
        done = child.committed()
        assert done[:goal] == list(range(first, first + goal)), f"seed {seed}"
        reported.extend(done)
        check_after_crash(path, reported)

    assert len(reported) >= 4
    assert mode(path) == 0o600

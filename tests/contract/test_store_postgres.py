"""What only the PostgreSQL store promises: customers apart in one database,
the schema made and migrated by whichever daemon starts first (two at once
included), refusals that change nothing, and a database that goes away and
comes back. The contract every backend keeps is ``test_store.py``'s."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from pgcluster import ROLE_PASSWORD, Cluster

from presence_sync.model import Applied, Person, Status
from presence_sync.store import AppliedWrite, PauseRow, StoreError, TargetMemory
from presence_sync.store import postgres as postgres_module
from presence_sync.store.postgres import PostgresStore, describe, read_stored
from presence_sync.store.schema import POSTGRES_MIGRATIONS, POSTGRES_SCHEMA_VERSION

ANNA = Person(key="anna@example.com", email="anna@example.com", extension="100")
ON_A_CALL = Applied(
    status=Status(availability="Busy", activity="InACall", text="On a call"),
    at=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
)


def open_store(url: str, customer: str = "K1234") -> PostgresStore:
    return PostgresStore(url, customer=customer, password=ROLE_PASSWORD)


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    store = open_store(pg_url)
    yield store
    store.close()


def tables(postgres: Cluster, url: str) -> list[str]:
    with postgres.admin(url.rpartition("/")[2]) as db:
        rows = db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    return [str(r[0]) for r in rows]


def schema_version(postgres: Cluster, url: str) -> int:
    with postgres.admin(url.rpartition("/")[2]) as db:
        row = db.execute("SELECT version FROM presence_sync_schema").fetchone()
    assert row is not None
    return int(row[0])


def test_customers_share_a_database_apart(pg_url: str) -> None:
    first, second = open_store(pg_url, "K1111"), open_store(pg_url, "K2222")
    try:
        first.put_applied("teams", ANNA, ON_A_CALL)
        TargetMemory(first, "slack", ANNA.key).save({"text": "Lunch"})
        first.put_id("slack:user", ANNA.email, "U1")

        assert second.load_applied() == []
        assert second.get_saved("slack", ANNA.key) is None
        assert second.get_id("slack:user", ANNA.email) is None
        second.delete_applied("teams", ANNA.key)
        assert second.housekeeping(0) == 0

        [row] = first.load_applied()
        assert row.applied == ON_A_CALL
        assert first.get_saved("slack", ANNA.key) == {"text": "Lunch"}
    finally:
        first.close()
        second.close()


def test_the_first_start_creates_the_schema(store: PostgresStore, postgres: Cluster) -> None:
    assert schema_version(postgres, store.url) == POSTGRES_SCHEMA_VERSION
    assert tables(postgres, store.url) == sorted(
        [
            "presence_sync_applied",
            "presence_sync_ids",
            "presence_sync_objects",
            "presence_sync_pauses",
            "presence_sync_saved",
            "presence_sync_schema",
        ]
    )


def test_daemons_starting_at_once_on_an_empty_database_both_open_it(
    postgres: Cluster,
) -> None:
    for _ in range(3):
        url = postgres.database()
        start = threading.Barrier(4)
        opened: list[PostgresStore] = []
        failed: list[BaseException] = []

        def start_one(customer: str) -> None:
            start.wait()  # noqa: B023 (each thread is joined in its round)
            try:
                opened.append(open_store(url, customer))  # noqa: B023 (joined below)
            except BaseException as exc:
                failed.append(exc)  # noqa: B023

        threads = [threading.Thread(target=start_one, args=(f"K{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for store in opened:
            store.put_applied("teams", ANNA, ON_A_CALL)
            assert len(store.load_applied()) == 1
            store.close()
        assert failed == []
        assert len(opened) == 4
        assert schema_version(postgres, url) == POSTGRES_SCHEMA_VERSION


def test_a_newer_schema_is_refused_and_left_alone(pg_url: str, postgres: Cluster) -> None:
    open_store(pg_url).close()
    with postgres.admin(pg_url.rpartition("/")[2]) as db:
        db.execute("UPDATE presence_sync_schema SET version = 99")

    with pytest.raises(StoreError, match="schema version 99, written by a newer presence-sync"):
        open_store(pg_url)

    assert schema_version(postgres, pg_url) == 99


def test_a_failing_migration_changes_nothing(
    pg_url: str, postgres: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(pg_url).close()
    broken = (
        *POSTGRES_MIGRATIONS,
        ("CREATE TABLE half_done (x TEXT)", "CREATE TABLE presence_sync_applied (x TEXT)"),
    )
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", broken)

    with pytest.raises(StoreError, match=f"migration to schema version {len(broken)} failed"):
        open_store(pg_url)

    assert schema_version(postgres, pg_url) == len(broken) - 1
    assert "half_done" not in tables(postgres, pg_url)


def test_a_wrong_password_names_the_database_not_the_password(pg_url: str) -> None:
    with pytest.raises(StoreError) as raised:
        PostgresStore(pg_url, customer="K1234", password="not-the-password")

    assert describe(pg_url) in str(raised.value)
    assert "password authentication failed" in str(raised.value)
    assert "not-the-password" not in str(raised.value)


def test_a_password_in_the_url_is_never_shown() -> None:
    assert describe("postgresql://app:hunter2@db.example:5433/presence?sslmode=verify-full") == (
        "postgresql://app@db.example:5433/presence"
    )


def test_try_write_applied_does_not_wait_for_a_row_locked_elsewhere(
    store: PostgresStore, postgres: Cluster
) -> None:
    store.put_applied("teams", ANNA, ON_A_CALL)
    with postgres.admin(store.url.rpartition("/")[2]) as other, other.transaction():
        other.execute("SELECT 1 FROM presence_sync_applied FOR UPDATE")

        assert not store.try_write_applied([AppliedWrite("teams", ANNA, None)])
        assert store.write_failure is None

    assert store.try_write_applied([AppliedWrite("teams", ANNA, None)])
    assert store.load_applied() == []


async def test_a_database_that_went_away_fails_writes_until_it_is_back(
    postgres: Cluster,
) -> None:
    url = postgres.database()
    store = open_store(url)
    try:
        store.put_applied("teams", ANNA, ON_A_CALL)
        postgres.stop()
        try:
            with pytest.raises(StoreError, match=describe(url)):
                store.put_saved("slack", ANNA.key, {"text": "Lunch"})
            assert store.write_failure
            with pytest.raises(StoreError):
                await store.awrite_applied([AppliedWrite("teams", ANNA, None)])
        finally:
            postgres.start()

        store.put_saved("slack", ANNA.key, {"text": "Lunch"})
        assert store.write_failure is None
        await store.awrite_applied([AppliedWrite("teams", ANNA, None)])
        assert store.load_applied() == []
        assert store.get_saved("slack", ANNA.key) == {"text": "Lunch"}
    finally:
        store.close()


def test_the_role_needs_no_more_than_its_own_database(pg_url: str) -> None:
    """The tests' role owns its database and is no superuser: what the
    docs ask an admin to create is enough."""
    with psycopg.connect(pg_url, password=ROLE_PASSWORD) as db:
        row = db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (False,)
    store = open_store(pg_url)
    store.put_applied("teams", ANNA, ON_A_CALL)
    store.close()


def test_the_daemon_names_itself_unless_the_url_does(pg_url: str, postgres: Cluster) -> None:
    def names(url: str) -> list[str]:
        store = open_store(url)
        try:
            with postgres.admin() as db:
                rows = db.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = %s",
                    (url.rpartition("/")[2].partition("?")[0],),
                ).fetchall()
        finally:
            store.close()
        return [str(r[0]) for r in rows]

    assert names(pg_url) == ["presence-sync"]
    assert names(pg_url + "?application_name=presence-sync-a") == ["presence-sync-a"]


def test_a_database_at_this_version_opens_for_a_role_that_may_only_read_and_write(
    pg_url: str, postgres: Cluster
) -> None:
    """The tables' owner migrates; a daemon role with no CREATE privilege
    still opens a database that is up to date."""
    open_store(pg_url).close()
    dbname = pg_url.rpartition("/")[2]
    with postgres.admin(dbname) as db:
        db.execute("CREATE ROLE presence_sync_dml LOGIN PASSWORD 'dml'")
        try:
            db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            db.execute("GRANT USAGE ON SCHEMA public TO presence_sync_dml")
            db.execute(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"
                " TO presence_sync_dml"
            )
            url = pg_url.replace("presence_sync@", "presence_sync_dml@")

            store = PostgresStore(url, customer="K1234", password="dml")
            store.put_applied("teams", ANNA, ON_A_CALL)
            assert [r.applied for r in store.load_applied()] == [ON_A_CALL]
            store.close()
        finally:
            db.execute("REASSIGN OWNED BY presence_sync_dml TO postgres")
            db.execute("DROP OWNED BY presence_sync_dml")
            db.execute("DROP ROLE presence_sync_dml")


def test_read_stored_reads_one_customers_rows_and_creates_nothing(
    pg_url: str, postgres: Cluster
) -> None:
    """What ``presence-sync status`` reads while the daemon is down."""
    assert read_stored(pg_url, customer="K1111", password=ROLE_PASSWORD) is None
    assert tables(postgres, pg_url) == []

    pause = PauseRow(ANNA.key, frozenset({"teams"}), None, datetime(2026, 1, 5, 8, 0, tzinfo=UTC))
    first, second = open_store(pg_url, "K1111"), open_store(pg_url, "K2222")
    try:
        first.put_applied("teams", ANNA, ON_A_CALL)
        first.put_pause(pause)
        second.put_applied("slack", ANNA, ON_A_CALL)
    finally:
        first.close()
        second.close()

    found = read_stored(pg_url, customer="K1111", password=ROLE_PASSWORD)

    assert found is not None
    rows, pauses = found
    assert [(r.target, r.person, r.applied) for r in rows] == [("teams", ANNA, ON_A_CALL)]
    assert pauses == [pause]

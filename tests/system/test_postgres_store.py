"""The real daemon with its state in PostgreSQL (``state.url``), against the
NFON and Slack simulators and a throwaway PostgreSQL cluster: a call reaches
Slack and the state is in the database; a daemon killed mid-call gives the
person's own Slack status back from what PostgreSQL kept; ``check`` says
whether the database works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import Daemon, Hook, cli, shows, user_id, write_config
from pgcluster import ROLE_PASSWORD, Cluster, free_port
from polling import eventually

from presence_sync import model
from presence_sync.sim.nfon import SimHandle
from presence_sync.sim.slack import SlackSim, Status
from presence_sync.sim.slack_serve import SlackHandle, serve_in_thread
from presence_sync.store.postgres import PostgresStore
from presence_sync.store.schema import POSTGRES_SCHEMA_VERSION

pytestmark = pytest.mark.system

RULES = (
    "rules:\n"
    "  - when: {line: in-use}\n"
    '    set: {slack_status: {text: "On a call", emoji: ":telephone_receiver:"}}\n'
)
ANNA = model.Person(key="anna@example.com", email="anna@example.com", extension="100")
ON_A_CALL = model.Applied(
    status=model.Status(availability="Busy", activity="InACall", text="On a call"),
    at=datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
)


@pytest.fixture
def slack() -> Iterator[SlackHandle]:
    sim = SlackSim()
    sim.add_user("adam", "it-admin@example.com", role="admin")
    for name in ("anna", "ben", "clara"):
        sim.add_user(name, f"{name}@example.com")
    with serve_in_thread(sim) as handle:
        yield handle


def pg_config(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    slack: SlackHandle,
    url: str,
    password: str = ROLE_PASSWORD,
) -> Path:
    admin = next(p for p in slack.sim.people() if p.name == "adam")
    token = slack.sim.add_token(admin.id).secret
    for name, secret in (("slack.token", token), ("db.password", password)):
        (tmp_path / name).write_text(secret + "\n")
        (tmp_path / name).chmod(0o600)
    extra = f"slack:\n  base_url: {slack.base_url}\n  token_file: slack.token\n"
    state = f"  url: {url}\n  password_file: db.password\n"
    return write_config(tmp_path / "config.yaml", nfon, hook, rules=RULES, extra=extra,
                        targets="  slack_status: {}\n", state=state)  # fmt: skip


def stored(postgres: Cluster, url: str, sql: str) -> list[tuple[object, ...]]:
    with postgres.admin(url.rpartition("/")[2]) as db:
        return db.execute(sql).fetchall()


def test_a_call_is_kept_in_postgresql_and_a_killed_daemon_gives_their_status_back(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    slack: SlackHandle,
    daemons: Callable[..., Daemon],
    postgres: Cluster,
    pg_url: str,
) -> None:
    anna = user_id(slack, "anna")
    theirs = Status("Working from Lisbon", ":palm_tree:", int(time.time()) + 86400)
    slack.sim.set_own_status(anna, theirs.text, theirs.emoji, theirs.expiration)
    config = pg_config(tmp_path, nfon, hook, slack, pg_url)
    first = daemons("run", "-c", str(config))
    first.wait_ready()

    call = nfon.sim.call("100")
    ours = eventually(shows(slack, anna, "On a call"), "anna on a call in Slack", 15)
    assert ours.emoji == ":telephone_receiver:"
    # What the daemon keeps is in the database, under its customer: the
    # status it set and the one it must give back.
    rows = stored(
        postgres,
        pg_url,
        "SELECT customer, target, person_key, status FROM presence_sync_applied"
        " WHERE target = 'slack_status'",
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [("K1234", "slack_status", "anna@example.com")]
    assert "On a call" in str(rows[0][3])
    saved = stored(postgres, pg_url, "SELECT doc FROM presence_sync_saved")
    assert theirs.text in str(saved)
    assert not (tmp_path / "state.db").exists()
    first.kill()  # SIGKILL: no drain, no goodbye

    nfon.sim.hangup(call)
    daemons("run", "-c", str(config))
    back = eventually(shows(slack, anna, theirs.text), "anna's own status back", 15)
    assert back == theirs
    eventually(
        lambda: stored(postgres, pg_url, "SELECT doc FROM presence_sync_saved") == [] or None,
        "the saved status forgotten once given back",
    )


def check(config: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "presence_sync", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=90,
        env=environ,
        check=False,
    )


def test_check_says_whether_the_database_works(
    tmp_path: Path, nfon: SimHandle, hook: Hook, slack: SlackHandle, pg_url: str
) -> None:
    good = check(pg_config(tmp_path, nfon, hook, slack, pg_url))

    assert good.returncode == 0, good.stdout + good.stderr
    assert re.search(r"^State\s+ok: postgresql://presence_sync@.*PostgreSQL \d", good.stdout, re.M)
    assert "no presence-sync tables yet" in good.stdout

    wrong = check(pg_config(tmp_path, nfon, hook, slack, pg_url, password="not-it"))

    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert re.search(r"^State\s+PROBLEM: .*password authentication failed", wrong.stdout, re.M)
    assert "not-it" not in wrong.stdout + wrong.stderr


def test_a_database_that_goes_away_makes_the_daemon_not_ready_until_it_is_back(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    postgres: Cluster,
) -> None:
    url = postgres.database()
    (tmp_path / "db.password").write_text(ROLE_PASSWORD + "\n")
    (tmp_path / "db.password").chmod(0o600)
    state = f"  url: {url}\n  password_file: db.password\n"
    daemon = daemons(
        "run", "-c", str(write_config(tmp_path / "config.yaml", nfon, hook, state=state))
    )
    body = daemon.wait_ready()
    assert body["components"]["store"] == {"ok": True, "reason": "writable"}

    postgres.stop()
    try:
        call = nfon.sim.call("100")  # a change, whose record cannot be stored
        body = daemon.wait_not_ready()
        store = body["components"]["store"]
        assert store["reason"].startswith("store: cannot commit: "), store
        daemon.wait_line(r"cannot write the state database")
        # The write-ahead record is not stored, so the request waits.
        assert [d for d in hook.for_person("anna@example.com") if d["status"]] == []
    finally:
        postgres.start()

    body = daemon.wait_ready(timeout=30)
    assert body["components"]["store"] == {"ok": True, "reason": "writable"}
    daemon.wait_line(r"state database writable again")
    hook.wait_status("anna@example.com", "InACall")
    nfon.sim.hangup(call)
    hook.wait_status("anna@example.com", None, after=1)


def test_status_reads_the_stored_view_from_postgresql_with_libpqs_password_file(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    postgres: Cluster,
    pg_url: str,
) -> None:
    (tmp_path / "db.password").write_text(ROLE_PASSWORD + "\n")
    (tmp_path / "db.password").chmod(0o600)
    state = f"  url: {pg_url}\n  password_file: db.password\n"
    config = write_config(tmp_path / "config.yaml", nfon, hook, state=state)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    nfon.sim.call("100")
    hook.wait_status("anna@example.com", "InACall")
    listened = daemon.url()
    daemon.kill()
    # status does not read systemd credentials: the admin's own ~/.pgpass,
    # here named by PGPASSFILE, is how libpq finds the password.
    shown = pg_status(config, pgpass(tmp_path, postgres), listened)

    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert f"Stored view (the daemon is down), read from {pg_url}:" in shown.stdout
    anna = next(line for line in shown.stdout.splitlines() if "anna@example.com" in line)
    assert re.search(r"webhook\s+Busy/InACall", anna), anna


def pgpass(tmp_path: Path, postgres: Cluster) -> Path:
    """An admin's libpq password file with the daemon's role in it."""
    path = tmp_path / "pgpass"
    path.write_text(f"127.0.0.1:{postgres.port}:*:presence_sync:{ROLE_PASSWORD}\n")
    path.chmod(0o600)
    return path


def pg_status(
    config: Path, pgpass: Path, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``presence-sync status`` asking the daemon at ``url`` (default: a
    port nobody listens on), with the admin's own password file as libpq's
    only way to the password."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    url = url or f"http://127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "presence_sync", "status", "-c", str(config), "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, "PGPASSFILE": str(pgpass)},
        check=False,
    )


def test_status_reads_postgresql_read_only_and_changes_nothing(
    tmp_path: Path, nfon: SimHandle, hook: Hook, postgres: Cluster, pg_url: str
) -> None:
    # The service's credential, not the admin's: status does not use it.
    (tmp_path / "db.password").write_text("not-the-password\n")
    (tmp_path / "db.password").chmod(0o600)
    state = f"  url: {pg_url}\n  password_file: db.password\n"
    config = write_config(tmp_path / "config.yaml", nfon, hook, state=state)
    admins = pgpass(tmp_path, postgres)

    # An empty database: nothing stored yet, and no table made by status.
    empty = pg_status(config, admins)

    assert empty.returncode == 1, empty.stdout + empty.stderr
    assert "Nothing stored yet" in empty.stdout, empty.stdout + empty.stderr
    assert stored(postgres, pg_url, "SELECT to_regclass('presence_sync_schema')") == [(None,)]
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert stored(postgres, pg_url, tables) == [(0,)]

    # A database at this version, made by the daemon's store: its rows are read.
    store = PostgresStore(pg_url, customer="K1234", password=ROLE_PASSWORD)
    try:
        store.put_applied("webhook", ANNA, ON_A_CALL)
    finally:
        store.close()

    shown = pg_status(config, admins)

    assert shown.returncode == 1, shown.stdout + shown.stderr
    anna = next(line for line in shown.stdout.splitlines() if "anna@example.com" in line)
    assert re.search(r"webhook\s+Busy/InACall", anna), anna

    # A schema from a newer presence-sync: refused, and left as it was.
    newer = POSTGRES_SCHEMA_VERSION + 1
    stored(postgres, pg_url, f"UPDATE presence_sync_schema SET version = {newer} RETURNING version")

    refused = pg_status(config, admins)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"schema version {newer}" in refused.stderr, refused.stderr
    assert "newer presence-sync" in refused.stderr
    assert stored(postgres, pg_url, "SELECT version FROM presence_sync_schema") == [(newer,)]
    assert len(stored(postgres, pg_url, "SELECT * FROM presence_sync_applied")) == 1


def test_a_rotated_password_file_is_taken_on_reload_for_the_next_connection(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    postgres: Cluster,
) -> None:
    # A role of its own: the others' password stays as it is.
    role = f"rotating_{os.getpid()}"
    with postgres.admin() as db:
        db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-Pw-1'")
        db.execute(f"CREATE DATABASE {role} OWNER {role}")
    secret = tmp_path / "db.password"
    secret.write_text("first-Pw-1\n")
    secret.chmod(0o600)
    state = f"  url: {postgres.url(role, role)}\n  password_file: db.password\n"
    config = write_config(tmp_path / "config.yaml", nfon, hook, state=state)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    # A call and its end: the daemon's connections are open, with the first password.
    call = nfon.sim.call("100")
    hook.wait_status("anna@example.com", "InACall")
    nfon.sim.hangup(call)
    hook.wait_status("anna@example.com", None, after=1)
    seen = len(hook.for_person("anna@example.com"))

    # The admin rotates the password: in the database, then in the file.
    with postgres.admin() as db:
        db.execute(f"ALTER ROLE {role} PASSWORD 'second-Pw-2'")
    secret.write_text("second-Pw-2\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"configuration reloaded")
    daemon.wait_line(r"state database password changed")
    # The daemon's sessions end (a restarted server, a failover): it must
    # connect again, with the new password.
    with postgres.admin() as db:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
    nfon.sim.call("100")

    hook.wait_status("anna@example.com", "InACall", after=seen)
    # A pause is stored on the loop's own connection: it connects again too.
    paused = cli("pause", "ben@example.com", "-c", str(config), "--url", daemon.url())
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert stored(postgres, postgres.url(role), "SELECT person_key FROM presence_sync_pauses") == [
        ("ben@example.com",)
    ]
    body = daemon.wait_ready(timeout=30)
    assert body["components"]["store"] == {"ok": True, "reason": "writable"}
    assert "Pw-" not in daemon.output()

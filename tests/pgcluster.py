"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a
temporary directory, listening on a free loopback port, stopped at the end.

No test needs a database that is already running. Run as root (as CI is),
the cluster runs as an unprivileged system user (``presence-sync-test``,
created when missing), since PostgreSQL refuses to run as root. The
superuser ``postgres`` and the daemon's role ``presence_sync`` log in over
TCP with a password (scram-sha-256), as a daemon on another host would;
each test gets a database of its own, owned by ``presence_sync``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import psycopg
import pytest

USER: Final = "presence-sync-test"
"""The system user the cluster runs as when the tests run as root."""
ROLE: Final = "presence_sync"
"""The daemon's role: LOGIN, owns its database, nothing more."""
ROLE_PASSWORD: Final = "role-secret-for-tests"
SUPERUSER_PASSWORD: Final = "super-secret-for-tests"


def binaries() -> Path:
    """The directory of PostgreSQL's server programs. Debian keeps them in
    /usr/lib/postgresql/VERSION/bin, off PATH; fails the test, with what to
    install, when there are none."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    pytest.fail(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: the PostgreSQL "
        "store's tests start a throwaway cluster with them. Install Debian's package "
        "'postgresql' (.ci/run does)."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _unprivileged_user() -> str | None:
    """The user to run the cluster as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None

    def exists() -> bool:
        return subprocess.run(["id", "-u", USER], capture_output=True, check=False).returncode == 0

    if not exists():
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            capture_output=True,
            text=True,
            check=False,
        )
        # Another xdist worker may have made it meanwhile.
        if made.returncode != 0 and not exists():
            raise RuntimeError(f"cannot create the system user {USER}: {made.stderr}")
    return USER


class Cluster:
    """One running cluster; ``database()`` makes a fresh database and gives its URL."""

    def __init__(self) -> None:
        self.bin = binaries()
        self.user = _unprivileged_user()
        self.dir = Path(tempfile.mkdtemp(prefix="presence-sync-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._shared: str | None = None
        if self.user is not None:
            shutil.chown(self.dir, self.user)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if self.user is not None:
            shutil.chown(pwfile, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self.start()
        with self.admin() as db:
            db.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.dir)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        """Start the server (again), on a new free port the first time."""
        if not self.port:
            self.port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.dir} -c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str, user: str = ROLE) -> str:
        """The URL of ``dbname`` for ``user``, without a password (it is
        passed apart, as ``state.password_file`` does)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            self.url(dbname, "postgres"), password=SUPERUSER_PASSWORD, autocommit=True
        )

    def database(self) -> str:
        """A new, empty database owned by the daemon's role; its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def shared(self) -> str:
        """The URL of one database for every test of this process that
        keeps apart from the others by a customer of its own (the store
        keys every row by customer): no database to create per test."""
        if self._shared is None:
            self._shared = self.database()
        return self._shared

    def customer(self) -> str:
        """A customer (K-account) no other test of this process uses."""
        return f"K{os.getpid()}{next(self._names):04d}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

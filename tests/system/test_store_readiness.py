"""A state database that cannot be written makes the daemon not ready, with
the database's reason, and ready again once writes go through.

The disk is made to refuse the daemon's writes the way the kernel refuses
them on a full or failing disk: the running process's file size limit
(``RLIMIT_FSIZE``, set from outside with ``prlimit``) is lowered to one
byte, so every write to the database files fails (Python ignores the
``SIGXFSZ`` that comes with it; its log goes to a pipe, not a file). Raising
the limit again is the admin freeing space."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Daemon, Hook, write_config

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system


def test_a_store_that_cannot_commit_is_not_ready_until_it_can(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons("run", "-c", str(write_config(tmp_path / "config.yaml", nfon, hook)))
    body = daemon.wait_ready()
    assert body["components"]["store"] == {"ok": True, "reason": "writable"}
    pid = daemon.proc.pid
    unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)

    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, unlimited[1]))
    try:
        call = nfon.sim.call("100")  # a change, whose record cannot be stored
        body = daemon.wait_not_ready()
        store = body["components"]["store"]
        assert store["ok"] is False
        # SQLite's own words for the refused write (EFBIG: "disk I/O error").
        assert store["reason"].startswith("store: cannot commit: "), store
        assert "disk" in store["reason"]
        assert "store: cannot commit: " in body["status"]
        daemon.wait_line(r"cannot write the state database")
        # The write-ahead record is not stored, so the request waits.
        assert [d for d in hook.for_person("anna@example.com") if d["status"]] == []
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)

    body = daemon.wait_ready(timeout=30)
    assert body["components"]["store"] == {"ok": True, "reason": "writable"}
    daemon.wait_line(r"state database writable again")
    # Nothing was lost meanwhile: the change goes out once its record is stored.
    hook.wait_status("anna@example.com", "InACall")
    nfon.sim.hangup(call)
    hook.wait_status("anna@example.com", None, after=1)

"""Commands whose output goes to a pipe that closes early (``| head -1``):
each ends quietly, as a Unix tool ended by SIGPIPE does (exit 141, no
traceback), and a long-running one stops instead of running on unseen. The
real commands in their own processes, writing into real pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Daemon, Hook, write_config

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

EX_PIPE = 141


def into_closed_pipe(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``presence-sync ARGS`` writing to a pipe nobody reads any more; exit
    code and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with (tmp_path / "stderr").open("w+") as err:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "presence_sync", *args],
                stdout=write_end,
                stderr=err,
                timeout=60,
                check=False,
            ).returncode
        finally:
            os.close(write_end)
        err.seek(0)
        return code, err.read()


def into_head(tmp_path: Path, *args: str, lines: int = 1) -> tuple[int, list[str], str]:
    """``presence-sync ARGS | head -LINES``: the first lines read, then the
    pipe closed; exit code, those lines and stderr."""
    with (tmp_path / "stderr").open("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "presence_sync", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(lines)]
        proc.stdout.close()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("it ran on after its output was closed")
        err.seek(0)
        return code, first, err.read()


def test_nfon_watch_sim_into_head_ends_quietly(tmp_path: Path) -> None:
    code, first, err = into_head(tmp_path, "nfon", "watch", "--sim", "--rate", "50")

    assert first[0].strip(), "it printed a first line"
    assert code == EX_PIPE, err
    assert "Traceback" not in err
    assert "Broken pipe" not in err


def test_demo_into_head_stops_and_ends_quietly(tmp_path: Path) -> None:
    # Without the closed pipe it would run its full 120 s.
    code, first, err = into_head(tmp_path, "demo", "--people", "3", "--duration", "120")

    assert first[0].startswith("Status page: ")
    assert code == EX_PIPE, err
    assert "Traceback" not in err
    assert "Broken pipe" not in err


def test_demo_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    code, err = into_closed_pipe(tmp_path, "demo", "--people", "3", "--duration", "120")

    assert code == EX_PIPE, err
    assert "Traceback" not in err


def test_status_and_check_into_a_closed_pipe_end_quietly(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    code, err = into_closed_pipe(tmp_path, "status", "-c", str(config), "--url", daemon.url())
    assert code == EX_PIPE, err
    assert "Traceback" not in err

    code, err = into_closed_pipe(tmp_path, "check", "--offline", "-c", str(config))
    assert code == EX_PIPE, err
    assert "Traceback" not in err

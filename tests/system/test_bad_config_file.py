"""What ``run`` and ``check`` do with a configuration file that is no
proper file at all: the real command in its own process. Each ends at once
with exit 78 (which the systemd unit does not restart on) and a message that
names the file, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import cli

pytestmark = pytest.mark.system

CONFIG = """\
nfon:
  customer: K1{char}234
  username: api-user
  password: secret
people:
  - extension: "100"
    email: anna@example.com
targets:
  log: {{}}
"""


@pytest.mark.parametrize("command", [["run"], ["check", "--offline"]])
@pytest.mark.parametrize("char", ["\x08", "\x00", "\x7f"])
def test_control_character_is_exit_78_with_file_line_and_column(
    tmp_path: Path, command: list[str], char: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(char=char))

    result = cli(*command, "-c", str(path))

    assert result.returncode == 78, result.stderr
    assert f"{path}:2:15: YAML: the control character U+{ord(char):04X}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["run"], ["check", "--offline"]])
def test_fifo_or_device_is_refused_at_once(tmp_path: Path, command: list[str]) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        started = time.monotonic()
        # A hang (the FIFO read) fails here at the timeout, not forever.
        result = subprocess.run(
            [sys.executable, "-m", "presence_sync", *command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        took = time.monotonic() - started
        assert result.returncode == 78, (result.stderr, took)
        assert f"{path}: cannot read the file: {kind}, not a regular file" in result.stderr
        assert "Traceback" not in result.stderr

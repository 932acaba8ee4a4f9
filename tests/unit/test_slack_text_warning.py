"""A Slack status text over Slack's 100 characters gets the daemon's warning
from ``check`` and ``explain`` too, in the same words (issue 16 point 15)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from presence_sync.cli import main
from presence_sync.targets.slack import long_text

LONG = "On a call with a customer; please write in the team channel instead, " + "x" * 40

CONFIG = f"""\
nfon: {{customer: K1234, username: u, password: p}}
slack: {{token: xoxb-test}}
people:
  - {{extension: "100", email: anna@example.com}}
targets:
  slack_status: {{}}
rules:
  - name: long
    when: {{line: in-use}}
    set:
      slack_status: {{text: "{LONG}", emoji: ":telephone_receiver:"}}
"""


def write(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def test_the_warning_says_how_long_and_what_slack_shows() -> None:
    assert long_text("x" * 100) is None
    warning = long_text(LONG)
    assert warning is not None
    assert f"this one has {len(LONG)}" in warning
    assert "at most 100 characters" in warning


def test_check_warns_at_the_rule_s_line(tmp_path: Path) -> None:
    path = write(tmp_path)
    # As an admin runs it (check binds its streams when it is imported).
    done = subprocess.run(
        [sys.executable, "-m", "presence_sync", "check", "-c", str(path), "--offline"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    err = done.stderr
    assert done.returncode == 0, err
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if LONG in text)
    assert f"warning: {path}:{line}:" in err
    assert f"rules[0].set.slack_status.text: {long_text(LONG)}" in err


def test_explain_warns_for_the_text_the_situation_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    assert main(["explain", "-c", str(path), "100", "--line", "in-use"]) == 0
    err = capsys.readouterr().err
    assert f"warning: slack_status: {long_text(LONG)}" in err
    assert main(["explain", "-c", str(path), "100"]) == 0  # idle: nothing to show
    assert "warning" not in capsys.readouterr().err

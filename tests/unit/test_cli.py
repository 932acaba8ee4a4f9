"""The command line: exit codes and messages an admin relies on."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from presence_sync import __version__
from presence_sync.cli import default_config, main
from presence_sync.errors import EX_CONFIG


def test_missing_config_file_exits_78_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["run", "-c", str(missing)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("nfon: [unclosed\n", ":1:"),
        ("nfon:\n  base_url: http://x\n  tokn: 1\n", ":3:3: nfon.tokn"),
        ("people: []\n", "nfon"),
        ("nfon:\n  customer: K1\n  username: ${NO_SUCH_VAR_FOR_TEST}\n", ":3:"),
        ("resync:\n  interval: soon\n", ":2:13: resync.interval"),
    ],
)
def test_invalid_config_exits_78_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main(["run", "-c", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{path}" in err
    assert where in err


def test_unquoted_clock_time_in_a_rule_exits_78_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "targets: {log: {}}\n"
        "rules:\n"
        "  - when: {time: {from: 8, to: '18:00'}}\n"
        "    set: {log: {text: x}}\n"
    )
    assert main(["run", "-c", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert f"{path}:4:25: rules[0].when.time.from: " in err
    assert 'write times in quotes, e.g. "08:00"' in err
    assert "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"presence-sync {__version__}"


def test_default_config_follows_systemd_configuration_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PRESENCE_SYNC_CONFIG", raising=False)
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", "/etc/presence-sync")
    assert default_config() == "/etc/presence-sync/config.yaml"
    monkeypatch.setenv("PRESENCE_SYNC_CONFIG", "/srv/ps.yaml")
    assert default_config() == "/srv/ps.yaml"


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    "args",
    [
        ["sim", "nfon", "--port", "0"],
        ["sim", "slack", "--port", "0"],
        ["sim", "microsoft", "--port", "0"],
        ["nfon", "watch", "--sim"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_long_running_commands_stop_on_a_signal_with_130(
    args: list[str], sig: signal.Signals
) -> None:
    # Started the way a shell starts a background job: with SIGINT ignored,
    # so Python's own KeyboardInterrupt cannot be what stops it.
    with subprocess.Popen(
        [sys.executable, "-m", "presence_sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ignore_sigint,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline()  # it is up and has said where
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 130
            assert "Traceback" not in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()

"""The command line: exit codes and messages an admin relies on."""

from __future__ import annotations

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

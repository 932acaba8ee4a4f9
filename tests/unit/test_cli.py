"""The command line: exit codes and messages an admin relies on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from presence_sync import __version__
from presence_sync.cli import _until_stopped, default_config, main
from presence_sync.errors import EX_CONFIG
from presence_sync.sim.nfon import NfonSim
from presence_sync.sim.nfon import serve_in_thread as serve_nfon


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


def test_rules_that_could_never_match_exit_78_with_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "people:\n"
        "  - {extension: '100', email: anna@example.com, groups: [support]}\n"
        "targets: {log: {}}\n"
        "rules:\n"
        "  - when: {groups: [suport]}\n"
        "    set: {log: {text: x}}\n"
        "  - when: {people: [ana@example.com]}\n"
        "    set: {log: {text: y}}\n"
        "  - set: {slack_status: {text: z}}\n"
    )
    assert main(["check", "--offline", "-c", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert (
        f"{path}:6:21: rules[0].when.groups[0]: no one under `people:` is in the group "
        '"suport" (did you mean "support"?)' in err
    )
    assert (
        f"{path}:8:21: rules[1].when.people[0]: no one under `people:` has the e-mail "
        '"ana@example.com" (did you mean "anna@example.com"?)' in err
    )
    assert f'{path}:10:25: rules[2].set.slack_status: unknown target "slack_status"' in err
    assert "a rule sets only targets enabled under `targets:`" in err
    assert "Traceback" not in err


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


@pytest.fixture
def run_config(tmp_path: Path) -> Iterator[Path]:
    """A configuration for ``run`` against an NFON simulator on loopback."""
    with serve_nfon(NfonSim(extensions=2)) as nfon:
        path = tmp_path / "config.yaml"
        path.write_text(
            f"nfon: {{base_url: {nfon.base_url}, customer: K1234, username: api-user,"
            " password: api-secret}\n"
            "targets: {log: {}}\n"
            f"state: {{path: {tmp_path / 'state.db'}}}\n"
            "http: {listen: '127.0.0.1:0'}\n"
        )
        yield path


LONG_RUNNING = [
    ["run", "-c", "CONFIG"],
    ["demo", "--people", "2"],
    ["sim", "nfon", "--port", "0"],
    ["sim", "slack", "--port", "0"],
    ["sim", "microsoft", "--port", "0"],
    ["sim", "webhook", "--port", "0"],
    ["nfon", "watch", "--sim"],
]


@pytest.mark.parametrize("args", LONG_RUNNING, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_long_running_commands_stop_on_a_signal_with_0(
    args: list[str], sig: signal.Signals, request: pytest.FixtureRequest
) -> None:
    # The README's promise, and what systemd expects of SIGTERM. Started the
    # way a shell starts a background job: with SIGINT ignored, so Python's
    # own KeyboardInterrupt cannot be what stops it.
    if "CONFIG" in args:
        args = [str(request.getfixturevalue("run_config")) if a == "CONFIG" else a for a in args]
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
            assert proc.wait(timeout=30) == 0
            assert "Traceback" not in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sim", "nfon", "--port", "-1"], "--port: not a port number (0 to 65535): '-1'"),
        (["sim", "nfon", "--port", "http"], "--port: not a port number"),
        (["sim", "nfon", "--extensions", "-3"], "--extensions: must be at least 0"),
        (["sim", "nfon", "--traffic", "-1"], "--traffic: must not be negative"),
        (["sim", "slack", "--port", "70000"], "--port: not a port number"),
        (["sim", "slack", "--people", "-2"], "--people: must be at least 0"),
        (["sim", "microsoft", "--users", "-1"], "--users: must be at least 0"),
        (["sim", "microsoft", "--token-lifetime", "0"], "--token-lifetime: must be above 0"),
        (["sim", "webhook", "--port", "65536"], "--port: not a port number"),
        (["sim", "webhook", "--path", "hook"], "--path: must start with /"),
        (["nfon", "watch", "--sim", "--rate", "0"], "--rate: must be above 0"),
        (["demo", "--people", "0"], "--people: must be at least 1"),
        (["demo", "--people", "many"], "--people: not a whole number"),
        (["demo", "--calls-per-minute", "-1"], "--calls-per-minute: must be above 0"),
        (["demo", "--calls-per-minute", "0"], "--calls-per-minute: must be above 0"),
        (["demo", "--calls-per-minute", "nan"], "--calls-per-minute: not a number"),
        (["demo", "--duration", "-5"], "--duration: must be above 0"),
        (["demo", "--rate", "1"], "unrecognized arguments: --rate"),
    ],
)
def test_bad_arguments_are_a_usage_error(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: presence-sync ")
    assert says in err
    assert "Traceback" not in err


@pytest.mark.parametrize("simulator", ["nfon", "slack", "microsoft", "webhook"])
def test_a_simulator_port_in_use_is_a_usage_error(
    simulator: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = ["--tls-dir", str(tmp_path)] if simulator == "microsoft" else []
        with pytest.raises(SystemExit) as exit_:
            main(["sim", simulator, "--port", str(port), *extra])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: presence-sync sim {simulator} ")
    assert f"presence-sync sim {simulator}: error: port {port} is in use" in err
    assert "Traceback" not in err


def test_an_address_not_of_this_machine_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["sim", "webhook", "--host", "192.0.2.1", "--port", "0"])  # TEST-NET-1
    assert exit_.value.code == 2
    assert "cannot listen on 192.0.2.1: not an address of this machine" in capsys.readouterr().err


@pytest.mark.parametrize(("long_running", "code"), [(True, 0), (False, 130)])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_ends_a_long_running_command_with_0_and_interrupts_a_one_shot_with_130(
    long_running: bool, code: int, sig: signal.Signals
) -> None:
    cleaned_up = []

    async def work() -> int:
        os.kill(os.getpid(), sig)
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)
        return 0

    assert _until_stopped(work(), long_running=long_running) == code
    assert cleaned_up == [True]

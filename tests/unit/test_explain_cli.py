"""``presence-sync explain`` through the real configuration loader: what an
admin types, what they read, and the exit codes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from presence_sync.cli import main
from presence_sync.errors import EX_CONFIG

CONFIG = """\
nfon: {customer: K1234, username: u, password: p}
timezone: Europe/Berlin
people:
  - {extension: "100", email: Anna@Example.com, name: Anna Schmidt}
  - {extension: "101", email: bob@example.com, groups: [support]}
lists:
  vip: ["+49 30 123456"]
targets:
  log: {}
  webhook: {url: "https://hooks.example.com/x"}
"""

RULES = """\
rules:
  - name: VIP calls
    when: {line: in-use, party_in: vip}
    set: {"*": {text: "VIP call"}}
  - when:
      line: in-use
      direction: outbound
      time: {days: mon-fri, from: "08:00", to: "18:00"}
    set: {webhook: {text: "Calling out"}}
  - name: on a call
    when: {line: [in-use, ringing]}
    unless: {groups: support}
    set: {"*": {text: "On a call"}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def section(out: str, target: str) -> list[str]:
    """The lines ``explain`` printed for ``target``, its heading first."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target} → "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def test_default_rules_for_a_call_and_for_an_idle_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG)

    code, out, err = explain(capsys, "-c", str(path), "anna@example.com", "--line", "in-use")
    assert (code, err) == (0, "")
    assert out.startswith("Anna Schmidt <anna@example.com>, extension 100\n")
    assert f"the default rules ({path} has no rules:)" in out
    assert section(out, "log")[:2] == [
        'log → Busy/InACall :telephone_receiver: "On a call"',
        '  decided by rule "on a call"',
    ]

    code, out, _ = explain(capsys, "-c", str(path), "100")
    assert code == 0
    assert "Situation: line idle, presence available," in out
    assert section(out, "webhook") == [
        "webhook → cleared, own status restored",
        "  no rule decides it, so the person keeps their own status",
        "  rules tried:",
        '    rule "on a call": line: wants in-use, but the line is idle',
        '    rule "do not disturb": does not set webhook (it sets: slack_dnd, teams_presence)',
    ]


def test_direction_list_and_time_window_with_file_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG + RULES)
    lines = path.read_text().splitlines()
    vip, unnamed, on_call = (
        lines.index("  - name: VIP calls") + 1,
        lines.index("  - when:") + 1,
        lines.index("  - name: on a call") + 1,
    )

    # A Saturday: the outbound rule's window is closed.
    code, out, _ = explain(
        capsys, "-c", str(path), "100", "--direction", "outbound", "--party", "4989777",
        "--at", "2026-12-05 09:00",
    )  # fmt: skip
    assert code == 0
    assert "outbound call to 4989777 (external), Sat 2026-12-05 09:00 Europe/Berlin" in out
    assert section(out, "webhook") == [
        'webhook → "On a call"',
        f'  decided by rule "on a call" (line {on_call})',
        "  rules before that did not decide it:",
        f'    rule "VIP calls" (line {vip}): party_in: wants the other party on list vip, '
        "but 4989777 is not on it",
        f"    rules[1] (line {unnamed}): time: wants mon-fri 08:00-18:00, "
        "but it is Sat 2026-12-05 09:00 Europe/Berlin",
    ]

    # 08:30 UTC on a Wednesday is 09:30 in Berlin: inside the window.
    code, out, _ = explain(
        capsys, "-c", str(path), "100", "--direction", "outbound",
        "--at", "2026-12-02T08:30+00:00",
    )  # fmt: skip
    assert code == 0
    assert "Wed 2026-12-02 09:30 Europe/Berlin" in out
    assert section(out, "webhook")[:2] == [
        'webhook → "Calling out"',
        f"  decided by rules[1] (line {unnamed})",
    ]

    code, out, _ = explain(
        capsys, "-c", str(path), "bob@example.com", "--line", "ringing", "--party", "100"
    )
    assert code == 0
    assert "inbound call from 100 (internal)" in out
    assert section(out, "log")[-1] == (
        f'    rule "on a call" (line {on_call}): its unless matches (groups: support)'
    )

    code, out, _ = explain(capsys, "-c", str(path), "100", "--party", "+49 30 123456")
    assert section(out, "log")[:2] == [
        'log → "VIP call"',
        f'  decided by rule "VIP calls" (line {vip})',
    ]


def test_only_the_number_the_admin_typed_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG + RULES)
    _, out, _ = explain(capsys, "-c", str(path), "100", "--line", "in-use")
    assert "123456" not in out  # the VIP list's number stays in the file
    assert "the other party's number is not known" in out


def test_unknown_person_exits_1_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG)
    code, out, err = explain(capsys, "-c", str(path), "carl@example.com")
    assert (code, out) == (1, "")
    assert "no one under people:" in err
    assert "carl@example.com" in err


@pytest.mark.parametrize(
    "args",
    [
        ["100", "--line", "busy"],
        ["100", "--at", "tomorrow"],
        ["100", "--direction", "sideways"],
        ["100", "--line", "idle", "--party", "4989777"],
        [],
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    path = write(tmp_path, CONFIG)
    try:
        code = main(["explain", "-c", str(path), *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert "presence-sync explain: error:" in err
    assert "Traceback" not in err


def test_invalid_configuration_exits_78_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        CONFIG.replace("timezone: Europe/Berlin", "timezone: Europe/Berlin\ncolour: red")
        + "rules:\n  - when: {line: in_use}\n    set: {log: {text: x}}\n",
    )
    code, out, err = explain(capsys, "-c", str(path), "100")
    assert (code, out) == (EX_CONFIG, "")
    rule_line = path.read_text().splitlines().index("  - when: {line: in_use}") + 1
    assert f"{path}:3:1: colour: " in err
    assert f"{path}:{rule_line}:18: rules[0].when.line: " in err


def test_people_warning_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nobody = CONFIG.split("people:")[0] + "people: []\ntargets: {log: {}}\n"
    path = write(tmp_path, nobody)
    code, _, err = explain(capsys, "-c", str(path), "100")
    assert code == 1
    assert err.startswith(f"warning: {path}:3:9: people: no one is listed")


def test_a_local_time_the_clocks_skip_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Europe/Berlin skips 02:00-03:00 on 2026-03-29 (issue 16 point 15)."""
    path = write(tmp_path, CONFIG)
    code, out, err = explain(capsys, "-c", str(path), "100", "--at", "2026-03-29 02:30")
    assert (code, out) == (2, "")
    assert err.startswith(
        "presence-sync explain: error: argument --at: 2026-03-29 02:30 does not exist in "
        "Europe/Berlin: the clocks go from +01:00 to +02:00 then and skip 60 minutes"
    ), err
    code, out, err = explain(capsys, "-c", str(path), "100", "--at", "2026-03-29 03:30")
    assert code == 0
    assert "(2026-03-29T03:30+02:00)" in out


def test_a_local_time_that_happens_twice_says_which_one_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Europe/Berlin has 02:00-03:00 twice on 2026-10-25."""
    path = write(tmp_path, CONFIG)
    code, out, err = explain(capsys, "-c", str(path), "100", "--at", "2026-10-25 02:30")
    assert code == 0
    assert (
        "note: --at 2026-10-25 02:30 happens twice in Europe/Berlin (the clocks go back): "
        "using the first, +02:00; write +01:00 for the second" in err
    ), err
    assert "(2026-10-25T02:30+02:00)" in out
    code, out, err = explain(capsys, "-c", str(path), "100", "--at", "2026-10-25T02:30+01:00")
    assert code == 0
    assert "note:" not in err

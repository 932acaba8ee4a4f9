"""The log formats: time stamps with the zone offset in text and JSON, and
one line per entry whatever its fields hold."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from presence_sync.ops.logging import JsonFormatter, TextFormatter, kv, local_time, printable


def record(message: str, level: int = logging.ERROR, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("presence_sync.app", level, __file__, 1, message, None, None)
    entry.ctx = fields
    return entry


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Europe/Berlin, as on the machine of the issue's report."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_local_time_carries_the_offset(berlin: None) -> None:
    winter = datetime.fromisoformat("2026-01-15T07:25:00+00:00").timestamp()
    summer = datetime.fromisoformat("2026-07-15T07:25:00+00:00").timestamp()
    assert local_time(winter) == "2026-01-15T08:25:00.000+01:00"
    assert local_time(summer) == "2026-07-15T09:25:00.000+02:00"


def test_a_text_line_starts_with_its_time_and_offset(berlin: None) -> None:
    entry = record("reload refused", reason="invalid configuration")
    entry.created = datetime.fromisoformat("2026-01-15T07:25:00+00:00").timestamp()
    line = TextFormatter(journald=False).format(entry)
    assert line == (
        "2026-01-15T08:25:00.000+01:00 ERROR   presence_sync.app: reload refused "
        'reason="invalid configuration"'
    )


def test_a_json_line_carries_time_with_offset_and_the_fields(berlin: None) -> None:
    entry = record("reload refused", problems=["a.yaml:1:1: x: bad", "a.yaml:2:1: y: bad"])
    entry.created = datetime.fromisoformat("2026-01-15T07:25:00+00:00").timestamp()
    doc = json.loads(JsonFormatter().format(entry))
    assert doc["ts"] == "2026-01-15T08:25:00.000+01:00"
    assert (doc["level"], doc["logger"], doc["msg"]) == (
        "error",
        "presence_sync.app",
        "reload refused",
    )
    assert doc["problems"] == ["a.yaml:1:1: x: bad", "a.yaml:2:1: y: bad"]


def test_several_problems_stay_one_entry_in_text_and_under_journald() -> None:
    problems = ["a.yaml:1:1: x: bad", "a.yaml:2:1: y: bad"]
    for formatter in (TextFormatter(journald=False), TextFormatter(journald=True)):
        line = formatter.format(record("reload refused", problems=problems))
        assert "\n" not in line
        assert 'problems="a.yaml:1:1: x: bad; a.yaml:2:1: y: bad"' in line
    assert TextFormatter(journald=True).format(record("x")).startswith("<3>presence_sync.app: ")


def test_kv_is_what_the_formatters_read() -> None:
    assert kv(event="reload_ok") == {"ctx": {"event": "reload_ok"}}


HOSTILE = "ratelimited\n<2>forged\r\t\x1b[31m\x7f\x85\u2028\u2029\u202e\u2066"
SHOWN = "ratelimited\\n<2>forged\\r\\t\\x1b[31m\\x7f\\x85\\u2028\\u2029\\u202e\\u2066"


def test_printable_escapes_controls_separators_and_bidi_and_keeps_the_rest() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("Müller 李 Ζωή 👩‍💻") == "Müller 李 Ζωή 👩\\u200d💻"
    assert printable("C:\\temp\u00a0x") == "C:\\temp\u00a0x"


@pytest.mark.parametrize(
    "formatter", [TextFormatter(journald=False), TextFormatter(journald=True), JsonFormatter()]
)
def test_remote_text_in_a_message_or_a_field_cannot_start_a_line(
    formatter: logging.Formatter,
) -> None:
    entry = logging.LogRecord(
        "presence_sync.engine", logging.WARNING, __file__, 1, "slack said %s", (HOSTILE,), None
    )
    entry.ctx = {"error": HOSTILE, "names": [HOSTILE], HOSTILE: 1}
    line = formatter.format(entry)
    assert line.splitlines() == [line]
    for char in "\x1b\x7f\x85\u2028\u2029\u202e\u2066":
        assert char not in line
    if isinstance(formatter, JsonFormatter):
        doc = json.loads(line)
        assert doc["msg"] == f"slack said {SHOWN}"
        assert doc["error"] == SHOWN
        assert doc["names"] == [SHOWN]
        assert doc[SHOWN] == 1
    else:
        assert f"slack said {SHOWN} " in line
        assert f'error="{SHOWN}"' in line
        assert f"{SHOWN}=1" in line


def test_a_quoted_field_tells_a_backslash_from_an_escaped_newline() -> None:
    line = TextFormatter(journald=False).format(record("x", path="C:\\new", text="a\nb"))
    assert line.endswith('path="C:\\\\new" text="a\\nb"')


def test_a_traceback_keeps_its_lines_and_escapes_each_exception_text() -> None:
    try:
        try:
            raise ValueError("inner\n<2>forged")
        except ValueError as inner:
            raise RuntimeError("outer \x1b[2J") from inner
    except RuntimeError:
        entry = logging.LogRecord(
            "presence_sync.engine", logging.CRITICAL, __file__, 1, "failed", None, sys.exc_info()
        )
    lines = TextFormatter(journald=True).format(entry).splitlines()
    assert lines[0] == "<2>presence_sync.engine: failed"
    assert all(line.startswith("<2>") for line in lines)
    assert "<2>ValueError: inner\\n<2>forged" in lines
    assert "<2>RuntimeError: outer \\x1b[2J" in lines
    assert "<2>The above exception was the direct cause of the following exception:" in lines
    assert any("test_a_traceback_keeps_its_lines" in line for line in lines)  # the frames
    doc = json.loads(JsonFormatter().format(entry))
    assert "ValueError: inner\\n<2>forged\n" in doc["exc"]

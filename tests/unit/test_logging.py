"""The log formats: time stamps with the zone offset in text and JSON, and
one line per entry whatever its fields hold."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from presence_sync.ops.logging import JsonFormatter, TextFormatter, kv, local_time


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

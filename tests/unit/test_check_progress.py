"""``check``'s progress line: in place on a terminal, a line now and then in a log."""

from __future__ import annotations

import io

import pytest

from presence_sync.tools import check


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_rewritten_and_erased_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(check.time, "monotonic", lambda: now[0])
    out = Terminal()
    progress = check._Progress(3, out)
    for _ in range(3):
        now[0] += 1.0
        progress.tick()
    progress.finish()
    text = out.getvalue()
    assert text.count("\r\033[K") == 4
    assert "resolving people: 3/3" in text
    assert text.endswith("\r\033[K")


def test_in_a_log_a_line_every_few_seconds_and_nothing_for_a_quick_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(check.time, "monotonic", lambda: now[0])
    quick = io.StringIO()
    progress = check._Progress(5000, quick)
    for _ in range(5000):
        progress.tick()
    progress.finish()
    assert quick.getvalue() == ""

    slow = io.StringIO()
    progress = check._Progress(5000, slow)
    for _ in range(5000):
        now[0] += 0.01  # 50 s in all
        progress.tick()
    progress.note("Slack asked us to wait 30 s")
    now[0] += check.PROGRESS_INTERVAL
    progress.tick()
    lines = slow.getvalue().splitlines()
    assert 9 <= len(lines) <= 11
    assert lines[-1] == "resolving people: 5001/5000 (Slack asked us to wait 30 s)"
    assert "\r" not in slow.getvalue()

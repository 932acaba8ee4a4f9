"""``presence-sync demo``, the README's first command: it starts the four
simulators and the real daemon, says where its status page is before
anything else, shows a call on that page and in its own lines, and stops
cleanly with exit 0 on Ctrl-C."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import Daemon
from polling import eventually

pytestmark = pytest.mark.system

TARGETS = {"teams_presence", "teams_status_message", "slack_status", "webhook"}


def test_demo_shows_a_call_on_its_status_page_and_stops_with_0_on_ctrl_c(
    daemons: Callable[..., Daemon],
) -> None:
    demo = daemons("demo", "--people", "3", "--calls-per-minute", "120")
    url = demo.wait_line(r"^Status page: ", timeout=30).split()[-1]
    assert demo.lines[0] == f"Status page: {url}", "the page's address comes first"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)

    page = httpx.get(url, timeout=5)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]

    def someone_in_a_call_everywhere() -> dict[str, Any] | None:
        status = httpx.get(url + "api/status", timeout=5).json()
        assert set(status["daemon"]["targets"]) == TARGETS
        for person in status["people"]:
            targets = person["targets"]
            if person["line"] == "in-use" and all(
                targets[name]["applied"] and targets[name]["state"] == "in-sync" for name in TARGETS
            ):
                return person
        return None

    person = eventually(someone_in_a_call_everywhere, "a call on the status page", within=40)
    assert person["targets"]["teams_presence"]["applied"].startswith("Busy")
    # The demo's own lines say the same, in a colleague's words.
    demo.wait_line(rf"{re.escape(person['name'])} · Teams: Busy/In a call")
    demo.wait_line(rf"{re.escape(person['name'])} · Slack: :telephone_receiver: On a call")

    demo.signal(signal.SIGINT)
    assert demo.wait_exit(timeout=30) == 0
    demo.kill()  # it has exited: this only reads the rest of its output
    assert demo.count(r"^demo finished: the webhook receiver got [1-9]\d* signed documents?\.") == 1
    assert "Traceback" not in demo.output()

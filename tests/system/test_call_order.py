"""NFON reports a line going in-use (states stream) and the call behind it
(calls stream) on two connections, so either may arrive first. Rules that
look at the call must not decide without it: one outbound call costs exactly
one write and one clear, whichever stream speaks first."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
import pytest
from harness import Daemon, Hook, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"
OUTBOUND_RULES = (
    "rules:\n"
    "  - name: calling out\n"
    "    when: {line: in-use, direction: outbound}\n"
    '    set: {webhook: {availability: Busy, activity: InACall, text: "Calling out"}}\n'
    "  - name: other calls\n"
    "    when: {line: in-use}\n"
    '    set: {webhook: {availability: Busy, activity: InACall, text: "On a call"}}\n'
)

Stream = Literal["states", "calls"]
OTHER: dict[Stream, Stream] = {"states": "calls", "calls": "states"}


def events_seen(daemon: Daemon, stream: Stream) -> int:
    """Events the daemon has read from one NFON stream (its own metric)."""
    text = httpx.get(daemon.url() + "/metrics", timeout=5).text
    match = re.search(rf'presence_sync_stream_events_total\{{stream="{stream}"\}} (\S+)', text)
    return int(float(match.group(1))) if match else 0


def first(nfon: SimHandle, daemon: Daemon, stream: Stream, step: Callable[[], None]) -> None:
    """Run ``step`` so that the daemon reads its events on ``stream`` before
    any on the other stream."""
    held = OTHER[stream]
    before = events_seen(daemon, stream)
    nfon.sim.hold_stream(held)
    step()
    eventually(lambda: events_seen(daemon, stream) > before, f"the {stream} event to arrive")
    nfon.sim.hold_stream(held, on=False)


@pytest.mark.parametrize(
    ("at_start", "at_end"),
    [("states", "states"), ("states", "calls"), ("calls", "states"), ("calls", "calls")],
)
def test_an_outbound_call_is_one_set_and_one_clear_whichever_stream_speaks_first(
    tmp_path: Path,
    nfon: SimHandle,
    hook: Hook,
    daemons: Callable[..., Daemon],
    at_start: Stream,
    at_end: Stream,
) -> None:
    # Every hold below ends with a real event; a long settle keeps a slow
    # machine from turning a late call event into a flicker.
    config = write_config(
        tmp_path / "config.yaml",
        nfon,
        hook,
        rules=OUTBOUND_RULES,
        nfon_extra="  call_settle: 5s\n",
    )
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    calls: list[str] = []
    first(nfon, daemon, at_start, lambda: calls.append(nfon.sim.call("100", direction="outbound")))
    hook.wait_status(ANNA, "InACall")
    first(nfon, daemon, at_end, lambda: nfon.sim.hangup(calls[0]))
    hook.wait_status(ANNA, None)

    statuses = [doc["status"] for doc in hook.for_person(ANNA)]
    assert [s and s["text"] for s in statuses] == ["Calling out", None]

"""``presence-sync check --test-call EXT --callee NUMBER``: prove the whole
path for one person while the daemon runs.

1. The daemon's status API (``GET /api/people/EXT``) is read first: the
   person must be known, not paused, and their line idle.
2. A click-to-dial call is placed through the NFON CTI API
   (``POST /extensions/phone/calls``) on behalf of EXT. NFON rings **EXT's
   own phone first**; only when it is answered does the line go in use and
   NFON dial ``NUMBER``. So on a real PBX someone must pick up EXT's phone
   (the simulator's device answers by itself). The prompt says so.
3. The status API is watched until every target of the person shows the
   call (in sync with what the rules want for it), then the call is
   cancelled (``DELETE /extensions/phone/calls/{uuid}``), and the API is
   watched until every target is back where it was.

Each step is printed with the seconds since the call was placed. A step that
does not happen within ``--timeout`` seconds (counted from the start) fails
the test, naming the step and what the daemon said about it; the call is
cancelled whatever happens (Ctrl-C included).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from presence_sync.errors import PresenceSyncError, UpstreamError
from presence_sync.nfon import NfonClient
from presence_sync.tools.check import collect_warnings, load_checked, warning_text
from presence_sync.tools.client import daemon_url

__all__ = ["POLL_INTERVAL", "RULES_GRACE", "TestCallFailed", "run"]

POLL_INTERVAL = 0.1
"""Seconds between two reads of the daemon's status API."""
RULES_GRACE = 3.0
"""How long a target may stay in sync with what it showed before the call
until we conclude that the rules show nothing there for this call."""
RING_TIMEOUT = 60
"""How long NFON lets EXT's phone ring (NFON's maximum is 120 s)."""


class TestCallFailed(PresenceSyncError):
    """A step did not happen; the message names it."""

    __test__ = False  # not a pytest test class, despite its name


def _callee(number: str) -> tuple[str, str | None]:
    """``+49…`` or ``0049…`` is an outside number (context ``global``, the
    prefix dropped as NFON asks); anything else an extension of the K-Account."""
    if number.startswith("+"):
        return number[1:], "global"
    if number.startswith("00"):
        return number[2:], "global"
    return number, None


class _Watch:
    """Reads one person from the daemon's API and prints the steps."""

    def __init__(
        self, api: httpx.AsyncClient, who: str, deadline: float, stdout: TextIO, timeout: float
    ) -> None:
        self.api = api
        self.who = who
        self.deadline = deadline
        self.stdout = stdout
        self.timeout = timeout
        self.started = time.monotonic()

    def step(self, text: str) -> None:
        print(f"{time.monotonic() - self.started:7.2f} s  {text}", file=self.stdout, flush=True)

    async def person(self) -> dict[str, Any]:
        try:
            response = await self.api.get(f"/api/people/{quote(self.who, safe='@')}")
        except httpx.HTTPError as exc:
            raise TestCallFailed(
                f"cannot reach the daemon at {self.api.base_url} ({type(exc).__name__}): "
                "is it running? (give its address with --url)"
            ) from exc
        if response.status_code == 404:
            raise TestCallFailed(
                f"the daemon does not know {self.who}: it is not under people:, or NFON "
                "does not list that extension (run check without --test-call to see why)"
            )
        if response.status_code != 200:
            raise TestCallFailed(
                f"the daemon's status API answered {response.status_code} for {self.who}"
            )
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("targets"), dict):
            raise TestCallFailed("the daemon's status API gave an answer we cannot read")
        return body

    async def until(
        self, done: Callable[[dict[str, Any]], bool], failure: Callable[[dict[str, Any]], str]
    ) -> dict[str, Any]:
        """Read the person until ``done``; past the deadline ``TestCallFailed(failure(person))``."""
        while True:
            person = await self.person()
            if done(person):
                return person
            if time.monotonic() >= self.deadline:
                raise TestCallFailed(
                    f"{failure(person)} within {self.timeout:g} s "
                    f"({time.monotonic() - self.started:.1f} s after the call was placed)"
                )
            await asyncio.sleep(POLL_INTERVAL)


def _shows(entry: Mapping[str, Any]) -> str:
    applied = entry.get("applied")
    return str(applied) if applied is not None else "nothing of ours"


def _where(entry: Mapping[str, Any]) -> str:
    """What the daemon says about a target that is not there yet."""
    parts = [f"state {entry.get('state')}"]
    if entry.get("reason"):
        parts.append(f"reason: {entry['reason']}")
    if entry.get("retry_at"):
        parts.append(f"next try {entry['retry_at']}")
    return ", ".join(parts)


def _settled(entry: Mapping[str, Any]) -> bool:
    return entry.get("state") == "in-sync" and entry.get("applied") == entry.get("desired")


async def _prove(
    watch: _Watch, nfon: NfonClient, ext: str, callee: str, state: dict[str, str | None]
) -> tuple[int, int]:
    """The steps; ``state["call"]`` holds the call uuid while it may be up.
    Returns how many targets showed the call (the others had nothing to
    show for it, and so nothing to clear), and how many there are."""
    before = await watch.person()
    name = before.get("name") or ext
    if before.get("paused"):
        raise TestCallFailed(f"{name} is paused: resume them first (presence-sync resume)")
    if before.get("line") not in ("idle", None):
        raise TestCallFailed(f"{name}'s line is {before.get('line')} now: try when it is idle")
    targets: dict[str, Any] = before["targets"]
    if not targets:
        raise TestCallFailed(f"{name} has no target (opted out of every one?)")
    baseline = {target: entry.get("applied") for target, entry in targets.items()}
    for target, entry in targets.items():
        if not _settled(entry):
            print(
                f"note: {target} is not in sync before the call ({_where(entry)})",
                file=watch.stdout,
            )
    number, context = _callee(callee)
    print(
        f"Test call for {name} ({ext}): NFON rings {ext}'s phone first. "
        f"Answer it there; then NFON dials {callee}, and the call is cancelled "
        "as soon as every target shows it.",
        file=watch.stdout,
        flush=True,
    )
    watch.started = time.monotonic()
    state["call"] = await nfon.place_call(
        ext, number, callee_context=context, ring_for=RING_TIMEOUT
    )
    watch.step(f"call placed (NFON call {state['call']})")

    person = await watch.until(
        lambda p: p.get("line") in ("ringing", "in-use"),
        lambda p: f"{ext}'s phone did not ring (line {p.get('line')})",
    )
    if person.get("line") == "ringing":
        watch.step(f"{ext}'s phone rings: answer the call on {ext}'s phone now")
    await watch.until(
        lambda p: p.get("line") == "in-use",
        lambda p: f"nobody answered {ext}'s phone (line {p.get('line')})",
    )
    watch.step(f"{ext}'s line is in use")
    in_use_at = time.monotonic()

    shown: set[str] = set()
    untouched: set[str] = set()  # the rules show nothing there: nothing to clear after

    def all_show(p: dict[str, Any]) -> bool:
        for target, entry in p["targets"].items():
            if target in shown or target not in baseline or not _settled(entry):
                continue
            if entry.get("applied") != baseline[target]:
                watch.step(f"{target} shows {_shows(entry)}")
                shown.add(target)
            elif time.monotonic() - in_use_at >= RULES_GRACE:
                watch.step(f"{target}: the rules show nothing there for this call")
                shown.add(target)
                untouched.add(target)
        return shown >= set(baseline)

    def not_shown(p: dict[str, Any]) -> str:
        late = [t for t in baseline if t not in shown]
        return "; ".join(
            f"{t} did not show the call ({_where(p['targets'].get(t, {}))})" for t in late
        )

    await watch.until(all_show, not_shown)

    call_id = state["call"]
    assert call_id is not None
    if await nfon.cancel_call(call_id):
        watch.step("call cancelled")
    else:
        watch.step(f"NFON had connected the call already: hang up on {ext}'s phone")
    state["call"] = None
    await watch.until(
        lambda p: p.get("line") == "idle",
        lambda p: f"{ext}'s line did not go idle (line {p.get('line')})",
    )
    watch.step(f"{ext}'s line is idle")

    cleared: set[str] = set()

    def all_clear(p: dict[str, Any]) -> bool:
        for target, entry in p["targets"].items():
            if target in cleared or target not in baseline:
                continue
            if _settled(entry) and entry.get("applied") == baseline[target]:
                if target in untouched:
                    pass  # never changed for the call: "cleared" would be untrue
                elif baseline[target] is None:
                    watch.step(f"{target} cleared: the person's own status is back")
                else:
                    watch.step(f"{target} shows {_shows(entry)} again")
                cleared.add(target)
        return cleared >= set(baseline)

    def not_clear(p: dict[str, Any]) -> str:
        late = [t for t in baseline if t not in cleared]
        return "; ".join(f"{t} was not cleared ({_where(p['targets'].get(t, {}))})" for t in late)

    await watch.until(all_clear, not_clear)
    return len(baseline) - len(untouched), len(baseline)


async def run(
    config: str,
    ext: str,
    *,
    callee: str,
    url: str | None,
    within: float,
    credentials: Path | None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """``check --test-call``; returns the exit code. Raises ``ConfigError``."""
    with collect_warnings() as warnings:
        try:
            settings = load_checked(config, credentials).settings
        finally:
            for record in warnings:
                print(warning_text(record), file=stderr)
    for warning in settings.warnings:
        print(f"warning: {warning}", file=stderr)
    if url:
        base = url.rstrip("/")
    elif not settings.http.listen:
        raise PresenceSyncError(
            f"http.listen is off in {config}, so the daemon has no API; turn it on or give --url"
        )
    else:
        try:
            base = daemon_url(settings.http.listen)
        except ValueError as exc:
            raise PresenceSyncError(str(exc)) from None
    state: dict[str, str | None] = {"call": None}
    async with (
        httpx.AsyncClient(base_url=base, timeout=5.0) as api,
        NfonClient.from_settings(settings) as nfon,
    ):
        watch = _Watch(api, ext, time.monotonic() + within, stdout, within)
        try:
            showed, targets = await _prove(watch, nfon, ext, callee, state)
        except TestCallFailed as exc:
            print(f"FAILED: {exc}", file=stdout)
            return 1
        except UpstreamError as exc:
            print(f"FAILED: NFON: {exc}", file=stdout)
            return 1
        finally:
            call_id = state["call"]
            if call_id is not None:
                # Whatever happened (Ctrl-C too): no test call left ringing.
                with contextlib.suppress(Exception):
                    await asyncio.shield(nfon.cancel_call(call_id))
        total = time.monotonic() - watch.started
        if showed == targets:
            what = "every target showed the call and was cleared again"
        elif showed == 0:
            what = "no target had anything to show for this call"
        else:
            what = (
                f"{showed} of {targets} targets showed the call and were cleared again; "
                "the rules show nothing at the others for it"
            )
        print(f"test call passed: {what} ({total:.2f} s in all)", file=stdout)
    return 0

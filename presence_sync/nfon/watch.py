"""``presence-sync nfon watch``: print what NFON reports, as it happens.

A first-day tool for an admin: does the login work, which extensions are
there, and do line and presence changes arrive? One aligned line per change::

    09:14:02  100  Anna Example  in-use   available
    09:14:02  100  Anna Example  inbound call answered (external)

Call lines never show the other party's number. Names and extensions come
from NFON and are shown escaped (``printable``): a name cannot move the
cursor or recolour the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TextIO

from presence_sync.model import (
    CallEvent,
    CallState,
    Direction,
    ExtensionInfo,
    Line,
    Presence,
    StateEvent,
)
from presence_sync.nfon.client import NfonClient
from presence_sync.nfon.stream import Connected, FullState
from presence_sync.ops.logging import printable

__all__ = ["watch"]

_CALL_WORDS = {
    CallState.RING: "ringing",
    CallState.ANSWER: "answered",
    CallState.HANGUP: "ended",
    CallState.END: "ended",
    CallState.DIAL: "dialling",
}
_LINE_WIDTH = max(len(line.value) for line in Line)


class _Printer:
    def __init__(
        self, client: NfonClient, out: TextIO, directory: list[ExtensionInfo], names: bool
    ) -> None:
        self.client = client
        self.out = out
        self.names = {e.extension: printable(e.name or "") for e in directory} if names else None
        self.ext_width = max((len(printable(e.extension)) for e in directory), default=3)
        self.name_width = max(map(len, (self.names or {}).values()), default=0)
        self.shown: dict[str, tuple[Line, Presence]] = {}

    def emit(self, text: str) -> None:
        stamp = self.client.clock.now().astimezone().strftime("%H:%M:%S")
        self.out.write(f"{stamp}  {text}\n")
        self.out.flush()

    def who(self, extension: str | None) -> str:
        shown = printable(extension or "?")
        text = f"{shown:<{self.ext_width}}"
        if self.names is not None:
            text += f"  {self.names.get(extension or '?', ''):<{self.name_width}}"
        return text

    def state(self, event: StateEvent) -> None:
        now = (event.line, event.presence)
        if self.shown.get(event.extension) == now:
            return
        self.shown[event.extension] = now
        line = f"{event.line.value:<{_LINE_WIDTH}}"
        self.emit(f"{self.who(event.extension)}  {line}  {event.presence.value}")

    def call(self, event: CallEvent) -> None:
        direction = "" if event.direction is Direction.UNKNOWN else f"{event.direction.value} "
        what = _CALL_WORDS.get(event.state, event.state.value)
        external = {True: " (external)", False: " (internal)", None: ""}[event.external]
        self.emit(f"{self.who(event.extension)}  {direction}call {what}{external}")


async def watch(client: NfonClient, out: TextIO, *, names: bool = True) -> None:
    """Log in, print the number of extensions, then print every extension's
    line and presence (all of them from the bootstrap, then each change) and
    every call event, until cancelled.

    Raises what ``NfonClient.directory`` raises (``AuthError`` for refused
    credentials, ``TransientError``, ``PermanentError``); once the streams
    run, nothing is raised: they reconnect by themselves.
    """
    directory = await client.directory()
    out.write(f"{len(directory)} extensions\n")
    out.flush()
    printer = _Printer(client, out, directory, names)

    async def states() -> None:
        async with contextlib.aclosing(client.states()) as items:
            async for item in items:
                for event in item.states if isinstance(item, FullState) else (item,):
                    printer.state(event)

    async def calls() -> None:
        async with contextlib.aclosing(client.calls()) as items:
            async for item in items:
                if isinstance(item, Connected):
                    if item.reconnect:
                        printer.emit("call events resumed; calls during the gap were not seen")
                    continue
                printer.call(item)

    async with asyncio.TaskGroup() as group:
        group.create_task(states())
        group.create_task(calls())

"""NFON → engine: the two event streams, the periodic snapshot and the
directory, folded into the line book and handed to the reconciler.

``Feed`` follows one ``NfonClient``. Its ``follow_states`` and
``follow_calls`` run for as long as the daemon follows that client (each
never returns on its own: the client reconnects); ``resync`` and
``refresh_directory`` are the scheduled jobs.

Call settle. NFON tells that a line went ``in-use`` on the states stream and
who the call is with on the calls stream. They are two connections, so
either may speak first. When the rules look at the call (``RuleSet
.uses_call_context``), a line that is in use without a known call would be
decided as if it had none, and decided again a moment later when its call
event arrives: two writes and a visible flicker. So such a view is held back
for up to ``settle`` seconds, or until the call event (or any change that
makes the line no longer in use without a call) arrives, whichever is first;
then the newest view of the line goes to the engine. Full states (stream
bootstrap, snapshot) are never held: they are the repair path, and a line
they name is no longer held either.

Line views. The engine keeps the one book of line views (``Engine.line``);
the feed keeps only the views it holds back. ``Lines`` folds each event onto
the newest view of its line, read through the feed (``line``): the held
view if there is one, else the engine's.

Every NFON event is logged at debug level (``event=nfon_state`` /
``event=nfon_call``) with the extension and what changed, never the other
party's number; call events also feed the call metrics (``ops/calls.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime

from presence_sync.clock import Clock
from presence_sync.directory import Directory
from presence_sync.engine import Engine
from presence_sync.lines import Lines
from presence_sync.model import CallEvent, Line, LineView, StateEvent
from presence_sync.nfon import Connected, FullState, NfonClient
from presence_sync.ops import metrics
from presence_sync.ops.calls import CallMeter
from presence_sync.ops.logging import kv

__all__ = ["Feed"]

log = logging.getLogger(__name__)


class Feed:
    """Keeps ``engine`` in step with what ``nfon`` reports, folding each event
    with ``lines``.

    ``settle`` (seconds) is the call settle described in the module
    docstring; 0 hands every view over at once. A reload that keeps this
    feed (NFON unchanged) sets it again for the new rules; one that replaces
    the feed hands the old one's ``last_resync`` to the new one.
    """

    def __init__(
        self,
        nfon: NfonClient,
        lines: Lines,
        engine: Engine,
        directory: Directory,
        clock: Clock,
        *,
        settle: float = 0.0,
        last_resync: datetime | None = None,
    ) -> None:
        self.nfon = nfon
        self.lines = lines
        self.engine = engine
        self.directory = directory
        self.clock = clock
        self.settle = settle
        self.bootstrapped = False
        """The states stream delivered a full state at least once."""
        self.last_resync: datetime | None = last_resync
        """When the last full resync from the snapshot finished."""
        self._held: dict[str, tuple[LineView, asyncio.Task[None]]] = {}
        self.calls = CallMeter(clock)

    # --- streams ----------------------------------------------------------------------

    async def follow_states(self) -> None:
        """Follow the states stream into the engine (until cancelled or the
        client is closed)."""
        async for item in self.nfon.states():
            if isinstance(item, FullState):
                # The bootstrap has no end marker (its end is inferred), so an
                # extension missing from it is not taken as gone: the periodic
                # snapshot is the complete picture.
                views = self.lines.on_full_state(item.states, self, complete=False)
                self._unhold(v.extension for v in views)
                dirty = self.engine.resync(views, complete=False)
                self.bootstrapped = True
                log.info(
                    "full state from NFON",
                    extra=kv(extensions=len(views), changes=dirty, reconnect=item.reconnect),
                )
            else:
                _log_state(item)
                view = self.lines.on_state(item, self)
                if view is not None:
                    self.offer(view)

    async def follow_calls(self) -> None:
        """Follow the calls stream into the engine (until cancelled or the
        client is closed)."""
        async for item in self.nfon.calls():
            if isinstance(item, Connected):
                continue
            _log_call(item)
            self.calls.observe(item)
            view = self.lines.on_call(item, self)
            if view is not None:
                self.offer(view)

    def line(self, extension: str) -> LineView | None:
        """The newest view of ``extension``: held back here, else the
        engine's (``lines.LineViews``)."""
        held = self._held.get(extension)
        return held[0] if held is not None else self.engine.line(extension)

    def offer(self, view: LineView) -> None:
        """Hand a line's new view to the engine, or hold it back while its
        call may still be on the way (see the module docstring)."""
        extension = view.extension
        if self.settle > 0 and view.line is Line.IN_USE and view.call is None:
            held = self._held.get(extension)
            task = held[1] if held is not None else None
            if task is None:
                task = asyncio.create_task(self._release(extension), name=f"settle-{extension}")
            self._held[extension] = (view, task)
            return
        held = self._held.pop(extension, None)
        if held is not None:
            held[1].cancel()
        self.engine.observe(view)

    async def _release(self, extension: str) -> None:
        await self.clock.sleep(self.settle)
        view, _ = self._held.pop(extension)
        self.engine.observe(view)

    def _unhold(self, extensions: Iterable[str]) -> None:
        """A full state hands these lines to the engine: nothing of theirs
        is held back any more."""
        if self._held:
            for extension in extensions:
                held = self._held.pop(extension, None)
                if held is not None:
                    held[1].cancel()

    def held(self) -> Iterable[str]:
        """Extensions whose view is being held back right now."""
        return tuple(self._held)

    def close(self) -> None:
        """Drop every held view (the engine hears of them at the next full state)."""
        for _, task in self._held.values():
            task.cancel()
        self._held.clear()

    # --- scheduled --------------------------------------------------------------------

    async def resync(self) -> None:
        """Full resync from the snapshot endpoint; nothing is sent for keys
        whose desired status already equals the applied one."""
        start = self.clock.monotonic()
        states = await self.nfon.snapshot()
        if not states and self.engine.line_count():
            # Taken as complete, an empty answer would clear everyone.
            log.warning("NFON snapshot listed no extensions at all; resync skipped")
            return
        views = self.lines.on_full_state(states, self)
        # Complete: a line held back and missing from it is gone as well.
        self._unhold(self.held())
        dirty = self.engine.resync(views, complete=True)
        took = self.clock.monotonic() - start
        metrics.RESYNC_DURATION.observe(took)
        self.last_resync = self.clock.now()
        metrics.RESYNC_LAST_SUCCESS.set(self.last_resync.timestamp())
        log.info("resync", extra=kv(extensions=len(views), changes=dirty, seconds=round(took, 3)))

    async def refresh_directory(self) -> None:
        """Learn NFON's extensions and names again; people whose extension
        appeared or vanished are added to or cleared from the engine."""
        infos = await self.nfon.directory()
        self.directory.update_extensions(infos)
        self.engine.set_people(self.directory.people())


def _log_state(event: StateEvent) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "nfon state",
            extra=kv(
                event="nfon_state",
                extension=event.extension,
                line=event.line.value,
                presence=event.presence.value,
            ),
        )


def _log_call(event: CallEvent) -> None:
    # caller/callee are personal data: only whether the other side is
    # internal or external is shown.
    if log.isEnabledFor(logging.DEBUG):
        external = event.external
        fields = {
            "event": "nfon_call",
            "call": event.uuid,
            "extension": event.extension,
            "state": event.state.value,
            "direction": event.direction.value,
            "party": "unknown" if external is None else "external" if external else "internal",
        }
        if event.error:
            fields["error"] = event.error
        log.debug("nfon call", extra=kv(**fields))

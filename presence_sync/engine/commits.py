"""Write-ahead groups: the requests that wait (``STARTING``) until a group of
records holding their write-ahead record is in the store.

The common case needs no wait: at the end of a loop turn the ledger commits
the turn's rows at once (``Ledger.try_commit``) and the requests start in the
same turn. Otherwise the groups are written one after another, off the event
loop, each with every row staged meanwhile, and retried every
``STORE_RETRY`` seconds while the store cannot write (the ledger logs it
once). A request whose write-ahead record the store refused as a bad value
is not sent: its key backs off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from presence_sync.clock import Clock
from presence_sync.ops.logging import kv

from .lane import Flight, Lane, Phase
from .ledger import Failed, Ledger

__all__ = ["STORE_RETRY", "Commits"]

log = logging.getLogger("presence_sync.engine")

STORE_RETRY: Final = 1.0
"""Seconds between two attempts to commit records the store could not take
(on top of the store's own wait for a lock)."""


class Commits:
    """The commit loop of one engine. ``launch(lane, flight)`` sends a
    request whose record is stored; ``refused(lane, key, error)`` backs off
    a key whose record the store refused; ``running()`` says whether
    ``Engine.run`` runs; ``watch`` sees each task end."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        clock: Clock,
        lanes: Mapping[str, Lane],
        launch: Callable[[Lane, Flight], None],
        refused: Callable[[Lane, str, str], None],
        running: Callable[[], bool],
        watch: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._lanes = lanes
        self._launch = launch
        self._refused = refused
        self._watch = watch
        self._running = running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ahead: list[tuple[Lane, Flight]] = []
        """Flights ``STARTING``: sent once the next group has committed."""
        self._committer: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        """Set while no commit is under way or about to start."""
        self._settled.set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def settled(self) -> None:
        """Return once no commit is under way or about to start."""
        await self._settled.wait()

    def waits(self) -> set[asyncio.Future[None]]:
        """What requests still ``STARTING`` wait for (``Engine.drain``)."""
        if self._ahead and self._committer is not None and not self._committer.done():
            return {self._committer}
        return set()

    def send(self, starting: Iterable[tuple[Lane, Flight]]) -> None:
        """Stage the write-ahead records of the requests picked, send those
        that need none (or whose record the store took at once), and have
        the staged rows committed."""
        starting = list(starting)
        ledger = self._ledger
        # Write-ahead: a crash (even SIGKILL) during a request must not leave
        # a status of ours at the target that the store does not know about,
        # or nobody would ever take it away again.
        for lane, flight in starting:
            if flight.desired is not None and lane.info.remote_state:
                ledger.write_ahead(lane.name, flight.person, flight.desired)
        # While rows are staged or committing, memory is ahead of the store:
        # such a request waits for the next group even if it staged nothing.
        idle = self._committer is None or self._committer.done()
        behind = not (idle and ledger.try_commit())
        for lane, flight in starting:
            if behind and flight.desired is not None and lane.info.remote_state:
                self._ahead.append((lane, flight))
            else:
                self._launch(lane, flight)
        if ledger.staged and self._running():
            self._commit_soon()

    async def stop(self) -> None:
        """At the end of ``run()``: forget waiting requests (never sent),
        finish the commit under way (a wait for a retry is cut short), then
        try once more for what is left."""
        self._ahead.clear()
        committer, self._committer = self._committer, None
        if self._retry is not None:
            self._retry.cancel()
        if committer is not None and not committer.done():
            await asyncio.wait({committer})
        if self._ledger.staged:
            left = self._ledger.staged
            if await self._ledger.commit() is None:
                log.error(
                    "stopping with records the state database did not take; "
                    "the next start applies those keys again",
                    extra=kv(records=left),
                )

    def _commit_soon(self) -> None:
        if self._committer is None or self._committer.done():
            assert self._loop is not None  # only called while run() runs
            self._settled.clear()
            self._committer = self._loop.create_task(self._commit_loop(), name="commit")
            self._committer.add_done_callback(self._watch)

    async def _commit_loop(self) -> None:
        """Commit group after group while rows are staged; send each
        group's requests once it is in the store."""
        try:
            await self._commit_groups()
        finally:
            self._settled.set()

    async def _commit_groups(self) -> None:
        ledger = self._ledger
        while ledger.staged:
            group, self._ahead = self._ahead, []
            failed = await ledger.commit()
            if failed is None:
                # Nothing written (logged once by the ledger): the rows are
                # staged again, the requests keep waiting.
                self._ahead[:0] = group
                if not self._running():
                    return
                assert self._loop is not None
                # A task of its own, so that the end of run() can cut it short.
                self._retry = self._loop.create_task(self._clock.sleep(STORE_RETRY))
                self._settled.set()
                try:
                    await asyncio.wait({self._retry})
                finally:
                    self._retry = None
                    self._settled.clear()
                # Cut short by the end of run(): one last try, then return.
                continue
            self._committed(group, failed)
        # No row staged while the last group committed: memory equals the
        # store, so requests queued meanwhile need nothing more.
        group, self._ahead = self._ahead, []
        self._committed(group, [])

    def _committed(self, group: list[tuple[Lane, Flight]], failed: list[Failed]) -> None:
        """A group is in the store: send its requests, except those whose
        write-ahead record the store refused, and back off the keys of the
        refused rows."""
        refused = {(f.target, f.key): f for f in failed}
        for lane, flight in group:
            if not self._running() or lane.closed or lane.flight(flight.key) is not flight:
                continue  # stopped or target removed meanwhile: nothing was sent
            failure = refused.pop((lane.name, flight.key), None)
            if failure is None:
                self._launch(lane, flight)
            else:
                self._refused(lane, flight.key, f"store: {failure.error}")
        for failure in refused.values():
            # The store lacks a confirmed row: apply it again later (targets
            # are idempotent) rather than forget the difference.
            failed_lane = self._lanes.get(failure.target)
            if failed_lane is not None and failed_lane.phase(failure.key) is Phase.IDLE:
                self._refused(failed_lane, failure.key, f"store: {failure.error}")

"""One reconcile: build the ``Change`` for one key, call its target, and say
what happened as one ``Outcome``. What follows from the outcome (record,
counters, health, the key's next phase, the log line) is ``outcome.TABLE``'s
business, not the worker's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from presence_sync.clock import Clock
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.targets.base import Change, Memory

from .book import Book
from .lane import Flight, Lane
from .ledger import confirmed
from .outcome import Kind, Outcome

__all__ = ["Worker"]


class Worker:
    """What every apply needs besides its lane: the book (for the line view
    a target is shown), the clock and the targets' memory."""

    def __init__(self, *, book: Book, clock: Clock, memory: Callable[[str, str], Memory]) -> None:
        self._book = book
        self._clock = clock
        self._memory = memory

    async def apply(self, lane: Lane, flight: Flight) -> Outcome:
        """Send what was decided when the flight started (and written ahead)
        and return what it came to. A cancellation the engine did not cause
        by a timeout is ``Kind.CANCELLED`` (the caller ends the task)."""
        key = flight.key
        clock = self._clock
        change = Change(
            person=flight.person,
            desired=flight.desired,
            applied=confirmed(flight.before),
            view=self._book.view_of(key),
            memory=self._memory(lane.name, key),
        )
        start = clock.monotonic()
        state = lane.state(key)
        since = start if state is None or state.since is None else state.since
        lane.sent(start - since)
        kind: Kind
        error: BaseException | None = None
        wait = 0.0
        try:
            result = await lane.target.apply(change)
        except asyncio.CancelledError:
            if not flight.timed_out:
                return Outcome(Kind.CANCELLED, clock.monotonic() - start)
            _uncancel()
            kind = Kind.TIMED_OUT
            error = TransientError(f"no answer within {lane.info.timeout:g} s")
        except TransientError as exc:
            error = exc
            if exc.retry_after is None:
                kind = Kind.UNCERTAIN
            else:
                kind, wait = Kind.THROTTLED, float(exc.retry_after)
        except PermanentError as exc:
            kind, error = Kind.REFUSED, exc
        except AuthError as exc:
            kind, error = Kind.CREDENTIALS, exc
        except Exception as exc:
            # A target bug must not stop the other keys: retry it like a 5xx.
            kind, error = Kind.UNCERTAIN, exc
        else:
            if flight.timed_out:
                _uncancel()
            end = clock.monotonic()
            # Asking again would get the same answer: wait until we want
            # something else rather than loop on it.
            kind = Kind.APPLIED if result.status == flight.desired else Kind.OTHER
            return Outcome(kind, end - start, end - since, applied=result)
        end = clock.monotonic()
        return Outcome(kind, end - start, end - since, wait=wait, error=error)


def _uncancel() -> None:
    """Take back a cancellation the engine itself caused (an apply timeout)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()

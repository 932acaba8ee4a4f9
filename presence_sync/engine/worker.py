"""One reconcile: send one key's decided status to its target and sort out
the answer (the ledger's record, the lane's next phase for the key, the
counters and the one log line)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from presence_sync.clock import Clock
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import CLEARED, Applied, Person, Status, describe
from presence_sync.ops.logging import kv
from presence_sync.targets.base import Change, Memory

from .book import Book
from .lane import MIN_RETRY_AFTER, Backoff, Flight, Lane
from .ledger import Ledger, as_confirmed, is_uncertain

__all__ = ["Worker"]

log = logging.getLogger("presence_sync.engine")


class Worker:
    """What every apply needs besides its lane: the book (for people's views
    and the queue a throttled key goes back to), the ledger, the backoff
    policy, the pause after rejected credentials and the targets' memory."""

    def __init__(
        self,
        *,
        book: Book,
        ledger: Ledger,
        clock: Clock,
        backoff: Backoff,
        auth_pause: float,
        auth_pause_cap: float,
        memory: Callable[[str, str], Memory],
    ) -> None:
        self._book = book
        self._ledger = ledger
        self._clock = clock
        self._backoff = backoff
        self._auth_pause = auth_pause
        self._auth_pause_cap = auth_pause_cap
        self._memory = memory

    async def apply(self, lane: Lane, flight: Flight) -> None:
        """Send what was decided when the flight started (and written ahead).
        On return the key has left ``IN_FLIGHT`` if the answer says where it
        goes (backoff, parked, front of its queue); the caller lands it
        otherwise and looks at it again. Re-raises a cancellation that the
        engine did not cause by a timeout."""
        key, person, desired, applied = flight.key, flight.person, flight.desired, flight.before
        clock = self._clock
        ledger = self._ledger
        change = Change(
            person=person,
            desired=desired,
            applied=as_confirmed(applied),
            view=self._book.view_of(key),
            memory=self._memory(lane.name, key),
        )
        start = clock.monotonic()
        since = lane.keys[key].since
        lane.m_latency.observe(max(0.0, start - (start if since is None else since)))
        lane.stats.requests += 1
        try:
            result = await lane.target.apply(change)
        except asyncio.CancelledError:
            flight.answered = True
            ledger.uncertain(lane.name, person, desired)
            if not flight.timed_out:
                raise
            _uncancel()
            lane.stats.timeouts += 1
            error = TransientError(f"no answer within {lane.info.timeout:g} s")
            self._transient(lane, person, key, error, clock.monotonic() - start)
        except TransientError as exc:
            flight.answered = True
            if exc.retry_after is None:
                ledger.uncertain(lane.name, person, desired)
            else:
                ledger.rejected(lane.name, person, applied)
            self._transient(lane, person, key, exc, clock.monotonic() - start)
        except PermanentError as exc:
            flight.answered = True
            ledger.rejected(lane.name, person, applied)
            self._noted_permanent(lane, person, desired, exc, clock.monotonic() - start)
            lane.park(key, desired, str(exc))
        except AuthError as exc:
            flight.answered = True
            ledger.rejected(lane.name, person, applied)
            self._requeue_front(lane, key, str(exc))
            self._noted_auth(lane, exc, clock.monotonic() - start)
        except Exception as exc:
            # A target bug must not stop the other keys: retry it like a 5xx,
            # with the traceback logged once per failing streak.
            flight.answered = True
            ledger.uncertain(lane.name, person, desired)
            self._transient(lane, person, key, exc, clock.monotonic() - start)
        else:
            flight.answered = True
            if flight.timed_out:
                _uncancel()
            self._succeeded(lane, flight, result, start, since)

    def back_off(self, lane: Lane, key: str, error: str) -> None:
        """Retry ``key`` after the next backoff delay."""
        lane.back_off(key, self._backoff, error)

    def _succeeded(
        self, lane: Lane, flight: Flight, result: Applied, start: float, since: float | None
    ) -> None:
        key, person, desired = flight.key, flight.person, flight.desired
        end = self._clock.monotonic()
        took = end - start
        lane.m_duration.observe(took)
        if result.status is None and key not in self._book.people:
            # Someone who left and is now cleared here: nothing of theirs is
            # kept (a target's memo included), so they are forgotten.
            self._ledger.record(lane.name, person, None, "a departed person cleared")
        else:
            self._ledger.record(lane.name, person, result, "an applied status")
        lane.succeeded(key)
        self._noted_ok(lane, flight, result, end - (start if since is None else since), took)
        if result.status != desired:
            # Asking again would get the same answer: wait until we want
            # something else rather than loop on it.
            lane.park(key, desired, None)
            log.warning(
                "target shows something else than asked; not asking again until that changes",
                extra=kv(target=lane.name, person=person.email, asked=describe(desired)),
            )
        # Someone who left while this apply ran: keep them until cleared everywhere.
        self._book.settle_departed(person, self._ledger.held(key))

    def _transient(self, lane: Lane, person: Person, key: str, exc: Exception, took: float) -> None:
        self._noted_transient(lane, person, exc, took)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            lane.pause(max(MIN_RETRY_AFTER, float(retry_after)), "retry-after")
            self._requeue_front(lane, key, str(exc))
        else:
            self.back_off(lane, key, str(exc) or type(exc).__name__)

    def _requeue_front(self, lane: Lane, key: str, error: str) -> None:
        """Throttled or refused: the key is the lane's first request after the pause."""
        lane.requeue_front(key, self._book.desired_for(key, lane.name) is None, error)

    # --- counters, metrics and the one log line per answer ---------------------------

    def _noted_ok(
        self, lane: Lane, flight: Flight, result: Applied, took: float, request: float
    ) -> None:
        """The one line per change: who, which target, old → new, the rule
        that decided and how long it took from noticing the change to the
        target's answer (``request_ms``: the request alone). A refresh of the
        same status is not a change: DEBUG."""
        lane.stats.ok += 1
        lane.m_result["ok"].inc()
        before = None if flight.before is None else flight.before.status
        # After an unanswered request the record already holds the new status.
        changed = before != result.status or is_uncertain(flight.before)
        level = logging.INFO if changed else logging.DEBUG
        if log.isEnabledFor(level):
            person = flight.person
            rule = flight.rule
            if rule is not None:
                decided = "opted out, " if rule == "opt-out" else f'rule "{rule}", '
            elif result.status is not None:
                decided = ""  # a decider that names no rules (tests)
            elif person.key in self._book.people:
                decided = "no rule matched, "
            else:
                decided = "no longer configured, "
            # An unanswered request leaves what the target showed unknown.
            old = "unknown" if is_uncertain(flight.before) else describe(before)
            new = describe(result.status)
            shown = CLEARED if result.status is None else new
            ms = round(took * 1000)
            log.log(
                level,
                "%s: %s %s → %s (%stook %d ms)",
                lane.name,
                person.email,
                old,
                shown,
                decided,
                ms,
                extra=kv(
                    person=person.email,
                    target=lane.name,
                    rule=rule,
                    old=old,
                    new=new,
                    duration_ms=ms,
                    request_ms=round(request * 1000),
                    result="ok",
                ),
            )
        if lane.failing:
            lane.failing = False
            log.info("target recovered", extra=kv(target=lane.name))
        if lane.auth_failures:
            lane.auth_failures = 0
            log.warning("target accepts our credentials again", extra=kv(target=lane.name))
        lane.probing = False

    def _noted_transient(self, lane: Lane, person: Person, exc: Exception, took: float) -> None:
        lane.stats.transient += 1
        lane.m_result["transient"].inc()
        lane.m_duration.observe(took)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            lane.stats.throttled += 1
            lane.m_throttled.inc()
            log.info(
                "%s: asked to wait %.0f s",
                lane.name,
                retry_after,
                extra=kv(target=lane.name, person=person.email, result="throttled"),
            )
            return
        if not lane.failing:
            lane.failing = True
            log.warning(
                "%s: target failing, backing off: %s",
                lane.name,
                exc,
                exc_info=None if isinstance(exc, TransientError) else exc,
                extra=kv(target=lane.name, person=person.email, result="transient"),
            )
        else:
            log.debug(
                "%s: %s failed: %s",
                lane.name,
                person.email,
                exc,
                extra=kv(target=lane.name, result="transient"),
            )

    def _noted_permanent(
        self, lane: Lane, person: Person, desired: Status | None, exc: PermanentError, took: float
    ) -> None:
        lane.stats.permanent += 1
        lane.m_result["permanent"].inc()
        lane.m_duration.observe(took)
        log.error(
            "%s: %s cannot be set to %s, parked until that changes: %s",
            lane.name,
            person.email,
            describe(desired),
            exc,
            extra=kv(target=lane.name, person=person.email, result="permanent"),
        )

    def _noted_auth(self, lane: Lane, exc: AuthError, took: float) -> None:
        """Count a rejection and pause the lane: ``auth_pause`` seconds,
        doubling per further rejection up to ``auth_pause_cap``; then probe
        with one request."""
        lane.stats.auth += 1
        lane.m_result["auth"].inc()
        lane.m_duration.observe(took)
        if lane.pause_reason == "auth" and lane.paused(lane.clock.monotonic()):
            return  # another request of the same batch: the pause is already on
        lane.auth_failures += 1
        pause = min(self._auth_pause_cap, self._auth_pause * 2 ** (lane.auth_failures - 1))
        lane.probing = True
        lane.pause(pause, "auth")
        if lane.auth_failures == 1:
            log.error(
                "%s: CREDENTIALS REJECTED, pausing this target for %.0f s: %s",
                lane.name,
                pause,
                exc,
                extra=kv(target=lane.name, result="auth"),
            )
        else:
            log.debug(
                "%s: credentials still rejected, pausing %.0f s",
                lane.name,
                pause,
                extra=kv(target=lane.name, result="auth"),
            )


def _uncancel() -> None:
    """Take back a cancellation the engine itself caused (an apply timeout)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()

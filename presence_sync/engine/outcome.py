"""What one request came to, and the one table that says what follows.

The worker turns a target's answer into one ``Outcome``; ``Outcomes.settle``
then looks its ``Kind`` up in ``TABLE`` and does what the row says, in this
order: the ledger's record, the counters, the lane's health, the key's next
phase, and the one log line. Nothing else changes a record, a counter or a
lane's health after a request.

=================  ==========  =========  ========  ==================  ==========
outcome            record      key        health    counters            log line
=================  ==========  =========  ========  ==================  ==========
applied            confirmed   clean      recovers  ok                  the change
other than asked   confirmed   clean,     recovers  ok                  WARNING
                               parked
throttled          before      front      throttle  transient throttled WARNING [1]
uncertain          worse case  backoff    failing   transient           WARNING [1]
timed out          worse case  backoff    failing   transient timeouts  WARNING [1]
refused            before      parked     —         permanent           ERROR
credentials        before      front      lock-out  auth                ERROR [1]
cancelled          worse case  —          —         —                   —
=================  ==========  =========  ========  ==================  ==========

[1] once per episode (the first failure since the last success, or the
first rejection of a lock-out); DEBUG for the others. The episode's end is
the lane's own line ("target recovered", "accepts our credentials again").

*Confirmed*: what the target answered. *Before*: the record from before the
write-ahead (the target refused outright, nothing changed there). *Worse
case*: flagged uncertain (what was asked, or what was there). *Front*: the
key goes back to the head of its queue, first when the pause ends.

A failure's line says the HTTP status when there is one; the line and the
key's ``error`` (the status page's reason) give the target's own words
without the target's name in front, since both name the target already.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from presence_sync.errors import TransientError
from presence_sync.model import CLEARED, Applied, describe
from presence_sync.ops.logging import kv

from .book import Book
from .lane import Backoff, Flight, Lane, Mode
from .ledger import Ledger

__all__ = ["TABLE", "Keep", "Kind", "Move", "Outcome", "Outcomes", "Row", "Turn", "cause"]

log = logging.getLogger("presence_sync.engine")


class Kind(enum.Enum):
    """What one request came to."""

    APPLIED = "applied"
    """The target confirmed what was asked."""
    OTHER = "other than asked"
    """The target answered, but shows something else than asked."""
    THROTTLED = "throttled"
    """Asked to wait (``Retry-After``): nothing changed there."""
    UNCERTAIN = "uncertain"
    """Failed without saying whether it arrived (5xx, network, a target's bug)."""
    TIMED_OUT = "timed out"
    """No answer within the target's apply timeout."""
    REFUSED = "refused"
    """Will not succeed as asked (``PermanentError``): nothing changed there."""
    CREDENTIALS = "credentials rejected"
    """``AuthError``: nothing changed there."""
    CANCELLED = "cancelled"
    """The engine stopped while the request ran."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's result. ``applied``: the target's answer (``APPLIED``,
    ``OTHER``); ``wait``: seconds asked to wait (``THROTTLED``); ``error``:
    why it failed; ``took``: seconds the request took; ``total``: seconds
    from noticing the change to the answer."""

    kind: Kind
    took: float = 0.0
    total: float = 0.0
    applied: Applied | None = None
    wait: float = 0.0
    error: BaseException | None = None


class Keep(enum.Enum):
    """The ledger's record after the outcome."""

    CONFIRMED = "confirmed"
    BEFORE = "before"
    WORSE_CASE = "worse case"


class Move(enum.Enum):
    """The key's next phase (``NONE``: the engine lands it and looks again)."""

    CLEAN = "clean"
    PARK = "park"
    """Parked until the desired status changes, with the cause as its error."""
    CLEAN_PARK = "clean, then park"
    """Clean (the target answered) but parked: asking again gets the same answer."""
    FRONT = "front"
    BACK_OFF = "backoff"
    NONE = "none"


class Turn(enum.Enum):
    """The lane's health move (``Lane.recovered``, ``failed``, ``throttle``, ``lock_out``)."""

    RECOVERS = "recovers"
    FAILING = "failing"
    THROTTLE = "throttle"
    LOCK_OUT = "lock-out"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Row:
    """What follows from one ``Kind``: ``counters`` are ``TargetStats``
    fields; ``result`` the label of ``presence_sync_target_applies_total``
    (None: not counted); ``line`` writes the one log line, at ``loudest``
    or below (it is not called while that level is off)."""

    keep: Keep
    move: Move
    health: Turn
    counters: tuple[str, ...]
    result: str | None
    line: Callable[[_Said], None] | None
    loudest: int = logging.WARNING


@dataclass(frozen=True, slots=True)
class _Said:
    """What a log line may use: the request, its outcome, the cause,
    whether the health move began an episode (``first``), the lock-out's
    pause in seconds, and the book (who is configured)."""

    lane: Lane
    flight: Flight
    outcome: Outcome
    cause: str
    first: bool
    pause: float
    book: Book


def _status(outcome: Outcome) -> str:
    code = getattr(outcome.error, "status", None)
    return "" if code is None else f" (HTTP {code})"


def _changed(said: _Said) -> None:
    """The one line per change: who, which target, old → new, the rule that
    decided and how long it took from noticing the change to the target's
    answer (``request_ms``: the request alone). A refresh of the same status
    is not a change: DEBUG."""
    flight, applied = said.flight, said.outcome.applied
    assert applied is not None
    before = flight.before
    # After an unanswered request the record already holds the new status.
    uncertain = before is not None and before.uncertain
    old_status = None if before is None else before.status
    changed = old_status != applied.status or uncertain
    level = logging.INFO if changed else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    name = said.lane.name
    # An unanswered request leaves what the target showed unknown.
    old = "unknown" if uncertain else describe(old_status)
    new = describe(applied.status)
    ms = round(said.outcome.total * 1000)
    paused = _paused(flight, said.book, name)
    log.log(
        level,
        "%s: %s %s → %s (%stook %d ms)",
        name,
        flight.person.email,
        old,
        CLEARED if applied.status is None else new,
        _decided(flight, said.book, name),
        ms,
        extra=kv(
            person=flight.person.email,
            target=name,
            # A pause is no rule, and "rule=None" read as "none matched".
            **({"paused": True} if paused else {"rule": flight.rule}),
            old=old,
            new=new,
            duration_ms=ms,
            request_ms=round(said.outcome.took * 1000),
            result="ok",
        ),
    )


def _other(said: _Said) -> None:
    flight = said.flight
    assert said.outcome.applied is not None
    log.warning(
        "%s: %s shows %s, not %s: target shows something else than asked; "
        "not asking again until that changes",
        said.lane.name,
        flight.person.email,
        describe(said.outcome.applied.status),
        describe(flight.desired),
        extra=kv(
            target=said.lane.name,
            person=flight.person.email,
            asked=describe(flight.desired),
            result="ok",
        ),
    )


def _failing(said: _Said) -> None:
    name, outcome = said.lane.name, said.outcome
    status = getattr(outcome.error, "status", None)
    fields = kv(target=name, person=said.flight.person.email, status=status)
    if outcome.kind is Kind.THROTTLED:
        fields["ctx"]["result"] = "throttled"
        log.log(
            logging.WARNING if said.first else logging.DEBUG,
            "%s: asked to wait %.0f s%s: %s",
            name,
            outcome.wait,
            _status(outcome),
            said.cause,
            extra=fields,
        )
        return
    fields["ctx"]["result"] = "transient"
    error = outcome.error
    if said.first:
        # A target's bug (not one of the three errors) shows its traceback, once.
        trace = None if error is None or isinstance(error, TransientError) else error
        log.warning(
            "%s: target failing%s, backing off: %s",
            name,
            _status(outcome),
            said.cause,
            exc_info=trace,
            extra=fields,
        )
    else:
        log.debug(
            "%s: %s failed%s: %s",
            name,
            said.flight.person.email,
            _status(outcome),
            said.cause,
            extra=fields,
        )


def _refused(said: _Said) -> None:
    flight = said.flight
    status = getattr(said.outcome.error, "status", None)
    log.error(
        "%s: %s cannot be set to %s, parked until that changes%s: %s",
        said.lane.name,
        flight.person.email,
        describe(flight.desired),
        _status(said.outcome),
        said.cause,
        extra=kv(
            target=said.lane.name, person=flight.person.email, status=status, result="permanent"
        ),
    )


def _rejected(said: _Said) -> None:
    name = said.lane.name
    if said.first:
        log.error(
            "%s: CREDENTIALS REJECTED, pausing this target for %.0f s%s: %s",
            name,
            said.pause,
            _status(said.outcome),
            said.cause,
            extra=kv(target=name, result="auth"),
        )
    elif said.pause:
        log.debug(
            "%s: credentials still rejected, pausing %.0f s",
            name,
            said.pause,
            extra=kv(target=name, result="auth"),
        )


TABLE: Final[dict[Kind, Row]] = {
    Kind.APPLIED: Row(
        Keep.CONFIRMED, Move.CLEAN, Turn.RECOVERS, ("ok",), "ok", _changed, logging.INFO
    ),
    Kind.OTHER: Row(Keep.CONFIRMED, Move.CLEAN_PARK, Turn.RECOVERS, ("ok",), "ok", _other),
    Kind.THROTTLED: Row(
        Keep.BEFORE, Move.FRONT, Turn.THROTTLE, ("transient", "throttled"), "transient", _failing
    ),
    Kind.UNCERTAIN: Row(
        Keep.WORSE_CASE, Move.BACK_OFF, Turn.FAILING, ("transient",), "transient", _failing
    ),
    Kind.TIMED_OUT: Row(
        Keep.WORSE_CASE,
        Move.BACK_OFF,
        Turn.FAILING,
        ("transient", "timeouts"),
        "transient",
        _failing,
    ),
    Kind.REFUSED: Row(
        Keep.BEFORE, Move.PARK, Turn.NONE, ("permanent",), "permanent", _refused, logging.ERROR
    ),
    Kind.CREDENTIALS: Row(
        Keep.BEFORE, Move.FRONT, Turn.LOCK_OUT, ("auth",), "auth", _rejected, logging.ERROR
    ),
    Kind.CANCELLED: Row(Keep.WORSE_CASE, Move.NONE, Turn.NONE, (), None, None),
}
"""Every ``Kind``'s row (see the module docstring's table)."""


def _paused(flight: Flight, book: Book, target: str) -> bool:
    """Whether a pause, not a rule, decided ``flight`` on ``target``."""
    return flight.rule is None and book.held(flight.person.key, target)


def _decided(flight: Flight, book: Book, target: str) -> str:
    """Why the status was chosen, as the change line says it."""
    rule = flight.rule
    if rule is not None:
        return "opted out, " if rule == "opt-out" else f'rule "{rule}", '
    if flight.desired is not None:
        return ""  # a decider that names no rules (tests)
    if _paused(flight, book, target):
        return "paused by an admin, "
    if flight.person.key in book.people:
        return "no rule matched, "
    return "no longer configured, "


def cause(error: BaseException | None, lane: Lane) -> str:
    """The target's words for ``error`` without its own name in front (a
    target may say ``"webhook alerts: receiver answered 503"``; the line and
    the page name the target already)."""
    if error is None:
        return ""
    text = str(error) or type(error).__name__
    prefix = re.match(rf"(?:\S+ )?{re.escape(lane.name)}: ", text)
    return text[prefix.end() :] if prefix else text


class Outcomes:
    """Settles outcomes by ``TABLE``: what every answer needs besides its
    lane (the book, the ledger, the backoff policy and the pause after
    rejected credentials)."""

    def __init__(
        self, *, book: Book, ledger: Ledger, backoff: Backoff, auth_pause: float, auth_cap: float
    ) -> None:
        self._book = book
        self._ledger = ledger
        self._backoff = backoff
        self._auth_pause = auth_pause
        self._auth_cap = auth_cap

    @property
    def backoff(self) -> Backoff:
        return self._backoff

    def settle(self, lane: Lane, flight: Flight, outcome: Outcome) -> None:
        """Do what ``TABLE`` says for ``outcome`` of ``flight`` on ``lane``."""
        row = TABLE[outcome.kind]
        person, key, name = flight.person, flight.key, lane.name
        ledger = self._ledger
        if row.keep is Keep.CONFIRMED:
            applied = outcome.applied
            if applied is not None and applied.status is None and key not in self._book.people:
                # Someone who left and is now cleared here: nothing of theirs
                # is kept (a target's memo included), so they are forgotten.
                applied = None
            ledger.record(name, person, applied)
        elif row.keep is Keep.BEFORE:
            ledger.rejected(name, person, flight.before)
        else:
            ledger.uncertain(name, person, flight.desired)
        lane.count(row.counters, row.result, None if row.result is None else outcome.took)
        why = "" if outcome.error is None else cause(outcome.error, lane)
        first, pause = self._health(lane, row.health, outcome)
        self._move(lane, flight, row.move, why)
        if row.line is not None and log.isEnabledFor(row.loudest):
            row.line(_Said(lane, flight, outcome, why, first, pause, self._book))
        book = self._book
        if row.keep is Keep.CONFIRMED and key not in book.people:
            # Someone who left while this apply ran: keep them until cleared everywhere.
            book.settle_departed(person, ledger.held(key))

    def _health(self, lane: Lane, move: Turn, outcome: Outcome) -> tuple[bool, float]:
        if move is Turn.RECOVERS:
            before = lane.recovered()
            if before.rejections:
                log.warning("target accepts our credentials again", extra=kv(target=lane.name))
            elif before.mode is not Mode.OK:
                log.info("target recovered", extra=kv(target=lane.name))
            return False, 0.0
        if move is Turn.FAILING:
            return lane.failed(), 0.0
        if move is Turn.THROTTLE:
            return lane.throttle(outcome.wait), 0.0
        if move is Turn.LOCK_OUT:
            pause = lane.lock_out(self._auth_pause, self._auth_cap)
            return pause is not None and lane.health.rejections == 1, pause or 0.0
        return False, 0.0

    def _move(self, lane: Lane, flight: Flight, move: Move, why: str) -> None:
        key = flight.key
        if move is Move.CLEAN:
            lane.succeeded(key)
        elif move is Move.PARK:
            lane.park(key, flight.desired, why)
        elif move is Move.CLEAN_PARK:
            lane.succeeded(key)
            lane.park(key, flight.desired, None)
        elif move is Move.FRONT:
            # The queue of the desired status now: a restore goes first.
            lane.requeue_front(key, self._book.desired_for(key, lane.name) is None, why)
        elif move is Move.BACK_OFF:
            lane.back_off(key, self._backoff, why)

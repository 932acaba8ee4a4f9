"""Call metrics from the NFON call stream: how many calls, answered or not,
and how long they rang and lasted.

``CallMeter`` follows each leg of a call (``uuid`` and extension: an internal
call between two extensions has two legs, one outbound and one inbound) from
its first ring to its hang-up, and counts it once, when it ends:

- ``answered`` when an ``answer`` (or ``caller-answer``) event came;
- otherwise by the call's ``error``: ``busy``, ``rejected`` (``reject``),
  ``cancelled`` (``cancel``), ``missed`` (no error, or ``timeout``: it rang
  out), ``failed`` (``unspecified`` or anything new).

Durations are measured on our clock when the events arrive (NFON's
``updated`` stamps are optional and not always comparable). NFON replays no
call events, so a call already under way when the stream connects is only
partly seen: a hang-up for a call never seen ringing is not counted, and an
answer seen without its ring gives a talk time but no ring time. Legs whose
end never arrives (lost while the stream was down) are forgotten
``forget_after`` seconds after they began, so memory stays bounded.

Nothing here keeps a number or an extension beyond the open legs' keys;
the metrics carry direction and result only.
"""

from __future__ import annotations

from dataclasses import dataclass

from presence_sync.clock import Clock
from presence_sync.model import CallEvent, CallState, Direction
from presence_sync.ops import metrics

__all__ = ["FORGET_AFTER", "CallMeter", "call_result"]

FORGET_AFTER = 12 * 3600.0
"""Seconds after which a leg that never ended is dropped uncounted."""
MAX_OPEN_LEGS = 50_000

_ENDED = frozenset({CallState.HANGUP, CallState.END})
_ANSWERED = frozenset({CallState.ANSWER, CallState.CALLER_ANSWER})
_IGNORED = frozenset({CallState.UNKNOWN})
_ERRORS = {"busy": "busy", "reject": "rejected", "cancel": "cancelled", "timeout": "missed"}


def call_result(answered: bool, error: str | None) -> str:
    """The ``result`` label of a call that ended (see the module docstring)."""
    if answered:
        return "answered"
    if not error:
        return "missed"
    return _ERRORS.get(error, "failed")


@dataclass(slots=True)
class _Leg:
    direction: str
    began: float | None
    """When it started ringing (monotonic); None when we joined it answered."""
    first: float
    """When its first event arrived (monotonic): what ``forget_after`` counts from."""
    answered: float | None = None


class CallMeter:
    """Feeds ``presence_sync_calls_total`` and the ring and talk time
    histograms from the call events it is shown (see the module docstring)."""

    def __init__(self, clock: Clock, *, forget_after: float = FORGET_AFTER) -> None:
        self._clock = clock
        self.forget_after = forget_after
        self._legs: dict[tuple[str, str], _Leg] = {}

    def __len__(self) -> int:
        """Legs under way (rung, not yet ended)."""
        return len(self._legs)

    def observe(self, event: CallEvent) -> None:
        """Take one event of the call stream into account."""
        if event.state in _IGNORED or not event.uuid:
            return
        now = self._clock.monotonic()
        self._forget_stale(now)
        key = (event.uuid, event.extension or "")
        leg = self._legs.get(key)
        if event.state in _ENDED:
            if leg is not None:
                del self._legs[key]
                self._ended(leg, event.error, now)
            return
        if leg is None:
            direction = event.direction.value if event.direction is not Direction.UNKNOWN else ""
            began = None if event.state in _ANSWERED else now
            leg = self._legs[key] = _Leg(direction or "unknown", began, now)
        if event.state in _ANSWERED and leg.answered is None:
            leg.answered = now
            if leg.began is not None:
                metrics.CALL_RING_DURATION.labels(direction=leg.direction).observe(now - leg.began)

    def _ended(self, leg: _Leg, error: str | None, now: float) -> None:
        answered = leg.answered is not None
        metrics.CALLS.labels(direction=leg.direction, result=call_result(answered, error)).inc()
        if leg.answered is not None:
            metrics.CALL_TALK_DURATION.labels(direction=leg.direction).observe(now - leg.answered)
        elif leg.began is not None:
            metrics.CALL_RING_DURATION.labels(direction=leg.direction).observe(now - leg.began)

    def _forget_stale(self, now: float) -> None:
        # Oldest first (insertion order), so the loop stops at the first fresh leg.
        while self._legs:
            key, leg = next(iter(self._legs.items()))
            if now - leg.first < self.forget_after and len(self._legs) < MAX_OPEN_LEGS:
                return
            del self._legs[key]

"""What the reconciler shows of itself: counters and point-in-time pictures
(tests, benchmarks, the status page). Pure data; ``draw`` makes them.

"Picture" is the engine's word; NFON's full state of every line is its
"snapshot" (``NfonClient.snapshot``), and the two never share a name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from presence_sync.model import Applied, Status

__all__ = ["EnginePicture", "KeyPicture", "TargetPicture", "TargetStats"]


@dataclass(slots=True)
class TargetStats:
    """Counters of one target since the engine started (tests, benchmarks).

    ``requests`` counts calls of ``Target.apply``; ``noops`` keys that were
    dirty but needed nothing by the time a worker looked; the failure
    counters split ``requests`` that did not succeed (``timeouts`` are also
    counted in ``transient``).
    """

    requests: int = 0
    ok: int = 0
    noops: int = 0
    transient: int = 0
    permanent: int = 0
    auth: int = 0
    throttled: int = 0
    timeouts: int = 0

    @property
    def failures(self) -> int:
        """Requests that did not succeed."""
        return self.transient + self.permanent + self.auth


@dataclass(frozen=True, slots=True)
class TargetPicture:
    """One lane at one instant. ``dirty``: keys queued; ``in_flight``:
    requests running or starting; ``backoff``: keys waiting for a retry;
    ``paused_until``/``pause_reason`` (``"retry-after"`` or ``"auth"``)
    while the whole target waits."""

    name: str
    kind: str
    dirty: int
    in_flight: int
    backoff: int
    parked: int
    paused_until: datetime | None
    pause_reason: str | None
    stats: TargetStats


@dataclass(frozen=True, slots=True)
class KeyPicture:
    """One (person, target) key. ``desired_known`` is False while the person's
    line is not known yet (``desired`` is then ``None`` and meaningless).
    ``state``: ``in-sync``, ``dirty``, ``starting`` (its write-ahead record
    is being stored), ``in-flight``, ``backoff``, ``parked``, ``unknown``,
    or ``paused`` (an admin paused the person here and nothing is left to do).
    ``uncertain``: the last request's outcome is unknown and ``applied`` is
    the worse case. ``since``: when the key last became dirty, until it is
    clean again. ``rule``: the name of the rule behind ``desired`` (its
    ``name``, else its key path like ``rules[3]``; ``"opt-out"``; None: no
    rule did)."""

    person: str
    email: str
    target: str
    desired: Status | None
    desired_known: bool
    applied: Applied | None
    state: str
    retry_at: datetime | None
    last_error: str | None
    uncertain: bool = False
    since: datetime | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class EnginePicture:
    """Everything the status page shows about the reconciler."""

    at: datetime
    targets: Mapping[str, TargetPicture]
    keys: tuple[KeyPicture, ...]

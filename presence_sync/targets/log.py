"""The ``log`` target: says what it would show instead of showing it anywhere.

For dry runs, demos and as the engine's test double. It owns ``describe``, the
one-line human rendering of a ``Status`` (``Busy/InACall :phone: "On a call"``),
which the engine's log lines use too; phone numbers in a status text are
masked there, because rules may put a caller's number into a status but logs
must never carry one.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import ClassVar

from presence_sync.model import STATUS_FIELDS, Applied, Status, describe
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions

__all__ = ["HISTORY_SIZE", "LogOptions", "LogTarget", "describe"]

log = logging.getLogger(__name__)

HISTORY_SIZE = 1000
"""How many changes ``LogTarget.history`` keeps (oldest dropped first)."""


# Five or more digits, optionally split by the separators people write numbers
# with: catches "+49 30 1234567" and "0301234567" but leaves "2 calls" alone.


class LogOptions(TargetOptions):
    """The ``log`` block under ``targets:``. ``muted`` keeps the history but
    writes no log line (benchmarks, tests)."""

    muted: bool = False


class LogTarget:
    """Logs one INFO line per change (``log: anna@example.com → Busy/InACall``)
    and remembers the last ``HISTORY_SIZE`` changes in ``history`` as
    ``(person key, desired)``. Never fails, so it "restores" trivially.

    Its rate is unlimited (``float('inf')``: the engine then skips the token
    bucket); ``burst`` only matters for finite rates and is set high to match.
    """

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="log",
        description="Log what would be shown (dry runs, demos, tests)",
        fields=frozenset(STATUS_FIELDS),
        rate=float("inf"),
        burst=1_000_000,
        concurrency=16,
        restores=True,
        remote_state=False,
    )
    Options: ClassVar[type[LogOptions]] = LogOptions

    def __init__(self, name: str, options: LogOptions, env: TargetEnv) -> None:
        self.name = name
        self.options = options
        self._clock = env.clock
        self.history: deque[tuple[str, Status | None]] = deque(maxlen=HISTORY_SIZE)

    def __repr__(self) -> str:
        return f"LogTarget(name={self.name!r}, muted={self.options.muted})"

    async def apply(self, change: Change) -> Applied:
        """Record ``change.desired`` and report it applied; never raises."""
        self.history.append((change.person.key, change.desired))
        if not self.options.muted:
            log.info("%s: %s → %s", self.name, change.person.email, describe(change.desired))
        return Applied(status=change.desired, at=self._clock.now())

    async def aclose(self) -> None:
        """Nothing to release."""

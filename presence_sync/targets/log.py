"""The ``log`` target: shows nothing anywhere, so the log says what it would show.

For dry runs, demos and as the engine's test double. It writes no line of its
own: the engine writes the one line per change for every target (person,
rule, old → new, time taken), and a second line here would say the same
thing again. It re-exports ``describe`` (``model.describe``), the one-line
human rendering of a ``Status`` in which phone numbers are masked.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from presence_sync.model import STATUS_FIELDS, Applied, Status, describe
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions

__all__ = ["HISTORY_SIZE", "LogOptions", "LogTarget", "describe"]

HISTORY_SIZE = 1000
"""How many changes ``LogTarget.history`` keeps (oldest dropped first)."""


class LogOptions(TargetOptions):
    """The ``log`` block under ``targets:``. ``muted`` is accepted for older
    configurations and changes nothing: this target writes no line of its own."""

    muted: bool = False


class LogTarget:
    """Remembers the last ``HISTORY_SIZE`` changes in ``history`` as
    ``(person key, desired)``; the engine's line per change is what an admin
    reads. Never fails, so it "restores" trivially.

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
        return Applied(status=change.desired, at=self._clock.now())

    async def aclose(self) -> None:
        """Nothing to release."""

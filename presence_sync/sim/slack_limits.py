"""Rate budgets of the Slack simulator, over sliding 60-second windows.

Slack's rules (reference/slack.md §2.1): tiers apply "per API method per
workspace/team per app", whatever the token; on top, "A token may update a
single user's profile no more than 10 times per minute. And a single token
may only set 30 user profiles per minute." A refused call spends nothing.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Mapping

__all__ = ["DEFAULT_TIERS", "WINDOW", "Budgets"]

WINDOW = 60.0
DEFAULT_TIERS: Mapping[int, int] = {2: 20, 3: 50, 4: 100}
"""Calls a minute per tier: the published floors ("20+", "50+", "100+")."""


def _wait(oldest: float, now: float) -> int:
    """Whole seconds until a call made at ``oldest`` leaves the window (≥ 1)."""
    return max(1, math.ceil(oldest + WINDOW - now))


class _Window:
    """Times of the calls inside the last minute, oldest first."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def count(self, now: float) -> int:
        while self.times and self.times[0] <= now - WINDOW:
            self.times.popleft()
        return len(self.times)


class Budgets:
    """Per-method, per-token-per-person and per-token-people budgets.

    Each ``spend_*`` either records the call and returns ``None``, or
    records nothing and returns the ``Retry-After`` seconds to answer with.
    Not thread-safe on its own: the simulator calls it under its lock.
    """

    def __init__(
        self,
        tiers: Mapping[int, int] | None = None,
        per_person: int = 10,
        people_per_token: int = 30,
    ) -> None:
        self.tiers = dict(DEFAULT_TIERS)
        self.tiers.update(tiers or {})
        self.per_person = per_person
        self.people_per_token = people_per_token
        self._methods: dict[str, _Window] = defaultdict(_Window)
        self._person: dict[tuple[str, str], _Window] = defaultdict(_Window)
        self._people: dict[str, dict[str, float]] = defaultdict(dict)

    def spend_method(self, method: str, tier: int, now: float) -> int | None:
        """One call of ``method`` (rate ``tier``) for the workspace."""
        window = self._methods[method]
        if window.count(now) >= self.tiers[tier]:
            return _wait(window.times[0], now)
        window.times.append(now)
        return None

    def spend_profile(self, token_id: str, person: str, now: float) -> int | None:
        """One profile update by ``token_id`` to ``person``."""
        window = self._person[(token_id, person)]
        if window.count(now) >= self.per_person:
            return _wait(window.times[0], now)
        # Last update per person inside the window: "30 user profiles per
        # minute" counts distinct people, so a person stays counted until
        # their most recent update is a minute old.
        recent = self._people[token_id]
        for uid, last in list(recent.items()):
            if last <= now - WINDOW:
                del recent[uid]
        if person not in recent and len(recent) >= self.people_per_token:
            return _wait(min(recent.values()), now)
        window.times.append(now)
        recent[person] = now
        return None

    def reset(self) -> None:
        """Forget every call so far (all budgets full again)."""
        self._methods.clear()
        self._person.clear()
        self._people.clear()

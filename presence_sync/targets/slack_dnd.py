"""The ``slack_dnd`` target: Slack's "pause notifications" (a DND snooze)
while a rule sets ``dnd``, ended afterwards only if the snooze is ours.

Slack's ``dnd.*`` methods act on the token's own user only, so this target
needs each person's own user token (``slack.user_tokens``); a person without
one is refused with a ``PermanentError`` saying what to configure, and a
``slack:`` section without any user token is a configuration error
(``config.Settings``; the constructor checks it again).

Desired ``dnd``: ``dnd.info`` first. A snooze the person started themselves
is left alone (not lengthened, never ended by us). Otherwise
``dnd.setSnooze`` for ``minutes`` (option, default 60); the snooze's end is
saved in ``Memory`` (write-ahead: the expected end before the call, the
exact one after) and returned as ``Applied.expires``, so the engine renews
it while the rule still wants it. Desired ``None`` (or no ``dnd``):
``dnd.info``, and ``dnd.endSnooze`` only if the active snooze ends when
ours does (within ``TOLERANCE`` seconds). Rules say only ``dnd: true``
today (``Status.dnd`` is a flag), hence the ``minutes`` option.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import Field

from presence_sync.errors import PermanentError
from presence_sync.model import Applied, Person
from presence_sync.ops.logging import kv
from presence_sync.sections import SlackSettings
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions
from presence_sync.targets.slack_client import SlackClient

__all__ = ["TOLERANCE", "SlackDndOptions", "SlackDndTarget"]

log = logging.getLogger(__name__)

TOLERANCE = 90
"""Seconds within which a snooze's end counts as ours: Slack computes the
end from its own clock, and a crash may leave only our expected end."""


class SlackDndOptions(TargetOptions):
    """The ``slack_dnd`` block under ``targets:``: ``minutes`` each snooze
    lasts unless renewed (renewed while the rule wants it)."""

    minutes: int = Field(default=60, ge=5, le=24 * 60)


class SlackDndTarget:
    """Pauses a person's Slack notifications while a rule sets ``dnd``; see the module."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="slack_dnd",
        description="Slack 'pause notifications' while a rule sets dnd (own tokens only)",
        fields=frozenset({"dnd"}),
        # dnd.setSnooze and dnd.endSnooze are Tier 2 (20+ a minute per
        # workspace): 4 + 0.25/s lets at most 19 writes into any minute.
        rate=0.25,
        burst=4,
        concurrency=4,
        restores=True,
        refresh_before=120.0,
        # Two requests of at most slack.request_timeout (15 s) each.
        timeout=60.0,
        requires=("slack", "tls"),
    )
    Options: ClassVar[type[SlackDndOptions]] = SlackDndOptions

    def __init__(self, name: str, options: SlackDndOptions, env: TargetEnv) -> None:
        settings = env.section("slack", SlackSettings)
        if not settings.user_tokens:
            raise ValueError(
                "slack_dnd needs people's own user tokens: list them under slack.user_tokens "
                "(Slack's dnd methods act only on the token's own user)"
            )
        self.name = name
        self._options = options
        self._clock = env.clock
        self._client = SlackClient(name, settings, env)

    def __repr__(self) -> str:
        return f"<SlackDndTarget {self.name!r} minutes={self._options.minutes}>"

    def _token(self, person: Person) -> str:
        token = self._client.own_token(person)
        if token is None:
            raise PermanentError(
                f"slack {self.name}: no own token for {person.email}: add them to "
                "slack.user_tokens (or opt_out of this target)"
            )
        return token

    async def apply(self, change: Change) -> Applied:
        """Snooze (or end our snooze) for ``change.person``. Raises like
        ``slack_client``, and ``PermanentError`` for a person without token."""
        person, memory = change.person, change.memory
        token = self._token(person)
        saved = memory.saved() or {}
        ours = saved.get("end")
        ours_end = int(ours) if isinstance(ours, int | float) else None
        info = await self._client.call("dnd.info", token, person, own=True)
        active = bool(info.get("snooze_enabled"))
        end = _int(info.get("snooze_endtime"))
        is_ours = (
            active and ours_end is not None and end is not None and abs(end - ours_end) <= TOLERANCE
        )
        now = self._clock.now()
        if change.desired is None or not change.desired.dnd:
            if is_ours:
                await self._client.call("dnd.endSnooze", token, person, own=True)
            if saved:
                memory.save(None)
            return Applied(status=change.desired, at=now)
        if active and not is_ours:
            # Their own pause: leave it be, and forget any of ours.
            if saved:
                memory.save(None)
            log.info("slack snooze is the person's own, left alone", extra=kv(target=self.name))
            return Applied(status=change.desired, at=now)
        if is_ours and end is not None and end - now.timestamp() > self.info.refresh_before:
            return Applied(status=change.desired, at=now, expires=datetime.fromtimestamp(end, UTC))
        minutes = self._options.minutes
        memory.save({"end": int(now.timestamp()) + minutes * 60})
        answer = await self._client.call(
            "dnd.setSnooze", token, person, own=True, num_minutes=minutes
        )
        end = _int(answer.get("snooze_endtime")) or int(now.timestamp()) + minutes * 60
        memory.save({"end": end})
        return Applied(status=change.desired, at=now, expires=datetime.fromtimestamp(end, UTC))

    async def aclose(self) -> None:
        """Nothing to release."""
        await self._client.aclose()


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)

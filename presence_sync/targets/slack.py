"""The ``slack_status`` target: a Slack custom status while a rule says so,
and the person's own status back afterwards, exactly.

One apply, desired status set (at most 1 read + 1 write):

1. ``users.profile.get``: what the person shows now;
2. if that is not ours, it is the person's own: saved in ``Memory`` (text,
   emoji, expiration), together with what we are about to write, *before*
   the write, so a crash right after leaves enough to restore;
3. ``users.profile.set`` with text, emoji and an expiration (option
   ``expiration``, default an hour) so a dead daemon leaves nothing stale;
   the engine applies again ``refresh_before`` seconds before it lapses
   (``Applied.expires``) while the rule still wants it. A status already
   showing with time to spare is not written again (idempotent re-apply).

One apply, desired ``None`` (at most 1 read + 1 write): ``users.profile.get``;
if it still shows ours (same text and emoji), write back the saved status
exactly, or clear ours (empty text and emoji) when nothing was saved or the
saved status's own expiration has passed meanwhile. Ours is cleared
explicitly even though it carries an expiration: Slack has had days when
expirations did not fire. If it shows something else, the person typed a
status during the call: it is theirs, and it stays.

The person wins while a call lasts too: when the status shown is neither
ours nor the one saved, they changed it themselves, and we leave it alone
until the rule wants something else (what we wanted counts as applied, so
the engine does not retry it). When ours is gone because its expiration
fired (the daemon was down), it is written again.

Text longer than Slack's 100 characters is cut (one warning per target);
the emoji comes from the rule. Tokens and errors: ``slack_client``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import Field

from presence_sync.errors import ConfigProblem
from presence_sync.model import Applied, Person, Status
from presence_sync.ops.logging import kv
from presence_sync.sections import Duration, SlackSettings
from presence_sync.targets.base import Change, Memory, TargetEnv, TargetInfo, TargetOptions
from presence_sync.targets.slack_client import SlackClient, SlackRefused, Who

__all__ = [
    "MAX_TEXT",
    "RATE",
    "SlackStatus",
    "SlackStatusOptions",
    "SlackStatusTarget",
    "long_text",
    "rule_text_warnings",
]

log = logging.getLogger(__name__)

MAX_TEXT = 100
"""Slack's limit on ``status_text`` (characters); longer gives ``too_long``."""

_FIELD = re.compile(r"\{[^{}]*\}")


def long_text(text: str) -> str | None:
    """The warning for a status text longer than Slack shows (the daemon's
    log line, ``check``'s and ``explain``'s warning); None when it fits."""
    if len(text) <= MAX_TEXT:
        return None
    return (
        f"Slack shows at most {MAX_TEXT} characters of a status text; this one has "
        f"{len(text)} and is cut to {MAX_TEXT - 1} and …"
    )


def rule_text_warnings(settings: Any) -> list[ConfigProblem]:
    """``long_text`` for every text a rule gives a ``slack_status`` target
    (``settings`` as loaded), at the rule's line. A text with template
    fields is measured without them: too long even then, it always is."""
    slack = {name for name, spec in settings.targets.items() if spec.kind == "slack_status"}
    problems: list[ConfigProblem] = []
    for index, rule in enumerate(settings.rules or ()):
        sets = rule.get("set") if isinstance(rule, Mapping) else None
        if not isinstance(sets, Mapping):
            continue
        for name, value in sets.items():
            if not (name in slack or (name == "*" and slack - set(sets))):
                continue
            text = value.get("text") if isinstance(value, Mapping) else None
            if not isinstance(text, str):
                continue
            warning = long_text(_FIELD.sub("", text))
            if warning is not None:
                problems.append(settings.problem(["rules", index, "set", name, "text"], warning))
    return problems


RATE = 0.4
"""Applies per second. Each apply writes ``users.profile.set`` at most once,
and the binding published limit on it is the admin token's "30 profiles a
minute per token" (Tier 3, "50+ a minute per workspace", binds when people
use their own tokens). A bucket of ``BURST`` plus ``RATE`` per second lets at
most 6 + 24 = 30 writes into any 60 seconds, so the admin token is never
refused. The reads (``users.profile.get``, Tier 4, 100+ a minute) are one
per apply and stay far below theirs. The "10 updates a minute to one
person" rule cannot bind: the engine coalesces a person's changes into one
key and refreshes it at most once per expiration."""

BURST = 6


@dataclass(frozen=True, slots=True)
class SlackStatus:
    """A Slack custom status: text, emoji and ``expiration`` (Unix seconds, 0 never)."""

    text: str = ""
    emoji: str = ""
    expiration: int = 0

    @property
    def empty(self) -> bool:
        return not self.text and not self.emoji

    def looks_like(self, other: SlackStatus) -> bool:
        """Same text and emoji. The expiration is left out: a refresh that
        crashed after we recorded it may not have reached Slack."""
        return self.text == other.text and self.emoji == other.emoji

    def lapsed(self, now: float) -> bool:
        return self.expiration != 0 and self.expiration <= now

    def doc(self) -> dict[str, Any]:
        return {"text": self.text, "emoji": self.emoji, "expiration": self.expiration}

    def profile(self) -> dict[str, Any]:
        return {
            "status_text": self.text,
            "status_emoji": self.emoji,
            "status_expiration": self.expiration,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> SlackStatus | None:
        if not isinstance(doc, Mapping):
            return None
        return cls(
            text=str(doc.get("text") or ""),
            emoji=str(doc.get("emoji") or ""),
            expiration=int(doc.get("expiration") or 0),
        )

    @classmethod
    def from_profile(cls, profile: Any) -> SlackStatus:
        if not isinstance(profile, Mapping):
            return cls()
        return cls(
            text=str(profile.get("status_text") or ""),
            emoji=str(profile.get("status_emoji") or ""),
            expiration=int(profile.get("status_expiration") or 0),
        )


class SlackStatusOptions(TargetOptions):
    """The ``slack_status`` block under ``targets:``.

    ``expiration``: how long each status we write lasts if nobody renews or
    clears it (renewed while the rule wants it); at least 5 minutes, so a
    renewal a minute before is not most of its life.
    """

    expiration: Annotated[Duration, Field(ge=300, le=7 * 24 * 3600)] = 3600.0


class SlackStatusTarget:
    """Shows a rule's text and emoji as the person's Slack status; see the module."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="slack_status",
        description="Slack custom status (text and emoji), the person's own restored after",
        fields=frozenset({"text", "emoji"}),
        rate=RATE,
        burst=BURST,
        concurrency=4,
        restores=True,
        refresh_before=120.0,
        # Up to three requests of at most slack.request_timeout (15 s) each.
        timeout=60.0,
        requires=("slack", "tls"),
    )
    Options: ClassVar[type[SlackStatusOptions]] = SlackStatusOptions

    def __init__(self, name: str, options: SlackStatusOptions, env: TargetEnv) -> None:
        self.name = name
        self._options = options
        self._clock = env.clock
        self._client = SlackClient(name, env.section("slack", SlackSettings), env)
        self._warned_long = False

    def __repr__(self) -> str:
        return f"<SlackStatusTarget {self.name!r} expiration={self._options.expiration:g}s>"

    def _ids(self) -> tuple[str, ...]:
        return (self.name, "slack_status", "slack_dnd")

    async def apply(self, change: Change) -> Applied:
        """Make the person's Slack status ``change.desired`` (or theirs again
        for ``None``). Raises ``AuthError``/``TransientError``/``PermanentError``
        as ``slack_client`` describes."""
        person, memory = change.person, change.memory
        wanted = self._wanted(change.desired)
        who = await self._client.who(person, memory, ids=self._ids())
        try:
            return await self._apply(change, wanted, who)
        except SlackRefused as exc:
            if not (who.cached and exc.error == "user_not_found"):
                raise
        # A cached id Slack no longer knows (they left and came back): ask once more.
        who = await self._client.who(person, memory, ids=self._ids(), fresh=True)
        return await self._apply(change, wanted, who)

    async def _apply(self, change: Change, wanted: SlackStatus | None, who: Who) -> Applied:
        if wanted is None:
            await self._restore(change.person, change.memory, who)
            return Applied(status=change.desired, at=self._clock.now())
        return await self._show(change, wanted, who)

    def _wanted(self, desired: Status | None) -> SlackStatus | None:
        if desired is None:
            return None
        text, emoji = desired.text or "", desired.emoji or ""
        if not text and not emoji:
            # Nothing to show: the person's own status is what they get.
            return None
        warning = long_text(text)
        if warning is not None:
            if not self._warned_long:
                self._warned_long = True
                log.warning(warning, extra=kv(target=self.name, length=len(text)))
            text = text[: MAX_TEXT - 1] + "…"
        return SlackStatus(text=text, emoji=emoji)

    async def _current(self, person: Person, who: Who) -> SlackStatus:
        args = {} if who.user is None else {"user": who.user}
        answer = await self._client.call(
            "users.profile.get", who.token, person, own=who.own, **args
        )
        return SlackStatus.from_profile(answer.get("profile"))

    async def _write(self, person: Person, who: Who, status: SlackStatus) -> None:
        args: dict[str, Any] = {"profile": status.profile()}
        if who.user is not None:
            args["user"] = who.user
        await self._client.call("users.profile.set", who.token, person, own=who.own, **args)

    async def _show(self, change: Change, wanted: SlackStatus, who: Who) -> Applied:
        person, memory = change.person, change.memory
        saved = memory.saved() or {}
        own = SlackStatus.from_doc(saved.get("own"))
        ours = SlackStatus.from_doc(saved.get("ours"))
        now = self._clock.now().timestamp()
        current = await self._current(person, who)
        if ours is not None and own is not None and not current.looks_like(ours):
            fired = current.empty and ours.lapsed(now)
            if not fired and not current.looks_like(own):
                # They typed their own status during the call: it stays, and
                # becomes what they get back; we write again only once the
                # rule wants something else.
                memory.save(None)
                log.info(
                    "slack status changed by its owner, left alone",
                    extra=kv(target=self.name, person=person.key),
                )
                return Applied(status=change.desired, at=self._clock.now())
        if own is None or ours is None:
            own = current
        if (
            ours is not None
            and current.looks_like(wanted)
            and current.looks_like(ours)
            and current.expiration - now > self.info.refresh_before
        ):
            return self._applied(change, current.expiration)
        expiration = int(now + self._options.expiration)
        mine = SlackStatus(wanted.text, wanted.emoji, expiration)
        # Write-ahead: theirs and ours are durable before Slack sees ours.
        memory.save({"own": own.doc(), "ours": mine.doc()})
        await self._write(person, who, mine)
        return self._applied(change, expiration)

    def _applied(self, change: Change, expiration: int) -> Applied:
        return Applied(
            status=change.desired,
            at=self._clock.now(),
            expires=datetime.fromtimestamp(expiration, UTC),
        )

    async def _restore(self, person: Person, memory: Memory, who: Who) -> None:
        saved = memory.saved() or {}
        ours = SlackStatus.from_doc(saved.get("ours"))
        if ours is None:
            # Nothing of ours was ever written (write-ahead guarantees it).
            if saved:
                memory.save(None)
            return
        own = SlackStatus.from_doc(saved.get("own")) or SlackStatus()
        now = self._clock.now().timestamp()
        current = await self._current(person, who)
        ours_showing = current.looks_like(ours)
        ours_fired = current.empty and ours.lapsed(now)
        if ours_showing or ours_fired:
            back = SlackStatus() if own.empty or own.lapsed(now) else own
            if not (ours_fired and back.empty):
                await self._write(person, who, back)
        memory.save(None)

    async def aclose(self) -> None:
        """Nothing to release (urllib keeps no pool)."""
        await self._client.aclose()

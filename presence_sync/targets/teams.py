"""The Teams targets: ``teams_presence`` (the app's presence session) and
``teams_status_message`` (the person's status note).

Both call Graph's presence endpoints, which share one budget: 1,500 requests
per 30 s per app per tenant. Their declared rates keep the two together
below it, each counted at its worst case within any 30 s (a full bucket
spent at once, then the steady rate):

- ``teams_presence``: one request per change, 25/s, burst 25 →
  25 + 25 x 30 = 775;
- ``teams_status_message``: up to two requests per change (read, then
  write), 10/s, burst 10 → 2 x (10 + 10 x 30) = 620.

Together at most 1,395 of the 1,500; the rest is headroom for a 401's retry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Final

from pydantic import AfterValidator, BeforeValidator, Field

from presence_sync.errors import PermanentError
from presence_sync.model import Applied, frozen_map
from presence_sync.ops.logging import kv
from presence_sync.sections import Duration
from presence_sync.targets.base import Change, TargetEnv, TargetInfo
from presence_sync.targets.graph import (
    GraphClient,
    GraphOptions,
    graph_datetime,
    iso_duration,
    parse_iso_duration,
)

__all__ = [
    "PRESENCE_PAIRS",
    "TeamsPresenceOptions",
    "TeamsPresenceTarget",
    "TeamsStatusMessageOptions",
    "TeamsStatusMessageTarget",
    "check_presence_pair",
]

log = logging.getLogger(__name__)

PRESENCE_PAIRS: Final = frozenset(
    {
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    }
)
"""The availability/activity pairs ``setPresence`` v1.0 accepts."""

_PERMISSION: Final = "Presence.ReadWrite.All"


def check_presence_pair(fields: Mapping[str, Any]) -> str | None:
    """Why a rule's fixed ``availability``/``activity`` cannot be shown by
    ``teams_presence``, or None. Templated values are checked when applied."""
    availability, activity = fields.get("availability"), fields.get("activity")
    if availability is None and activity is None:
        return "teams_presence needs availability and activity (e.g. Busy/InACall)"
    if availability is None or activity is None:
        return "teams_presence needs both availability and activity"
    pair = (availability, activity)
    if pair == ("Available", "Available"):
        return (
            "Available/Available is never posted: an app's Available session fades to Away "
            "after 5 minutes; use null to give the person their own status back"
        )
    if pair not in PRESENCE_PAIRS:
        accepted = ", ".join(f"{a}/{b}" for a, b in sorted(PRESENCE_PAIRS) if a != "Available")
        return f"Teams does not accept {availability}/{activity} (accepted: {accepted})"
    return None


def _expiration(value: Any) -> Any:
    """``PT15M`` as Graph writes it, or the configuration's ``15m``."""
    if isinstance(value, str) and value.strip().upper().startswith("PT"):
        return parse_iso_duration(value)
    return value


def _session_range(seconds: float) -> float:
    if not 300 <= seconds <= 4 * 3600:
        raise ValueError(
            f"{iso_duration(seconds)} is outside what Teams accepts: PT5M (5m) to PT4H (4h)"
        )
    return seconds


_Expiration = Annotated[Duration, BeforeValidator(_expiration), AfterValidator(_session_range)]


class TeamsPresenceOptions(GraphOptions):
    """The ``teams_presence`` block. ``expiration`` is the session's
    ``expirationDuration`` (PT5M..PT4H, ``PT15M`` or ``15m``): a daemon that
    died leaves at most this long of stale "In a call"."""

    expiration: _Expiration = 900.0


class TeamsPresenceTarget:
    """Busy/InACall (and the other pairs) as the app's own presence session.

    ``setPresence`` with ``sessionId`` = the app's client id; the session
    expires after ``expiration`` and ``Applied.expires`` makes the engine post
    it again two minutes before, for as long as the status lasts. Ending it is
    ``clearPresence`` (404: already gone); Available is never posted. Teams
    merges our session with the person's own clients, and the person's own
    choice wins, so nothing they set is ever overwritten.
    """

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="teams_presence",
        description="Teams presence (Busy/InACall...) as the app's own session",
        fields=frozenset({"availability", "activity"}),
        rate=25.0,
        burst=25,
        concurrency=8,
        restores=True,
        refresh_before=120.0,
        requires=("microsoft", "tls"),
        check=check_presence_pair,
    )
    Options: ClassVar[type[TeamsPresenceOptions]] = TeamsPresenceOptions

    def __init__(self, name: str, options: TeamsPresenceOptions, env: TargetEnv) -> None:
        self.name = name
        self.options = options
        self._clock = env.clock
        self._graph = GraphClient(name, env, timeout=options.timeout)

    def __repr__(self) -> str:
        expiration = iso_duration(self.options.expiration)
        return f"<TeamsPresenceTarget {self.name!r} expiration={expiration}>"

    async def apply(self, change: Change) -> Applied:
        """Post ``change.desired`` as our session, or clear our session for None."""
        user = await self._graph.user_id(change.person, change.memory)
        base = f"/users/{user}/presence"
        desired = change.desired
        if desired is None:
            await self._graph.call(
                "POST",
                f"{base}/clearPresence",
                json={"sessionId": self._graph.client_id},
                permission=_PERMISSION,
                ok=frozenset({404}),
            )
            return Applied(status=None, at=self._clock.now(), data=frozen_map({"user": user}))
        problem = check_presence_pair(
            {"availability": desired.availability, "activity": desired.activity}
        )
        if problem is not None:
            raise PermanentError(f"{self.name}: {problem}")
        now = self._clock.now()
        await self._graph.call(
            "POST",
            f"{base}/setPresence",
            json={
                "sessionId": self._graph.client_id,
                "availability": desired.availability,
                "activity": desired.activity,
                "expirationDuration": iso_duration(self.options.expiration),
            },
            permission=_PERMISSION,
        )
        return Applied(
            status=desired,
            at=now,
            expires=now + timedelta(seconds=self.options.expiration),
            data=frozen_map({"user": user}),
        )

    async def aclose(self) -> None:
        await self._graph.aclose()


class TeamsStatusMessageOptions(GraphOptions):
    """The ``teams_status_message`` block. ``expiration``: our message's
    ``expiryDateTime`` from each write (refreshed while the status lasts), so a
    dead daemon cannot leave it for long."""

    expiration: Annotated[Duration, Field(ge=300, le=24 * 3600)] = 3600.0


def _content(presence: Mapping[str, Any]) -> str:
    message = presence.get("statusMessage") or {}
    body = message.get("message") or {}
    return str(body.get("content") or "")


def _ours(saved: Mapping[str, Any] | None, applied: Applied | None) -> set[str]:
    """The messages we posted or may have posted (one whose answer was lost)."""
    mine: set[str] = set()
    if saved is not None:
        mine.update(str(saved[k]) for k in ("ours", "pending") if saved.get(k) is not None)
    if applied is not None and applied.status is not None and applied.status.text is not None:
        mine.add(applied.status.text)
    return mine


class TeamsStatusMessageTarget:
    """The rule's ``text`` as the person's Teams status message.

    Before our first write the person's own message is read (``GET
    presence``) and saved in ``Memory``. Ours always carries an
    ``expiryDateTime``. Every later write and the end first read the current
    message: if it is no longer ours, the person changed it, and theirs is
    kept (not overwritten, not "restored" over). At the end a message that is
    still ours is replaced by the saved one, without an expiry: Graph does
    not tell an app when another user's message expires.

    A tenant that refuses application access here answers 401/403 ("Cannot
    set the presence of another user"): ``AuthError`` naming the permission,
    which the engine reports once and pauses the target on.
    """

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="teams_status_message",
        description="Teams status message, the person's own restored at the end",
        fields=frozenset({"text"}),
        rate=10.0,
        burst=10,
        concurrency=4,
        restores=True,
        refresh_before=120.0,
        requires=("microsoft", "tls"),
    )
    Options: ClassVar[type[TeamsStatusMessageOptions]] = TeamsStatusMessageOptions

    def __init__(self, name: str, options: TeamsStatusMessageOptions, env: TargetEnv) -> None:
        self.name = name
        self.options = options
        self._clock = env.clock
        self._graph = GraphClient(name, env, timeout=options.timeout)

    def __repr__(self) -> str:
        return f"<TeamsStatusMessageTarget {self.name!r}>"

    async def _current(self, user: str) -> str:
        response = await self._graph.call("GET", f"/users/{user}/presence", permission=_PERMISSION)
        return _content(response.json())

    async def _set(self, user: str, text: str, expires: Any = None) -> None:
        message: dict[str, Any] = {"message": {"content": text, "contentType": "text"}}
        if expires is not None:
            message["expiryDateTime"] = graph_datetime(expires)
        await self._graph.call(
            "POST",
            f"/users/{user}/presence/setStatusMessage",
            json={"statusMessage": message},
            permission=_PERMISSION,
        )

    async def apply(self, change: Change) -> Applied:
        """Show ``change.desired.text``; for None give the person theirs back."""
        memory = change.memory
        user = await self._graph.user_id(change.person, memory)
        saved = memory.saved()
        mine = _ours(saved, change.applied)
        desired = change.desired
        now = self._clock.now()
        if desired is None:
            if saved is None and not mine:
                return Applied(status=None, at=now)
            current = await self._current(user)
            if current in mine:
                await self._set(user, str(saved.get("own") or "") if saved is not None else "")
            else:
                log.info(
                    "%s: the status message was changed meanwhile; it is kept",
                    self.name,
                    extra=kv(target=self.name),
                )
            memory.save(None)
            return Applied(status=None, at=now)
        if saved is None:
            saved = {"own": await self._current(user)}
        elif saved.get("yielded"):
            return Applied(status=desired, at=now, data=frozen_map({"yielded": True}))
        elif mine:
            current = await self._current(user)
            if current not in mine:
                # Written by the person mid-call: theirs now, and theirs to keep.
                memory.save({"own": current, "yielded": True})
                return Applied(status=desired, at=now, data=frozen_map({"yielded": True}))
        text = desired.text or ""
        # Saved before the write, with what we are about to post: a crash or
        # timeout in between still knows what to restore and what is ours.
        memory.save({"own": saved.get("own", ""), "ours": saved.get("ours"), "pending": text})
        expires = now + timedelta(seconds=self.options.expiration)
        await self._set(user, text, expires)
        memory.save({"own": saved.get("own", ""), "ours": text})
        return Applied(status=desired, at=now, expires=expires)

    async def aclose(self) -> None:
        await self._graph.aclose()

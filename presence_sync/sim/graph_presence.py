"""Presence as Teams keeps it for one user: presence sessions (one per
signed-in Teams client, one per app that called ``setPresence``), the user's
own preferred status, a status message, and how they combine.

From the v1.0 setPresence / clearPresence / setUserPreferredPresence pages and
the "manage presence state" concept page (see
``reference/microsoft-graph.md`` §1):

- An app's session is keyed by its ``sessionId``, which must be the app's
  client id. ``setPresence`` accepts five pairs only and an
  ``expirationDuration`` of PT5M..PT4H (default PT5M). An expired session
  is gone.
- An ``Available`` app session that is not re-posted fades: after 5 minutes
  it shows ``Available/AvailableInactive``, after 10 ``Away/Away``.
- The user's preferred status beats every session, but only shows while the
  user has at least one session; with none the user is ``Offline``.
- Among sessions: DoNotDisturb > Busy > Available > Away; a tie goes to the
  session written last.

Pure logic over an explicit ``now``; the simulator does the locking.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from presence_sync.sim.graph_wire import GraphError, bad_request, parse_duration

__all__ = [
    "CLIENT_SESSION",
    "PREFERRED_PAIRS",
    "SETTABLE_PAIRS",
    "Presence",
    "StatusMessage",
]

SETTABLE_PAIRS = frozenset(
    {
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Busy", "InAConferenceCall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    }
)
PREFERRED_PAIRS = frozenset(
    {
        ("Available", "Available"),
        ("Busy", "Busy"),
        ("DoNotDisturb", "DoNotDisturb"),
        ("BeRightBack", "BeRightBack"),
        ("Away", "Away"),
        ("Offline", "OffWork"),
    }
)
MIN_EXPIRATION = timedelta(minutes=5)
MAX_EXPIRATION = timedelta(hours=4)
AVAILABLE_TIMEOUT = timedelta(minutes=5)
CLIENT_SESSION = "teams-client"
"""Session id of the simulated signed-in Teams client (control API only)."""

_RANK = {"DoNotDisturb": 4, "Busy": 3, "Available": 2, "Away": 1}


def _own_session(body: Mapping[str, Any], client_id: str) -> str:
    """The body's ``sessionId``, which must be the calling app's client id."""
    session = body.get("sessionId")
    if not isinstance(session, str) or not session:
        raise bad_request("sessionId is required.")
    if session.lower() != client_id.lower():
        raise bad_request("The sessionId must be the application (client) id of the calling app.")
    return session


@dataclass
class _Session:
    availability: str
    activity: str
    expires: datetime | None
    written: datetime
    seq: int

    def shown(self, now: datetime) -> tuple[str, str]:
        if self.availability != "Available" or self.expires is None:
            return self.availability, self.activity
        idle = now - self.written
        if idle >= 2 * AVAILABLE_TIMEOUT:
            return "Away", "Away"
        if idle >= AVAILABLE_TIMEOUT:
            return "Available", "AvailableInactive"
        return self.availability, self.activity


@dataclass
class StatusMessage:
    content: str
    content_type: str
    expires: datetime | None
    expiry_raw: dict[str, str] | None
    published: datetime


@dataclass
class Presence:
    """One user's presence state."""

    user_id: str
    sessions: dict[str, _Session] = field(default_factory=dict)
    preferred: tuple[str, str, datetime | None] | None = None
    message: StatusMessage | None = None
    _seq: int = 0
    sequence: int = 0
    """Bumped on every change; Graph's ``sequenceNumber`` is opaque but sortable."""

    # -- writes from Graph -------------------------------------------------
    def set_presence(self, body: Mapping[str, Any], client_id: str, now: datetime) -> None:
        """``setPresence`` for the app ``client_id``; raises GraphError 400."""
        session = _own_session(body, client_id)
        pair = (body.get("availability"), body.get("activity"))
        if pair not in SETTABLE_PAIRS:
            raise bad_request(
                f"The availability/activity pair {pair[0]}/{pair[1]} is not supported by "
                "setPresence. Supported: "
                + ", ".join(f"{a}/{b}" for a, b in sorted(SETTABLE_PAIRS))
                + "."
            )
        raw = body.get("expirationDuration", "PT5M")
        duration = parse_duration(raw)
        if not MIN_EXPIRATION <= duration <= MAX_EXPIRATION:
            raise bad_request(
                f"expirationDuration {raw} is out of range: it must be between PT5M and PT4H."
            )
        self._seq += 1
        availability, activity = str(pair[0]), str(pair[1])
        self.sessions[session.lower()] = _Session(
            availability, activity, now + duration, now, self._seq
        )
        self.sequence += 1

    def clear_presence(self, body: Mapping[str, Any], client_id: str, now: datetime) -> None:
        """``clearPresence``; 400 for a foreign session id, 404 if the app
        has no live session for this user."""
        session = _own_session(body, client_id)
        self.expire(now)
        if self.sessions.pop(session.lower(), None) is None:
            raise GraphError(404, "NotFound", f"The presence session {session} was not found.")
        self.sequence += 1

    def set_status_message(self, message: StatusMessage) -> None:
        self.message = message
        self.sequence += 1

    # -- writes from the control API ---------------------------------------
    def set_preferred(
        self, availability: str, activity: str, expires: datetime | None, now: datetime
    ) -> None:
        """The user picks a status in Teams (``setUserPreferredPresence``)."""
        if (availability, activity) not in PREFERRED_PAIRS:
            raise ValueError(f"{availability}/{activity} is not a preferred-presence pair")
        self.preferred = (availability, activity, expires)
        self.sequence += 1

    def clear_preferred(self) -> None:
        self.preferred = None
        self.sequence += 1

    def set_client(self, availability: str | None, activity: str | None, now: datetime) -> None:
        """A Teams client signs in showing this pair (None: signs out). Client
        sessions never expire."""
        if availability is None or activity is None:
            self.sessions.pop(CLIENT_SESSION, None)
        else:
            self._seq += 1
            self.sessions[CLIENT_SESSION] = _Session(availability, activity, None, now, self._seq)
        self.sequence += 1

    # -- reads -------------------------------------------------------------
    def expire(self, now: datetime) -> None:
        """Drop what has run out: sessions, preferred status, status message."""
        for key in [k for k, s in self.sessions.items() if s.expires and s.expires <= now]:
            del self.sessions[key]
        if self.preferred is not None and self.preferred[2] and self.preferred[2] <= now:
            self.preferred = None
        if self.message is not None and self.message.expires and self.message.expires <= now:
            self.message = None

    def effective(self, now: datetime) -> tuple[str, str]:
        """The availability and activity Teams shows right now."""
        self.expire(now)
        if not self.sessions:
            return "Offline", "Offline"
        if self.preferred is not None:
            return self.preferred[0], self.preferred[1]
        shown = [(s.shown(now), s.seq) for s in self.sessions.values()]
        (best, _seq) = max(shown, key=lambda item: (_RANK.get(item[0][0], 0), item[1]))
        return best

    def resource(self, now: datetime, *, own: bool = False) -> dict[str, Any]:
        """The ``presence`` resource. ``own=False`` is how an app (or another
        user) sees it: the message's expiry and publish time are left out."""
        availability, activity = self.effective(now)
        message: dict[str, Any] | None = None
        if self.message is not None:
            message = {
                "message": {
                    "content": self.message.content,
                    "contentType": self.message.content_type,
                }
            }
            if own:
                message["expiryDateTime"] = self.message.expiry_raw
                message["publishedDateTime"] = self.message.published.isoformat()
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users('"
            + self.user_id
            + "')/presence/$entity",
            "id": self.user_id,
            "availability": availability,
            "activity": activity,
            "statusMessage": message,
            "outOfOfficeSettings": {"message": None, "isOutOfOffice": False},
            "sequenceNumber": f"{self.sequence:020d}",
        }

    def sessions_view(self, now: datetime) -> dict[str, dict[str, Any]]:
        """Live sessions by id, for tests and the control API."""
        self.expire(now)
        return {
            key: {
                "availability": s.shown(now)[0],
                "activity": s.shown(now)[1],
                "expires": s.expires.isoformat() if s.expires else None,
            }
            for key, s in self.sessions.items()
        }

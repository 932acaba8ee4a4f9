"""The Microsoft Graph simulator's state: ``GraphSim`` (tenant, app
registrations, users, presence, calendars, the request log, injected
failures) behind one lock. ``graph.py`` is its public face and serves it;
``graph_http.py`` reads the wire into calls of this class.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from presence_sync.sim.graph_events import Calendar
from presence_sync.sim.graph_identity import App, Identity, Principal
from presence_sync.sim.graph_presence import Presence, StatusMessage
from presence_sync.sim.graph_wire import GraphError, RecordedRequest, SimClock, format_datetime_tz

__all__ = [
    "ALL_ROLES",
    "DIRECTORY_ROLES",
    "PRESENCE_LIMIT",
    "GraphSim",
    "Group",
    "RecordedRequest",
    "SimClock",
    "User",
]

ALL_ROLES = frozenset({"Presence.ReadWrite.All", "User.Read.All", "Calendars.ReadWrite"})
"""What presence-sync's app registration is granted when nothing else is said."""
DIRECTORY_ROLES = ALL_ROLES | {"GroupMember.Read.All"}
"""Also what people from a group (``directory.microsoft``) need."""
PRESENCE_LIMIT = 1500
PRESENCE_WINDOW = timedelta(seconds=30)


class WallClock(Protocol):
    def now(self) -> datetime: ...


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class User:
    id: str
    user_principal_name: str
    mail: str | None
    display_name: str
    business_phones: tuple[str, ...] = ()
    mobile_phone: str | None = None
    employee_id: str | None = None
    account_enabled: bool = True
    extension_attributes: tuple[tuple[str, str], ...] = ()
    """``onPremisesExtensionAttributes`` set (name, value); the rest are null."""

    def resource(self) -> dict[str, Any]:
        """The ``user`` resource's default properties."""
        given, _, surname = self.display_name.partition(" ")
        return {
            "id": self.id,
            "userPrincipalName": self.user_principal_name,
            "mail": self.mail,
            "displayName": self.display_name,
            "givenName": given or None,
            "surname": surname or None,
            "businessPhones": list(self.business_phones),
            "jobTitle": None,
            "mobilePhone": self.mobile_phone,
            "officeLocation": None,
            "preferredLanguage": None,
        }

    def selectable(self) -> dict[str, Any]:
        """Every property ``$select`` may name: the defaults and the ones
        Graph returns only when selected."""
        attributes = dict(self.extension_attributes)
        return self.resource() | {
            "accountEnabled": self.account_enabled,
            "employeeId": self.employee_id,
            "onPremisesExtensionAttributes": {
                f"extensionAttribute{i}": attributes.get(f"extensionAttribute{i}")
                for i in range(1, 16)
            },
        }


_USER_FIELDS = {
    "businessPhones": "business_phones",
    "mobilePhone": "mobile_phone",
    "employeeId": "employee_id",
    "accountEnabled": "account_enabled",
    "displayName": "display_name",
    "mail": "mail",
}


@dataclass
class Group:
    """A security or Microsoft 365 group; ``members`` are object ids of
    users and of nested groups, in the order they were added."""

    id: str
    display_name: str
    members: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    prefix: str
    status: int
    remaining: int
    retry_after: float | None
    message: str = "Injected failure."


@dataclass
class _Hang:
    prefix: str
    seconds: float
    remaining: int


class GraphSim:
    """The simulated tenant. Every public method is thread-safe."""

    def __init__(
        self,
        *,
        tenant: str | None = None,
        clock: WallClock | None = None,
        token_lifetime: float = 3600.0,
        presence_limit: int = PRESENCE_LIMIT,
    ) -> None:
        self.tenant = tenant or str(uuid.uuid4())
        self.clock: WallClock = clock or _SystemClock()
        self.presence_limit = presence_limit
        self._lock = threading.RLock()
        self.identity = Identity(self.now, token_lifetime=timedelta(seconds=token_lifetime))
        self.identity.add_tenant(self.tenant)
        self._users: dict[str, User] = {}
        self._groups: dict[str, Group] = {}
        self._presence: dict[str, Presence] = {}
        self._calendars: dict[str, Calendar] = {}
        self._log: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._hangs: list[_Hang] = []
        self._budget: dict[tuple[str, str], deque[datetime]] = {}

    def __repr__(self) -> str:
        return f"GraphSim(tenant={self.tenant!r}, users={len(self._users)})"

    def now(self) -> datetime:
        return self.clock.now()

    # -- control: set-up ---------------------------------------------------
    def register_app(
        self,
        client_id: str | None = None,
        *,
        tenant: str | None = None,
        secret: str | None = None,
        certificate_pem: bytes | None = None,
        roles: Iterable[str] = ALL_ROLES,
    ) -> str:
        """Register an app (in this tenant unless ``tenant`` names another)
        with a secret and/or a certificate; returns its client id."""
        client_id = client_id or str(uuid.uuid4())
        certificates = [certificate_pem] if certificate_pem else []
        with self._lock:
            self.identity.register(
                App(tenant or self.tenant, client_id, secret, certificates, frozenset(roles))
            )
        return client_id

    def set_roles(self, client_id: str, roles: Iterable[str], tenant: str | None = None) -> None:
        """Change what an admin consented to; tokens issued before keep
        their ``roles`` claim until they expire, as in Entra."""
        with self._lock:
            app = self.identity.app(tenant or self.tenant, client_id)
            self.identity.register(
                App(app.tenant, app.client_id, app.secret, app.certificates, frozenset(roles))
            )

    def add_user(
        self,
        user_principal_name: str,
        *,
        mail: str | None = "",
        user_id: str | None = None,
        display_name: str | None = None,
    ) -> str:
        """Add a user; ``mail`` defaults to the UPN (None: no mailbox
        address). Returns the object id."""
        with self._lock:
            user_id = (user_id or str(uuid.uuid4())).lower()
            uuid.UUID(user_id)  # object ids are GUIDs
            name = display_name or user_principal_name.split("@")[0].replace(".", " ").title()
            self._users[user_id] = User(
                user_id, user_principal_name, user_principal_name if mail == "" else mail, name
            )
            self._presence[user_id] = Presence(user_id)
            self._calendars[user_id] = Calendar(user_id)
            return user_id

    def set_preferred(
        self,
        user_id: str,
        availability: str,
        activity: str,
        expiration: timedelta | None = None,
    ) -> None:
        """The user picks a status in Teams. Without ``expiration`` it lasts
        a day for Busy/DoNotDisturb and seven days otherwise (Graph's
        defaults for ``setUserPreferredPresence``)."""
        with self._lock:
            now = self.now()
            if expiration is None:
                days = 1 if availability in ("Busy", "DoNotDisturb") else 7
                expiration = timedelta(days=days)
            self._presence_of(user_id).set_preferred(availability, activity, now + expiration, now)

    def clear_preferred(self, user_id: str) -> None:
        with self._lock:
            self._presence_of(user_id).clear_preferred()

    def sign_in_client(
        self, user_id: str, availability: str | None = "Available", activity: str | None = None
    ) -> None:
        """A Teams client of the user signs in showing ``availability``
        (None signs it out)."""
        with self._lock:
            self._presence_of(user_id).set_client(
                availability, activity or availability, self.now()
            )

    def set_status_message(
        self, user_id: str, content: str, expires: datetime | None = None
    ) -> None:
        """The user types a status message in Teams."""
        with self._lock:
            now = self.now()
            raw = format_datetime_tz(expires) if expires else None
            self._presence_of(user_id).set_status_message(
                StatusMessage(content, "text", expires, raw, now)
            )

    # -- control: failures ---------------------------------------------------
    def fail_next(
        self,
        path: str = "",
        status: int = 429,
        count: int = 1,
        retry_after: float | None = 1.0,
        message: str = "Injected failure.",
    ) -> None:
        """The next ``count`` requests whose path starts with ``path`` are
        answered ``status`` (with ``Retry-After`` unless None) instead, with
        ``message`` as the ``error.message`` of Graph's error body."""
        with self._lock:
            self._failures.append(_Failure(path, status, count, retry_after, message))

    def hang_next(self, seconds: float, path: str = "", count: int = 1) -> None:
        """The next ``count`` requests to ``path`` wait ``seconds`` (real
        time) before they are handled: a client with a shorter timeout gives
        up, yet the request still takes effect."""
        with self._lock:
            self._hangs.append(_Hang(path, seconds, count))

    def hangs_left(self) -> int:
        """Requests ``hang_next`` asked for that no request has met yet (0:
        every one is held, or was)."""
        with self._lock:
            return sum(h.remaining for h in self._hangs)

    # -- control: reading ----------------------------------------------------
    def requests(self, path: str = "") -> list[RecordedRequest]:
        """Requests so far whose path starts with ``path``, oldest first."""
        with self._lock:
            return [r for r in self._log if r.path.startswith(path)]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def presence(self, user_id: str) -> dict[str, Any]:
        """The user's presence as the user sees it (message expiry included)."""
        with self._lock:
            return self._presence_of(user_id).resource(self.now(), own=True)

    def sessions(self, user_id: str) -> dict[str, dict[str, Any]]:
        """The user's live presence sessions by session id (the Teams client's
        is ``teams-client``)."""
        with self._lock:
            return self._presence_of(user_id).sessions_view(self.now())

    def events(self, user_id: str) -> list[dict[str, Any]]:
        """Events in the user's calendar."""
        with self._lock:
            return self._calendar_of(user_id).list()

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self.identity.issued

    def change_user(self, user_id: str, **changes: Any) -> None:
        """Change a user's properties by their Graph names (``businessPhones``,
        ``mobilePhone``, ``employeeId``, ``accountEnabled``, ``displayName``,
        ``mail``, ``extensionAttribute1``..``15``); raises ``KeyError`` for
        an unknown user or property."""
        with self._lock:
            user = self._users[user_id.lower()]
            attributes = dict(user.extension_attributes)
            fields: dict[str, Any] = {}
            for name, value in changes.items():
                if name.startswith("extensionAttribute") and name[18:].isdigit():
                    if not 1 <= int(name[18:]) <= 15:
                        raise KeyError(name)
                    if value is None:
                        attributes.pop(name, None)
                    else:
                        attributes[name] = str(value)
                elif name == "businessPhones":
                    fields["business_phones"] = tuple(str(v) for v in value)
                elif name == "accountEnabled":
                    fields["account_enabled"] = bool(value)
                else:
                    fields[_USER_FIELDS[name]] = value
            fields["extension_attributes"] = tuple(sorted(attributes.items()))
            self._users[user.id] = replace(user, **fields)

    def add_group(self, display_name: str, *, group_id: str | None = None) -> str:
        """Add an (empty) group; returns its object id."""
        with self._lock:
            group_id = (group_id or str(uuid.uuid4())).lower()
            uuid.UUID(group_id)
            self._groups[group_id] = Group(group_id, display_name)
            return group_id

    def add_member(self, group_id: str, member_id: str) -> None:
        """Make a user or another group a direct member (once)."""
        with self._lock:
            group = self._groups[group_id.lower()]
            member = member_id.lower()
            if member not in self._users and member not in self._groups:
                raise KeyError(f"no user or group {member_id}")
            if member not in group.members:
                group.members.append(member)

    def remove_member(self, group_id: str, member_id: str) -> None:
        """Remove a direct member; raises ``KeyError`` when it is not one."""
        with self._lock:
            self._groups[group_id.lower()].members.remove(member_id.lower())

    def groups(self) -> list[Group]:
        with self._lock:
            return [Group(g.id, g.display_name, list(g.members)) for g in self._groups.values()]

    def find_group(self, group_id: str) -> Group | None:
        with self._lock:
            return self._groups.get(group_id.lower())

    def transitive_users(self, group_id: str) -> list[User]:
        """Every user in the group or a group nested in it, each once, in
        the order reached (a group nested in itself is walked once)."""
        with self._lock:
            seen_groups: set[str] = set()
            seen_users: dict[str, User] = {}

            def walk(gid: str) -> None:
                if gid in seen_groups:
                    return
                seen_groups.add(gid)
                for member in self._groups[gid].members:
                    if member in self._users:
                        seen_users.setdefault(member, self._users[member])
                    elif member in self._groups:
                        walk(member)

            walk(group_id.lower())
            return list(seen_users.values())

    # -- used by graph_http ----------------------------------------------------
    def lock(self) -> threading.RLock:
        """The lock guarding all state, for the HTTP layer."""
        return self._lock

    def find_user(self, key: str) -> User | None:
        """By object id or UPN (case-insensitive)."""
        with self._lock:
            user = self._users.get(key.lower())
            if user is not None:
                return user
            lowered = key.lower()
            for user in self._users.values():
                if user.user_principal_name.lower() == lowered:
                    return user
            return None

    def users(self) -> list[User]:
        with self._lock:
            return list(self._users.values())

    def _presence_of(self, user_id: str) -> Presence:
        try:
            return self._presence[user_id]
        except KeyError:
            raise KeyError(f"no user with id {user_id}") from None

    def _calendar_of(self, user_id: str) -> Calendar:
        try:
            return self._calendars[user_id]
        except KeyError:
            raise KeyError(f"no user with id {user_id}") from None

    def presence_state(self, user_id: str) -> Presence:
        """The user's ``Presence`` (call with ``lock()`` held)."""
        return self._presence_of(user_id)

    def calendar(self, user_id: str) -> Calendar:
        """The user's ``Calendar`` (call with ``lock()`` held)."""
        return self._calendar_of(user_id)

    def record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def take_failure(self, path: str) -> tuple[int, float | None, str] | None:
        """Consume an injected failure matching ``path``, if any: its status,
        ``Retry-After`` and message."""
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and path.startswith(failure.prefix):
                    failure.remaining -= 1
                    return failure.status, failure.retry_after, failure.message
            return None

    def take_hang(self, path: str) -> float:
        with self._lock:
            for hang in self._hangs:
                if hang.remaining > 0 and path.startswith(hang.prefix):
                    hang.remaining -= 1
                    return hang.seconds
            return 0.0

    def spend_presence_budget(self, who: Principal) -> None:
        """Count one presence request against the app's budget in its tenant
        (a sliding 30 s window; refused requests do not count); GraphError
        429 with ``Retry-After`` when it is spent."""
        with self._lock:
            now = self.now()
            window = self._budget.setdefault((who.tenant, who.client_id), deque())
            while window and window[0] <= now - PRESENCE_WINDOW:
                window.popleft()
            if len(window) >= self.presence_limit:
                wait = (window[0] + PRESENCE_WINDOW - now).total_seconds()
                raise GraphError(
                    429,
                    "TooManyRequests",
                    "Too many requests: the presence limit of "
                    f"{self.presence_limit} requests per 30 seconds is reached.",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            window.append(now)

    def accept_resource(self, origin: str) -> None:
        """Accept ``{origin}/.default`` as a scope (the simulator's own URL)."""
        with self._lock:
            self.identity.resources.add(origin.rstrip("/"))


# -- serving ---------------------------------------------------------------

"""The Slack Web API methods the simulator answers, on one workspace's
accounts: what each method checks and returns once the caller is
authenticated. ``slack.py`` owns tokens, faults, the request log and the
lock; the contract as a whole is described there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from presence_sync.sim.slack_limits import Budgets

__all__ = [
    "ALL_USER_SCOPES",
    "METHODS",
    "RANK",
    "Account",
    "ApiError",
    "Incoming",
    "IssuedToken",
    "MethodSpec",
    "Role",
    "Status",
    "Workspace",
]

Role = Literal["primary_owner", "owner", "admin", "regular"]
RANK: Mapping[str, int] = {"regular": 0, "admin": 1, "owner": 2, "primary_owner": 3}
"""Roles from least to most powerful."""

ALL_USER_SCOPES = frozenset(
    {
        "users.profile:read",
        "users.profile:write",
        "users:read",
        "users:read.email",
        "dnd:read",
        "dnd:write",
    }
)


@dataclass(frozen=True)
class MethodSpec:
    """A simulated method: the scope it needs (None: any token), its rate
    tier (None: no budget) and whether a bot token is refused."""

    scope: str | None
    tier: int | None
    user_token_only: bool = False


METHODS: Mapping[str, MethodSpec] = {
    "auth.test": MethodSpec(None, None),
    "users.lookupByEmail": MethodSpec("users:read.email", 3),
    "users.list": MethodSpec("users:read", 2),
    "users.profile.get": MethodSpec("users.profile:read", 4),
    "users.profile.set": MethodSpec("users.profile:write", 3, user_token_only=True),
    "dnd.info": MethodSpec("dnd:read", 3),
    "dnd.setSnooze": MethodSpec("dnd:write", 2, user_token_only=True),
    "dnd.endSnooze": MethodSpec("dnd:write", 2, user_token_only=True),
}
"""Scopes and tiers from reference/slack.md §1 and §2.2."""

_TEXT_MAX = 100
_LIST_MAX = 1000
"""``users.list``: "specify a limit value under 1000"."""
_MAX_FIELDS = 50
_EDITABLE = frozenset(
    {
        "status_text", "status_emoji", "status_expiration", "display_name", "real_name",
        "first_name", "last_name", "title", "phone", "pronouns",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Status:
    """A custom status as Slack stores it; all empty/0 means none."""

    text: str = ""
    emoji: str = ""
    expiration: int = 0

    @property
    def empty(self) -> bool:
        return not self.text and not self.emoji


@dataclass(frozen=True)
class IssuedToken:
    """A token the simulator accepts: ``secret`` goes on the wire, ``id`` in logs."""

    id: str
    secret: str
    user_id: str
    scopes: frozenset[str]
    bot: bool = False

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.id!r}, user_id={self.user_id!r}, bot={self.bot})"


@dataclass
class Account:
    """A person (or a bot) of the workspace, as stored."""

    id: str
    name: str
    email: str
    role: Role
    real_name: str
    bot: bool = False
    deleted: bool = False
    status: Status = Status()
    extra: dict[str, str] = field(default_factory=dict)
    snooze_end: int | None = None


class ApiError(Exception):
    """A Web API error answer: ``error``, the person it was about (for the
    log), and extra body fields (``retry_after`` becomes a 429)."""

    def __init__(self, error: str, target: str | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.target = target
        self.extra = extra


class Workspace:
    """The accounts of one workspace and the methods acting on them.

    ``call`` returns the success body (``_target`` names the person the
    call was about) or raises ``ApiError``. Not thread-safe on its own: the
    simulator calls it under its lock.
    """

    def __init__(
        self,
        *,
        team: str,
        team_id: str,
        paid: bool,
        now: Callable[[], float],
        budgets: Budgets,
        max_snooze: int,
        emoji: frozenset[str] | None,
    ) -> None:
        self.team = team
        self.team_id = team_id
        self.paid = paid
        self.now = now
        self.budgets = budgets
        self.max_snooze = max_snooze
        self.emoji = emoji
        self.expirations_fire = True
        self.accounts: dict[str, Account] = {}

    def call(
        self, method: str, user: Account, token: IssuedToken, args: Mapping[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """Run ``method`` for ``user`` (the token's owner) with ``args``.
        Returns the id of the person the call was about (None for
        ``auth.test`` and ``users.lookupByEmail``) and the success body."""
        if method == "auth.test":
            return None, self._auth_test(user, token)
        if method == "users.lookupByEmail":
            return None, self._lookup(token, args)
        if method == "users.list":
            return None, self._list(token, args)
        if method == "users.profile.get":
            target = self._target(args.get("user"), user)
            return target.id, {"profile": self.profile(target, token)}
        if method == "users.profile.set":
            return self._profile_set(user, token, args)
        if method == "dnd.info":
            return self._dnd_info(user, args)
        if method == "dnd.setSnooze":
            return user.id, self._set_snooze(user, args)
        return user.id, self._end_snooze(user)

    def _auth_test(self, user: Account, token: IssuedToken) -> dict[str, Any]:
        body: dict[str, Any] = {
            "url": f"https://{self.team_id.lower()}.slack.com/",
            "team": self.team,
            "user": user.name,
            "team_id": self.team_id,
            "user_id": user.id,
            "is_enterprise_install": False,
        }
        if token.bot:
            body["bot_id"] = f"B{user.id[1:]}"
        return body

    def _lookup(self, token: IssuedToken, args: Mapping[str, Any]) -> dict[str, Any]:
        email = str(args.get("email") or "").strip().lower()
        if not email:
            raise ApiError(
                "invalid_arguments",
                response_metadata={"messages": ["[ERROR] missing required field: email"]},
            )
        for user in self.accounts.values():
            if user.email == email and not user.bot:
                return {"user": self._user_object(user, token)}
        raise ApiError("users_not_found")

    def _list(self, token: IssuedToken, args: Mapping[str, Any]) -> dict[str, Any]:
        """``users.list``: every account (bots, deactivated and invited
        included), ``limit`` at a time (at most 1,000; without one, all of a
        team up to 1,000, else ``limit_required``), paged by an opaque
        ``cursor`` in ``response_metadata.next_cursor`` ("" on the last page)."""
        accounts = list(self.accounts.values())
        try:
            limit = int(args.get("limit") or 0)
        except (TypeError, ValueError):
            raise ApiError("invalid_arguments") from None
        if limit <= 0:
            if len(accounts) > _LIST_MAX:
                raise ApiError("limit_required")
            limit = _LIST_MAX
        limit = min(limit, _LIST_MAX)
        start = 0
        cursor = args.get("cursor")
        if cursor:
            try:
                kind, _, number = (
                    base64.b64decode(str(cursor), validate=True).decode().partition(":")
                )
                start = int(number)
            except (ValueError, UnicodeDecodeError):
                raise ApiError("invalid_cursor") from None
            if kind != "user" or not 0 < start <= len(accounts):
                raise ApiError("invalid_cursor")
        page = accounts[start : start + limit]
        end = start + len(page)
        next_cursor = (
            base64.b64encode(f"user:{end}".encode()).decode() if end < len(accounts) else ""
        )
        return {
            "members": [self._user_object(user, token) for user in page],
            "cache_ts": int(self.now()),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _target(self, requested: Any, caller: Account) -> Account:
        if requested in (None, ""):
            return caller
        found = self.accounts.get(str(requested))
        if found is None:
            raise ApiError("user_not_found")
        return found

    def _profile_set(
        self, caller: Account, token: IssuedToken, args: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        target = self._target(args.get("user"), caller)
        if target is not caller:
            if RANK[caller.role] < RANK["admin"]:
                raise ApiError("not_admin", target.id)
            if not self.paid:
                raise ApiError("paid_only", target.id)
            if target.deleted:
                raise ApiError("user_not_found", target.id)
            if RANK[target.role] > 0 and caller.role != "primary_owner":
                raise ApiError("cannot_update_admin_user", target.id)
        update = _profile_update(args, target.id)
        now = self.now()
        current = self.status(target, now)
        new_status = self._new_status(current, update, target.id)
        wait = self.budgets.spend_profile(token.id, target.id, now)
        if wait is not None:
            raise ApiError("ratelimited", target.id, retry_after=wait)
        target.status = new_status
        for key, value in update.items():
            if key in _EDITABLE and not key.startswith("status_"):
                target.extra[key] = str(value)
        return target.id, {"profile": self.profile(target, token)}

    def _new_status(self, current: Status, update: Mapping[str, Any], target: str) -> Status:
        touches = "status_text" in update or "status_emoji" in update
        text = update.get("status_text", current.text)
        emoji = update.get("status_emoji", current.emoji)
        if not isinstance(text, str) or not isinstance(emoji, str):
            raise ApiError("invalid_profile", target)
        if len(text) > _TEXT_MAX:
            raise ApiError("too_long", target)
        if emoji and not _emoji_ok(emoji, self.emoji):
            raise ApiError("invalid_emoji_not_allowed", target)
        if update.get("status_text") == "" and "status_emoji" not in update and current.emoji:
            raise ApiError("must_clear_both_status_text_and_status_emoji", target)
        if "status_expiration" in update:
            expiration = _whole_seconds(update["status_expiration"], target)
        else:
            # "When 0 or omitted, the status does not expire."
            expiration = 0 if touches else current.expiration
        if not text and not emoji:
            return Status()
        return Status(text, emoji, expiration)

    def _dnd_info(self, caller: Account, args: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        target = self._target(args.get("user"), caller)
        body: dict[str, Any] = {
            "dnd_enabled": False,
            "next_dnd_start_ts": 1,
            "next_dnd_end_ts": 1,
        }
        if target is caller:
            body.update(self._snooze_fields(caller))
        return target.id, body

    def _snooze_fields(self, user: Account) -> dict[str, Any]:
        now = self.now()
        end = self.snooze_end(user, now)
        fields: dict[str, Any] = {"snooze_enabled": end is not None}
        if end is not None:
            fields["snooze_endtime"] = end
            fields["snooze_remaining"] = max(0, int(end - now))
        fields["snooze_is_indefinite"] = False
        return fields

    def _set_snooze(self, caller: Account, args: Mapping[str, Any]) -> dict[str, Any]:
        raw = args.get("num_minutes")
        if raw in (None, ""):
            raise ApiError("missing_duration", caller.id)
        try:
            minutes = int(str(raw))
        except ValueError:
            raise ApiError("invalid_arguments", caller.id) from None
        if minutes <= 0:
            raise ApiError("invalid_arguments", caller.id)
        if minutes > self.max_snooze:
            raise ApiError("too_long", caller.id)
        caller.snooze_end = int(self.now()) + minutes * 60
        return self._snooze_fields(caller)

    def _end_snooze(self, caller: Account) -> dict[str, Any]:
        if self.snooze_end(caller, self.now()) is None:
            raise ApiError("snooze_not_active", caller.id)
        caller.snooze_end = None
        return {
            "dnd_enabled": False,
            "next_dnd_start_ts": 1,
            "next_dnd_end_ts": 1,
            "snooze_enabled": False,
        }

    def status(self, user: Account, now: float) -> Status:
        """``user``'s status at ``now``: an expired one is cleared (when
        expirations fire)."""
        status = user.status
        if self.expirations_fire and status.expiration and now >= status.expiration:
            user.status = Status()
        return user.status

    def snooze_end(self, user: Account, now: float) -> int | None:
        """When ``user``'s snooze ends (Unix s); None when not snoozing."""
        if user.snooze_end is not None and now >= user.snooze_end:
            user.snooze_end = None
        return user.snooze_end

    def profile(self, user: Account, token: IssuedToken) -> dict[str, Any]:
        """``user``'s profile object as ``token`` may see it."""
        status = self.status(user, self.now())
        first, _, last = user.real_name.partition(" ")
        profile: dict[str, Any] = {
            "title": "",
            "phone": "",
            "real_name": user.real_name,
            "real_name_normalized": user.real_name,
            "display_name": user.name,
            "display_name_normalized": user.name,
            "first_name": first,
            "last_name": last,
            "status_text": status.text,
            "status_emoji": status.emoji,
            "status_expiration": status.expiration,
            "avatar_hash": "g0000000000",
            "team": self.team_id,
        }
        profile.update(user.extra)
        if "users:read.email" in token.scopes:
            # The e-mail field is shown only with users:read.email.
            profile["email"] = user.email
        return profile

    def _user_object(self, user: Account, token: IssuedToken) -> dict[str, Any]:
        return {
            "id": user.id,
            "team_id": self.team_id,
            "name": user.name,
            "deleted": user.deleted,
            "real_name": user.real_name,
            "is_admin": RANK[user.role] >= RANK["admin"],
            "is_owner": RANK[user.role] >= RANK["owner"],
            "is_primary_owner": user.role == "primary_owner",
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": user.bot,
            "profile": self.profile(user, token),
        }


def _emoji_ok(emoji: str, allowed: frozenset[str] | None) -> bool:
    if len(emoji) < 3 or not emoji.startswith(":") or not emoji.endswith(":"):
        return False
    name = emoji[1:-1].split("::", 1)[0]
    if not name or any(c.isspace() or c == ":" for c in name):
        return False
    return allowed is None or emoji in allowed or name in allowed


def _whole_seconds(value: Any, target: str) -> int:
    if isinstance(value, bool):
        raise ApiError("invalid_profile", target)
    try:
        number = int(str(value))
    except ValueError:
        raise ApiError("invalid_profile", target) from None
    if number < 0:
        raise ApiError("invalid_profile", target)
    return number


def _profile_update(args: Mapping[str, Any], target: str) -> dict[str, Any]:
    """The fields a ``users.profile.set`` call changes: ``profile`` (a JSON
    object, or its text in a form field), else ``name`` + ``value``."""
    profile = args.get("profile")
    if profile is None and args.get("name"):
        return {str(args["name"]): args.get("value", "")}
    if isinstance(profile, str):
        try:
            profile = json.loads(profile)
        except ValueError:
            raise ApiError("invalid_profile", target) from None
    if not isinstance(profile, dict) or len(profile) > _MAX_FIELDS:
        raise ApiError("invalid_profile", target)
    return profile


@dataclass(frozen=True)
class Incoming:
    """One Web API call as read off the wire."""

    args: Mapping[str, Any]
    token: str | None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    """A wire error to answer with instead of calling the method."""

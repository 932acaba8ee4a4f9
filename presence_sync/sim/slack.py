"""Slack Web API simulator: a loopback server for the methods the Slack
targets use, speaking the published contract as ``slack_sdk`` sends it.

Facts and sources: ``/work/shared/reference/slack.md`` (its §1 for methods,
scopes and errors, §2 for rate limits) and Slack's method pages. Methods:
``auth.test``, ``users.lookupByEmail``, ``users.list``, ``users.profile.get``,
``users.profile.set``, ``dnd.info``, ``dnd.setSnooze``, ``dnd.endSnooze``,
under ``{origin}/api/`` (give ``base_url`` to ``slack_sdk``).

``SlackSim`` owns one workspace: people (with roles, e-mail, a custom status
and a DND snooze), tokens (user ``xoxp-`` or bot ``xoxb-``, each with scopes
and an owner), rate-limit windows and the request log. Every public method
is thread-safe (one lock), so tests drive it from any thread while it is
served. This module authenticates, applies budgets, scripted faults and
the log; the methods themselves are in ``slack_api.py``, the budgets in
``slack_limits.py``, the wire (form, JSON and query bodies; the ``/_sim/``
control routes) in ``slack_http.py``, serving and ``presence-sync sim
slack`` in ``slack_serve.py``.

The contract, as simulated:

- Every answer is JSON, HTTP 200 ``{"ok": true, ...}`` or
  ``{"ok": false, "error": ...}``; ``missing_scope`` adds ``needed`` and
  ``provided``. HTTP 429 ``ratelimited`` with ``Retry-After`` (seconds) when
  a budget is spent; 404 ``unknown_method`` for other methods.
- Auth, in this order: no token ``not_authed``; unknown ``invalid_auth``;
  revoked ``token_revoked``; expired (rotation) ``token_expired``; owner
  deactivated ``account_inactive``. The token comes from
  ``Authorization: Bearer`` or a ``token`` form field, as the method pages
  say ("as an HTTP Authorization header or alternatively, as a POST
  parameter"); a ``token`` in the query string or in a JSON body is ignored.
- Budgets over sliding 60-second windows on the simulator's clock, counted
  for every authenticated call: per method for the workspace (Tier 2: 20,
  Tier 3: 50, Tier 4: 100 a minute, the published floors, adjustable), and
  for ``users.profile.set`` per token at most 10 updates a minute to one
  person and 30 distinct people a minute. A call a budget refuses is not
  counted by that budget (a write refused by a per-token rule has still
  spent its slot of the method's budget).
  ``auth.test`` has no budget here.
- ``users.profile.set`` with ``user=`` someone else: ``not_admin`` unless the
  token's user is an admin or owner; ``cannot_update_admin_user`` when the
  target is an admin or owner and the caller is not the primary owner (the
  method page: "Only a primary owner can update the profile of an admin").
- ``status_text`` longer than 100 characters (code points): ``too_long``.
  Setting text or emoji without ``status_expiration`` means 0 (never); an
  empty text and emoji clear the status and its expiration.
- A status whose ``status_expiration`` has passed reads back empty
  (``set_expirations_fire(False)`` simulates the days when they did not).
- ``dnd.setSnooze``/``dnd.endSnooze`` act only on the token's own user (user
  tokens only); ``dnd.info`` shows ``snooze_*`` only when the user asked
  about is the token's own ("All of the snooze_* properties will only be
  visible if the user being queried is also the current user").

Choices where the documentation is silent (say so when a test leans on
them): ``user=`` on a free plan gives ``paid_only``; setting the profile of a
deactivated person gives ``user_not_found``; ``users.lookupByEmail`` finds a
deactivated person (``deleted: true``); an emoji not of the form ``:name:``
(or not in ``emoji=`` when given) gives ``invalid_emoji_not_allowed``;
unknown profile fields are ignored; more than 50 fields or a ``profile``
that is not a JSON object gives ``invalid_profile``; ``status_text: ""``
without ``status_emoji`` while an emoji is set gives
``must_clear_both_status_text_and_status_emoji``; snoozes longer than
``max_snooze_minutes`` (default a day) give ``too_long``; a hung request
(``hang_next``) is answered, and takes effect, after the hang.
"""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from presence_sync.clock import Clock, SystemClock
from presence_sync.sim.slack_api import (
    ALL_USER_SCOPES,
    METHODS,
    RANK,
    Account,
    ApiError,
    Incoming,
    IssuedToken,
    MethodSpec,
    Role,
    Status,
    Workspace,
)
from presence_sync.sim.slack_limits import Budgets

__all__ = [
    "ALL_USER_SCOPES",
    "METHODS",
    "Answer",
    "IssuedToken",
    "Logged",
    "Person",
    "Role",
    "SlackSim",
    "Status",
]


@dataclass(frozen=True)
class Person:
    """A person as the simulator sees them right now (expirations applied)."""

    id: str
    name: str
    email: str
    role: Role
    deleted: bool
    status: Status
    snooze_endtime: int | None
    """Unix seconds when their DND snooze ends; None when not snoozing."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "role": self.role,
            "deleted": self.deleted,
            "status_text": self.status.text,
            "status_emoji": self.status.emoji,
            "status_expiration": self.status.expiration,
            "snooze_endtime": self.snooze_endtime,
        }


@dataclass(frozen=True)
class Logged:
    """One API request as the simulator answered it (control API excluded)."""

    at: float
    """Unix seconds on the simulator's clock."""
    method: str
    token_id: str | None
    user_id: str | None
    """The token's owner, when the token was known."""
    target: str | None
    """The person a profile or DND call was about (their id), when it got that far."""
    http_status: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "token_id": self.token_id,
            "user_id": self.user_id,
            "target": self.target,
            "http_status": self.http_status,
            "error": self.error,
        }


@dataclass(frozen=True)
class Answer:
    """What to send back: HTTP status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Token:
    issued: IssuedToken
    revoked: bool = False
    expired: bool = False


@dataclass
class _Fault:
    error: str
    status: int
    retry_after: int | None


class SlackSim:
    """One simulated Slack workspace. See the module docstring for the contract.

    ``clock`` supplies wall time (statuses, snoozes, rate windows); pass a
    ``ManualClock`` to move time in tests, or call ``advance``. ``paid`` is
    the workspace's plan (``user=`` needs a paid plan). ``tier_limits`` maps
    tier to calls a minute; ``profile_writes_per_person`` and
    ``profiles_per_token`` are the per-token profile rules. ``emoji`` limits
    status emoji to these names (``None``: any well-formed ``:name:``).
    """

    def __init__(
        self,
        *,
        team: str = "Simulated Team",
        team_id: str = "TSIM00001",
        clock: Clock | None = None,
        paid: bool = True,
        tier_limits: Mapping[int, int] | None = None,
        profile_writes_per_person: int = 10,
        profiles_per_token: int = 30,
        max_snooze_minutes: int = 24 * 60,
        emoji: Iterable[str] | None = None,
    ) -> None:
        self.team = team
        self.team_id = team_id
        self._clock: Clock = clock or SystemClock()
        self._offset = 0.0
        self._budgets = Budgets(tier_limits, profile_writes_per_person, profiles_per_token)
        self._lock = threading.RLock()
        self._ws = Workspace(
            team=team,
            team_id=team_id,
            paid=paid,
            now=self.now,
            budgets=self._budgets,
            max_snooze=max_snooze_minutes,
            emoji=frozenset(emoji) if emoji is not None else None,
        )
        self._users = self._ws.accounts
        self._tokens: dict[str, _Token] = {}
        self._by_secret: dict[str, _Token] = {}
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._hangs: dict[str, deque[float]] = defaultdict(deque)
        self._log: list[Logged] = []

    @property
    def paid(self) -> bool:
        """Whether the workspace is on a paid plan (``user=`` needs one)."""
        return self._ws.paid

    def __repr__(self) -> str:
        return f"SlackSim(team_id={self.team_id!r}, people={len(self._users)})"

    # --- time ---------------------------------------------------------------------

    def now(self) -> float:
        """Unix seconds on the simulator's clock (``advance`` included)."""
        with self._lock:
            return self._clock.now().timestamp() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the simulator's time forward (statuses expire, windows slide)."""
        with self._lock:
            self._offset += seconds

    def reset_budgets(self) -> None:
        """Forget every call counted so far: all rate budgets are full again."""
        with self._lock:
            self._budgets.reset()

    def set_expirations_fire(self, on: bool) -> None:
        """``False``: statuses outlive their ``status_expiration``, as on
        Slack's bad days; ``True`` (default): they read back empty after it."""
        with self._lock:
            self._ws.expirations_fire = on

    # --- people and tokens ----------------------------------------------------------

    def add_user(
        self,
        name: str,
        email: str,
        *,
        role: Role = "regular",
        user_id: str | None = None,
        real_name: str | None = None,
    ) -> str:
        """Add a person; returns their id (``USIM00001``, ... unless given)."""
        if role not in RANK:
            raise ValueError(f"role must be one of {sorted(RANK)}, not {role!r}")
        with self._lock:
            uid = user_id or self._free_id("USIM")
            if uid in self._users:
                raise ValueError(f"user {uid} exists already")
            if any(u.email == email.lower() for u in self._users.values()):
                raise ValueError(f"e-mail {email} is taken")
            self._users[uid] = Account(uid, name, email.lower(), role, real_name or name)
            return uid

    def deactivate_user(self, user_id: str) -> None:
        """Deactivate a person: their tokens answer ``account_inactive``."""
        with self._lock:
            self._user(user_id).deleted = True

    def add_token(
        self,
        user_id: str,
        scopes: Iterable[str] = ALL_USER_SCOPES,
        *,
        token_id: str | None = None,
    ) -> IssuedToken:
        """Issue a user token (``xoxp-``) of ``user_id`` with ``scopes``."""
        with self._lock:
            self._user(user_id)
            return self._issue(user_id, frozenset(scopes), token_id, bot=False)

    def add_bot_token(
        self, scopes: Iterable[str] = ("users.profile:read", "users:read.email", "dnd:read")
    ) -> IssuedToken:
        """Issue a bot token (``xoxb-``); its bot user is created with it."""
        with self._lock:
            uid = self._free_id("BSIM")
            self._users[uid] = Account(uid, "presence-bot", f"{uid.lower()}@bots.invalid",
                                     "regular", "presence-bot", bot=True)  # fmt: skip
            return self._issue(uid, frozenset(scopes), None, bot=True)

    def _free_id(self, prefix: str) -> str:
        n = len(self._users) + 1
        while f"{prefix}{n:05d}" in self._users:
            n += 1
        return f"{prefix}{n:05d}"

    def _issue(
        self, user_id: str, scopes: frozenset[str], token_id: str | None, *, bot: bool
    ) -> IssuedToken:
        tid = token_id or f"t{len(self._tokens) + 1}"
        if tid in self._tokens:
            raise ValueError(f"token id {tid} exists already")
        prefix = "xoxb" if bot else "xoxp"
        secret = f"{prefix}-{self.team_id}-{user_id}-{secrets.token_hex(12)}"
        issued = IssuedToken(tid, secret, user_id, scopes, bot)
        token = _Token(issued)
        self._tokens[tid] = token
        self._by_secret[secret] = token
        return issued

    def revoke_token(self, token_id: str) -> None:
        """The token now answers ``token_revoked``."""
        with self._lock:
            self._token(token_id).revoked = True

    def expire_token(self, token_id: str) -> None:
        """The token now answers ``token_expired`` (rotation without refresh)."""
        with self._lock:
            self._token(token_id).expired = True

    # --- what a person does in their own Slack client ----------------------------------

    def set_own_status(self, user_id: str, text: str, emoji: str = "", expiration: int = 0) -> None:
        """The person sets their status themselves (not through the API, so
        it counts against no budget and is not in the request log)."""
        with self._lock:
            user = self._user(user_id)
            user.status = Status(text, emoji, expiration if text or emoji else 0)

    def clear_own_status(self, user_id: str) -> None:
        """The person clears their status themselves."""
        self.set_own_status(user_id, "", "")

    def snooze(self, user_id: str, minutes: int) -> int:
        """The person pauses notifications for ``minutes``; returns the end (Unix s)."""
        with self._lock:
            user = self._user(user_id)
            user.snooze_end = int(self.now()) + minutes * 60
            return user.snooze_end

    def end_snooze(self, user_id: str) -> None:
        """The person resumes notifications."""
        with self._lock:
            self._user(user_id).snooze_end = None

    # --- reading results --------------------------------------------------------------

    def person(self, user_id: str) -> Person:
        """``user_id`` as of now: status (expiration applied) and snooze."""
        with self._lock:
            user = self._user(user_id)
            now = self.now()
            return Person(user.id, user.name, user.email, user.role, user.deleted,
                          self._ws.status(user, now), self._ws.snooze_end(user, now))  # fmt: skip

    def status_of(self, user_id: str) -> Status:
        """The status ``users.profile.get`` would show for ``user_id`` now."""
        return self.person(user_id).status

    def people(self) -> list[Person]:
        """Every person (bots excluded), in the order they were added."""
        with self._lock:
            return [self.person(uid) for uid, u in self._users.items() if not u.bot]

    def requests(self, method: str | None = None) -> tuple[Logged, ...]:
        """The request log, oldest first; only ``method`` when given."""
        with self._lock:
            return tuple(e for e in self._log if method is None or e.method == method)

    def writes_to(self, user_id: str) -> int:
        """Successful ``users.profile.set`` calls that changed ``user_id``."""
        with self._lock:
            return sum(
                1
                for e in self._log
                if e.method == "users.profile.set" and e.ok and e.target == user_id
            )

    # --- scripted trouble --------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        error: str,
        *,
        count: int = 1,
        status: int = 200,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` (``"*"``: any) with
        ``{"ok": false, "error": error}`` and HTTP ``status``; ``retry_after``
        adds that header. ``fail_next(m, "ratelimited")`` is the 200 kind."""
        if method != "*" and method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        with self._lock:
            self._faults[method].extend(_Fault(error, status, retry_after) for _ in range(count))

    def hang_next(self, method: str, seconds: float, *, count: int = 1) -> None:
        """Hold the next ``count`` calls of ``method`` (``"*"``: any) for
        ``seconds`` of real time before answering them."""
        if method != "*" and method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        with self._lock:
            self._hangs[method].extend([seconds] * count)

    def hang_for(self, method: str) -> float:
        """Seconds the next call of ``method`` is to hang (consumes one)."""
        with self._lock:
            for key in (method, "*"):
                if self._hangs[key]:
                    return self._hangs[key].popleft()
            return 0.0

    # --- answering a call ---------------------------------------------------------------

    def handle(self, method: str, incoming: Incoming) -> Answer:
        """Answer one Web API call (``slack_http`` parsed it from the wire)."""
        with self._lock:
            spec = METHODS.get(method)
            token = self._by_secret.get(incoming.token or "")
            issued = token.issued if token is not None else None
            target: str | None = None
            headers: dict[str, str] = {}
            status = 200
            try:
                if spec is None:
                    status = 404
                    raise ApiError("unknown_method")
                fault = self._next_fault(method)
                if fault is not None:
                    status = fault.status
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(fault.retry_after)
                    raise ApiError(fault.error)
                if incoming.error is not None:
                    raise ApiError(incoming.error)
                user, issued = self._authenticate(incoming.token)
                headers["X-OAuth-Scopes"] = ",".join(sorted(issued.scopes))
                headers["X-Accepted-OAuth-Scopes"] = spec.scope or ""
                self._spend(method, spec)
                if spec.user_token_only and issued.bot:
                    # Checked first: no bot scope exists that would allow it.
                    raise ApiError("not_allowed_token_type")
                if spec.scope is not None and spec.scope not in issued.scopes:
                    raise ApiError(
                        "missing_scope",
                        needed=spec.scope,
                        provided=",".join(sorted(issued.scopes)),
                    )
                target, body = self._ws.call(method, user, issued, incoming.args)
                answer = {"ok": True, **body}
                error = None
            except ApiError as exc:
                target = exc.target
                retry = exc.extra.pop("retry_after", None)
                if retry is not None:
                    status = 429
                    headers["Retry-After"] = str(retry)
                answer = {"ok": False, "error": exc.error, **exc.extra}
                error = exc.error
            if incoming.warnings:
                answer["warning"] = ",".join(incoming.warnings)
                answer["response_metadata"] = {"warnings": list(incoming.warnings)}
            self._log.append(
                Logged(
                    self.now(),
                    method,
                    issued.id if issued else None,
                    issued.user_id if issued else None,
                    target,
                    status,
                    error,
                )
            )
            return Answer(status, answer, headers)

    def _next_fault(self, method: str) -> _Fault | None:
        for key in (method, "*"):
            if self._faults[key]:
                return self._faults[key].popleft()
        return None

    def _authenticate(self, secret: str | None) -> tuple[Account, IssuedToken]:
        if not secret:
            raise ApiError("not_authed")
        token = self._by_secret.get(secret)
        if token is None:
            raise ApiError("invalid_auth")
        if token.revoked:
            raise ApiError("token_revoked")
        if token.expired:
            raise ApiError("token_expired")
        user = self._users[token.issued.user_id]
        if user.deleted:
            raise ApiError("account_inactive")
        return user, token.issued

    def _spend(self, method: str, spec: MethodSpec) -> None:
        if spec.tier is None:
            return
        wait = self._budgets.spend_method(method, spec.tier, self.now())
        if wait is not None:
            raise ApiError("ratelimited", retry_after=wait)

    # --- state helpers ------------------------------------------------------------------

    def _user(self, user_id: str) -> Account:
        try:
            return self._users[user_id]
        except KeyError:
            raise KeyError(f"no user {user_id}") from None

    def _token(self, token_id: str) -> _Token:
        try:
            return self._tokens[token_id]
        except KeyError:
            raise KeyError(f"no token {token_id}") from None

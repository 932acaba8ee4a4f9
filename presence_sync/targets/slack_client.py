"""The Slack Web API client shared by ``slack_status`` and ``slack_dnd``.

Why the synchronous ``slack_sdk.WebClient`` in a worker thread, and not
``AsyncWebClient``: the async client needs aiohttp, a second HTTP stack we do
not otherwise ship, while ``WebClient`` runs on the standard library's
urllib and takes an ``ssl.SSLContext``, a ``base_url`` and a timeout. Every
call runs in ``asyncio.to_thread``, so the event loop never blocks; at most
``TargetInfo.concurrency`` calls run at once per target, so the threads stay
few. One client serves every token: ``slack_sdk`` takes ``token=`` per call
and sends it as the ``Authorization`` header. The SDK's own retries are off
(``retry_handlers=[]``): one apply makes each request once and the engine
owns retries, backoff and the lane-wide pause a rate limit asks for.

Errors become ``errors`` types here, once for both targets:

==============================================================  ================================
Slack answers                                                   raised
==============================================================  ================================
``invalid_auth``, ``token_revoked``, ``token_expired``,          ``AuthError`` (what to do);
``not_authed``, ``missing_scope``, ``not_allowed_token_type``    for a person's own token,
                                                                ``PermanentError`` naming them
HTTP 429, or ``ratelimited`` inside an HTTP 200                  ``TransientError(retry_after)``
``user_not_found``, ``account_inactive``,                        ``PermanentError`` naming the
``cannot_update_admin_user``, ``not_admin``, ``paid_only``,      person (the key is parked)
``users_not_found`` and any other ``ok: false``
HTTP 5xx, ``internal_error``, ``fatal_error``,                   ``TransientError``
``service_unavailable``, ``request_timeout``; timeouts and
connection errors
==============================================================  ================================

Tokens never reach a log line, an error message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Person
from presence_sync.net import describe_error, proxy_for, retry_after, tls_context
from presence_sync.ops.logging import kv, printable
from presence_sync.sections import SlackSettings
from presence_sync.targets.base import Memory, TargetEnv

__all__ = [
    "DEFAULT_RATELIMIT_WAIT",
    "ID_MAX_AGE",
    "SlackClient",
    "SlackRefused",
    "Who",
]

log = logging.getLogger(__name__)

# slack_sdk logs every request and answer body at DEBUG: profiles, e-mail
# addresses and status texts, which may carry a caller's number. Its records
# go to a logger of ours that passes warnings only, whatever the log level.
_sdk_log = logging.getLogger(__name__ + ".sdk")
_sdk_log.setLevel(logging.WARNING)

DEFAULT_RATELIMIT_WAIT = 30.0
"""Pause when Slack says ``ratelimited`` without a ``Retry-After`` (the
HTTP 200 case): the reference's 30-60 s, at its short end."""

ID_MAX_AGE = 7 * 24 * 3600.0
"""How long an e-mail → Slack user id lookup is trusted (a week): ids never
change, but a person who left and came back gets a new one."""

ROSTER_AFTER = 20
"""After this many ``users.lookupByEmail`` calls, ids come from one read of
``users.list`` instead (Tier 2, 200 members a page: 50 requests for 10,000
people, where one lookup each, Tier 3 at about 50 a minute, would take over
three hours). Small teams keep their few lookups."""
ROSTER_PAGE = 200
"""Members per ``users.list`` page: Slack recommends no more than 200."""
ROSTER_MAX_AGE = 3600.0
"""A member list older than this is read again on the next miss."""
ROSTER_PAGE_ATTEMPTS = 10
"""Tries per member-list page when Slack says ``ratelimited``."""
ROSTER_RETRY = 60.0
"""After a failed read of the member list, the next try waits this long."""

_AUTH = {
    "invalid_auth": "the token is not valid: check slack.token / user_tokens",
    "not_authed": "no token was sent: check slack.token / user_tokens",
    "token_revoked": "the token was revoked (or the app removed): install the app again "
    "and put the new token in the configuration",
    "token_expired": "the token expired because token rotation is on for the Slack app: "
    "turn rotation off and install the app again (see docs/slack.md)",
    "missing_scope": "the token lacks a scope: give the app the user scopes in docs/slack.md "
    "and install it again",
    "not_allowed_token_type": "a bot token cannot set statuses: use a user token (xoxp-)",
}
_TRANSIENT = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "timeout"}
)
_PERSON = {
    "user_not_found": "Slack has no such user",
    "users_not_found": "Slack has no user with this e-mail address",
    "account_inactive": "the Slack account is deactivated",
    "cannot_update_admin_user": "is a Slack admin or owner, which the admin token may not "
    "change: give them their own token under slack.user_tokens",
    "not_admin": "the token's user is no admin, so it can change only their own profile: "
    "give this person their own token under slack.user_tokens",
    "paid_only": "setting other people's statuses needs a paid Slack plan: give this person "
    "their own token under slack.user_tokens",
}


@dataclass(frozen=True, slots=True)
class Who:
    """How to reach one person: the token to use and, with the admin
    token, the ``user`` argument (None: the token's own user)."""

    token: str
    user: str | None
    own: bool
    cached: bool = False
    """``user`` came from the id cache (it may be stale: ask again once)."""

    def __repr__(self) -> str:
        return f"Who(user={self.user!r}, own={self.own}, cached={self.cached})"


class SlackRefused(PermanentError):
    """Slack refused the request for this person; ``error`` is Slack's code."""

    def __init__(self, message: str, *, error: str, status: int | None = None) -> None:
        self.error = error
        super().__init__(message, status=status)


class SlackClient:
    """One ``WebClient`` for a target, its tokens, and the translation of
    Slack's answers. ``call`` never blocks the event loop."""

    def __init__(self, target: str, settings: SlackSettings, env: TargetEnv) -> None:
        self._target = target
        self._settings = settings
        self._clock = env.clock
        verify = tls_context(env.verify)
        context = verify if isinstance(verify, ssl.SSLContext) else None
        base_url = settings.base_url if settings.base_url.endswith("/") else settings.base_url + "/"
        proxy = proxy_for(base_url)
        self._web = WebClient(
            base_url=base_url,
            proxy=proxy,
            # slack_sdk takes whole seconds in its signature; urllib accepts a float.
            timeout=settings.request_timeout,  # type: ignore[arg-type]
            ssl=context,
            user_agent_prefix=env.user_agent,
            retry_handlers=[],
            logger=_sdk_log,
        )
        # Without a proxy, slack_sdk falls back to $HTTPS_PROXY itself and
        # would ignore NO_PROXY; None lets urllib decide, honouring NO_PROXY.
        self._web.proxy = proxy
        self.timeout = settings.request_timeout
        self.lookups = 0
        """``users.lookupByEmail`` calls so far."""
        self._roster: dict[str, str] | None = None
        """The last complete member list (e-mail → id) and when it was read."""
        self._roster_at = -math.inf
        self._reading: dict[str, str] = {}
        """The members read so far by the read in progress, and its cursor."""
        self._cursor = ""
        self._reader: asyncio.Task[None] | None = None
        self._retry_at = -math.inf
        self._paused = False
        """The read waits out a rate limit: applies look their people up."""
        self._progress = asyncio.Event()
        """Set when the read has one more page or pauses (then replaced)."""

    def __repr__(self) -> str:
        people = len(self._settings.user_tokens)
        admin = "admin token" if self._settings.token is not None else "no admin token"
        return f"<SlackClient {self._target!r} {self._settings.base_url} {admin}, {people} own>"

    @property
    def has_user_tokens(self) -> bool:
        return bool(self._settings.user_tokens)

    def own_token(self, person: Person) -> str | None:
        """The person's own user token, if configured."""
        return self._settings.user_token(person.email.lower())

    async def who(
        self, person: Person, memory: Memory, *, ids: tuple[str, ...], fresh: bool = False
    ) -> Who:
        """How to reach ``person``: their own token when configured, else the
        admin token with their user id: from ``person.ids`` under one of
        ``ids`` (target names), else ``users.lookupByEmail`` cached through
        ``memory`` for ``ID_MAX_AGE`` (``fresh``: asked again). Raises like
        ``call``, and ``PermanentError`` when neither token exists for them."""
        own = self.own_token(person)
        if own is not None:
            return Who(token=own, user=None, own=True)
        admin = self._settings.token
        if admin is None:
            raise PermanentError(
                f"slack {self._target}: no token for {person.email}: add them to "
                "slack.user_tokens, or set slack.token (an admin's user token)"
            )
        token = admin.get_secret_value()
        for name in ids:
            configured = person.ids.get(name)
            if configured:
                return Who(token=token, user=configured, own=False)
        cached = None if fresh else memory.cached_id("user", person.email.lower(), ID_MAX_AGE)
        if cached is not None:
            return Who(token=token, user=cached, own=False, cached=True)
        if not fresh and self.lookups >= ROSTER_AFTER:
            listed = await self._listed(token, person.email.lower())
            if listed is not None:
                memory.cache_id("user", person.email.lower(), listed)
                return Who(token=token, user=listed, own=False)
        self.lookups += 1
        answer = await self.call("users.lookupByEmail", token, person, email=person.email)
        user = answer.get("user")
        user_id = user.get("id") if isinstance(user, Mapping) else None
        if not isinstance(user_id, str) or not user_id:
            raise TransientError(f"slack {self._target}: users.lookupByEmail gave no user id")
        memory.cache_id("user", person.email.lower(), user_id)
        return Who(token=token, user=user_id, own=False)

    async def _listed(self, token: str, email: str) -> str | None:
        """``email``'s Slack id from the member list, or None (look it up).

        The list is read by a task of this client's own, never by an apply:
        an apply's timeout cancels the apply, not the read, and the pages
        read so far stay for the next one. An apply whose person is not
        listed yet waits for the page being read, if any (one request, so
        at most ``slack.request_timeout``), then goes on to
        ``users.lookupByEmail``; while the read waits out Slack's rate limit
        (Tier 2, about 20 pages a minute: 10,000 people take minutes), it
        does not wait at all."""
        now = self._clock.monotonic()
        roster = self._roster
        if roster is not None and (email in roster or now - self._roster_at < ROSTER_MAX_AGE):
            return roster.get(email)
        reader = self._start_reading(token, now)
        if reader is not None and not self._paused and email not in self._reading:
            await self._next_page(reader)
        found = self._reading.get(email)
        if found is None and self._roster is not None:
            found = self._roster.get(email)
        return found

    def _start_reading(self, token: str, now: float) -> asyncio.Task[None] | None:
        """The task reading the member list, started if none runs; None
        while a failed read waits ``ROSTER_RETRY`` before the next try."""
        if self._reader is not None and not self._reader.done():
            return self._reader
        if now < self._retry_at:
            return None
        self._reader = asyncio.get_running_loop().create_task(
            self._read_roster(token), name=f"slack {self._target}: member list"
        )
        return self._reader

    async def _next_page(self, reader: asyncio.Task[None]) -> None:
        """Until ``reader`` has read one more page, pauses for a rate limit
        or ends; cancelling the caller leaves ``reader`` running."""
        waiter = asyncio.get_running_loop().create_task(self._progress.wait())
        try:
            await asyncio.wait((reader, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _progressed(self) -> None:
        """Wake the applies waiting for the next page."""
        self._progress.set()
        self._progress = asyncio.Event()

    async def _read_roster(self, token: str) -> None:
        """Read Slack's members (e-mail → id) from ``users.list``, going on
        from the last page read if an earlier read stopped. The list is
        empty when Slack does not show e-mail addresses to this token (no
        ``users:read.email``): lookups go on one by one."""
        anyone = Person(key="", email="the member list", extension="")
        try:
            while True:
                args: dict[str, Any] = {"limit": ROSTER_PAGE}
                if self._cursor:
                    args["cursor"] = self._cursor
                data = await self._page(token, anyone, args)
                listed = data.get("members")
                for member in listed if isinstance(listed, list) else ():
                    if not isinstance(member, Mapping) or member.get("is_bot"):
                        continue
                    profile = member.get("profile")
                    email = profile.get("email") if isinstance(profile, Mapping) else None
                    uid = member.get("id")
                    if isinstance(email, str) and email and isinstance(uid, str):
                        self._reading[email.lower()] = uid
                meta = data.get("response_metadata")
                cursor = str(meta.get("next_cursor") or "") if isinstance(meta, Mapping) else ""
                self._cursor = cursor
                self._progressed()
                if not cursor:
                    break
        except Exception as exc:
            # Slack's refusals (AuthError, PermanentError, TransientError),
            # and anything else: no apply awaits this task, so it is logged here.
            log.warning(
                "%s; reading the member list failed, so people are looked up one by one",
                exc,
                extra=kv(target=self._target, error=str(exc)),
            )
            if not isinstance(exc, TransientError):
                # A refused page (an expired cursor, say): start over next time.
                self._reading, self._cursor = {}, ""
            # Tried again in a minute; until then, one by one.
            self._retry_at = self._clock.monotonic() + ROSTER_RETRY
            return
        self._roster, self._roster_at = self._reading, self._clock.monotonic()
        self._reading, self._cursor = {}, ""

    async def _page(self, token: str, anyone: Person, args: Mapping[str, Any]) -> Mapping[str, Any]:
        """One ``users.list`` page; Tier 2 allows about 20 a minute, so a
        ``ratelimited`` answer waits the time Slack asks and tries again."""
        for _ in range(ROSTER_PAGE_ATTEMPTS - 1):
            try:
                return await self.call("users.list", token, anyone, **args)
            except TransientError as exc:
                if exc.retry_after is None:
                    raise
                self._paused = True
                self._progressed()
                try:
                    await self._clock.sleep(exc.retry_after)
                finally:
                    self._paused = False
        return await self.call("users.list", token, anyone, **args)

    async def call(
        self, method: str, token: str, person: Person, *, own: bool = False, **args: Any
    ) -> Mapping[str, Any]:
        """``method`` with ``args`` (JSON body) as ``token``; the answer's
        data when ``ok``. ``own``: ``token`` is the person's own (from
        ``slack.user_tokens``), so its rejection concerns them alone. Raises
        as in the module table."""
        try:
            response = await asyncio.to_thread(
                self._web.api_call, method, json={**args, "token": token}
            )
        except SlackApiError as exc:
            raise self._failure(method, person, exc, own=own) from None
        except (TimeoutError, OSError) as exc:
            # urllib's URLError is an OSError; a read timeout is TimeoutError.
            raise TransientError(
                f"slack {self._target}: {method}: {describe_error(exc, self._web.base_url)}"
            ) from None
        except ValueError as exc:
            # A body that is not JSON (a proxy's error page).
            raise TransientError(f"slack {self._target}: {method}: unreadable answer") from exc
        data = response.data
        if not isinstance(data, Mapping):
            raise TransientError(f"slack {self._target}: {method}: unreadable answer")
        return data

    def _failure(
        self, method: str, person: Person, exc: SlackApiError, *, own: bool
    ) -> AuthError | TransientError | PermanentError:
        response = exc.response
        status = response.status_code
        data = response.data if isinstance(response.data, Mapping) else {}
        # Slack's codes are short words; anything else in the field is shown
        # escaped, since it ends up in log lines and the status.
        error = printable(str(data.get("error") or ""))
        what = f"slack {self._target}: {method}"
        if status == 429 or error == "ratelimited":
            header = _header(response.headers, "Retry-After")
            wait = retry_after(header, self._now())
            return TransientError(
                f"{what}: ratelimited",
                retry_after=wait if wait is not None else DEFAULT_RATELIMIT_WAIT,
                status=status,
            )
        if error in _AUTH and own:
            # One person's token (revoked, say) must not stop everyone else.
            return PermanentError(
                f"{what}: the own token of {person.email} in slack.user_tokens was refused: "
                f"{error}: {_AUTH[error]}",
                status=status,
            )
        if error in _AUTH:
            return AuthError(f"{what}: {error}: {_AUTH[error]}")
        if status >= 500 or error in _TRANSIENT:
            return TransientError(f"{what}: {error or 'HTTP ' + str(status)}", status=status)
        hint = _PERSON.get(error, "Slack refused it")
        reason = error or f"HTTP {status}"
        return SlackRefused(
            f"{what} for {person.email}: {reason}: {hint}", error=error, status=status
        )

    def _now(self) -> datetime:
        return self._clock.now()

    def close(self) -> None:
        """Stop reading the member list (``aclose`` also waits for it)."""
        if self._reader is not None:
            self._reader.cancel()

    async def aclose(self) -> None:
        """Stop reading the member list. Nothing else to release: urllib
        keeps no pool."""
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if str(key).lower() == name.lower():
            if isinstance(value, list | tuple):
                return str(value[0]) if value else None
            return str(value)
    return None

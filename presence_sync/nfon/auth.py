"""NFON CTI authentication: login, refresh before expiry, one retry on 401.

``NfonAuth`` is an ``httpx.Auth``: give it to an ``AsyncClient`` and every
request carries a valid access token. Token requests themselves go through a
separate client (``token_client``, sent without auth) so that they get short
timeouts even when the request being authorised is a long-lived stream.

Token lifecycle:

- ``POST /login`` with the API username and password returns an access and a
  refresh token. The access token's lifetime is read from its JWT ``exp``
  (and ``iat``) claims without verifying the signature; without them 300 s is
  assumed, as NFON documents.
- Before the access token expires (at 80 % of its lifetime, or 60 s before
  the end, whichever is later) it is renewed with ``PUT /login`` and the
  refresh token. A refresh that fails for any reason falls back to a login.
- A 401 on a request drops the token it used; the request is retried once with
  a fresh one.
- A login refused by NFON (4xx) raises ``CredentialsRejected`` and is
  remembered: no new login is attempted before a backoff deadline (30 s,
  doubling up to 15 minutes); until then every request fails fast with the
  same error. Each refused attempt is logged once at ERROR.

One ``asyncio.Lock`` serialises renewal, so any number of concurrent requests
causes one login or refresh.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Generator
from datetime import datetime
from typing import Any

import httpx
import jwt
from pydantic import SecretStr

from presence_sync.clock import Clock, SystemClock
from presence_sync.errors import AuthError, TransientError
from presence_sync.net import describe_error
from presence_sync.nfon.schema import FrameError, tokens_from_wire
from presence_sync.ops import metrics
from presence_sync.ops.logging import kv

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "CredentialsRejected",
    "NfonAuth",
    "jwt_claims",
    "jwt_lifetime",
]

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 300.0
"""NFON's documented access-token lifetime, used when a token has no ``exp``."""

LOGIN_PATH = "login"
_NO_AUTH = httpx.Auth()  # token requests must not run through NfonAuth itself


class CredentialsRejected(AuthError):
    """NFON refused the API username/password (``POST /login`` answered 4xx).

    ``retry_in`` is how many seconds remain before another login will be
    attempted; requests made before then raise this error again at once.
    """

    def __init__(self, message: str, *, retry_in: float, status: int | None = None) -> None:
        self.retry_in = retry_in
        self.status = status
        super().__init__(message)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, decoded but not verified; ``None`` when the
    token is not a readable JWT (three base64url parts, a JSON object as
    payload).

    Not verifying is deliberate: the claims only tell us when to renew, and
    NFON itself judges every token we send. No claim is checked either, so
    an expired token still reports its ``exp``.
    """
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except (jwt.InvalidTokenError, RecursionError):
        return None
    return claims


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def jwt_lifetime(token: str, now: float) -> float | None:
    """Seconds the token is valid for from when it was issued, from its
    claims: ``exp - iat`` when both are there (immune to clock skew), else
    ``exp - now`` (``now`` in Unix seconds). ``None`` when unknown or not
    positive."""
    claims = jwt_claims(token)
    if claims is None:
        return None
    exp = _number(claims.get("exp"))
    if exp is None:
        return None
    iat = _number(claims.get("iat"))
    lifetime = exp - (iat if iat is not None else now)
    return lifetime if lifetime > 0 else None


def _request_id(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("x-request-id")
    return value


class NfonAuth(httpx.Auth):
    """Bearer authentication for the NFON CTI API (see the module docstring).

    ``token_client`` sends ``POST``/``PUT /login`` relative to its base URL,
    with auth disabled; it should carry the User-Agent and short timeouts.
    The flow raises ``CredentialsRejected`` when NFON refuses the credentials
    (or while backing off after that) and ``TransientError`` when a login is
    needed but NFON cannot be reached or answers 5xx.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        token_client: httpx.AsyncClient,
        username: str,
        password: str | SecretStr,
        *,
        clock: Clock | None = None,
        rejected_backoff: float = 30.0,
        rejected_backoff_max: float = 900.0,
    ) -> None:
        self._http = token_client
        self._username = username
        self._password = password if isinstance(password, SecretStr) else SecretStr(password)
        self._clock: Clock = clock or SystemClock()
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._renew_at = 0.0
        self._expires_at = 0.0
        self._refresh_until = 0.0
        self._backoff_first = rejected_backoff
        self._backoff_max = rejected_backoff_max
        self._backoff = 0.0
        self._rejected_until: float | None = None
        self._rejected_status: int | None = None
        self.refused_since: datetime | None = None
        """Wall-clock time of the first refused login since the last good one."""
        for kind in ("login", "refresh"):
            for result in ("ok", "rejected", "error"):
                metrics.NFON_LOGINS.labels(kind=kind, result=result)

    def __repr__(self) -> str:
        return f"NfonAuth(username={self._username!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("NfonAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # The token was refused before we thought it expired (revoked, server
        # restarted, clocks disagree): drop it and try once more with a new one.
        self.invalidate(token)
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current access token (a
        concurrent request may already have replaced it)."""
        if token == self._access:
            self._access = None

    async def token(self) -> str:
        """A valid access token, renewing or logging in first when needed.
        Raises ``CredentialsRejected`` or ``TransientError``."""
        async with self._lock:
            now = self._clock.monotonic()
            if self._access is not None and now < self._renew_at:
                return self._access
            if self._refresh is not None and now < self._refresh_until:
                token = await self._renew()
                if token is not None:
                    return token
            try:
                return await self._login()
            except TransientError:
                # NFON is unreachable; a token that has not quite expired yet
                # is still better than none.
                if self._access is not None and self._clock.monotonic() < self._expires_at:
                    return self._access
                raise

    async def _renew(self) -> str | None:
        """``PUT /login``; the new access token, or ``None`` to fall back to a login."""
        assert self._refresh is not None
        try:
            response = await self._http.put(
                LOGIN_PATH, headers={"Authorization": f"Bearer {self._refresh}"}, auth=_NO_AUTH
            )
            await response.aread()
        except httpx.HTTPError as exc:
            metrics.NFON_LOGINS.labels(kind="refresh", result="error").inc()
            log.info(
                "nfon token refresh failed; logging in",
                extra=kv(error=describe_error(exc, self._http.base_url)),
            )
            return None
        if response.status_code == 200:
            try:
                return self._store(response.json())
            except (ValueError, FrameError):
                pass
        result = "rejected" if 400 <= response.status_code < 500 else "error"
        metrics.NFON_LOGINS.labels(kind="refresh", result=result).inc()
        self._refresh = None
        log.info(
            "nfon token refresh refused; logging in",
            extra=kv(status=response.status_code, request_id=_request_id(response)),
        )
        return None

    async def _login(self) -> str:
        now = self._clock.monotonic()
        if self._rejected_until is not None and now < self._rejected_until:
            raise CredentialsRejected(
                "NFON rejected the API credentials; not retrying yet",
                retry_in=self._rejected_until - now,
                status=self._rejected_status,
            )
        body = {"username": self._username, "password": self._password.get_secret_value()}
        try:
            response = await self._http.post(LOGIN_PATH, json=body, auth=_NO_AUTH)
            await response.aread()
        except httpx.HTTPError as exc:
            metrics.NFON_LOGINS.labels(kind="login", result="error").inc()
            raise TransientError(
                f"NFON login failed: {describe_error(exc, self._http.base_url)}"
            ) from exc
        request_id = _request_id(response)
        status = response.status_code
        if status == 200:
            try:
                token = self._store(response.json())
            except (ValueError, FrameError) as exc:
                metrics.NFON_LOGINS.labels(kind="login", result="error").inc()
                raise TransientError(
                    "NFON login answered without tokens", status=status, request_id=request_id
                ) from exc
            metrics.NFON_LOGINS.labels(kind="login", result="ok").inc()
            if self._rejected_until is not None:
                log.info("nfon accepts the API credentials again")
            else:
                log.info("nfon login ok", extra=kv(user=self._username))
            self._rejected_until = None
            self._rejected_status = None
            self.refused_since = None
            self._backoff = 0.0
            return token
        if 400 <= status < 500 and status not in (408, 429):
            metrics.NFON_LOGINS.labels(kind="login", result="rejected").inc()
            self._backoff = min(self._backoff * 2 or self._backoff_first, self._backoff_max)
            self._rejected_until = self._clock.monotonic() + self._backoff
            self._rejected_status = status
            self.refused_since = self.refused_since or self._clock.now()
            self._access = self._refresh = None
            log.error(
                "NFON rejected the API credentials; check nfon.username and nfon.password",
                extra=kv(
                    event="nfon_login_refused",
                    user=self._username,
                    status=status,
                    retry_in=self._backoff,
                ),
            )
            raise CredentialsRejected(
                f"NFON rejected the API credentials (HTTP {status})",
                retry_in=self._backoff,
                status=status,
            )
        metrics.NFON_LOGINS.labels(kind="login", result="error").inc()
        raise TransientError(
            f"NFON login failed: HTTP {status}", status=status, request_id=request_id
        )

    def _store(self, reply: object) -> str:
        access, refresh = tokens_from_wire(reply)
        now = self._clock.monotonic()
        wall = self._clock.now().timestamp()
        lifetime = jwt_lifetime(access, wall) or DEFAULT_TOKEN_LIFETIME
        self._access = access
        self._expires_at = now + lifetime
        self._renew_at = now + max(lifetime * 0.8, lifetime - 60.0)
        self._refresh = refresh
        if refresh is not None:
            refresh_lifetime = jwt_lifetime(refresh, wall)
            self._refresh_until = (
                math.inf if refresh_lifetime is None else now + refresh_lifetime * 0.95
            )
        return access

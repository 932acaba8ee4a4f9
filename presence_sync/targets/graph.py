"""Microsoft Graph access shared by the Microsoft targets (``teams_presence``,
``teams_status_message``, ``outlook_calendar``).

``GraphClient`` owns what they have in common: the app's token, the HTTP
client, the translation of Graph's answers into ``errors``, and who is who
(person → Entra object id). Tokens come from one
``msal.ConfidentialClientApplication`` per process per (authority, tenant,
client) — ``credential()`` — acquired in a worker thread so the event loop
never waits on the token endpoint, and kept until shortly before they expire.

=========================================  ======================================
Graph / Entra answers                      raised
=========================================  ======================================
2xx                                        nothing
401                                        one new token and one retry; then
                                           ``AuthError`` naming tenant and permission
403                                        ``AuthError`` naming the permission to grant
429, 503 (``Retry-After`` honoured)        ``TransientError(retry_after=...)``
408, other 5xx, timeout, connection error  ``TransientError``
other 4xx                                  ``PermanentError`` with Graph's code
token endpoint: 5xx, unreachable           ``TransientError``
token endpoint: refused (AADSTS…)          ``AuthError`` with Entra's description
=========================================  ======================================
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

import httpx
import msal
import requests
from pydantic import Field

from presence_sync.clock import Clock
from presence_sync.entra import ENTRA_ID
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Person
from presence_sync.net import describe_error, proxy_for, retry_after, tls_context
from presence_sync.ops.logging import printable
from presence_sync.sections import Duration, MicrosoftSettings
from presence_sync.targets.base import Memory, TargetEnv, TargetOptions

__all__ = [
    "ID_MAX_AGE",
    "MICROSOFT_KINDS",
    "PRESENCE_REQUESTS_PER_SECOND",
    "TOKEN_MARGIN",
    "Credential",
    "GraphClient",
    "GraphOptions",
    "credential",
    "graph_datetime",
    "iso_duration",
    "parse_iso_duration",
    "release",
]

log = logging.getLogger(__name__)

MICROSOFT_KINDS: Final = ("teams_presence", "teams_status_message", "outlook_calendar")
"""Kinds whose ``people[].ids`` entry is the person's Entra object id: one id
given for any of them serves all (it is the same user)."""

PRESENCE_REQUESTS_PER_SECOND: Final = 1500 / 30
"""Graph's presence budget: 1,500 requests per 30 s per app per tenant, shared
by every endpoint under ``/presence`` and every target that calls them."""

TOKEN_MARGIN: Final = 300.0
"""A token is replaced this many seconds before it expires, so a request never
leaves with a token that runs out on the way."""

ID_MAX_AGE: Final = 86400.0
"""How long a looked-up object id is trusted before it is looked up again."""

# Authority hosts MSAL knows; for any other (a simulator, a private proxy)
# instance discovery must be off or MSAL refuses the authority.
_KNOWN_AUTHORITIES: Final = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
    }
)
_ID_NAMESPACE: Final = "entra"


def parse_iso_duration(text: str) -> float:
    """Seconds from an ISO-8601 time duration such as ``PT15M`` or ``PT1H30M``
    (the form Graph's ``expirationDuration`` takes). Raises ``ValueError``."""
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text.strip().upper())
    if match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not an ISO-8601 duration like PT15M or PT1H30M")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def iso_duration(seconds: float) -> str:
    """``900`` → ``PT15M``; whole seconds, as Graph expects."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = "PT"
    if hours:
        text += f"{hours}H"
    if minutes:
        text += f"{minutes}M"
    if secs or text == "PT":
        text += f"{secs}S"
    return text


def graph_datetime(moment: datetime) -> dict[str, str]:
    """A Graph ``dateTimeTimeZone`` in UTC: the ``dateTime`` carries no offset."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return {"dateTime": utc.isoformat(timespec="seconds"), "timeZone": "UTC"}


# --- the app's token ------------------------------------------------------------------


@dataclass
class _Token:
    value: str
    expires: datetime


class Credential:
    """The app registration's token source: one MSAL application and the
    current token, shared by every target of one (authority, tenant, client).

    MSAL is built lazily, in the worker thread of the first ``token()``:
    building it fetches the authority's OpenID configuration over the network.
    """

    def __init__(self, settings: MicrosoftSettings, verify: str | bool) -> None:
        self.settings = settings
        self.verify = verify
        self.tenant = settings.tenant_id
        self.client_id = settings.client_id
        self.scope = settings.graph_url.rstrip("/") + "/.default"
        self._authority = f"{settings.authority.rstrip('/')}/{settings.tenant_id}"
        self._app: Any = None
        self._session: requests.Session | None = None
        self._token: _Token | None = None
        self.users = 0
        # A thread lock, not an asyncio one: acquisition runs in worker
        # threads, and targets on different loops (tests) may share this.
        self._lock = threading.Lock()

    def _client_credential(self) -> Any:
        settings = self.settings
        if settings.client_secret is not None:
            return settings.client_secret.get_secret_value()
        assert settings.certificate_file is not None
        with open(settings.certificate_file, encoding="ascii") as pem:
            private_key = pem.read()
        return {"private_key": private_key, "thumbprint": settings.certificate_thumbprint}

    def _build(self) -> Any:
        # requests lets $REQUESTS_CA_BUNDLE override a session's verify unless
        # trust_env is off; tls.ca_bundle must win, as it does for httpx.
        session = requests.Session()
        session.trust_env = False
        session.verify = self.verify
        # With trust_env off, requests no longer reads HTTPS_PROXY either: the
        # proxy is set explicitly, by the rule every other client follows.
        proxy = proxy_for(self._authority)
        if proxy is not None:
            session.proxies = {"https": proxy, "http": proxy}
        self._session = session
        host = (urlsplit(self._authority).hostname or "").lower()
        return msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=self._client_credential(),
            authority=self._authority,
            http_client=session,
            instance_discovery=host in _KNOWN_AUTHORITIES,
            timeout=10,
        )

    def _acquire(self, clock: Clock, stale: str | None) -> str:
        """Blocking: the current token, or a new one when it is near expiry or
        is ``stale`` (a token Graph just refused)."""
        with self._lock:
            now = clock.now()
            token = self._token
            if (
                token is not None
                and token.value != stale
                and token.expires - timedelta(seconds=TOKEN_MARGIN) > now
            ):
                return token.value
            try:
                if self._app is None:
                    self._app = self._build()
                # MSAL keeps its own cache on its own clock: drop it so a
                # refused or expiring token is really replaced.
                self._app.remove_tokens_for_client()
                result = self._app.acquire_token_for_client(scopes=[self.scope])
            except msal.exceptions.MsalServiceError as exc:
                raise TransientError(
                    f"{self._where()}: token endpoint failed: {printable(str(exc))}"
                ) from exc
            except requests.RequestException as exc:
                raise TransientError(
                    f"{self._where()}: token endpoint unreachable: "
                    f"{describe_error(exc, self._authority)}"
                ) from exc
            except ValueError as exc:
                # MSAL's answer to an authority it cannot read (unknown tenant).
                raise AuthError(f"{self._where()}: {exc}") from exc
            if "access_token" not in result:
                description = str(result.get("error_description") or result.get("error"))
                raise AuthError(
                    f"{self._where()}: Entra refused the app's credentials: "
                    f"{printable((description.splitlines() or [''])[0])}"
                )
            lifetime = float(result.get("expires_in") or 3600)
            self._token = _Token(result["access_token"], now + timedelta(seconds=lifetime))
            return self._token.value

    def _where(self) -> str:
        return f"Microsoft tenant {self.tenant}, app {self.client_id}"

    def close(self) -> None:
        """Close MSAL's connections; the next ``token()`` builds MSAL again."""
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._session = None
            self._app = None

    async def token(self, clock: Clock, stale: str | None = None) -> str:
        """A valid access token for Graph, fetched off the event loop."""
        token = self._token
        if (
            token is not None
            and token.value != stale
            and token.expires - timedelta(seconds=TOKEN_MARGIN) > clock.now()
        ):
            return token.value
        return await asyncio.to_thread(self._acquire, clock, stale)


_CREDENTIALS: dict[tuple[str, str, str], Credential] = {}
_CREDENTIALS_LOCK = threading.Lock()


def _key(settings: MicrosoftSettings) -> tuple[str, str, str]:
    return (settings.authority.rstrip("/"), settings.tenant_id, settings.client_id)


def credential(settings: MicrosoftSettings, verify: str | bool) -> Credential:
    """The process's one ``Credential`` for ``settings``' (authority, tenant,
    client), counted as used until ``release``; a new one replaces it when
    the secret, certificate or trust changed (a reloaded configuration)."""
    key = _key(settings)
    with _CREDENTIALS_LOCK:
        known = _CREDENTIALS.get(key)
        if known is None or known.settings != settings or known.verify != verify:
            known = _CREDENTIALS[key] = Credential(settings, verify)
        known.users += 1
        return known


def release(used: Credential) -> None:
    """One user of ``used`` is done; the last one closes it."""
    with _CREDENTIALS_LOCK:
        used.users -= 1
        if used.users > 0:
            return
        key = _key(used.settings)
        if _CREDENTIALS.get(key) is used:
            del _CREDENTIALS[key]
    used.close()


class GraphOptions(TargetOptions):
    """Options every Microsoft target has. ``timeout``: how long one Graph
    request may take (the engine cuts any apply at 30 s)."""

    timeout: Annotated[Duration, Field(gt=0, le=20)] = 10.0


# --- requests ----------------------------------------------------------------------------


def _graph_error(response: httpx.Response) -> tuple[str, str]:
    """Graph's ``error.code`` and ``error.message`` (empty when absent),
    control characters escaped: the text goes into log lines and the status."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, Mapping):
        return "", ""
    return printable(str(error.get("code") or "")), printable(str(error.get("message") or ""))


class GraphClient:
    """One target's way to Graph: its own HTTP client (its own timeout and
    connection pool) over the process's shared ``Credential``.

    ``call`` sends one request and raises as in the module table; ``user_id``
    resolves a person. ``permission`` arguments name the application
    permission an admin must grant when Graph answers 403, so the error says
    what to do.
    """

    def __init__(self, target: str, env: TargetEnv, *, timeout: float = 10.0) -> None:
        settings = env.section("microsoft", MicrosoftSettings)
        self.target = target
        self.clock = env.clock
        self.credential = credential(settings, env.verify)
        self.tenant = settings.tenant_id
        self.client_id = settings.client_id
        self.base = settings.graph_url.rstrip("/") + "/v1.0"
        self.timeout = timeout
        self._closed = False
        self._http = httpx.AsyncClient(
            verify=tls_context(env.verify),
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": env.user_agent},
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        permission: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        ok: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """``method`` ``path`` (under ``/v1.0``) with the app's token.

        Statuses in ``ok`` are returned instead of raised (``clearPresence``'s
        404). A 401 gets one new token and one retry.
        """
        url = self.base + path
        token = await self.credential.token(self.clock)
        for attempt in (1, 2):
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TimeoutException as exc:
                raise TransientError(
                    f"{self.target}: Graph {describe_error(exc, url)} (waited {self.timeout:g} s)"
                ) from exc
            except httpx.TransportError as exc:
                raise TransientError(f"{self.target}: Graph {describe_error(exc, url)}") from exc
            if response.status_code == 401 and attempt == 1:
                token = await self.credential.token(self.clock, stale=token)
                continue
            break
        code = response.status_code
        if 200 <= code < 300 or code in ok:
            return response
        self._raise(response, permission)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise(self, response: httpx.Response, permission: str) -> None:
        code = response.status_code
        error, message = _graph_error(response)
        request_id = response.headers.get("request-id")
        what = f"{self.target}: Graph answered {code} {error}".rstrip()
        if message:
            what += f" ({message})"
        if code in (401, 403):
            raise AuthError(
                f"{what}: grant the application permission {permission} to app "
                f"{self.client_id} with admin consent in tenant {self.tenant}"
            )
        if code in (429, 503):
            wait = retry_after(response.headers.get("Retry-After"), self.clock.now())
            raise TransientError(what, retry_after=wait, status=code, request_id=request_id)
        if code == 408 or code >= 500:
            raise TransientError(what, status=code, request_id=request_id)
        raise PermanentError(what, status=code, request_id=request_id)

    # -- who is who --

    async def user_id(self, person: Person, memory: Memory) -> str:
        """``person``'s Entra object id: ``people[].ids`` (this target's name or
        any Microsoft kind), else the id cache, else ``GET /users/{email}``
        and, when the UPN differs from the mail address, ``$filter=mail eq``.

        Raises ``PermanentError`` naming the person when the tenant has no
        such user.
        """
        for name in (self.target, *MICROSOFT_KINDS, ENTRA_ID):
            given = person.ids.get(name)
            if given:
                return given
        cached = memory.cached_id(_ID_NAMESPACE, person.key, max_age=ID_MAX_AGE)
        if cached:
            return cached
        found = await self._lookup(person.email)
        if found is None:
            raise PermanentError(
                f"{self.target}: no user with UPN or mail {person.email} in Microsoft tenant "
                f"{self.tenant} (set people[].ids.{self.target} to the object id if it differs)",
                status=404,
            )
        memory.cache_id(_ID_NAMESPACE, person.key, found)
        return found

    async def _lookup(self, email: str) -> str | None:
        response = await self.call(
            "GET",
            f"/users/{quote(email, safe='@')}",
            params={"$select": "id"},
            permission="User.Read.All",
            ok=frozenset({404}),
        )
        if response.status_code != 404:
            return str(response.json()["id"])
        literal = email.replace("'", "''")
        response = await self.call(
            "GET",
            "/users",
            params={"$filter": f"mail eq '{literal}'", "$select": "id"},
            permission="User.Read.All",
        )
        found = response.json().get("value") or []
        return str(found[0]["id"]) if found else None

    async def aclose(self) -> None:
        """Close the HTTP client and release the credential; once only."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()
        await asyncio.to_thread(release, self.credential)

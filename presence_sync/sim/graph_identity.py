"""Identity half of the Graph simulator: the Entra ID endpoints MSAL uses for
the client-credentials grant, and the check Graph makes on every bearer token.

- OIDC discovery, ``GET /{tenant}/v2.0/.well-known/openid-configuration``:
  what MSAL reads when ``instance_discovery=False`` (with it on, MSAL asks
  ``login.microsoftonline.com`` about the host first, which a loopback
  simulator cannot answer for).
- Token, ``POST /{tenant}/oauth2/v2.0/token``: ``grant_type=client_credentials``,
  ``scope=<resource>/.default``, and either ``client_secret`` or a JWT
  ``client_assertion`` signed with the key of a certificate registered on the
  app (looked up by its ``x5t`` or ``x5t#S256`` header; RS256 or PS256;
  ``aud`` = this token endpoint, ``iss`` = ``sub`` = client id, unexpired).
- Errors are Entra's: ``{"error", "error_description": "AADSTSnnn: ...",
  "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}``.
  The codes are the ones Entra answers for these cases in the wild; the
  published reference lists none.

Access tokens are RS256 JWTs shaped like Entra's v1 app tokens (``aud``,
``iss`` = ``https://sts.windows.net/{tid}/``, ``tid``, ``appid``, ``roles``,
``exp``), signed with a key of the simulator. All times come from the clock
the caller passes, so tests can make tokens expire.
"""

from __future__ import annotations

import base64
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "GRAPH_RESOURCE",
    "KNOWN_ROLES",
    "App",
    "Identity",
    "Principal",
    "TokenRejected",
    "aadsts",
]

GRAPH_RESOURCE = "https://graph.microsoft.com"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KNOWN_ROLES = frozenset(
    {
        "Presence.Read.All",
        "Presence.ReadWrite.All",
        "User.Read.All",
        "Calendars.Read",
        "Calendars.ReadBasic",
        "Calendars.ReadWrite",
        "GroupMember.Read.All",
        "Group.Read.All",
        "Directory.Read.All",
    }
)
# Entra allows this much clock skew on client assertions.
_SKEW = timedelta(minutes=5)

Reply = tuple[int, dict[str, Any]]


@dataclass
class App:
    """An app registration: where it lives, how it proves itself, what an
    admin consented to."""

    tenant: str
    client_id: str
    secret: str | None = None
    certificates: list[bytes] = field(default_factory=list)
    """PEM certificates whose keys may sign client assertions."""
    roles: frozenset[str] = frozenset()

    def thumbprints(self) -> dict[str, x509.Certificate]:
        """``x5t`` and ``x5t#S256`` values (base64url, no padding) → certificate."""
        out: dict[str, x509.Certificate] = {}
        for pem in self.certificates:
            cert = x509.load_pem_x509_certificate(pem)
            for algorithm in (hashes.SHA1(), hashes.SHA256()):  # noqa: S303
                out[_b64url(cert.fingerprint(algorithm))] = cert
        return out


@dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for."""

    tenant: str
    client_id: str
    roles: frozenset[str]


class TokenRejected(Exception):
    """A bearer token Graph would not accept; ``str()`` is Graph's message."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _normalized(thumbprint: str) -> str:
    # MSAL sends base64url with padding; the JWS spec says without.
    return thumbprint.rstrip("=").replace("+", "-").replace("/", "_")


def aadsts(status: int, error: str, code: int, message: str, now: datetime) -> Reply:
    """An Entra error reply: ``error``, ``error_description`` starting
    ``AADSTS<code>: ``, ``error_codes``, trace and correlation ids."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return status, {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}"
        ),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


class Identity:
    """Registered apps, and the tokens issued to them. Not thread-safe on
    its own: the simulator holds its lock around every call."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        token_lifetime: timedelta = timedelta(hours=1),
        resources: Iterable[str] = (GRAPH_RESOURCE,),
    ) -> None:
        self._clock = clock
        self.token_lifetime = token_lifetime
        self.resources = {r.rstrip("/") for r in resources}
        self._apps: dict[tuple[str, str], App] = {}
        self._tenants: set[str] = set()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued = 0

    # -- registry --------------------------------------------------------
    def add_tenant(self, tenant: str) -> None:
        self._tenants.add(tenant)

    def register(self, app: App) -> None:
        unknown = app.roles - KNOWN_ROLES
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; known: {sorted(KNOWN_ROLES)}")
        for pem in app.certificates:
            x509.load_pem_x509_certificate(pem)  # refuse garbage now, not at sign-in
        self._tenants.add(app.tenant)
        self._apps[(app.tenant, app.client_id)] = app

    def app(self, tenant: str, client_id: str) -> App:
        return self._apps[(tenant, client_id)]

    def apps(self) -> list[App]:
        return list(self._apps.values())

    def knows_tenant(self, tenant: str) -> bool:
        return tenant in self._tenants

    # -- endpoints -------------------------------------------------------
    def openid_configuration(self, tenant: str, origin: str) -> Reply:
        """The discovery document for ``tenant``; 400 for an unknown one."""
        now = self._clock()
        if tenant not in self._tenants:
            return aadsts(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.", now)
        base = f"{origin}/{tenant}"
        return 200, {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "jwks_uri": f"{origin}/{tenant}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "tenant_region_scope": "EU",
        }

    def jwks(self) -> dict[str, Any]:
        """The public key access tokens are signed with (JWKS)."""
        numbers = self._key.public_key().public_numbers()

        def b64int(value: int) -> str:
            return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": "sim",
                    "n": b64int(numbers.n),
                    "e": b64int(numbers.e),
                }
            ]
        }

    def token(self, tenant: str, form: Mapping[str, str], token_endpoint: str) -> Reply:
        """Answer a token request; ``token_endpoint`` is the URL it was
        sent to (what a client assertion's ``aud`` must name)."""
        now = self._clock()
        if tenant not in self._tenants:
            return aadsts(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.", now)
        grant = form.get("grant_type")
        if grant != "client_credentials":
            return aadsts(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
                now,
            )
        client_id = form.get("client_id", "")
        app = self._apps.get((tenant, client_id))
        if app is None:
            return aadsts(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'.",
                now,
            )
        resource = self._resource(form.get("scope", ""))
        if resource is None:
            return aadsts(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope', '')} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
                now,
            )
        refused = self._authenticate(app, form, token_endpoint, now)
        if refused is not None:
            return refused
        self.issued += 1
        lifetime = int(self.token_lifetime.total_seconds())
        return 200, {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self._sign(app, resource, now),
        }

    def _resource(self, scope: str) -> str | None:
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return None
        resource = scopes[0].removesuffix("/.default").rstrip("/")
        return resource if resource in self.resources else None

    def _authenticate(
        self, app: App, form: Mapping[str, str], token_endpoint: str, now: datetime
    ) -> Reply | None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is not None:
            if app.secret is not None and hmac.compare_digest(secret, app.secret):
                return None
            return aadsts(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{app.client_id}'.",
                now,
            )
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                return aadsts(
                    400,
                    "invalid_request",
                    50027,
                    "Invalid client_assertion_type.",
                    now,
                )
            return self._check_assertion(app, assertion, token_endpoint, now)
        return aadsts(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
            now,
        )

    def _check_assertion(
        self, app: App, assertion: str, token_endpoint: str, now: datetime
    ) -> Reply | None:
        def bad(code: int, message: str) -> Reply:
            return aadsts(401, "invalid_client", code, message, now)

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return bad(50027, "JWT token is invalid or malformed.")
        thumb = header.get("x5t#S256") or header.get("x5t")
        cert = app.thumbprints().get(_normalized(str(thumb))) if thumb else None
        if cert is None:
            return bad(
                700027,
                f"The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - The key was not found., Thumbprint of "
                f"key used by client: '{thumb}']",
            )
        algorithm = header.get("alg")
        if algorithm not in ("RS256", "PS256"):
            return bad(700027, f"Client assertion uses an unsupported algorithm '{algorithm}'.")
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=[algorithm],
                audience=token_endpoint,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            return bad(
                700212,
                f"No matching federated identity record found for presented assertion "
                f"audience. The audience must be '{token_endpoint}'.",
            )
        except jwt.PyJWTError:
            return bad(700027, "Client assertion contains an invalid signature.")
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return bad(
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        exp, nbf = claims.get("exp"), claims.get("nbf")
        stamp = now.timestamp()
        skew = _SKEW.total_seconds()
        if not isinstance(exp, int | float) or stamp > exp + skew:
            return bad(700024, "Client assertion is not within its valid time range.")
        if isinstance(nbf, int | float) and stamp < nbf - skew:
            return bad(700024, "Client assertion is not within its valid time range.")
        return None

    def _sign(self, app: App, resource: str, now: datetime) -> str:
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{app.tenant}/",
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + self.token_lifetime).timestamp()),
            "appid": app.client_id,
            "appidacr": "1" if app.secret is not None else "2",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{app.tenant}/{app.client_id}")),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{app.tenant}/{app.client_id}")),
            "roles": sorted(app.roles),
            "tid": app.tenant,
            "uti": str(uuid.uuid4()),
            "ver": "1.0",
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "sim"})

    # -- the Graph side --------------------------------------------------
    def principal(self, token: str) -> Principal:
        """Who ``token`` speaks for; ``TokenRejected`` with Graph's message
        if it is not one of ours, expired, or for another resource."""
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                # Times are checked below on the simulator's clock: PyJWT's own
                # checks (iat too) use the machine's, which a SimClock left behind.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise TokenRejected("Access token validation failure. Invalid signature.") from exc
        if claims.get("aud", "").rstrip("/") not in self.resources:
            raise TokenRejected("Access token validation failure. Invalid audience.")
        if self._clock().timestamp() >= float(claims.get("exp", 0)):
            raise TokenRejected("Lifetime validation failed, the token is expired.")
        return Principal(
            tenant=str(claims.get("tid", "")),
            client_id=str(claims.get("appid", "")),
            roles=frozenset(claims.get("roles", ())),
        )

    def public_key_pem(self) -> bytes:
        """The token-signing public key, for tests that decode tokens."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

"""Token issuing for the NFON simulator: real RS512 JWTs, rotation, expiry.

The simulator's key pair is generated when an issuer is created and its public
half is published as a JWKS, so a client can verify tokens exactly as it would
against NFON. Which tokens are valid is decided by the issuer's own book of
issued tokens, not by decoding: a token the issuer never handed out, one it
revoked, or one past its lifetime is rejected.

Lifetimes: the ``iat`` claim is whole seconds (as most JWT issuers write it)
and ``exp = iat + lifetime``. The issuer honours a token until ``lifetime``
seconds after the instant it was issued, which is up to one second past its
``exp`` claim, so a client that renews by ``exp`` is never surprised and a
1-second token is usable at least once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["Issued", "TokenIssuer", "TokenPair"]

TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An access token and a refresh token as handed out together."""

    access: str
    refresh: str
    access_jti: str
    access_deadline: float
    """Wall-clock time (``time.time()``) after which the access token is refused."""


@dataclass(frozen=True, slots=True)
class Issued:
    """The issuer's record of one token: its id and when it stops working."""

    jti: str
    deadline: float


class TokenIssuer:
    """Issues and checks the simulator's access and refresh tokens.

    Not thread-safe: the simulator calls it from its own event loop only.
    """

    def __init__(
        self,
        *,
        username: str,
        customer: str,
        access_lifetime: float,
        refresh_lifetime: float,
    ) -> None:
        if access_lifetime <= 0 or refresh_lifetime <= 0:
            raise ValueError("token lifetimes must be positive")
        self.username = username
        self.customer = customer
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self._access: dict[str, Issued] = {}
        self._refresh: dict[str, Issued] = {}

    def jwks(self) -> dict[str, Any]:
        """The ``publicKey`` document of ``GET /.well-known/jwks.json``."""
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key = {
            "alg": "RS512",
            "e": jwk["e"],
            "kid": self.kid,
            "kty": "RSA",
            "n": jwk["n"],
            "use": "sig",
        }
        return {"keys": [key]}

    def issue(self) -> TokenPair:
        """A fresh pair; both tokens are valid from now on."""
        self._prune()
        now = time.time()
        access, access_issued = self._mint("access", now, self.access_lifetime)
        refresh, refresh_issued = self._mint("refresh", now, self.refresh_lifetime)
        self._access[access] = access_issued
        self._refresh[refresh] = refresh_issued
        return TokenPair(access, refresh, access_issued.jti, access_issued.deadline)

    def rotate(self, refresh_token: str) -> TokenPair | None:
        """Trade a valid refresh token for a new pair, or ``None`` when it is
        unknown, expired or already used (a refresh token works once)."""
        issued = self._refresh.pop(refresh_token, None)
        if issued is None or time.time() >= issued.deadline:
            return None
        return self.issue()

    def check_access(self, token: str) -> Issued | None:
        """The book entry of a currently valid access token, else ``None``."""
        issued = self._access.get(token)
        if issued is None or time.time() >= issued.deadline:
            return None
        return issued

    def expire_access(self) -> None:
        """Revoke every access token issued so far."""
        self._access.clear()

    def expire_refresh(self) -> None:
        """Revoke every refresh token issued so far."""
        self._refresh.clear()

    def _mint(self, kind: TokenKind, now: float, lifetime: float) -> tuple[str, Issued]:
        iat = int(now)
        exp: int | float = iat + (int(lifetime) if float(lifetime).is_integer() else lifetime)
        jti = str(uuid.uuid4())
        claims = {
            "sub": self.username,
            "customer": self.customer,
            "iat": iat,
            "exp": exp,
            "jti": jti,
            "typ": kind,
        }
        token = jwt.encode(claims, self._key, algorithm="RS512", headers={"kid": self.kid})
        return token, Issued(jti, now + lifetime)

    def _prune(self) -> None:
        # Issued tokens accumulate over a long demo; dropping dead ones keeps
        # the book proportional to the live sessions.
        now = time.time()
        if len(self._access) > 256:
            self._access = {t: i for t, i in self._access.items() if i.deadline > now}
        if len(self._refresh) > 256:
            self._refresh = {t: i for t, i in self._refresh.items() if i.deadline > now}

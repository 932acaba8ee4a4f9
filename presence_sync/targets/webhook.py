"""The ``webhook`` target: one signed JSON document per status change, POSTed to a URL.

This module owns the document (its version and fields, described for receivers
in ``docs/webhook.md``), the delivery headers, the HMAC signature, and the
translation of HTTP outcomes into ``errors``:

==========================================  ====================================
receiver answers                            ``apply`` raises
==========================================  ====================================
2xx                                         nothing: returns ``Applied``
429, 503 (``Retry-After`` honoured)         ``TransientError(retry_after=...)``
408, other 5xx, timeout, connection error   ``TransientError``
401, 403                                    ``AuthError``
3xx (redirects are never followed)          ``PermanentError``
other 4xx                                   ``PermanentError``
==========================================  ====================================
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ConfigDict, Field, SecretStr, field_validator

from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import (
    STATUS_FIELDS,
    Applied,
    Call,
    LineView,
    Person,
    Status,
    frozen_map,
)
from presence_sync.net import describe_error, retry_after, tls_context
from presence_sync.ops.logging import kv, printable
from presence_sync.sections import Duration, HttpURL
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions

__all__ = [
    "DELIVERY_HEADER",
    "DOCUMENT_VERSION",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookTarget",
]

log = logging.getLogger(__name__)

DOCUMENT_VERSION = 1
"""Bumped only for changes a receiver could trip over (a field removed or
changing meaning); new fields may appear within a version."""

DELIVERY_HEADER = "X-Presence-Sync-Delivery"
TIMESTAMP_HEADER = "X-Presence-Sync-Timestamp"
SIGNATURE_HEADER = "X-Presence-Sync-Signature"

_MASK = "**********"
# RFC 9110 field-name token characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the target writes itself or that describe the framing: letting the
# configuration set them would break the body or the signature contract.
_RESERVED = frozenset({"content-type", "content-length", "host", "transfer-encoding"})
_RESERVED_PREFIX = "x-presence-sync-"


def _redact_url(url: str) -> str:
    """``url`` without userinfo, query and fragment, which may carry credentials."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class WebhookOptions(TargetOptions):
    """The ``webhook`` block under ``targets:``.

    ``secret`` (or ``secret_file``, resolved by the config loader) turns on the
    ``X-Presence-Sync-Signature`` header. ``headers`` are sent with every
    delivery (an API key, say); their values are treated as secrets.
    """

    # Validation errors would otherwise quote header values and URL tokens.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: HttpURL
    secret: SecretStr | None = None
    # The engine gives any apply at most TargetInfo.timeout (30 s); a longer
    # HTTP timeout would be cut short there, so it is refused here.
    timeout: Annotated[Duration, Field(gt=0, le=30)] = 10.0
    headers: dict[str, str] = Field(default_factory=dict)
    include_party_number: bool = False

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty (omit it to send unsigned deliveries)")
        return value

    @field_validator("headers")
    @classmethod
    def _headers_sendable(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            lowered = name.lower()
            if lowered in _RESERVED or lowered.startswith(_RESERVED_PREFIX):
                raise ValueError(
                    f"{name!r} is set by presence-sync itself and cannot be configured"
                )
            # Never echo the value: it is likely an API key.
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} contains a line break or NUL")
        return value

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "url":
                yield name, _redact_url(value)
            elif name == "headers":
                yield name, dict.fromkeys(value, _MASK)
            else:
                yield name, value


def _rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        # The model's datetimes are UTC; a naive one came from a source that forgot to say so.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _status_doc(status: Status | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {name: getattr(status, name) for name in STATUS_FIELDS}


def _person_doc(person: Person) -> dict[str, Any]:
    return {"email": person.email, "name": person.name, "extension": person.extension}


def _call_doc(call: Call | None, include_party_number: bool) -> dict[str, Any] | None:
    if call is None:
        return None
    doc: dict[str, Any] = {
        "direction": call.direction.value,
        "external": call.external,
        "answered": call.answered,
        "since": _rfc3339(call.since),
    }
    if include_party_number:
        doc["party_number"] = call.party
    return doc


def _line_doc(view: LineView | None, include_party_number: bool) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "extension": view.extension,
        "line": view.line.value,
        "presence": view.presence.value,
        "since": _rfc3339(view.since),
        "call": _call_doc(view.call, include_party_number),
    }


class WebhookTarget:
    """POSTs one JSON document per change to the configured URL.

    Each ``apply`` makes exactly one request and never loops: the engine
    retries a ``TransientError`` with backoff (pausing the whole target when
    ``retry_after`` is set). A retry is a new delivery with a new
    ``X-Presence-Sync-Delivery`` id and timestamp; receivers treat every
    document as the person's complete current state, so a repeat is harmless.

    Raises ``TransientError`` (429, 503, 408, other 5xx, timeouts, connection
    failures), ``AuthError`` (401, 403) and ``PermanentError`` (3xx, other 4xx).
    The secret, header values and the caller's number never reach a log line
    or ``repr``.
    """

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="webhook",
        description="POST a signed JSON document per status change to a URL",
        fields=frozenset(STATUS_FIELDS),
        rate=20.0,
        burst=20,
        concurrency=4,
        restores=False,
        requires=("tls",),
    )
    Options: ClassVar[type[WebhookOptions]] = WebhookOptions

    def __init__(self, name: str, options: WebhookOptions, env: TargetEnv) -> None:
        self.name = name
        self._options = options
        self._clock = env.clock
        self._url = options.url
        self._secret = (
            options.secret.get_secret_value().encode() if options.secret is not None else None
        )
        self._client = httpx.AsyncClient(
            verify=tls_context(env.verify),
            timeout=options.timeout,
            follow_redirects=False,
            headers={"User-Agent": env.user_agent},
        )

    def __repr__(self) -> str:
        signed = "signed" if self._secret is not None else "unsigned"
        names = ", ".join(self._options.headers)
        extra = f" headers=[{names}]" if names else ""
        return f"<WebhookTarget {self.name!r} {_redact_url(self._url)} {signed}{extra}>"

    def _document(self, change: Change, delivery: str, now: datetime) -> dict[str, Any]:
        previous = change.applied.status if change.applied is not None else None
        party = self._options.include_party_number
        return {
            "version": DOCUMENT_VERSION,
            "id": delivery,
            "target": self.name,
            "at": _rfc3339(now),
            "person": _person_doc(change.person),
            "status": _status_doc(change.desired),
            "previous": _status_doc(previous),
            "line": _line_doc(change.view, party),
        }

    def _headers(self, delivery: str, timestamp: str, body: bytes) -> dict[str, str]:
        headers = dict(self._options.headers)
        headers["Content-Type"] = "application/json"
        headers[DELIVERY_HEADER] = delivery
        headers[TIMESTAMP_HEADER] = timestamp
        if self._secret is not None:
            mac = hmac.new(self._secret, timestamp.encode() + b"." + body, hashlib.sha256)
            headers[SIGNATURE_HEADER] = "sha256=" + mac.hexdigest()
        return headers

    async def apply(self, change: Change) -> Applied:
        """Deliver ``change`` once; return ``Applied(status=change.desired)`` on 2xx.

        Raises ``TransientError``, ``AuthError`` or ``PermanentError`` as in
        the module table; never retries by itself.
        """
        now = self._clock.now()
        delivery = str(uuid.uuid4())
        body = json.dumps(
            self._document(change, delivery, now), ensure_ascii=False, separators=(",", ":")
        ).encode()
        headers = self._headers(delivery, str(int(now.timestamp())), body)
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"webhook {self.name}: {describe_error(exc, self._url)} "
                f"(waited {self._options.timeout:g} s)"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(f"webhook {self.name}: {describe_error(exc, self._url)}") from exc
        self._check(response)
        log.debug(
            "webhook delivered",
            extra=kv(target=self.name, delivery=delivery, status=response.status_code),
        )
        return Applied(
            status=change.desired, at=self._clock.now(), data=frozen_map({"delivery": delivery})
        )

    def _check(self, response: httpx.Response) -> None:
        """Raise the error a non-2xx ``response`` stands for."""
        code = response.status_code
        if 200 <= code < 300:
            return
        request_id = response.headers.get("X-Request-Id")
        reason = printable(response.reason_phrase)  # the receiver's words, escaped
        what = f"webhook {self.name}: receiver answered {code} {reason}".rstrip()
        if code in (429, 503):
            wait = retry_after(response.headers.get("Retry-After"), self._clock.now())
            raise TransientError(what, retry_after=wait, status=code, request_id=request_id)
        if code == 408 or code >= 500:
            raise TransientError(what, status=code, request_id=request_id)
        if code in (401, 403):
            raise AuthError(f"{what}: check the secret and headers the receiver expects")
        if 300 <= code < 400:
            location = response.headers.get("Location")
            hint = f" to {_redact_url(location)}" if location else ""
            raise PermanentError(
                f"{what} (redirect{hint}); redirects are not followed: "
                "set url to the address that accepts the POST",
                status=code,
                request_id=request_id,
            )
        raise PermanentError(what, status=code, request_id=request_id)

    async def aclose(self) -> None:
        """Close the HTTP client; safe to call more than once."""
        await self._client.aclose()

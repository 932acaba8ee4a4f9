"""The configuration's value types and the sections handed to targets.

Both ``config`` (which validates the whole file) and the targets (whose
options use ``Duration`` and ``HttpURL``, and which are handed
``microsoft:`` and ``slack:``) import these, so they live in this leaf
module below both: ``config`` imports ``targets.base`` to find target kinds,
and no target imports ``config``. Every type gives a message an admin can act
on; ``config.models`` re-exports them beside the other sections.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from presence_sync.ops.logging import kv

__all__ = [
    "Duration",
    "Email",
    "HttpURL",
    "MicrosoftSettings",
    "PathContext",
    "PositiveDuration",
    "PrivateFile",
    "Secret",
    "Section",
    "SlackSettings",
    "SlackUserToken",
    "Text",
    "normalise_email",
    "parse_duration",
    "path_context",
    "readable_file",
    "warn_if_exposed",
]

log = logging.getLogger("presence_sync.config")


@dataclass(frozen=True, slots=True)
class PathContext:
    """What path and secret validators need beyond the value, handed in as
    pydantic's context (``config.models.ValidationContext`` adds the file).

    ``base_dir`` resolves relative paths, ``environ`` serves
    ``$CREDENTIALS_DIRECTORY`` and ``$STATE_DIRECTORY``; ``read_secrets`` is
    False for commands that need no secret (``status``, ``explain``): secret
    files such as a private key are then not opened."""

    base_dir: Path
    environ: Mapping[str, str]
    read_secrets: bool = True


def path_context(info: ValidationInfo) -> PathContext:
    """The context of this validation (as if the file were here when a
    model is validated in code rather than by ``config.load``)."""
    if isinstance(info.context, PathContext):
        return info.context
    return PathContext(Path.cwd(), os.environ)


def warn_if_exposed(path: Path, mode: int, *, key: str) -> None:
    """Log a warning when permission bits ``mode`` of the secret file ``path``
    (named by config ``key``) let group or others read it."""
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        # Like the store's warning for its database; we do not chmod a file
        # the admin (or systemd) owns, we say how to fix it.
        log.warning(
            "secret file is readable by others; make it readable by its owner only (chmod 600)",
            extra=kv(path=str(path), mode=f"{stat.S_IMODE(mode):04o}", key=key),
        )


_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``250ms``, ``30s``,
    ``5m``, ``1h30m``, ``1d`` (or ``"90"``). Raises ``ValueError`` when it is
    none of these, negative, or not finite."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = "".join(value.split())
        if text.startswith("-"):
            raise ValueError("a duration must not be negative")
        if re.fullmatch(r"[0-9]+(?:\.[0-9]*)?", text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(
                float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
            )
        else:
            raise ValueError(
                f"{value!r} is not a duration: write seconds, or e.g. 250ms, 30s, 5m, 1h30m, 1d"
            )
    else:
        raise ValueError("expected a duration like 30s, 5m or 1h30m")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    if seconds < 0:
        raise ValueError("a duration must not be negative")
    return seconds


Duration: TypeAlias = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds as a float; accepts numbers (seconds) and ``30s``/``5m``/``1h30m``/``1d``/``250ms``."""

PositiveDuration: TypeAlias = Annotated[Duration, Field(gt=0)]


def _http_url(value: str) -> str:
    value = value.strip()
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value


HttpURL: TypeAlias = Annotated[str, AfterValidator(_http_url)]
"""A string that is an absolute http(s) URL (kept as written, surrounding blanks removed)."""


def _filled(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


Text: TypeAlias = Annotated[str, AfterValidator(_filled)]


def _filled_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


Secret: TypeAlias = Annotated[SecretStr, AfterValidator(_filled_secret)]


def readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"cannot read {value}")
    return value


def _resolve_credential(value: Path, info: ValidationInfo) -> Path:
    # Where every x_file secret is looked for: under systemd the service can
    # read its secrets only as credentials, so a key file is one too.
    if value == Path():
        raise ValueError("must be a path")
    if value.is_absolute():
        return value
    context = path_context(info)
    base = context.environ.get("CREDENTIALS_DIRECTORY")
    return (Path(base) if base else context.base_dir) / value


def _private_file(value: Path, info: ValidationInfo) -> Path:
    if not path_context(info).read_secrets:
        return value
    readable_file(value)
    warn_if_exposed(value, value.stat().st_mode, key=info.field_name or "")
    return value


PrivateFile: TypeAlias = Annotated[
    Path,
    AfterValidator(_resolve_credential),
    AfterValidator(_private_file),
]
"""An existing file holding a secret (a private key), found like a secret
file: a relative path in ``$CREDENTIALS_DIRECTORY`` when set, else next to
the configuration file. Warned about when others may read it."""


def _email(value: str) -> str:
    value = normalise_email(value)
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise ValueError("not an e-mail address")
    return value


def normalise_email(value: str) -> str:
    return value.strip().lower()


Email: TypeAlias = Annotated[str, AfterValidator(_email)]


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _thumbprint(value: str) -> str:
    hexdigits = re.sub(r"[\s:]", "", value).upper()
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", hexdigits):
        raise ValueError("a certificate thumbprint is 40 (SHA-1) or 64 (SHA-256) hex digits")
    return hexdigits


class MicrosoftSettings(Section):
    """``microsoft:``, the Entra ID app for the Teams and Outlook targets.
    It signs in with ``client_secret`` or with ``certificate_file`` +
    ``certificate_thumbprint``: exactly one of the two."""

    tenant_id: Text
    client_id: Text
    client_secret: Secret | None = None
    certificate_file: PrivateFile | None = None
    certificate_thumbprint: Annotated[str, AfterValidator(_thumbprint)] | None = None
    authority: HttpURL = "https://login.microsoftonline.com"
    graph_url: HttpURL = "https://graph.microsoft.com"

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        certificate = self.certificate_file is not None or self.certificate_thumbprint is not None
        if self.client_secret is not None and certificate:
            raise ValueError(
                "give client_secret or certificate_file + certificate_thumbprint, not both"
            )
        if self.client_secret is None and not certificate:
            raise ValueError(
                "no credential: give client_secret, or certificate_file + certificate_thumbprint"
            )
        if certificate and (self.certificate_file is None or self.certificate_thumbprint is None):
            raise ValueError("certificate_file and certificate_thumbprint go together")
        return self


class SlackUserToken(Section):
    """One entry of ``slack.user_tokens``: a person's own user token
    (``xoxp-``), usually as ``token_file`` (resolved like every secret file:
    relative to ``$CREDENTIALS_DIRECTORY`` when set, else the config file)."""

    email: Email
    token: Secret


class SlackSettings(Section):
    """``slack:``, the Slack tokens for the Slack targets.

    ``token`` is an admin's user token that sets other people's statuses with
    ``user=`` (paid plans; never admins or owners). ``user_tokens`` gives
    people their own user token, one file each; it wins over ``token`` for
    that person, and it is the only way for ``slack_dnd`` (Slack's ``dnd.*``
    act on the token's own user). At least one of the two is needed.
    ``request_timeout`` bounds every Web API request.
    """

    # Validation errors would otherwise quote token values.
    model_config = ConfigDict(hide_input_in_errors=True)

    token: Secret | None = None
    base_url: HttpURL = "https://slack.com/api/"
    # An apply makes up to three requests in a row (lookup, read, write)
    # within the targets' 60 s apply timeout.
    request_timeout: Annotated[Duration, Field(gt=0, le=15)] = 10.0
    user_tokens: list[SlackUserToken] = []

    @model_validator(mode="after")
    def _some_token(self) -> Self:
        if self.token is None and not self.user_tokens:
            raise ValueError(
                "no token: give token (an admin's user token) or user_tokens "
                "(people's own tokens), or both"
            )
        seen: set[str] = set()
        for entry in self.user_tokens:
            if entry.email in seen:
                raise ValueError(f"user_tokens: {entry.email} is listed twice")
            seen.add(entry.email)
        return self

    def user_token(self, email: str) -> str | None:
        """The own user token of the person with ``email`` (lower-cased), if given."""
        for entry in self.user_tokens:
            if entry.email == email:
                return entry.token.get_secret_value()
        return None

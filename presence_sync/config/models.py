"""Step 4 of ``load()``: the settings models, one per section of the file.

Every section forbids unknown keys and is frozen. Value types with a
message an admin can act on (extensions, phone numbers, listen addresses)
live here beside the models that use them; those the targets use too
(``Duration``, ``HttpURL``) and the sections handed to targets
(``microsoft:``, ``slack:``) live in ``presence_sync.sections``, below both,
and are re-exported here.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PrivateAttr,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from presence_sync.config.reading import Index, Position
from presence_sync.config.secrets import ALSO_FROM_FILE
from presence_sync.entra import ExtensionFrom, digits
from presence_sync.errors import ConfigProblem, key_path
from presence_sync.model import Person
from presence_sync.net import parse_listen, split_host
from presence_sync.sections import (
    Duration,
    HttpURL,
    MicrosoftSettings,
    PathContext,
    SlackSettings,
    SlackUserToken,
    normalise_email,
    parse_duration,
    readable_file,
)
from presence_sync.sections import Email as _Email
from presence_sync.sections import PositiveDuration as _PositiveDuration
from presence_sync.sections import Secret as _Secret
from presence_sync.sections import Text as _Text
from presence_sync.targets.base import TargetOptions

__all__ = [
    "DEFAULT_NFON_URL",
    "DEFAULT_STATE_PATH",
    "DirectorySettings",
    "Duration",
    "EntraGroupSettings",
    "HttpSettings",
    "HttpURL",
    "LoggingSettings",
    "MicrosoftSettings",
    "NfonSettings",
    "PersonSettings",
    "ResyncSettings",
    "Settings",
    "SlackSettings",
    "SlackUserToken",
    "StateSettings",
    "TargetSpec",
    "TlsSettings",
    "ValidationContext",
    "normalise_email",
    "normalise_number",
    "parse_duration",
]

DEFAULT_NFON_URL: Final = "https://providersupportdata.cloud-cfg.com/v1"
DEFAULT_STATE_PATH: Final = Path("/var/lib/presence-sync/state.db")


@dataclass(frozen=True, slots=True)
class ValidationContext(PathContext):
    """What validators need beyond the value: handed in as pydantic's context.

    Beside ``PathContext``'s ``base_dir``, ``environ`` and ``read_secrets``,
    ``file`` and ``index`` let the validated ``Settings`` name lines in the
    file it came from.
    """

    file: str = "<memory>"
    index: Index = field(default_factory=Index)


def _context(info: ValidationInfo) -> ValidationContext:
    if isinstance(info.context, ValidationContext):
        return info.context
    # Validated in code rather than by load(): behave as if the file were here.
    return ValidationContext(Path.cwd(), os.environ)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if value == Path():
        raise ValueError("must be a path")
    return value if value.is_absolute() else _context(info).base_dir / value


_ConfigPath: TypeAlias = Annotated[Path, AfterValidator(_resolve_path)]
"""A path; a relative one is taken from the config file's directory."""
_ExistingFile: TypeAlias = Annotated[_ConfigPath, AfterValidator(readable_file)]


def _unquoted_digits_hint(value: object) -> object:
    # The YAML already turned unquoted digits into an int; converting back
    # would silently lose leading zeros, so the admin has to quote them.
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            'put it in quotes, e.g. "0100": unquoted digits are a number to YAML, '
            "which drops leading zeros"
        )
    return value


def _extension(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[0-9*#]+", value):
        raise ValueError('an extension is digits (and * or #), e.g. "100"')
    return value


def normalise_number(value: str) -> str:
    """A phone number as NFON writes it: digits only, international, no prefix.

    Spaces and dashes go, and so does a leading ``+`` or ``00``: both
    ``"+49 89 1234-56"`` and ``"0049 89 123456"`` give ``"4989123456"``.
    Raises ``ValueError`` for anything else.
    """
    text = re.sub(r"[\s-]", "", value)
    if text.startswith("+"):
        text = text[1:]
    elif text.startswith("00"):
        text = text[2:]
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError("a phone number is digits, spaces, dashes and a leading + or 00")
    return text


_Extension: TypeAlias = Annotated[
    str, BeforeValidator(_unquoted_digits_hint), AfterValidator(_extension)
]
_PhoneNumber: TypeAlias = Annotated[
    str, BeforeValidator(_unquoted_digits_hint), AfterValidator(normalise_number)
]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name like Europe/Berlin"
        ) from None
    return value


def _listen(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError('expected host:port, e.g. "127.0.0.1:9477"')
    parse_listen(value)
    return value.strip()


def _public_url(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("expected a URL like https://presence.example.com")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an http or https URL with a host, like https://presence.example.com"
        )
    return value.strip()


def _allowed_host(value: object) -> str:
    if not isinstance(value, str) or split_host(value) is None:
        raise ValueError('expected a host name or host:port, like "presence.internal"')
    return value.strip()


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class _Section(BaseModel):
    """Base of every settings section here, like ``sections.Section``:
    unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _k_account(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"K[0-9A-Za-z]+", value):
        raise ValueError("must be the NFON K-Account, like K1234")
    return value


class NfonSettings(_Section):
    """``nfon:``, the CTI API account. ``username`` and ``password`` may
    come from files (``username_file``, ``password_file``)."""

    base_url: HttpURL = DEFAULT_NFON_URL
    customer: Annotated[str, AfterValidator(_k_account)]
    username: Annotated[_Text, ALSO_FROM_FILE]
    password: _Secret
    request_timeout: _PositiveDuration = 10.0
    liveness_timeout: _PositiveDuration = 120.0
    """A stream that delivers no byte for this long is restarted."""
    reconnect_max_delay: _PositiveDuration = 60.0
    call_settle: Duration = 0.3
    """When rules use call context, how long a line that went in-use waits
    for its call event before it is decided without one (0: never waits)."""


class TlsSettings(_Section):
    """``tls:``, trust for every outbound HTTPS connection."""

    ca_bundle: _ExistingFile | None = None


class PersonSettings(_Section):
    """One entry of ``people:``: whose line is mirrored, and how.

    ``email`` is stored lower-cased and is the person's identity;
    ``ids`` maps a target name to the person's id there (skips a lookup);
    ``opt_out`` lists target names this person does not want. Without
    ``extension`` (allowed only with ``directory:``) the entry adds its
    ``name``, ``groups``, ``ids`` and ``opt_out`` to the group member with
    that e-mail address.
    """

    extension: _Extension | None = None
    email: _Email
    name: _Text | None = None
    groups: list[_Text] = []
    ids: dict[str, _Text] = {}
    opt_out: list[str] = []

    def to_person(self) -> Person:
        """The domain ``Person`` of this entry; ``ValueError`` for an entry
        without an extension (it is no person of its own)."""
        if self.extension is None:
            raise ValueError(f"{self.email} has no extension: it only adds to a group member")
        return Person(
            key=self.email,
            email=self.email,
            extension=self.extension,
            name=self.name,
            groups=frozenset(self.groups),
            ids=dict(self.ids),
            opt_out=frozenset(self.opt_out),
        )


class _NumberEntry(_Section):
    """An entry of a number list: ``"4989123"`` or ``{number: ..., name: ...}``."""

    number: _PhoneNumber
    name: _Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"number": data}
        return _unquoted_digits_hint(data)


def _number_dict(entries: list[_NumberEntry]) -> dict[str, str | None]:
    return {entry.number: entry.name for entry in entries}


_NumberList: TypeAlias = Annotated[
    dict[str, str | None],
    # Written as a list (with per-entry errors and positions), kept as a dict.
    GetPydanticSchema(
        lambda _type, handler: core_schema.no_info_after_validator_function(
            _number_dict,
            handler.generate_schema(list[_NumberEntry]),
            serialization=core_schema.plain_serializer_function_ser_schema(dict),
        )
    ),
]


def _number_prefix(value: str) -> str:
    if not digits(value):
        raise ValueError('must be the number in front of the extensions, like "+49 89 45300"')
    return value


class EntraGroupSettings(_Section):
    """``directory.microsoft``: whose lines are mirrored is an Entra group's
    members, matched to NFON extensions (see ``presence_sync.entra``)."""

    group: _Text
    """The group's display name or object id; nested groups' members count."""
    extension_from: ExtensionFrom = "businessPhones"
    number_prefix: Annotated[str, AfterValidator(_number_prefix)] | None = None


class DirectorySettings(_Section):
    """``directory:``, people from a directory beside or instead of ``people:``."""

    microsoft: EntraGroupSettings
    refresh: _PositiveDuration = 3600.0


class ResyncSettings(_Section):
    """``resync:``, how often everything is recomputed from scratch."""

    interval: _PositiveDuration = 300.0
    directory_interval: _PositiveDuration = 3600.0


def _postgres_url(value: str) -> str:
    value = value.strip()
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises for a port that is no number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// URL (postgresql://user@host:port/database)")
    # libpq takes a password from the user-info part and from ``?password=``.
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is not None or any(key.strip() == "password" for key, _ in query):
        raise ValueError(
            "must not carry the password: put it in state.password_file (or libpq's PGPASSFILE)"
        )
    if not parts.path.strip("/"):
        raise ValueError("must name the database: postgresql://user@host:port/database")
    return value


_PostgresURL: TypeAlias = Annotated[str, AfterValidator(_postgres_url)]


class StateSettings(_Section):
    """``state:``, where the applied state is kept: ``path``, a SQLite file
    (the default: ``$STATE_DIRECTORY/state.db`` under systemd's
    ``StateDirectory=``, else ``/var/lib/presence-sync/state.db``), or
    ``url``, a PostgreSQL database, with ``password`` (or ``password_file``)
    when libpq is not to find one itself (``PGPASSFILE``). One of the two;
    the other is ``None``."""

    # Validation errors would otherwise quote the password.
    model_config = ConfigDict(hide_input_in_errors=True)

    path: _ConfigPath | None = None
    url: _PostgresURL | None = None
    password: _Secret | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("url") is not None:
            if data.get("path") is not None:
                raise ValueError(
                    "give either state.path (a SQLite file) or state.url "
                    "(a PostgreSQL database), not both"
                )
            return data
        if data.get("password") is not None:
            raise ValueError("state.password (or password_file) is for state.url only")
        if data.get("path") is None:
            directory = _context(info).environ.get("STATE_DIRECTORY")
            path = Path(directory.split(":")[0]) / "state.db" if directory else DEFAULT_STATE_PATH
            return {**data, "path": path}
        return data


class HttpSettings(_Section):
    """``http:``, the health, metrics, status page and API listener;
    ``listen`` empty or null turns it off. ``token`` (or ``token_file``) is
    the bearer token that changes through the API (resync, pause) need when
    ``listen`` is not a loopback address; without one such a listener
    refuses every change. ``public_url`` and ``allowed_hosts`` name it
    beside its address (``api.hosts``)."""

    # Validation errors would otherwise quote the token.
    model_config = ConfigDict(hide_input_in_errors=True)

    listen: Annotated[str | None, BeforeValidator(_listen)] = "127.0.0.1:9477"
    token: _Secret | None = None
    public_url: Annotated[str | None, BeforeValidator(_public_url)] = None
    """Where people reach the listener (through a reverse proxy, say): its
    host is a name the listener answers to."""
    allowed_hosts: tuple[Annotated[str, BeforeValidator(_allowed_host)], ...] = ()
    """More names (``host`` or ``host:port``) the listener answers to in a
    request's ``Host``; every other name gets 421 (DNS rebinding)."""

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind (IPv6 without brackets), or None when off."""
        return None if self.listen is None else parse_listen(self.listen)


class LoggingSettings(_Section):
    """``logging:``; ``format: auto`` is text, with syslog priorities for journald."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "text", "json"], BeforeValidator(_lower)] = "auto"


class TargetSpec(BaseModel):
    """One enabled target: its name (the key under ``targets:``), its kind,
    and its options, validated by that kind's ``Options`` model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    options: SerializeAsAny[TargetOptions]


_DEFAULTED_SECTIONS: Final = ("tls", "resync", "state", "http", "logging", "people", "lists")


class Settings(_Section):
    """The whole validated configuration.

    ``rules`` is kept as written (``config.resolve`` compiles it once);
    ``locate()`` and ``problem()`` give positions in the file for any key path, so that later
    stages report errors the same way ``load()`` does. Secrets are
    ``SecretStr`` and never show in ``repr()``/``str()``; the number lists
    (personal data) are left out of the repr too.
    """

    nfon: NfonSettings
    microsoft: MicrosoftSettings | None = None
    slack: SlackSettings | None = None
    tls: TlsSettings = TlsSettings()
    people: list[PersonSettings] = []
    directory: DirectorySettings | None = None
    lists: dict[str, _NumberList] = Field(default={}, repr=False)
    targets: dict[str, TargetSpec] = {}
    rules: list[Any] | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    resync: ResyncSettings = ResyncSettings()
    state: StateSettings = Field(default_factory=StateSettings)
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()

    _source_file: str = PrivateAttr(default="<memory>")
    _index: Index = PrivateAttr(default_factory=Index)
    _warnings: list[ConfigProblem] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # ``state:`` with every line commented out is null: take the defaults.
        # ``state`` is always validated so its default sees the environment.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (k in _DEFAULTED_SECTIONS and v is None)}
            data.setdefault("state", {})
        return data

    @field_validator("targets")
    @classmethod
    def _slack_dnd_has_own_tokens(
        cls, value: dict[str, TargetSpec], info: ValidationInfo
    ) -> dict[str, TargetSpec]:
        # Slack's dnd.* act only on the token's own user: without any own
        # token, slack_dnd could never do anything. (``slack`` is declared
        # before ``targets``, so it is validated already.)
        slack = info.data.get("slack")
        if isinstance(slack, SlackSettings) and not slack.user_tokens:
            for name, spec in value.items():
                if spec.kind == "slack_dnd":
                    raise ValueError(
                        f"{name} (slack_dnd) needs people's own Slack tokens under "
                        "slack.user_tokens: Slack's dnd methods act only on the token's own user"
                    )
        return value

    @field_validator("directory")
    @classmethod
    def _directory_has_microsoft(
        cls, value: DirectorySettings | None, info: ValidationInfo
    ) -> DirectorySettings | None:
        # ``microsoft`` is declared before ``directory``: validated already.
        if value is not None and not isinstance(info.data.get("microsoft"), MicrosoftSettings):
            raise ValueError(
                "directory.microsoft reads the group with the app of the microsoft: "
                "section: add microsoft: (tenant_id, client_id, client_secret)"
            )
        return value

    @model_validator(mode="after")
    def _remember_the_file(self, info: ValidationInfo) -> Self:
        # Private attributes, so they stay out of equality, repr and dumps.
        context = _context(info)
        self._source_file = context.file
        self._index = context.index
        return self

    @property
    def source_file(self) -> str:
        """The file this was loaded from (``"<memory>"`` when built in code)."""
        return self._source_file

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``timezone`` as a ``ZoneInfo``."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def warnings(self) -> tuple[ConfigProblem, ...]:
        """What ``load()`` found valid but most likely not meant (``people:
        []``), each with file, line and key like a problem: ``run`` logs them
        at start and at each reload, ``check`` prints them."""
        return tuple(self._warnings)

    def warn(self, warning: ConfigProblem) -> None:
        """Add a warning (the loader's, while it loads)."""
        self._warnings.append(warning)

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> Position:
        """Line and column (1-based) of the value at ``path`` (of its key with
        ``key=True``), else of the nearest ancestor that has one, else
        ``(None, None)``. Example: ``locate(["rules", 0, "when", "line"])``."""
        return self._index.locate(tuple(path), key=key)

    def problem(
        self, path: Sequence[str | int], message: str, *, key: bool = False
    ) -> ConfigProblem:
        """A ``ConfigProblem`` at ``path`` in this file, rendered like ``load()``'s."""
        line, column = self.locate(path, key=key)
        return ConfigProblem(self._source_file, line, column, key_path(path), message)

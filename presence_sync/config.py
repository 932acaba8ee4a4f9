"""The configuration: one YAML file in, one validated, frozen ``Settings`` out.

This module owns reading the file, ``${VAR}`` interpolation, ``x_file``
secrets, the settings models, and every message an admin reads about a
mistake in the file. ``load()`` works in four steps, in the order of the
sections below:

1. **Reading and positions.** The YAML is composed into nodes (safe loader,
   YAML 1.2 scalars: see ``_Loader``) and turned into plain dicts, lists and
   scalars, while an index keeps the line and column of every key and value
   by key path, e.g. ``("people", 2, "email")``.
2. **Interpolation.** ``${VAR}``, ``${VAR:-default}`` and ``$$`` in every
   string value.
3. **Secret files.** Every secret field ``x`` of any model (found by looking
   at the model's fields, so target options get it too) also accepts
   ``x_file``; the file's content becomes the value.
4. **Models.** pydantic validates the whole file in one go; each target is
   validated in a second phase by the options model of its kind. Every
   pydantic error becomes a ``ConfigProblem`` with file, line, column and
   key path.

All problems found are raised together in one ``errors.ConfigError``. A
mistake in the file never ends in a traceback.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import types
import typing
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeAlias

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import core_schema

from presence_sync.errors import ConfigError, ConfigProblem
from presence_sync.model import Person
from presence_sync.targets.base import (
    STANDARD_KINDS,
    TargetOptions,
    UnknownTargetError,
    known_kinds,
    target_class,
)

__all__ = [
    "ALSO_FROM_FILE",
    "DEFAULT_NFON_URL",
    "DEFAULT_STATE_PATH",
    "Duration",
    "HttpSettings",
    "HttpURL",
    "KeyPath",
    "LoggingSettings",
    "MicrosoftSettings",
    "NfonSettings",
    "PersonSettings",
    "ResyncSettings",
    "Settings",
    "SlackSettings",
    "StateSettings",
    "TargetSpec",
    "TlsSettings",
    "interpolate",
    "load",
    "normalise_number",
    "parse_duration",
]

KeyPath: TypeAlias = tuple[str | int, ...]
"""Where a value sits in the file: ``("people", 2, "email")`` is ``people[2].email``."""

_Position: TypeAlias = tuple[int, int]
_NO_POSITION: Final = (None, None)
_M = typing.TypeVar("_M", bound=BaseModel)


# ---------------------------------------------------------------------------
# 1. Reading the file and remembering positions
# ---------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_MAX_NODES = 100_000
"""Aliases can multiply a small file into a huge tree; no real config comes near this."""


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 core-schema scalars.

    YAML 1.1 reads ``18:00`` as 1080 (base 60), ``0100`` as 64 (octal) and
    ``no`` as false. In a file of clock times, phone numbers and names that
    is a trap, so here only ``true``/``false``, decimal (or ``0o``/``0x``)
    integers and plain floats get a type and every other plain scalar stays a
    string. pydantic still accepts ``yes``/``on`` for boolean fields.
    """


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in {_TAG + "bool", _TAG + "int", _TAG + "float", _TAG + "timestamp"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _TAG + "int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # SafeConstructor would read a leading 0 as octal; YAML 1.2 says decimal.
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "not an integer", node.start_mark
        ) from None


_Loader.add_constructor(_TAG + "int", _construct_int)


@dataclass
class _Index:
    """Line and column (1-based) of each key and each value, by key path."""

    values: dict[KeyPath, _Position] = field(default_factory=dict)
    keys: dict[KeyPath, _Position] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> tuple[int | None, int | None]:
        """The position of ``path`` (its key with ``key=True``, where it has
        one), else that of the nearest ancestor, else ``(None, None)``."""
        exact = (self.keys.get(path) or self.values.get(path)) if key else self.values.get(path)
        if exact is not None:
            return exact
        while path:
            path = path[:-1]
            # An ancestor is best shown by the line that names it.
            found = self.keys.get(path) or self.values.get(path)
            if found is not None:
                return found
        return _NO_POSITION

    def alias(self, new: KeyPath, old: KeyPath) -> None:
        """Make ``new`` point where ``old`` is (``password`` read from ``password_file``)."""
        if old in self.values:
            self.values[new] = self.values[old]
        if old in self.keys:
            self.keys[new] = self.keys[old]


def _position(node: yaml.Node) -> _Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Reader:
    """Turns composed YAML nodes into plain data and fills the index."""

    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.index = _Index()
        self.problems: list[ConfigProblem] = []
        # Values replaced by None after a problem, so no follow-up is reported.
        self.failed: set[KeyPath] = set()
        self._open: set[int] = set()
        self._count = 0

    def _problem(self, node: yaml.Node, path: KeyPath, message: str, *, lost: bool = True) -> None:
        line, column = _position(node)
        self.problems.append(ConfigProblem(self.file, line, column, _render(path), message))
        if lost:
            self.failed.add(path)

    def value(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise ConfigError.single(self.file, "", "too many values (an alias loop?)")
        self.index.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if id(node) in self._open:
            self._problem(node, path, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
                return self._mapping(node, path)
            self._problem(node, path, f"unsupported YAML tag {node.tag}")
            return None
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        first_seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            name = str(key_node.value)
            if name in first_seen:
                self._problem(
                    key_node,
                    (*path, name),
                    f"duplicate key (first given at line {first_seen[name]})",
                    lost=False,
                )
            else:
                first_seen[name] = _position(key_node)[0]
        # ``<<: *anchor`` merges: the merged pairs come first, so keys written
        # in this mapping override them below.
        self.loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "keys must be plain names, not lists or mappings")
                continue
            # Keys are names, never numbers or booleans: ``no:`` stays "no".
            name = str(key_node.value)
            self.index.keys[(*path, name)] = _position(key_node)
            result[name] = self.value(value_node, (*path, name))
        return result


def _read(path: Path, file: str) -> tuple[dict[str, Any], _Reader]:
    """Read and parse the file. Raises ConfigError for anything that leaves
    no mapping to validate; lesser problems (a duplicate key) are left in
    the reader, beside the index of positions."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError.single(file, "", "file not found") from None
    except OSError as exc:
        raise ConfigError.single(file, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError.single(file, "", "the file is not UTF-8 text", line=line) from None

    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError.single(file, "", "the file is empty")
        if not isinstance(root, yaml.MappingNode):
            line, column = _position(root)
            raise ConfigError.single(
                file,
                "",
                "the top level must be a mapping of sections (nfon:, people:, targets:, ...)",
                line,
                column,
            )
        reader = _Reader(loader, file)
        data = reader.value(root, ())
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError.single(
            file, "", f"YAML: character {exc.character!r} is not allowed", line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single(file, "", f"YAML: {exc}") from None
    except RecursionError:
        raise ConfigError.single(file, "", "YAML: values nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):  # the root was a tagged mapping (reported)
        raise ConfigError(reader.problems)
    return data, reader


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if mark is None:
        return ConfigProblem(file, None, None, "", message)
    return ConfigProblem(file, mark.line + 1, mark.column + 1, "", message)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _render(path: Sequence[str | int]) -> str:
    """``("people", 2, "email")`` → ``people[2].email``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


# ---------------------------------------------------------------------------
# 2. ${VAR} interpolation
# ---------------------------------------------------------------------------

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MALFORMED = "malformed ${...}: write ${NAME} or ${NAME:-default}, and $$ for a literal $"


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${NAME}``, ``${NAME:-default}`` and ``$$`` in ``text``.

    ``${NAME:-default}`` uses the default when ``NAME`` is unset *or empty*
    (as the shell does); the default may itself contain ``${...}``. ``$$`` is
    a literal ``$``; a ``$`` before anything but ``{`` or ``$`` stays as it is.
    Raises ``ValueError`` naming the missing variable or the malformation;
    the message never quotes ``text`` (it may be a secret).
    """
    result, _ = _expand(text, 0, environ, nested=False, strict=True)
    return result


def _expand(
    text: str, pos: int, environ: Mapping[str, str], *, nested: bool, strict: bool
) -> tuple[str, int]:
    """Expand from ``pos`` to the end, or (``nested``) to the ``}`` closing a
    default. ``strict=False`` parses a default that will not be used, so a
    variable missing in it is no error."""
    out: list[str] = []
    i = pos
    while i < len(text):
        char = text[i]
        if nested and char == "}":
            return "".join(out), i + 1
        if char != "$" or text[i + 1 : i + 2] not in ("$", "{"):
            out.append(char)
            i += 1
            continue
        if text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        match = _VAR_NAME.match(text, i + 2)
        if match is None:
            raise ValueError(_MALFORMED)
        name, i = match.group(), match.end()
        value = environ.get(name)
        if text.startswith("}", i):
            if value is None and strict:
                raise ValueError(f"environment variable {name} is not set")
            out.append(value or "")
            i += 1
        elif text.startswith(":-", i):
            default, i = _expand(text, i + 2, environ, nested=True, strict=strict and not value)
            out.append(value or default)
        else:
            raise ValueError(_MALFORMED)
    if nested:
        raise ValueError(_MALFORMED)
    return "".join(out), i


# ---------------------------------------------------------------------------
# 3. Secret files (``x_file`` for every secret ``x``)
# ---------------------------------------------------------------------------


class _AlsoFromFile:
    """Type of ``ALSO_FROM_FILE``."""

    def __repr__(self) -> str:
        return "ALSO_FROM_FILE"


ALSO_FROM_FILE: Final = _AlsoFromFile()
"""Marks a field that is no secret but may also be read from ``<name>_file``:
``username: Annotated[str, ALSO_FROM_FILE]``. ``SecretStr`` fields need no mark."""

_MAX_SECRET_BYTES = 1 << 20


def _leaf_types(annotation: Any) -> list[Any]:
    """The alternatives of a type, with ``Annotated`` and unions unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _leaf_types(arg)]
    return [annotation]


def _file_fields(model: type[BaseModel]) -> list[str]:
    """Fields of ``model`` that also accept ``<name>_file``."""
    return [
        name
        for name, info in model.model_fields.items()
        if SecretStr in _leaf_types(info.annotation) or ALSO_FROM_FILE in info.metadata
    ]


def _read_secret(path: Path) -> str:
    """The file's text without trailing newlines. Raises OSError or ValueError."""
    with path.open("rb") as handle:
        raw = handle.read(_MAX_SECRET_BYTES + 1)
    if len(raw) > _MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than 1 MiB")
    try:
        text = raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


# ---------------------------------------------------------------------------
# 4. Models
# ---------------------------------------------------------------------------

DEFAULT_NFON_URL: Final = "https://providersupportdata.cloud-cfg.com/v1"
DEFAULT_STATE_PATH: Final = Path("/var/lib/presence-sync/state.db")


@dataclass(frozen=True, slots=True)
class _Context:
    """What validators need beyond the value: handed in as pydantic's context."""

    base_dir: Path
    environ: Mapping[str, str]


def _context(info: ValidationInfo) -> _Context:
    if isinstance(info.context, _Context):
        return info.context
    # Validated in code rather than by load(): behave as if the file were here.
    return _Context(Path.cwd(), os.environ)


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

_PositiveDuration: TypeAlias = Annotated[Duration, Field(gt=0)]


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


_Text: TypeAlias = Annotated[str, AfterValidator(_filled)]


def _filled_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


_Secret: TypeAlias = Annotated[SecretStr, AfterValidator(_filled_secret)]


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if value == Path():
        raise ValueError("must be a path")
    return value if value.is_absolute() else _context(info).base_dir / value


def _readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"cannot read {value}")
    return value


_ConfigPath: TypeAlias = Annotated[Path, AfterValidator(_resolve_path)]
"""A path; a relative one is taken from the config file's directory."""
_ExistingFile: TypeAlias = Annotated[_ConfigPath, AfterValidator(_readable_file)]


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


def _email(value: str) -> str:
    value = _normalise_email(value)
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise ValueError("not an e-mail address")
    return value


def _normalise_email(value: str) -> str:
    return value.strip().lower()


_Email: TypeAlias = Annotated[str, AfterValidator(_email)]


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name like Europe/Berlin"
        ) from None
    return value


_LISTEN = re.compile(
    r"\[(?P<v6>[^\]]+)\]:(?P<port6>[0-9]{1,5})|(?P<host>[^:\[\]\s]+):(?P<port>[0-9]{1,5})"
)
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` → ``("127.0.0.1", 9477)``; ``"[::1]:9477"`` → ``("::1", 9477)``."""
    match = _LISTEN.fullmatch(text)
    if match is None:
        raise ValueError('expected host:port, e.g. "127.0.0.1:9477" or "[::1]:9477"')
    if match["v6"] is not None:
        host, port = match["v6"], int(match["port6"])
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    else:
        host, port = match["host"], int(match["port"])
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host} is not a host name or IPv4 address")
    if port > 65535:
        raise ValueError("the port must be 0..65535")
    return host, port


def _listen(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError('expected host:port, e.g. "127.0.0.1:9477"')
    _split_listen(value.strip())
    return value.strip()


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class _Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values frozen."""

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


def _thumbprint(value: str) -> str:
    hexdigits = re.sub(r"[\s:]", "", value).upper()
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", hexdigits):
        raise ValueError("a certificate thumbprint is 40 (SHA-1) or 64 (SHA-256) hex digits")
    return hexdigits


class MicrosoftSettings(_Section):
    """``microsoft:``, the Entra ID app for the Teams and Outlook targets.
    It signs in with ``client_secret`` or with ``certificate_file`` +
    ``certificate_thumbprint``: exactly one of the two."""

    tenant_id: _Text
    client_id: _Text
    client_secret: _Secret | None = None
    certificate_file: _ExistingFile | None = None
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


class SlackSettings(_Section):
    """``slack:``, the Slack app token for the Slack targets."""

    token: _Secret
    base_url: HttpURL = "https://slack.com/api/"


class TlsSettings(_Section):
    """``tls:``, trust for every outbound HTTPS connection."""

    ca_bundle: _ExistingFile | None = None


class PersonSettings(_Section):
    """One entry of ``people:``: whose line is mirrored, and how.

    ``email`` is stored lower-cased and is the person's identity;
    ``ids`` maps a target name to the person's id there (skips a lookup);
    ``opt_out`` lists target names this person does not want.
    """

    extension: _Extension
    email: _Email
    name: _Text | None = None
    groups: list[_Text] = []
    ids: dict[str, _Text] = {}
    opt_out: list[str] = []

    def to_person(self) -> Person:
        """The domain ``Person`` of this entry."""
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


class ResyncSettings(_Section):
    """``resync:``, how often everything is recomputed from scratch."""

    interval: _PositiveDuration = 300.0
    directory_interval: _PositiveDuration = 3600.0


class StateSettings(_Section):
    """``state:``, where the applied state is kept. The default path is
    ``$STATE_DIRECTORY/state.db`` under systemd's ``StateDirectory=``, else
    ``/var/lib/presence-sync/state.db``."""

    path: _ConfigPath = DEFAULT_STATE_PATH

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("path") is None:
            directory = _context(info).environ.get("STATE_DIRECTORY")
            path = Path(directory.split(":")[0]) / "state.db" if directory else DEFAULT_STATE_PATH
            return {**data, "path": path}
        return data


class HttpSettings(_Section):
    """``http:``, the health, metrics and status listener; ``listen`` empty
    or null turns it off."""

    listen: Annotated[str | None, BeforeValidator(_listen)] = "127.0.0.1:9477"

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind (IPv6 without brackets), or None when off."""
        return None if self.listen is None else _split_listen(self.listen)


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

    ``rules`` is kept as written (``rules.py`` compiles it); ``locate()`` and
    ``problem()`` give positions in the file for any key path, so that later
    stages report errors the same way ``load()`` does. Secrets are
    ``SecretStr`` and never show in ``repr()``/``str()``; the number lists
    (personal data) are left out of the repr too.
    """

    nfon: NfonSettings
    microsoft: MicrosoftSettings | None = None
    slack: SlackSettings | None = None
    tls: TlsSettings = TlsSettings()
    people: list[PersonSettings] = []
    lists: dict[str, _NumberList] = Field(default={}, repr=False)
    targets: dict[str, TargetSpec] = {}
    rules: list[Any] | None = None
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    resync: ResyncSettings = ResyncSettings()
    state: StateSettings = Field(default_factory=StateSettings)
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()

    _source_file: str = PrivateAttr(default="<memory>")
    _index: _Index = PrivateAttr(default_factory=_Index)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # ``state:`` with every line commented out is null: take the defaults.
        # ``state`` is always validated so its default sees the environment.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (k in _DEFAULTED_SECTIONS and v is None)}
            data.setdefault("state", {})
        return data

    @property
    def source_file(self) -> str:
        """The file this was loaded from (``"<memory>"`` when built in code)."""
        return self._source_file

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """``timezone`` as a ``ZoneInfo``."""
        return zoneinfo.ZoneInfo(self.timezone)

    def locate(
        self, path: Sequence[str | int], *, key: bool = False
    ) -> tuple[int | None, int | None]:
        """Line and column (1-based) of the value at ``path`` (of its key with
        ``key=True``), else of the nearest ancestor that has one, else
        ``(None, None)``. Example: ``locate(["rules", 0, "when", "line"])``."""
        return self._index.locate(tuple(path), key=key)

    def problem(
        self, path: Sequence[str | int], message: str, *, key: bool = False
    ) -> ConfigProblem:
        """A ``ConfigProblem`` at ``path`` in this file, rendered like ``load()``'s."""
        line, column = self.locate(path, key=key)
        return ConfigProblem(self._source_file, line, column, _render(path), message)


# ---------------------------------------------------------------------------
# load(): the four steps together
# ---------------------------------------------------------------------------

_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_ABSENT: Final = object()


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read, check and return the configuration in ``path``.

    ``environ`` (default ``os.environ``) serves ``${VAR}``, and its
    ``CREDENTIALS_DIRECTORY`` and ``STATE_DIRECTORY`` set where relative
    secret files are read and where the state lives by default.

    Raises ``ConfigError`` listing every problem found, each with file,
    line, column and key path; never anything else for a mistake in the
    file. Target kinds are resolved through ``targets.base.target_class``.
    """
    file = os.fspath(path)
    env = os.environ if environ is None else environ
    data, reader = _read(Path(file), file)
    check = _Checker(file, reader, env)

    data = check.interpolate(data, ())
    raw_targets = data.pop("targets", None)
    specs = check.targets(raw_targets)
    data = check.prepare(Settings, data, ())
    check.cross_check(data, raw_targets if isinstance(raw_targets, dict) else {})
    data["targets"] = specs
    settings = check.validate(Settings, data, ())

    if check.problems or settings is None:
        unique = dict.fromkeys(check.problems)
        raise ConfigError(sorted(unique, key=lambda p: (p.line or 0, p.column or 0)))
    settings._source_file = file
    settings._index = reader.index
    return settings


class _Checker:
    """Collects problems while ``load()`` runs; knows the file's positions."""

    def __init__(self, file: str, reader: _Reader, environ: Mapping[str, str]) -> None:
        self.file = file
        self.index = reader.index
        self.environ = environ
        self.problems = reader.problems
        self.context = _Context(Path(file).absolute().parent, environ)
        # Paths already reported (a bad YAML tag, ${VAR} or x_file): pydantic's
        # follow-up complaint about the same value would only add noise.
        self.failed = reader.failed
        # Which model validated the mapping at each path, for "did you mean".
        self.models: dict[KeyPath, type[BaseModel]] = {}

    def at(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        line, column = self.index.locate(path, key=key)
        self.problems.append(ConfigProblem(self.file, line, column, _render(path), message))

    # -- step 2 --------------------------------------------------------------

    def interpolate(self, value: Any, path: KeyPath) -> Any:
        """``value`` with every string expanded; failures are recorded."""
        if isinstance(value, str):
            try:
                return interpolate(value, self.environ)
            except ValueError as exc:
                self.at(path, str(exc))
                self.failed.add(path)
                return value
        if isinstance(value, dict):
            return {k: self.interpolate(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, (*path, i)) for i, v in enumerate(value)]
        return value

    # -- step 3 --------------------------------------------------------------

    def prepare(self, model: type[BaseModel], data: Any, path: KeyPath) -> Any:
        """``data`` (to be validated by ``model``) with every ``x_file`` read
        into ``x``, in nested models too."""
        if not isinstance(data, dict):
            return data
        self.models[path] = model
        data = dict(data)
        for name in _file_fields(model):
            self._secret_file(data, name, path)
        for name, info in model.model_fields.items():
            if name in data:
                data[name] = self._descend(info.annotation, data[name], (*path, name))
        return data

    def _descend(self, annotation: Any, value: Any, path: KeyPath) -> Any:
        for leaf in _leaf_types(annotation):
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                value = self.prepare(leaf, value, path)
                continue
            origin, args = typing.get_origin(leaf), typing.get_args(leaf)
            if (
                origin in (list, tuple, set, frozenset, Sequence)
                and args
                and isinstance(value, list)
            ):
                value = [self._descend(args[0], v, (*path, i)) for i, v in enumerate(value)]
            elif origin in (dict, Mapping) and len(args) == 2 and isinstance(value, dict):
                value = {k: self._descend(args[1], v, (*path, k)) for k, v in value.items()}
        return value

    def _secret_file(self, data: dict[str, Any], name: str, path: KeyPath) -> None:
        file_key = f"{name}_file"
        if file_key not in data:
            return
        file_path, target = (*path, file_key), (*path, name)
        given = data.pop(file_key)
        if given is None:
            return
        if name in data:
            self.at(file_path, f"give either {name} or {file_key}, not both", key=True)
            return
        self.failed.add(target)
        if not isinstance(given, str) or not given.strip():
            self.at(file_path, "must be the path of a file")
            return
        secret_path = Path(given)
        if not secret_path.is_absolute():
            base = self.environ.get("CREDENTIALS_DIRECTORY")
            secret_path = (Path(base) if base else self.context.base_dir) / secret_path
        try:
            data[name] = _read_secret(secret_path)
        except OSError as exc:
            self.at(file_path, f"cannot read {secret_path}: {exc.strerror or exc}")
            return
        except ValueError as exc:
            self.at(file_path, str(exc))
            return
        self.failed.discard(target)
        self.index.alias(target, file_path)

    # -- step 4 --------------------------------------------------------------

    def validate(self, model: type[_M], data: Any, path: KeyPath) -> _M | None:
        """``model`` validated from ``data``; None (and problems recorded) if invalid."""
        try:
            return model.model_validate(data, context=self.context)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                self._pydantic_problem(error, data, path)
            return None

    def _pydantic_problem(self, error: Any, data: Any, base: KeyPath) -> None:
        kind: str = error["type"]
        relative, value, on_key = _follow(data, error["loc"], kind)
        path = base + relative
        if any(path[: len(done)] == done for done in self.failed):
            return
        if kind == "missing":
            line, column = self.index.locate(path[:-1], key=True)
            self.problems.append(
                ConfigProblem(self.file, line, column, _render(path), "required key missing")
            )
            return
        if kind == "extra_forbidden":
            self.at(path, self._unknown_key(path), key=True)
            return
        if kind in ("value_error", "assertion_error"):
            message = str(error["ctx"]["error"])
        else:
            message = str(error["msg"])
        # A section or list is shown by the line of its key, not its first child.
        self.at(path, message, key=on_key or isinstance(value, dict | list))

    def _unknown_key(self, path: KeyPath) -> str:
        model = self.models.get(path[:-1])
        if model is None:
            return "unknown key"
        allowed = list(model.model_fields) + [f"{n}_file" for n in _file_fields(model)]
        if issubclass(model, TargetOptions):
            allowed.append("kind")
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        if close:
            return f"unknown key (did you mean {close[0]}?)"
        return f"unknown key; allowed here: {', '.join(sorted(allowed))}"

    # -- targets: the second phase ---------------------------------------------

    def targets(self, raw: Any) -> dict[str, TargetSpec]:
        """Each entry under ``targets:`` validated by its kind's ``Options``."""
        path: KeyPath = ("targets",)
        if not raw:
            hint = "list at least one under targets:, e.g. `log: {}` for a dry run"
            self.at(path, f"no target enabled: {hint}", key=True)
            return {}
        if not isinstance(raw, dict):
            self.at(path, "must be a mapping: target name → its options", key=True)
            return {}
        specs: dict[str, TargetSpec] = {}
        for name, given in raw.items():
            spec = self._target(name, given, (*path, name))
            if spec is not None:
                specs[name] = spec
        return specs

    def _target(self, name: str, given: Any, path: KeyPath) -> TargetSpec | None:
        if not _TARGET_NAME.fullmatch(name):
            self.at(path, "a target name is letters, digits, _ and -", key=True)
            return None
        options = {} if given is None else given
        if not isinstance(options, dict):
            self.at(path, "must be a mapping of options ({} for none)", key=True)
            return None
        kind_path = (*path, "kind") if "kind" in options else path
        options = dict(options)
        kind = options.pop("kind", name)
        if not isinstance(kind, str):
            self.at(kind_path, "must be the name of a target kind")
            return None
        try:
            cls = target_class(kind)
        except UnknownTargetError:
            known = ", ".join(known_kinds())
            self.at(kind_path, f"unknown target kind {kind!r}; known kinds: {known}", key=True)
            return None
        except Exception as exc:  # a broken plugin: the admin's to fix, no traceback
            self.at(kind_path, f"target kind {kind!r} cannot be loaded: {exc!r}", key=True)
            return None
        options = self.prepare(cls.Options, options, path)
        validated = self.validate(cls.Options, options, path)
        if validated is None:
            return None
        return TargetSpec(name=name, kind=kind, options=validated)

    # -- checks across entries ---------------------------------------------------

    def cross_check(self, data: dict[str, Any], targets: Mapping[str, Any]) -> None:
        """Duplicate people, and target names in ids/opt_out that name nothing."""
        people = data.get("people")
        if not isinstance(people, list):
            return
        self._unique(people, "extension", lambda v: v.strip())
        self._unique(people, "email", _normalise_email)
        # The standard kinds count even when not enabled, so that ids and
        # opt-outs may stay in the file while a target is switched off.
        names = set(targets) | set(known_kinds()) | STANDARD_KINDS
        for i, entry in enumerate(people):
            if not isinstance(entry, dict):
                continue
            opt_out = entry.get("opt_out")
            if isinstance(opt_out, list):
                for j, target in enumerate(opt_out):
                    if isinstance(target, str) and target not in names:
                        self.at(("people", i, "opt_out", j), _no_target(target, names))
            ids = entry.get("ids")
            if isinstance(ids, dict):
                for target in ids:
                    if target not in names:
                        self.at(("people", i, "ids", target), _no_target(target, names), key=True)

    def _unique(self, people: list[Any], key: str, normalise: Callable[[str], str]) -> None:
        first: dict[str, int] = {}
        for i, entry in enumerate(people):
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, str):
                continue
            norm = normalise(value)
            if norm in first:
                j = first[norm]
                line = self.index.locate(("people", j, key))[0]
                self.at(("people", i, key), f"duplicate {key}: people[{j}] (line {line}) has it")
            else:
                first[norm] = i


def _no_target(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"no target or target kind is named {name!r}{hint}"


def _child(value: Any, part: str | int) -> Any:
    if isinstance(value, dict) and isinstance(part, str):
        return value.get(part, _ABSENT)
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return _ABSENT


def _follow(data: Any, loc: Sequence[str | int], kind: str) -> tuple[KeyPath, Any, bool]:
    """The part of a pydantic error location that exists in ``data``, the
    value found there, and whether the error is about a key (``[key]``).

    Locations also name validators and union members, which are no place
    in the file; those parts are skipped. A missing key is kept as the
    last part."""
    path: list[str | int] = []
    value = data
    on_key = False
    for i, part in enumerate(loc):
        child = _child(value, part)
        if child is not _ABSENT:
            path.append(part)
            value = child
        elif part == "[key]":
            on_key = True
        elif kind == "missing" and i == len(loc) - 1:
            path.append(part)
            value = _ABSENT
    return tuple(path), value, on_key

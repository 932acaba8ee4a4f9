"""``resolve()`` (and ``load()``): the four steps together, and every message about a mistake.

``_Checker`` collects problems while the steps run: interpolation (step 2),
secret files (step 3) and validation (step 4) record each finding with the
key path it concerns, and the index of step 1 turns that into file, line and
column. pydantic's errors are translated here, so an admin never reads a
pydantic location or a traceback.
"""

from __future__ import annotations

import os
import re
import typing
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from presence_sync.config.interpolation import interpolate
from presence_sync.config.models import (
    Settings,
    TargetSpec,
    ValidationContext,
    normalise_email,
)
from presence_sync.config.reading import Reader, read
from presence_sync.config.secrets import UNREAD_SECRET, file_fields, leaf_types, read_secret
from presence_sync.errors import ConfigError, ConfigProblem, KeyPath, key_path, unknown
from presence_sync.model import STATUS_FIELDS
from presence_sync.rules import RuleSet, compile_rules
from presence_sync.targets.base import (
    SHARED_SECTIONS,
    STANDARD_KINDS,
    TargetFactory,
    TargetInfo,
    TargetOptions,
    UnknownTargetError,
    known_kinds,
    target_class,
)

__all__ = ["Loaded", "load", "resolve"]

_M = typing.TypeVar("_M", bound=BaseModel)

_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_ABSENT: Final = object()


@dataclass(frozen=True)
class Loaded:
    """A configuration file with everything the runtime needs resolved once:
    the ``settings``, the compiled ``rules`` (without the directory's names:
    ``RuleSet.with_names``) and the class of every enabled target by name."""

    settings: Settings
    rules: RuleSet
    classes: Mapping[str, TargetFactory]

    @property
    def infos(self) -> Mapping[str, TargetInfo]:
        """Each enabled target's class metadata, by target name."""
        return {name: cls.info for name, cls in self.classes.items()}


def load(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    secrets: Callable[[KeyPath], bool] | None = None,
) -> Settings:
    """The settings of ``path``, checked completely as ``resolve`` does (the
    rules included), for callers that need nothing more."""
    return resolve(path, environ, secrets=secrets).settings


def resolve(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    secrets: Callable[[KeyPath], bool] | None = None,
) -> Loaded:
    """Read, check and resolve the configuration in ``path``: its settings,
    its rules compiled, its targets' classes found.

    ``environ`` (default ``os.environ``) serves ``${VAR}``, and its
    ``CREDENTIALS_DIRECTORY`` and ``STATE_DIRECTORY`` set where relative
    secret files are read and where the state lives by default.
    ``secrets`` says which ``x_file`` secrets (by the key path of ``x``) are
    read: the admin's commands that talk to the running daemon or only read
    the rules need none of NFON's, Microsoft's or Slack's, which only the
    service can read (systemd credentials). A secret not read holds
    ``UNREAD_SECRET``, and a private key file is not opened. Default: all.

    Raises ``ConfigError`` listing every problem found, each with file,
    line, column and key path, the rules' problems included; never anything
    else for a mistake in the file. Target kinds are resolved through
    ``targets.base.target_class``. What is valid but probably not meant
    (``people: []``) is in ``Settings.warnings``, for the caller to show.
    """
    file = os.fspath(path)
    env = os.environ if environ is None else environ
    data, reader = read(Path(file), file)
    check = _Checker(file, reader, env, secrets)

    data = check.interpolate(data, ())
    raw_targets = data.pop("targets", None)
    specs = check.targets(raw_targets, data)
    data = check.prepare(Settings, data, ())
    check.cross_check(data, raw_targets if isinstance(raw_targets, dict) else {})
    data["targets"] = specs
    settings = check.validate(Settings, data, ())
    rules = check.rules(data, settings)

    if check.problems or settings is None or rules is None:
        unique = dict.fromkeys(check.problems)
        raise ConfigError(sorted(unique, key=lambda p: (p.line or 0, p.column or 0)))
    for warning in check.warnings(settings):
        settings.warn(warning)
    return Loaded(settings, rules, {name: check.classes[name] for name in settings.targets})


def _credential_hint(given: str, environ: Mapping[str, str]) -> str:
    """What to do about a relative secret file that is not there: it is a
    systemd credential the unit must load (``LoadCredential=``), and
    ``check`` reads the credential store with ``--credentials``."""
    if Path(given).is_absolute() or "/" in given.strip():
        return ""
    name = given.strip()
    hint = (
        f" (a systemd credential: add `LoadCredential={name}:/etc/credstore/presence-sync/"
        f"{name}` to the unit, see systemd/README.md"
    )
    if not environ.get("CREDENTIALS_DIRECTORY"):
        hint += "; outside the service `presence-sync check --credentials DIR` reads it from DIR"
    return hint + ")"


class _Checker:
    """Collects problems while ``load()`` runs; knows the file's positions."""

    def __init__(
        self,
        file: str,
        reader: Reader,
        environ: Mapping[str, str],
        secrets: Callable[[KeyPath], bool] | None = None,
    ) -> None:
        self.file = file
        self.secrets = secrets
        self.index = reader.index
        self.environ = environ
        self.problems = reader.problems
        self.context = ValidationContext(
            Path(file).absolute().parent,
            environ,
            read_secrets=secrets is None,
            file=file,
            index=reader.index,
        )
        # Paths already reported (a bad YAML tag, ${VAR} or x_file): pydantic's
        # follow-up complaint about the same value would only add noise.
        self.failed = reader.failed
        # Which model validated the mapping at each path, for "did you mean".
        self.models: dict[KeyPath, type[BaseModel]] = {}
        # Every target whose kind could be loaded, valid options or not: the
        # rules are checked against these.
        self.infos: dict[str, TargetInfo] = {}
        # The class of every target whose kind was found, looked up once.
        self.classes: dict[str, TargetFactory] = {}

    def at(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        line, column = self.index.locate(path, key=key)
        self.problems.append(ConfigProblem(self.file, line, column, key_path(path), message))

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
        for name in file_fields(model):
            self._secret_file(data, name, path)
        for name, info in model.model_fields.items():
            if name in data:
                data[name] = self._descend(info.annotation, data[name], (*path, name))
        return data

    def _descend(self, annotation: Any, value: Any, path: KeyPath) -> Any:
        for leaf in leaf_types(annotation):
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
        if self.secrets is not None and not self.secrets(target):
            data[name] = UNREAD_SECRET
            self.failed.discard(target)
            self.index.alias(target, file_path)
            return
        secret_path = Path(given)
        if not secret_path.is_absolute():
            base = self.environ.get("CREDENTIALS_DIRECTORY")
            secret_path = (Path(base) if base else self.context.base_dir) / secret_path
        try:
            data[name] = read_secret(secret_path, key=key_path(file_path))
        except FileNotFoundError as exc:
            message = f"cannot read {secret_path}: {exc.strerror or exc}"
            self.at(file_path, message + _credential_hint(given, self.environ))
            return
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
        if kind == "value_error" and any(done[:-1] == path for done in self.failed):
            # A section's own check ("no credential: give client_secret")
            # after one of its secret files could not be read: already said.
            return
        if kind == "missing":
            line, column = self.index.locate(path[:-1], key=True)
            self.problems.append(
                ConfigProblem(self.file, line, column, key_path(path), "required key missing")
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
        allowed = [] if model is None else list(model.model_fields)
        if model is not None:
            allowed += [f"{n}_file" for n in file_fields(model)]
            if issubclass(model, TargetOptions):
                allowed.append("kind")
        return unknown("key", path[-1], sorted(allowed))

    # -- targets: the second phase ---------------------------------------------

    def targets(self, raw: Any, root: Mapping[str, Any]) -> dict[str, TargetSpec]:
        """Each entry under ``targets:`` validated by its kind's ``Options``,
        and the sections its kind requires looked for in ``root``."""
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
            spec = self._target(name, given, (*path, name), root)
            if spec is not None:
                specs[name] = spec
        return specs

    def _target(
        self, name: str, given: Any, path: KeyPath, root: Mapping[str, Any]
    ) -> TargetSpec | None:
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
        # Until the kind is known, the rules may set any field for this target:
        # one problem about the kind, not one more per rule that names it.
        self.infos[name] = TargetInfo(kind=kind, description="", fields=frozenset(STATUS_FIELDS))
        try:
            cls = target_class(kind)
        except UnknownTargetError:
            self.at(kind_path, unknown("target kind", kind, known_kinds()), key=True)
            return None
        except Exception as exc:  # a broken plugin: the admin's to fix, no traceback
            self.at(kind_path, f"target kind {kind!r} cannot be loaded: {exc!r}", key=True)
            return None
        info = getattr(cls, "info", None)
        if not isinstance(info, TargetInfo):
            self.at(kind_path, f"target kind {kind!r} cannot be loaded: no TargetInfo", key=True)
            return None
        self.infos[name] = info
        self.classes[name] = cls
        self._required_sections(name, kind, info, root, path)
        options = self.prepare(cls.Options, options, path)
        validated = self.validate(cls.Options, options, path)
        if validated is None:
            return None
        return TargetSpec(name=name, kind=kind, options=validated)

    def _required_sections(
        self, name: str, kind: str, info: TargetInfo, root: Mapping[str, Any], path: KeyPath
    ) -> None:
        """Each section in ``info.requires`` may be shared and is in the file
        (or has a default, like ``tls:``)."""
        for section in info.requires:
            if section not in SHARED_SECTIONS:
                allowed = ", ".join(sorted(SHARED_SECTIONS))
                self.at(
                    path,
                    f"target kind {kind!r} asks for {section!r}, which is not given to "
                    f"targets (only: {allowed})",
                    key=True,
                )
            elif root.get(section) is None and Settings.model_fields[section].default is None:
                self.at(path, f"{name} needs a {section}: section", key=True)

    # -- the rules and the warnings ---------------------------------------------

    def rules(self, data: Mapping[str, Any], settings: Settings | None) -> RuleSet | None:
        """``rules:`` compiled (the one compilation the runtime uses), its
        problems recorded with all the others so they are reported in one
        go; None when there are any."""
        raw = data.get("rules")
        if raw is not None and not isinstance(raw, list):
            return None  # validation said so already
        if settings is not None:
            lists: Mapping[str, Mapping[str, str | None]] = settings.lists
            timezone = settings.timezone
        else:
            # The lists' own problems are reported by validation; the rules
            # only need to know which lists exist.
            raw_lists = data.get("lists")
            lists = {str(n): {} for n in raw_lists} if isinstance(raw_lists, dict) else {}
            timezone = _valid_zone(data.get("timezone"))
        people, groups = _people_and_groups(data.get("people"))
        # People from a directory (an Entra group) are known only at run
        # time, so a rule may name anyone once `directory:` is configured.
        named: frozenset[str] | None = None if data.get("directory") is not None else people
        try:
            return compile_rules(
                raw,
                targets=self.infos,
                lists=lists,
                timezone=timezone,
                problem=self.problem,
                locate=self.locate,
                people=named,
                groups=groups,
            )
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return None

    def locate(self, path: Sequence[str | int]) -> tuple[int | None, int | None]:
        return self.index.locate(tuple(path))

    def problem(self, path: Sequence[str | int], message: str) -> ConfigProblem:
        line, column = self.index.locate(tuple(path))
        return ConfigProblem(self.file, line, column, key_path(path), message)

    def warnings(self, settings: Settings) -> list[ConfigProblem]:
        """Valid, but most likely not what the admin meant."""
        found: list[ConfigProblem] = []
        if not settings.people and settings.directory is None:
            found.append(
                self.problem(
                    ("people",),
                    "no one is listed, so no phone line is shown anywhere: add one entry "
                    "(extension, email) per person",
                )
            )
        return found

    # -- checks across entries ---------------------------------------------------

    def cross_check(self, data: dict[str, Any], targets: Mapping[str, Any]) -> None:
        """Duplicate people, and target names in ids/opt_out that name nothing."""
        people = data.get("people")
        if not isinstance(people, list):
            return
        if data.get("directory") is None:
            # Only a group member can be a person without an extension.
            for i, entry in enumerate(people):
                if isinstance(entry, dict) and entry.get("extension") is None:
                    self.at(("people", i, "extension"), "required key missing")
        self._unique(people, "extension", lambda v: v.strip())
        self._unique(people, "email", normalise_email)
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


def _valid_zone(value: Any) -> str:
    """``value`` if it names a time zone, else UTC (validation reports it)."""
    if isinstance(value, str) and value:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return "UTC"
        return value
    return "UTC"


def _people_and_groups(raw: Any) -> tuple[frozenset[str], frozenset[str]]:
    """The e-mail addresses (normalised) and groups of the entries under
    ``people:`` as written, so rules are checked against them even when some
    entry is invalid (validation reports that one)."""
    emails: set[str] = set()
    groups: set[str] = set()
    for entry in raw if isinstance(raw, list) else ():
        if not isinstance(entry, dict):
            continue
        email = entry.get("email")
        if isinstance(email, str):
            emails.add(normalise_email(email))
        listed = entry.get("groups")
        if isinstance(listed, list):
            groups.update(g.strip() for g in listed if isinstance(g, str))
    return frozenset(emails), frozenset(groups)


def _no_target(name: str, names: set[str]) -> str:
    return unknown("target or target kind", name, sorted(names))


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

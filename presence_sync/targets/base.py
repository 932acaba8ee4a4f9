"""The target contract, its metadata, and the registry that finds targets by kind.

A target is one place a person's status can be shown (Teams presence, a Slack
status, a webhook...). It owns the wire calls and the translation of its
client's errors into ``errors.TransientError`` / ``PermanentError`` /
``AuthError``; the engine owns ordering, retries, rate limits and the store.

Built-in targets are listed in ``BUILTIN`` as ``module:Class`` strings and
imported only when configured. Third-party packages add targets through the
entry-point group ``presence_sync.targets``::

    [project.entry-points."presence_sync.targets"]
    pager = "acme_presence.pager:PagerTarget"

A plugin target runs inside the daemon's process, with its user, its files
and its memory. ``TargetInfo.requires`` scopes what a target is *handed*
(``TargetEnv.sections``): an API that keeps a well-behaved target from
depending on sections it has no business with, not isolation. Code in the
process can reach every secret the daemon holds (the NFON password, every
token) through the interpreter. Install only plugins you would trust with
all of them (``docs/security.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel, ConfigDict

from presence_sync.clock import Clock
from presence_sync.model import Applied, LineView, Person, Status

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "SHARED_SECTIONS",
    "STANDARD_KINDS",
    "Change",
    "Memory",
    "Target",
    "TargetEnv",
    "TargetFactory",
    "TargetInfo",
    "TargetOptions",
    "UndeclaredSectionError",
    "UnknownTargetError",
    "known_kinds",
    "missing_sections",
    "target_class",
    "target_env",
]

ENTRY_POINT_GROUP = "presence_sync.targets"

BUILTIN: Mapping[str, str] = {
    "log": "presence_sync.targets.log:LogTarget",
    "slack_dnd": "presence_sync.targets.slack_dnd:SlackDndTarget",
    "slack_status": "presence_sync.targets.slack:SlackStatusTarget",
    "webhook": "presence_sync.targets.webhook:WebhookTarget",
    "teams_presence": "presence_sync.targets.teams:TeamsPresenceTarget",
    "teams_status_message": "presence_sync.targets.teams:TeamsStatusMessageTarget",
    "outlook_calendar": "presence_sync.targets.outlook:OutlookCalendarTarget",
}


STANDARD_KINDS: frozenset[str] = frozenset(BUILTIN)
"""The built-in kinds (those DESIGN.md names). A person's ids and opt-outs
may mention them even while they are not enabled (they are then unused), so
switching a target off does not invalidate ``people:``; any other name must
be an enabled target. A rule must name enabled targets only: one that sets a
target that is off could never decide anything."""


SHARED_SECTIONS: frozenset[str] = frozenset({"microsoft", "slack", "tls", "timezone"})
"""The top-level configuration keys a target may declare in ``TargetInfo.requires``.
``nfon:``, ``people:``, ``state:`` and the rest are never handed to a target."""

_T = TypeVar("_T")


class TargetOptions(BaseModel):
    """Base of every target's options model (its block under ``targets:``).
    Unknown keys are errors, like everywhere in the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """What a target declares about itself, as class-level metadata.

    - ``fields``: the ``Status`` fields it shows; a rule setting any other
      field for this target is a configuration error;
    - ``rate``/``burst``: its token bucket (requests per second, bucket size),
      shared by every person of that target;
    - ``concurrency``: requests in flight at once;
    - ``restores``: it can give the person back their own status;
    - ``refresh_before``: seconds before ``Applied.expires`` at which the
      engine re-applies an unchanged status (Teams sessions, Slack expirations);
    - ``remote_state``: what it applies stays at a remote side until removed.
      The engine then records each status as "maybe applied" before sending
      it (write-ahead), so a crash during the request still leaves the store
      knowing what may need taking back. Only a target with nothing to take
      back (``log``) turns it off;
    - ``check``: an optional check of the fixed values a rule sets for this
      target (a mapping of field → value, templated fields left out): it
      returns a message when the target cannot show them (Teams takes only
      five presence pairs), which the rules compiler reports at the rule's
      line; ``None`` when they are fine;
    - ``requires``: the configuration sections it is handed (names from
      ``SHARED_SECTIONS``, e.g. ``("microsoft", "tls")``). It gets these and
      its own options, nothing else; a section that is optional in the file
      (``microsoft:``, ``slack:``) must then be there.
    """

    kind: str
    description: str
    fields: frozenset[str]
    rate: float = 10.0
    burst: int = 10
    concurrency: int = 4
    restores: bool = False
    refresh_before: float = 60.0
    timeout: float = 30.0
    remote_state: bool = True
    requires: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any]], str | None] | None = None


class UndeclaredSectionError(LookupError):
    """A target asked its ``TargetEnv`` for a section that is not in its
    ``TargetInfo.requires``: a bug in the target, not in the configuration."""


@dataclass(frozen=True, slots=True)
class TargetEnv:
    """What the composition root hands a target it builds; see ``target_env``.

    ``sections`` holds exactly the configuration sections the target declared
    in ``TargetInfo.requires`` (e.g. ``sections.MicrosoftSettings`` under
    ``"microsoft"``), read-only; ``verify`` is what outbound HTTPS trusts:
    ``tls.ca_bundle`` as a string when the target requires ``tls`` and one is
    set, else True (the system store).
    """

    clock: Clock
    user_agent: str
    sections: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    verify: str | bool = True

    @overload
    def section(self, name: str) -> Any: ...

    @overload
    def section(self, name: str, kind: type[_T]) -> _T: ...

    def section(self, name: str, kind: type[Any] | None = None) -> Any:
        """The section ``name``; with ``kind``, checked to be an instance of it
        (``env.section("microsoft", MicrosoftSettings)``).

        Raises ``UndeclaredSectionError`` when the target did not declare
        ``name`` in ``TargetInfo.requires``, ``TypeError`` when it is no ``kind``.
        """
        try:
            value = self.sections[name]
        except KeyError:
            declared = ", ".join(sorted(self.sections)) or "none"
            raise UndeclaredSectionError(
                f"section {name!r} was not declared in TargetInfo.requires (declared: {declared})"
            ) from None
        if kind is not None and not isinstance(value, kind):
            raise TypeError(f"section {name!r} is a {type(value).__name__}, not a {kind.__name__}")
        return value


def missing_sections(info: TargetInfo, source: object) -> list[str]:
    """The sections in ``info.requires`` that ``source`` (the root settings,
    read by attribute) lacks or leaves empty, in declared order."""
    return [name for name in info.requires if getattr(source, name, None) is None]


def target_env(info: TargetInfo, source: object, *, clock: Clock, user_agent: str) -> TargetEnv:
    """The environment of one target of class metadata ``info``.

    ``source`` is the root configuration (``config.Settings``); only the
    attributes named in ``info.requires`` are read from it, so the target never
    sees ``nfon:`` or any section it did not ask for. Raises ``ValueError`` for
    a declared name outside ``SHARED_SECTIONS`` and ``LookupError`` naming the
    missing sections when ``source`` lacks one (``config.load`` reports both
    as configuration errors first, with the target's line).
    """
    foreign = [name for name in info.requires if name not in SHARED_SECTIONS]
    if foreign:
        raise ValueError(f"target kind {info.kind!r} may not require {', '.join(foreign)}")
    missing = missing_sections(info, source)
    if missing:
        raise LookupError(f"target kind {info.kind!r} needs the section(s) {', '.join(missing)}")
    sections = {name: getattr(source, name) for name in info.requires}
    ca_bundle = getattr(sections.get("tls"), "ca_bundle", None)
    return TargetEnv(
        clock=clock,
        user_agent=user_agent,
        sections=MappingProxyType(sections),
        verify=str(ca_bundle) if ca_bundle else True,
    )


class Memory(Protocol):
    """Durable scratch space of one (target, person), backed by the store.

    A target saves the person's own status here *before* it overwrites it,
    and keeps ids of objects it created (calendar events) until it removed
    them, so a crash at any instant leaves enough to restore.
    """

    def saved(self) -> Mapping[str, Any] | None:
        """The person's own status as saved by this target, if any."""
        ...

    def save(self, doc: Mapping[str, Any] | None) -> None:
        """Remember (or, with ``None``, forget) the person's own status."""
        ...

    def objects(self) -> Mapping[str, str]:
        """Open external objects of this person: kind → external id."""
        ...

    def put_object(self, kind: str, external_id: str) -> None: ...

    def drop_object(self, kind: str) -> None: ...

    def cached_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        """A cached lookup (e-mail → Slack user id), unless older than ``max_age`` seconds."""
        ...

    def cache_id(self, namespace: str, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One unit of work for a target: make ``person`` show ``desired``.

    ``desired is None`` means "nothing from us": remove what we set and give
    the person back what they had. ``view`` is the line view the desired
    status was computed from (``None`` when the person is gone).
    """

    person: Person
    desired: Status | None
    applied: Applied | None
    view: LineView | None
    memory: Memory = field(repr=False)


@runtime_checkable
class Target(Protocol):
    """A place to show status. Implementations must be idempotent: applying
    the same change twice leaves the same result."""

    info: ClassVar[TargetInfo]
    name: str

    async def apply(self, change: Change) -> Applied:
        """Make the remote side show ``change.desired`` and return what it now shows.

        Raises ``TransientError`` (retry later, ``retry_after`` pauses the whole
        target), ``PermanentError`` (do not retry this change), ``AuthError``
        (credentials rejected: the target pauses and alerts).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown or when replaced."""
        ...


class TargetFactory(Protocol):
    """A target class: metadata, an options model, and a constructor."""

    info: ClassVar[TargetInfo]
    Options: ClassVar[type[TargetOptions]]

    def __call__(self, name: str, options: Any, env: TargetEnv) -> Target: ...


class UnknownTargetError(LookupError):
    """No built-in or installed target has this kind."""


def known_kinds() -> list[str]:
    """Every kind that can be configured: built-ins and installed plugins."""
    kinds = set(BUILTIN)
    kinds.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(kinds)


def target_class(kind: str) -> TargetFactory:
    """The class registered for ``kind``; built-ins win over plugins.

    Raises ``UnknownTargetError`` when nothing provides ``kind``.
    """
    ref = BUILTIN.get(kind)
    if ref is not None:
        module_name, _, attr = ref.partition(":")
        cls: TargetFactory = getattr(importlib.import_module(module_name), attr)
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            loaded: TargetFactory = ep.load()
            return loaded
    raise UnknownTargetError(kind)

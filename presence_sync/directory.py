"""The directory: which person sits behind which NFON extension.

It joins the admin's ``people:`` list and, with ``directory.microsoft``, the
members of an Entra group (``update_members``, matched by
``presence_sync.entra``) with NFON's ``/extensions/phone/data`` (extension
numbers and names) into ``model.Person`` values, and reports every change
as a ``DirectoryChange`` so the engine can clear people who left at every
target. It also names internal numbers for ``{party_name}``.

A typed person is *active* when their extension is listed by NFON; until
NFON data first arrives everyone typed is active, since nothing says
otherwise. A group member is active once both NFON's extensions and the
members are known and the member matched exactly one extension that no
entry under ``people:`` has (an entry there wins for its extension, and for
its e-mail address). Conflicts and the unmatched are in ``matching``.

A refresh of the members that would remove more than half of the group's
people is held (``held``) until the next refresh says the same: an Entra
hiccup must not give 600 people their status back at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from presence_sync.entra import ENTRA_ID, Matching, Member, match
from presence_sync.errors import ConfigError
from presence_sync.model import ExtensionInfo, Person, frozen_map
from presence_sync.ops.logging import kv
from presence_sync.ops.metrics import DIRECTORY_CONFLICTS, DIRECTORY_PEOPLE, DIRECTORY_UNMATCHED

__all__ = ["Directory", "DirectoryChange", "GroupLike", "Held", "PersonSettingsLike"]

log = logging.getLogger(__name__)

SUMMARY_LIMIT: Final = 100
"""At most this many conflicts and unmatched of each kind in ``summary``."""


class PersonSettingsLike(Protocol):
    """One entry of ``people:`` (``config.PersonSettings`` or anything shaped like it)."""

    @property
    def extension(self) -> str | None: ...
    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def groups(self) -> Iterable[str]: ...
    @property
    def ids(self) -> Mapping[str, str]: ...
    @property
    def opt_out(self) -> Iterable[str]: ...


class GroupLike(Protocol):
    """``directory.microsoft`` (``config.EntraGroupSettings`` or alike)."""

    @property
    def group(self) -> str: ...
    @property
    def extension_from(self) -> str: ...
    @property
    def number_prefix(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Held:
    """A members refresh not taken: it would remove ``removing`` of the
    group's ``people``. The next refresh with the same members takes it."""

    removing: int
    people: int


@dataclass(frozen=True, slots=True)
class DirectoryChange:
    """What a directory update did to the set of active people.

    - ``added``: newly configured, or whose extension NFON lists again;
    - ``removed``: left the configuration or their extension is gone: the
      engine clears what we set for them at every target;
    - ``changed``: same key, but a different extension, name, ids, groups or
      opt-outs (the new ``Person`` values).
    """

    added: tuple[Person, ...] = ()
    removed: tuple[Person, ...] = ()
    changed: tuple[Person, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class Directory:
    """extension → Person, from ``people:`` joined with NFON's
    ``/extensions/phone/data`` names.

    A configured name wins over NFON's. The directory never drops what it
    knows on bad input: a ``people`` list with a repeated e-mail or
    extension raises ``ConfigError`` and leaves the directory as it was.
    """

    def __init__(
        self, people: Sequence[PersonSettingsLike], group: GroupLike | None = None
    ) -> None:
        """Raises ``ConfigError`` when two entries share an e-mail or an extension."""
        self._configured, self._extras = _configured(people)
        self._group = group
        self._members: tuple[Member, ...] | None = None
        self._kept: dict[str, Person] = {}
        """The group's people before a reload changed the group or
        ``extension_from``, kept until the new group's first read."""
        self._pending: frozenset[Member] | None = None
        self.matching: Matching | None = None
        """How the group's members matched NFON's extensions (None: not yet)."""
        self.held: Held | None = None
        """A members refresh held back (see the module docstring)."""
        self._nfon: dict[str, str | None] | None = None
        self._active: dict[str, Person] = {}
        self._by_extension: dict[str, Person] = {}
        self.unmapped: frozenset[str] = frozenset()
        """NFON extensions no configured person sits behind (ignored, counted)."""
        self._none_mapped = False
        self._rebuild()

    @property
    def loaded(self) -> bool:
        """True once NFON extension data arrived."""
        return self._nfon is not None

    def person(self, extension: str) -> Person | None:
        """The active person behind ``extension``, if any."""
        return self._by_extension.get(extension)

    def people(self) -> list[Person]:
        """Every active person, in configuration order."""
        return list(self._active.values())

    def update_extensions(self, infos: Sequence[ExtensionInfo]) -> DirectoryChange:
        """Take NFON's full extension list: set names, deactivate people whose
        extension is no longer listed, and record unmapped extensions.

        An empty list is not taken: a tenant without a single extension is
        an NFON hiccup, and believing it would clear everyone's status:
        typed people and the group's alike (a group-only deployment has
        nobody typed)."""
        if not infos and (self._configured or self._active or self._group is not None):
            log.warning("NFON listed no extensions at all; keeping the directory as it was")
            return DirectoryChange((), (), ())
        nfon: dict[str, str | None] = {}
        for info in infos:
            nfon[info.extension] = info.name or None
        self._nfon = nfon
        return self._rebuild()

    def replace_people(
        self, people: Sequence[PersonSettingsLike], group: GroupLike | None = None
    ) -> DirectoryChange:
        """Take a new ``people:`` list and ``directory.microsoft``
        (configuration reload).

        A new ``number_prefix`` alone re-matches the members held at once.
        A new group or ``extension_from`` needs a new read from Graph: until
        its first success the group's people stay as they were (a failed
        read must not clear them everywhere), and that read is held like
        any refresh when it would remove more than half of them. Without
        ``directory.microsoft`` any more, the group's people leave.

        Raises ``ConfigError`` like the constructor, keeping the old list.
        """
        configured, extras = _configured(people)
        old = self._group
        if group != old:
            self._pending = None
            self.held = None
            if group is None or old is None:
                self._members = None
                self._kept = {}
            elif (group.group, group.extension_from) != (old.group, old.extension_from):
                if self._members is not None:
                    self._kept = {
                        k: p for k, p in self._active.items() if k not in self._configured
                    }
                self._members = None
        self._configured, self._extras = configured, extras
        self._group = group
        return self._rebuild()

    @property
    def group(self) -> GroupLike | None:
        """``directory.microsoft``, if configured."""
        return self._group

    def update_members(self, members: Sequence[Member]) -> DirectoryChange:
        """Take the group's members as Graph listed them (a refresh).

        A list that would remove more than half of the group's people is
        held (``held``, logged) and taken only when the next refresh brings
        the same members; an unchanged list changes nothing and costs no
        rebuild."""
        fresh = tuple(members)
        if self._members is not None and frozenset(fresh) == frozenset(self._members):
            self._pending = None
            self.held = None
            return DirectoryChange()
        before = sum(1 for k in self._active if k not in self._configured)
        if before >= 2 and self._nfon is not None and self._pending != frozenset(fresh):
            active, _ = self._compute(fresh)
            removing = sum(1 for k in self._active if k not in self._configured and k not in active)
            if removing * 2 > before:
                self._pending = frozenset(fresh)
                self.held = Held(removing, before)
                log.warning(
                    "directory refresh held: it would remove more than half of the group's "
                    "people; the next refresh that says the same is taken",
                    extra=kv(event="directory_held", removing=removing, people=before),
                )
                return DirectoryChange()
        self._pending = None
        self.held = None
        self._members = fresh
        self._kept = {}
        return self._rebuild()

    def summary(self, limit: int = SUMMARY_LIMIT) -> dict[str, Any] | None:
        """The group's matching for the status API (``docs/api.md``), None
        without ``directory.microsoft``: the conflicts (each with what to
        change), the unmatched members and extensions (at most ``limit``
        of each, with their counts), and a held refresh. Phone numbers are
        left out: only e-mail addresses and extensions."""
        group = self._group
        if group is None:
            return None
        matching = self.matching
        held = self.held
        doc: dict[str, Any] = {
            "group": group.group,
            "extension_from": group.extension_from,
            "loaded": matching is not None,
            "people": sum(1 for k in self._active if k not in self._configured),
            "held": None if held is None else {"removing": held.removing, "people": held.people},
            "conflicts": [],
            "unmatched_members": {"count": 0, "emails": []},
            "unmatched_extensions": {"count": 0, "extensions": []},
        }
        if matching is not None:
            doc["conflicts"] = [
                {
                    "kind": c.kind,
                    "extensions": list(c.extensions),
                    "members": [m.email for m in c.members],
                    "change": c.describe(group.extension_from, values=False),
                }
                for c in matching.conflicts[:limit]
            ]
            doc["unmatched_members"] = {
                "count": len(matching.unmatched_members),
                "emails": [m.email for m in matching.unmatched_members[:limit]],
            }
            doc["unmatched_extensions"] = {
                "count": len(matching.unmatched_extensions),
                "extensions": list(matching.unmatched_extensions[:limit]),
            }
        return doc

    def name_for_number(self, number: str) -> str | None:
        """The display name of an internal extension: the active person's
        name (configured, else NFON's), else NFON's name for it; None for
        numbers that are no known extension."""
        person = self._by_extension.get(number)
        if person is not None and person.name:
            return person.name
        if self._nfon is None:
            return None
        return self._nfon.get(number)

    def _compute(
        self, members: Sequence[Member] | None
    ) -> tuple[dict[str, Person], Matching | None]:
        """The active people (typed, then the group's) and the matching."""
        nfon = self._nfon
        active: dict[str, Person] = {}
        for key, person in self._configured.items():
            if nfon is not None:
                if person.extension not in nfon:
                    continue
                nfon_name = nfon[person.extension]
                if person.name is None and nfon_name:
                    person = replace(person, name=nfon_name)
            active[key] = person
        typed = {p.extension for p in self._configured.values()}
        if self._group is not None and members is None and nfon is not None:
            for key, kept in self._kept.items():
                if key not in active and kept.extension not in typed and kept.extension in nfon:
                    active[key] = kept
        if self._group is None or members is None or nfon is None:
            return active, None
        free = {e: n for e, n in nfon.items() if e not in typed}
        found = match(
            (m for m in members if m.key not in self._configured),
            free,
            extension_from=self._group.extension_from,
            number_prefix=self._group.number_prefix,
        )
        for hit in sorted(found.matches, key=lambda h: h.extension):
            member = hit.member
            extra = self._extras.get(member.key)
            name = member.display_name or nfon.get(hit.extension) or None
            ids = {ENTRA_ID: member.id}
            if extra is not None:
                ids.update(extra.ids)
            active[member.key] = Person(
                key=member.key,
                email=member.email,
                extension=hit.extension,
                name=extra.name if extra is not None and extra.name else name,
                groups=extra.groups if extra is not None else frozenset(),
                ids=frozen_map(ids),
                opt_out=extra.opt_out if extra is not None else frozenset(),
            )
        return active, found

    def _rebuild(self) -> DirectoryChange:
        nfon = self._nfon
        active, matching = self._compute(self._members)
        self.matching = matching
        if matching is not None:
            DIRECTORY_CONFLICTS.set(len(matching.conflicts))
            DIRECTORY_UNMATCHED.labels(kind="member").set(len(matching.unmatched_members))
            DIRECTORY_UNMATCHED.labels(kind="extension").set(len(matching.unmatched_extensions))
        before = self._active
        change = DirectoryChange(
            added=tuple(p for k, p in active.items() if k not in before),
            removed=tuple(p for k, p in before.items() if k not in active),
            changed=tuple(p for k, p in active.items() if k in before and before[k] != p),
        )
        self._active = active
        self._by_extension = {p.extension: p for p in active.values()}
        if nfon is not None:
            self.unmapped = frozenset(nfon) - self._by_extension.keys()
            mapped = len(nfon) - len(self.unmapped)
            DIRECTORY_PEOPLE.labels(mapping="mapped").set(mapped)
            DIRECTORY_PEOPLE.labels(mapping="unmapped").set(len(self.unmapped))
            log.info(
                "directory updated",
                extra=kv(
                    extensions=len(nfon),
                    mapped=mapped,
                    unmapped=len(self.unmapped),
                    configured_not_listed=sum(
                        1 for p in self._configured.values() if p.extension not in nfon
                    ),
                    added=len(change.added),
                    removed=len(change.removed),
                    changed=len(change.changed),
                ),
            )
            self._warn_if_none_mapped(nfon, active)
            if self.unmapped and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "extensions without a configured person",
                    extra=kv(extensions=",".join(sorted(self.unmapped))),
                )
        return change

    def _warn_if_none_mapped(
        self, nfon: Mapping[str, str | None], active: Mapping[str, Person]
    ) -> None:
        """Warn once (and once more when it is fixed) when NFON lists
        extensions but none of them is a configured person's: every status
        would stay untouched, which looks like a daemon that does nothing."""
        # With nobody configured, the configuration's own warning said it all.
        none_mapped = bool(nfon) and bool(self._configured) and not active
        if none_mapped and not self._none_mapped:
            listed = ", ".join(sorted(p.extension for p in self._configured.values())[:5])
            log.warning(
                "no configured person sits behind an extension NFON lists, so no phone "
                "line is shown anywhere: compare people[].extension with "
                "`presence-sync nfon watch`",
                extra=kv(
                    configured=len(self._configured),
                    nfon_extensions=len(nfon),
                    configured_extensions=listed or "none",
                ),
            )
        elif self._none_mapped and not none_mapped:
            log.info("configured people are on NFON extensions again", extra=kv(mapped=len(active)))
        self._none_mapped = none_mapped


def _configured(
    people: Sequence[PersonSettingsLike],
) -> tuple[dict[str, Person], dict[str, Person]]:
    """Configured people by key, with configured names only (NFON's come
    later), and the entries without an extension (what they add to a group
    member with their e-mail) by key."""
    out: dict[str, Person] = {}
    extras: dict[str, Person] = {}
    extensions: dict[str, str] = {}
    problems: list[str] = []
    for entry in people:
        key = entry.email.strip().lower()
        if key in out or key in extras:
            problems.append(f"{entry.email} is listed twice")
            continue
        if entry.extension is None:
            extras[key] = Person(
                key=key,
                email=entry.email.strip(),
                extension="",
                name=entry.name or None,
                groups=frozenset(entry.groups),
                ids=frozen_map(entry.ids),
                opt_out=frozenset(entry.opt_out),
            )
            continue
        other = extensions.get(entry.extension)
        if other is not None:
            problems.append(f"extension {entry.extension} is given to both {other} and {key}")
            continue
        extensions[entry.extension] = key
        out[key] = Person(
            key=key,
            email=entry.email.strip(),
            extension=entry.extension,
            name=entry.name or None,
            groups=frozenset(entry.groups),
            ids=frozen_map(entry.ids),
            opt_out=frozenset(entry.opt_out),
        )
    if problems:
        raise ConfigError.single("<people>", "people", "; ".join(problems))
    return out, extras

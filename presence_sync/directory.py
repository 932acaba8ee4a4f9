"""The directory: which configured person sits behind which NFON extension.

It joins the admin's ``people:`` list with NFON's ``/extensions/phone/data``
(extension numbers and names) into ``model.Person`` values, and reports every
change as a ``DirectoryChange`` so the engine can clear people who left at
every target. It also names internal numbers for ``{party_name}``.

A person is *active* when their extension is listed by NFON; until NFON data
first arrives everyone configured is active, since nothing says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from presence_sync.errors import ConfigError
from presence_sync.model import ExtensionInfo, Person, frozen_map
from presence_sync.ops.logging import kv
from presence_sync.ops.metrics import DIRECTORY_PEOPLE

__all__ = ["Directory", "DirectoryChange", "PersonSettingsLike"]

log = logging.getLogger(__name__)


class PersonSettingsLike(Protocol):
    """One entry of ``people:`` (``config.PersonSettings`` or anything shaped like it)."""

    @property
    def extension(self) -> str: ...
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

    def __init__(self, people: Sequence[PersonSettingsLike]) -> None:
        """Raises ``ConfigError`` when two entries share an e-mail or an extension."""
        self._configured = _configured(people)
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
        an NFON hiccup, and believing it would clear everyone's status."""
        if not infos and self._configured:
            log.warning("NFON listed no extensions at all; keeping the directory as it was")
            return DirectoryChange((), (), ())
        nfon: dict[str, str | None] = {}
        for info in infos:
            nfon[info.extension] = info.name or None
        self._nfon = nfon
        return self._rebuild()

    def replace_people(self, people: Sequence[PersonSettingsLike]) -> DirectoryChange:
        """Take a new ``people:`` list (configuration reload).

        Raises ``ConfigError`` like the constructor, keeping the old list.
        """
        self._configured = _configured(people)
        return self._rebuild()

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

    def _rebuild(self) -> DirectoryChange:
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
                    configured_not_listed=len(self._configured) - len(active),
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


def _configured(people: Sequence[PersonSettingsLike]) -> dict[str, Person]:
    """Configured people by key, with configured names only (NFON's come later)."""
    out: dict[str, Person] = {}
    extensions: dict[str, str] = {}
    problems: list[str] = []
    for entry in people:
        key = entry.email.strip().lower()
        if key in out:
            problems.append(f"{entry.email} is listed twice")
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
    return out

"""Members of an Entra group matched to NFON extensions: pure functions.

NFON knows an extension only by its number and a name; who sits behind it
comes from the group's members (``directory.microsoft``). ``match`` takes
the members (``Member``, what Graph said, already without disabled
accounts) and NFON's extensions and returns a ``Matching``: who sits where,
with where each mapping came from, the **conflicts** and the **unmatched**.

Nobody is guessed:

- With ``number_prefix`` a number matches extension ``E`` when its digits
  are exactly the prefix's digits followed by ``E``.
- Without it, a number matches ``E`` when its digits end with ``E``; when
  they end with several listed extensions ("…4530112" ends with "112" and
  with "12") the longest is the one meant, and shorter ones are not counted.
- ``name`` matches NFON's name for the extension to the display name, with
  case, accents and spacing folded.
- Two members on one extension, or one member on two extensions, is a
  conflict: none of the people in it is synced until it is resolved (in
  Entra, or by an entry under ``people:``, which wins for its extension).
- A member on no extension, and an extension no member sits on (a
  reception desk, a fax), are unmatched: listed, never an error.

Numbers are read as people write them: spaces, dashes, dots, slashes,
brackets, a leading ``+`` or ``00``, and the German trunk ``(0)`` in
``+49 (0)89 …`` (which is dropped, not read as a digit).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

__all__ = [
    "ENTRA_ID",
    "EXTENSION_SOURCES",
    "Conflict",
    "ExtensionFrom",
    "Match",
    "Matching",
    "Member",
    "digits",
    "fold_name",
    "match",
]

ExtensionFrom: TypeAlias = Literal[
    "businessPhones",
    "mobilePhone",
    "employeeId",
    "name",
    "extensionAttribute1",
    "extensionAttribute2",
    "extensionAttribute3",
    "extensionAttribute4",
    "extensionAttribute5",
    "extensionAttribute6",
    "extensionAttribute7",
    "extensionAttribute8",
    "extensionAttribute9",
    "extensionAttribute10",
    "extensionAttribute11",
    "extensionAttribute12",
    "extensionAttribute13",
    "extensionAttribute14",
    "extensionAttribute15",
]

EXTENSION_SOURCES: Final[tuple[str, ...]] = ExtensionFrom.__args__  # type: ignore[attr-defined]
"""Every value ``directory.microsoft.extension_from`` accepts."""

ENTRA_ID: Final = "entra"
"""The ``Person.ids`` key of a group member's Entra object id: the Graph
targets use it and never look the person up by e-mail."""

_TRUNK = re.compile(r"\(\s*0\s*\)")


@dataclass(frozen=True, slots=True)
class Member:
    """One enabled user of the group, as Graph listed them.

    ``values`` are what the chosen ``extension_from`` holds (every business
    phone; one value for the others; the display name for ``name``).
    ``email`` is the mail address, else the UPN: the person's identity.
    """

    id: str
    email: str
    display_name: str
    values: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.email.strip().lower()


@dataclass(frozen=True, slots=True)
class Match:
    """``member`` sits on ``extension`` because their attribute held ``value``."""

    member: Member
    extension: str
    value: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """An ambiguous mapping; nobody in it is synced.

    ``kind`` is ``"extension"`` (several ``members`` on one extension) or
    ``"member"`` (one member on several ``extensions``); ``values`` are the
    attribute values that matched, in the order of ``members`` or
    ``extensions``."""

    kind: Literal["extension", "member"]
    extensions: tuple[str, ...]
    members: tuple[Member, ...]
    values: tuple[str, ...]

    def describe(self, source: str, *, values: bool = True) -> str:
        """What is wrong and what to change, for ``check`` and the page
        (``values=False``: without the phone numbers that matched)."""
        if self.kind == "extension":
            pairs = zip(self.members, self.values, strict=True)
            who = ", ".join(f"{m.email} ({v})" if values else m.email for m, v in pairs)
            return (
                f"extension {self.extensions[0]} matches {len(self.members)} members: {who}; "
                f"change {source} in Entra so only one of them has it, or give the extension "
                "to one person under people:"
            )
        member = self.members[0]
        where = ", ".join(
            f"{e} ({v})" if values else e for e, v in zip(self.extensions, self.values, strict=True)
        )
        return (
            f"{member.email} matches {len(self.extensions)} extensions: {where}; "
            f"keep one in {source} in Entra, or give one of these extensions to "
            f"{member.email} under people:"
        )


@dataclass(frozen=True, slots=True)
class Matching:
    """The outcome of ``match``."""

    matches: tuple[Match, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    unmatched_members: tuple[Member, ...] = ()
    unmatched_extensions: tuple[str, ...] = ()
    by_extension: Mapping[str, Match] = field(default_factory=dict)


def digits(number: str) -> str:
    """The digits of a phone number as written: ``"+49 (0)89 45300-12"`` →
    ``"49894530012"``; a leading ``00`` is the same as ``+``."""
    text = _TRUNK.sub("", number).strip()
    found = "".join(c for c in text if c.isdigit() and c.isascii())
    if text.startswith("00") and not text.startswith("+"):
        found = found[2:]
    return found


def fold_name(name: str) -> str:
    """A name with case, accents and spacing folded (``"Ben  Müller"`` and
    ``"ben muller"`` are the same person)."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def _candidates(
    value: str,
    extension_from: str,
    number_prefix: str | None,
    extensions: Mapping[str, str | None],
    names: Mapping[str, list[str]],
) -> list[str]:
    """The extensions ``value`` matches (see the module docstring)."""
    if extension_from == "name":
        return list(names.get(fold_name(value), ()))
    found = digits(value)
    if not found:
        return []
    if number_prefix is not None:
        prefix = digits(number_prefix)
        if not found.startswith(prefix):
            return []
        rest = found[len(prefix) :]
        return [rest] if rest in extensions else []
    # The longest listed extension the digits end with.
    for length in range(len(found), 0, -1):
        tail = found[-length:]
        if tail in extensions:
            return [tail]
    return []


def match(
    members: Iterable[Member],
    extensions: Mapping[str, str | None],
    *,
    extension_from: str,
    number_prefix: str | None = None,
) -> Matching:
    """Who of ``members`` sits on which of ``extensions`` (number → NFON's
    name, or None), as described in the module docstring. Extensions and
    members are taken in the order given; the outcome is the same for any
    order (the lists in it are sorted)."""
    names: dict[str, list[str]] = {}
    if extension_from == "name":
        for extension, name in extensions.items():
            if name:
                names.setdefault(fold_name(name), []).append(extension)
    # member key → {extension: value}
    found: dict[str, dict[str, str]] = {}
    people: dict[str, Member] = {}
    for member in members:
        people[member.key] = member
        hits = found.setdefault(member.key, {})
        for value in member.values:
            for extension in _candidates(value, extension_from, number_prefix, extensions, names):
                hits.setdefault(extension, value)
    conflicts: list[Conflict] = []
    in_conflict: set[str] = set()
    taken: set[str] = set()
    for key in sorted(found):
        hits = found[key]
        if len(hits) > 1:
            ordered = sorted(hits)
            conflicts.append(
                Conflict("member", tuple(ordered), (people[key],), tuple(hits[e] for e in ordered))
            )
            in_conflict.add(key)
            taken.update(ordered)
    on: dict[str, list[str]] = {}
    for key, hits in found.items():
        for extension in hits:
            on.setdefault(extension, []).append(key)
    matches: list[Match] = []
    for extension in sorted(on):
        keys = sorted(on[extension])
        taken.add(extension)
        if len(keys) > 1:
            conflicts.append(
                Conflict(
                    "extension",
                    (extension,),
                    tuple(people[k] for k in keys),
                    tuple(found[k][extension] for k in keys),
                )
            )
            in_conflict.update(keys)
        elif keys[0] not in in_conflict:
            matches.append(Match(people[keys[0]], extension, found[keys[0]][extension]))
    unmatched_members = tuple(
        people[k] for k in sorted(found) if not found[k] and k not in in_conflict
    )
    unmatched_extensions = tuple(e for e in sorted(extensions) if e not in taken)
    return Matching(
        matches=tuple(matches),
        conflicts=tuple(conflicts),
        unmatched_members=unmatched_members,
        unmatched_extensions=unmatched_extensions,
        by_extension={m.extension: m for m in matches},
    )

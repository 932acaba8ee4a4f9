"""One world for the simulators: the same people in NFON, Entra and Slack.

``presence-sync sim nfon``, ``sim microsoft`` and ``sim slack`` each take
``--world FILE``, a YAML list of people::

    - {extension: "100", name: Anna Schmidt, email: anna@example.com}
    - {extension: "101", name: Ben Müller, email: ben@example.com,
       phone: "+49 (0)89 45300-101"}

and seed themselves from it: NFON gets the extensions and names; Entra gets
a user per person (business phone ``phone``, default ``number_prefix`` +
extension) in the group ``Phone users``; Slack gets a colleague per e-mail.
A configuration with ``directory.microsoft`` then works against all three
started by hand, with nobody posted one by one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

__all__ = ["GROUP", "PREFIX", "Person", "add_argument", "read", "seed_graph"]

GROUP: Final = "Phone users"
PREFIX: Final = "+49 89 45300"
"""The company number in front of every extension, when ``phone`` is not given."""


@dataclass(frozen=True, slots=True)
class Person:
    extension: str
    name: str
    email: str
    phone: str

    @property
    def handle(self) -> str:
        """A Slack name: the e-mail's local part."""
        return self.email.split("@")[0]


def read(path: Path) -> list[Person]:
    """The people of a world file; ``ValueError`` naming the entry that is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of people (extension, name, email)")
    people: list[Person] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), (str, int)) for k in ("extension", "name", "email")
        ):
            raise ValueError(f"{path}: entry {i + 1} needs extension, name and email")
        extension = str(entry["extension"])
        phone = entry.get("phone")
        people.append(
            Person(
                extension=extension,
                name=str(entry["name"]),
                email=str(entry["email"]),
                phone=str(phone) if phone is not None else f"{PREFIX} {extension}",
            )
        )
    return people


def world_file(text: str) -> list[Person]:
    """``argparse`` type of ``--world``."""
    try:
        return read(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", type=world_file, default=None, metavar="FILE",
                        help="a YAML list of people {extension, name, email, phone?} "
                             "shared by sim nfon, microsoft and slack")  # fmt: skip


def seed_graph(sim: object, people: list[Person]) -> str:
    """Add each person as an Entra user in the group ``GROUP`` of ``sim``
    (a ``GraphSim``); returns the group's object id."""
    from presence_sync.sim.graph_sim import GraphSim

    assert isinstance(sim, GraphSim)
    group = sim.add_group(GROUP)
    for person in people:
        user = sim.add_user(person.email, display_name=person.name)
        sim.change_user(user, businessPhones=[person.phone])
        sim.sign_in_client(user, "Available")
        sim.add_member(group, user)
    return group

"""The desired-state book: who is configured, what each line shows (the
daemon's only store of line views), and what every target should show for
each person. Pure: no I/O, no asyncio, no clock
of its own (callers pass ``now``).

A person's desired status is ``UNKNOWN`` until their line is known (an
observed view of their extension, or the first complete resync), so a restart
does not clear everyone's "On a call" before NFON has said who is on a call.
People known only from the store's rows (*departed*: not, or not yet known to
be, configured) want nothing from us once ``set_people`` has said who is
configured.

A person an admin paused (``hold``) wants nothing from us at the held
targets, whatever their line shows and whether it is known yet: they get
their own status back and are then left alone. The rules' answer is still
kept, so a ``release`` knows at once what to show again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Final, Protocol

from presence_sync.model import LineView, Person, Status

__all__ = ["UNKNOWN", "Book", "Decider", "Desired", "Unknown"]


class Unknown:
    """Type of ``UNKNOWN`` (``isinstance(desired, Unknown)`` narrows ``Desired``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = Unknown()
"""The desired status of a configured person whose line is not known yet
(before the first full state from NFON): such keys are left alone."""

Desired = Status | None | Unknown


class Decider(Protocol):
    """The rules, as the engine sees them (``rules.RuleSet`` is one)."""

    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> Mapping[str, Status | None]:
        """The desired status of every enabled target for ``person``; a target
        missing from the result gets ``None`` (nothing from us). Fills ``why``
        (when given) with target → the name of the rule that decided it, for
        logs and the status page. Must not raise."""
        ...


class Book:
    """People, departed people, line views and rules → desired status per
    (person, target). Every changing method returns the person keys whose
    desired status may have changed, for the caller to look at."""

    def __init__(self, rules: Decider) -> None:
        self._rules = rules
        self._people: dict[str, Person] = {}
        self._people_known = False
        self._departed: dict[str, Person] = {}
        self._by_extension: dict[str, list[str]] = {}
        self._views: dict[str, LineView] = {}
        self._complete = False
        self._desired: dict[str, Mapping[str, Status | None]] = {}
        # Which rule decided each target's entry in ``_desired`` (absent: none).
        self._why: dict[str, Mapping[str, str]] = {}
        self._holds: dict[str, frozenset[str] | None] = {}

    @property
    def people(self) -> Mapping[str, Person]:
        """Configured people by key."""
        return self._people

    def everyone(self) -> list[str]:
        """Keys of configured and departed people."""
        return [*self._people, *self._departed]

    def known(self) -> dict[str, Person]:
        """Every person the engine may act for, configured ones winning."""
        return {**self._departed, **self._people}

    def departed(self) -> Mapping[str, Person]:
        """People known only from the store's rows, by key."""
        return self._departed

    def waiting(self) -> set[str]:
        """Keys of configured people whose desired status is ``UNKNOWN``
        (their line is not known yet), but for those paused at every target,
        who wait for nothing."""
        if not self._people_known:
            return set(self._departed)
        waiting = self._people.keys() - self._desired.keys()
        if self._holds:
            waiting -= {key for key, targets in self._holds.items() if targets is None}
        return waiting

    def person(self, key: str) -> Person | None:
        return self._people.get(key) or self._departed.get(key)

    def line(self, extension: str) -> LineView | None:
        """The view the decisions for ``extension`` were made from (the one
        line book of the daemon: ``lines.Lines`` folds events onto it)."""
        return self._views.get(extension)

    def line_count(self) -> int:
        """Extensions with a view."""
        return len(self._views)

    def view_of(self, key: str) -> LineView | None:
        """The line view of a configured person (None for departed ones)."""
        person = self._people.get(key)
        return None if person is None else self._views.get(person.extension)

    def rule_for(self, key: str, target: str) -> str | None:
        """The name of the rule behind ``desired_for(key, target)``: None when
        no rule decided it (nothing matched, the line is not known yet, the
        person left the configuration, an admin paused it)."""
        if self._holds and self.held(key, target):
            return None
        why = self._why.get(key)
        return None if why is None else why.get(target)

    def held(self, key: str, target: str) -> bool:
        """Whether an admin paused ``target`` (or every target) for ``key``."""
        if key not in self._holds:
            return False
        targets = self._holds[key]
        return targets is None or target in targets

    def desired_for(self, key: str, target: str) -> Desired:
        if self._holds and self.held(key, target):
            return None
        desired = self._desired.get(key)
        if desired is not None:
            return desired.get(target)
        if key in self._people or not self._people_known:
            return UNKNOWN
        return None

    # --- changes ------------------------------------------------------------------------

    def hold(self, key: str, targets: frozenset[str] | None) -> None:
        """Leave ``targets`` (``None``: every target) of ``key`` alone: they
        want nothing from us until ``release``. Replaces an earlier hold."""
        self._holds[key] = targets

    def release(self, key: str) -> bool:
        """End the hold of ``key``; False when there was none."""
        if key not in self._holds:
            return False
        del self._holds[key]
        return True

    def set_rules(self, rules: Decider, now: datetime) -> list[str]:
        self._rules = rules
        return self.reevaluate(now)

    def set_people(
        self, people: Iterable[Person], now: datetime, held: Callable[[str], bool]
    ) -> list[str]:
        """Who is configured now; ``held(key)`` tells whether any target has a
        row for a person, so one who left stays known until cleared."""
        fresh = {p.key: p for p in people}
        old = self._people
        first = not self._people_known
        self._people = fresh
        self._people_known = True
        by_extension: dict[str, list[str]] = {}
        for person in fresh.values():
            by_extension.setdefault(person.extension, []).append(person.key)
        self._by_extension = by_extension
        touched: list[str] = []
        for key, person in old.items():
            if key not in fresh:
                self._desired.pop(key, None)
                self._why.pop(key, None)
                if held(key):
                    self._departed[key] = person
                touched.append(key)
        for key, person in fresh.items():
            self._departed.pop(key, None)
            if old.get(key) != person:
                self._evaluate(person, now)
                touched.append(key)
        if first:
            touched.extend(self._departed)
        return touched

    def observe(self, view: LineView, now: datetime) -> list[str]:
        """The newest view of one extension; returns the people on it."""
        self._views[view.extension] = view
        keys = self._by_extension.get(view.extension)
        if not keys:
            return []
        for key in keys:
            self._decide(self._people[key], view, now)
        return keys

    def resync(self, views: Iterable[LineView], complete: bool, now: datetime) -> list[str]:
        """A full (``complete``) or partial state; see ``Engine.resync``."""
        if complete:
            self._views = {v.extension: v for v in views}
            self._complete = True
            people: Iterable[Person] = self._people.values()
        else:
            extensions: set[str] = set()
            for view in views:
                self._views[view.extension] = view
                extensions.add(view.extension)
            people = [p for p in self._people.values() if p.extension in extensions]
        keys: list[str] = []
        for person in people:
            self._evaluate(person, now)
            keys.append(person.key)
        if complete:
            keys.extend(self._departed)
        return keys

    def reevaluate(self, now: datetime) -> list[str]:
        for person in self._people.values():
            self._evaluate(person, now)
        return self.everyone()

    def add_departed(self, person: Person) -> None:
        """A person found in the store's rows; kept unless configured."""
        if person.key not in self._people:
            self._departed.setdefault(person.key, person)

    def settle_departed(self, person: Person, held: bool) -> None:
        """After a departed person's row changed: forget them once no target
        ``held`` a row for them any more."""
        if person.key in self._people:
            return
        if held:
            self._departed.setdefault(person.key, person)
        else:
            self._departed.pop(person.key, None)

    def _evaluate(self, person: Person, now: datetime) -> None:
        view = self._views.get(person.extension)
        if view is None:
            if not self._complete:
                self._desired.pop(person.key, None)
                self._why.pop(person.key, None)
                return
            view = LineView(extension=person.extension)
        self._decide(person, view, now)

    def _decide(self, person: Person, view: LineView, now: datetime) -> None:
        why: dict[str, str] = {}
        self._desired[person.key] = self._rules.evaluate(person, view, now, why=why)
        self._why[person.key] = why

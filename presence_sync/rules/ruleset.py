"""The compiled rules at run time: ``RuleSet``, a pure function of (person, line, time).

``compiler.compile_rules`` builds one from the YAML; this module is the hot
path. Everything that can be decided when the configuration is loaded is
decided then: conditions are small predicates, each rule knows the bit mask
of the targets it can still decide, templates are parsed into parts, and a
status without a template is one frozen ``Status`` shared by every
evaluation. Evaluation allocates the result dict and nothing else on the
common path.

The compiled parts (``Rule``, ``Condition``, ``Template``, ``Window``) are
public inside the ``rules`` package for the compiler and ``explain``; outside
it only ``RuleSet`` is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

from presence_sync.model import Direction, LineView, Person, Status

__all__ = [
    "GETTERS",
    "TEMPLATE_FIELDS",
    "Condition",
    "NameLookup",
    "Output",
    "Predicate",
    "Rule",
    "RuleSet",
    "Template",
    "Window",
    "digits",
    "no_name",
]

NameLookup = Callable[[str], str | None]
Predicate = Callable[[Person, LineView, datetime], bool]

TEMPLATE_FIELDS: Final = (
    "direction",
    "party_name",
    "party_number",
    "since",
    "line",
    "presence",
    "name",
)

_RENDER_CACHE_SIZE = 512
_UNKNOWN = "unknown"


def no_name(number: str) -> str | None:
    """The name lookup of rules not yet handed the directory's: no names."""
    return None


def digits(number: str) -> str:
    """The digits of ``number`` (how lists and calls are compared)."""
    if number.isascii() and number.isdigit():
        return number
    return "".join(c for c in number if "0" <= c <= "9")


# --- the compiled form ---------------------------------------------------------------


class Window:
    """A weekly time window in one zone. Bounds are minutes of the day; an end
    before the start spans midnight, and the part after midnight belongs to
    the day the window opened (fri 22:00-06:00 covers Saturday 03:00).

    Zone conversion is the costly part, so the answer is memoised per UTC
    minute: every zone offset in use is a whole number of minutes.
    """

    __slots__ = ("_answer", "_minute", "days", "end", "start", "zone")

    def __init__(self, days: frozenset[int], start: int, end: int, zone: tzinfo) -> None:
        self.days = days
        self.start = start
        self.end = end
        self.zone = zone
        self._minute = -1
        self._answer = False

    def __call__(self, person: Person, view: LineView, now: datetime) -> bool:
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        minute = int(now.timestamp() // 60)
        if minute != self._minute:
            self._answer = self.contains(now)
            self._minute = minute
        return self._answer

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return day in self.days
        return minute < self.end and (day - 1) % 7 in self.days


Getter = Callable[["RuleSet", Person, LineView, tzinfo], str]


def _direction(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    call = view.call
    return call.direction.value if call is not None else Direction.UNKNOWN.value


def _party_name(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    call = view.call
    if call is None or not call.party:
        return _UNKNOWN
    # An external "112" is not extension 112: only ask the directory for
    # parties that are (or may be) inside the K-Account.
    if call.external is not True:
        name = rules._names(call.party)
        if name:
            return name
    return rules._list_names.get(digits(call.party)) or _UNKNOWN


def _party_number(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    call = view.call
    return call.party if call is not None and call.party else _UNKNOWN


def _since(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    call = view.call
    when = call.since if call is not None and call.since is not None else view.since
    return "" if when is None else _clock(when, zone)


@functools.lru_cache(maxsize=1024)
def _clock(when: datetime, zone: tzinfo) -> str:
    # Memoised: a call's start time is rendered again at every event of the call.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    local = when.astimezone(zone)
    return f"{local.hour:02d}:{local.minute:02d}"


def _line(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    return view.line.value


def _presence(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    return view.presence.value


def _name(rules: RuleSet, person: Person, view: LineView, zone: tzinfo) -> str:
    return person.name or person.email.partition("@")[0]


GETTERS: Final[Mapping[str, Getter]] = {
    "direction": _direction,
    "party_name": _party_name,
    "party_number": _party_number,
    "since": _since,
    "line": _line,
    "presence": _presence,
    "name": _name,
}
assert set(GETTERS) == set(TEMPLATE_FIELDS)

# (literal text, index into the template's values or -1, format spec)
Part = tuple[str, int, str]


class Template:
    """A status with at least one templated field. Rendered statuses are cached
    by the values of the fields the template uses, so a thousand people on
    calls with "On a call since {since}" share a few dozen objects."""

    __slots__ = ("_cache", "fixed", "getters", "texts", "zone")

    def __init__(
        self,
        fixed: dict[str, Any],
        texts: dict[str, tuple[Part, ...]],
        getters: tuple[Getter, ...],
        zone: tzinfo,
    ) -> None:
        self.fixed = fixed
        self.texts = texts
        self.getters = getters
        self.zone = zone
        self._cache: dict[tuple[str, ...], Status] = {}

    def render(self, rules: RuleSet, person: Person, view: LineView) -> Status:
        zone = self.zone
        values = tuple([get(rules, person, view, zone) for get in self.getters])
        status = self._cache.get(values)
        if status is None:
            fields = dict(self.fixed)
            for name, parts in self.texts.items():
                fields[name] = "".join(
                    [text if i < 0 else text + format(values[i], spec) for text, i, spec in parts]
                )
            status = Status(**fields)
            if len(self._cache) >= _RENDER_CACHE_SIZE:
                self._cache.clear()
            self._cache[values] = status
        return status


Output = Status | Template | None


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition, with what ``explain`` says about it."""

    key: str
    holds: Predicate
    wanted: str
    """The condition as the admin wrote it, e.g. ``in-use or ringing``."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    """The rule's ``name``, else its key path (``rules[3]``): what logs show."""
    when: tuple[Predicate, ...]
    unless: tuple[Predicate, ...]
    mask: int
    """Bits of the enabled targets this rule decides."""
    outputs: tuple[tuple[int, str, Output], ...]
    """(target bit, target name, what it gets)."""
    line: int | None = None
    """Line of the rule in the configuration file (None for the default rules)."""
    conditions: tuple[Condition, ...] = ()
    exceptions: tuple[Condition, ...] = ()
    """``when`` and ``unless`` again, for ``explain``."""
    names: frozenset[str] = frozenset()
    """Every target name under ``set`` (enabled or not, ``*`` included)."""


class RuleSet:
    """Compiled rules, built by ``compile_rules``: ``evaluate`` is a pure
    function of its arguments and of ``names`` (the directory's
    ``name_for_number``, used for ``{party_name}``). The rules are compiled
    once, when the file is loaded, before there is a directory: ``with_names``
    gives the same rules with the directory's lookup, whole."""

    __slots__ = (
        "_all",
        "_bits",
        "_call_context",
        "_defaults",
        "_every_rule",
        "_list_names",
        "_names",
        "_order",
        "_rules",
        "targets",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        targets: Sequence[str],
        list_names: Mapping[str, str],
        names: NameLookup,
        *,
        uses_call_context: bool = False,
        defaults: bool = False,
    ) -> None:
        self._call_context = uses_call_context
        self._defaults = defaults
        self._every_rule = tuple(rules)
        # A rule that decides no enabled target costs nothing at run time.
        self._rules = tuple(rule for rule in rules if rule.mask)
        self._order = tuple(targets)
        self._bits = {name: 1 << i for i, name in enumerate(self._order)}
        self._all = (1 << len(self._order)) - 1
        self.targets: frozenset[str] = frozenset(self._order)
        self._list_names = list_names
        self._names: NameLookup = names

    def with_names(self, names: NameLookup) -> RuleSet:
        """These rules (the compiled parts shared, not copied) with ``names``
        as the lookup of internal numbers for ``{party_name}``."""
        return RuleSet(
            self._every_rule,
            self._order,
            self._list_names,
            names,
            uses_call_context=self._call_context,
            defaults=self._defaults,
        )

    @property
    def names(self) -> NameLookup:
        """The lookup of internal numbers behind ``{party_name}``."""
        return self._names

    @property
    def order(self) -> tuple[str, ...]:
        """The enabled targets, in the order of ``targets:``."""
        return self._order

    @property
    def every_rule(self) -> tuple[Rule, ...]:
        """Every compiled rule in file order, those that decide no enabled
        target included (``explain`` names them too)."""
        return self._every_rule

    @property
    def uses_call_context(self) -> bool:
        """Whether a rule looks at the call behind a line (a ``direction``,
        ``party`` or ``party_in`` condition, or a ``{direction}``,
        ``{party_name}`` or ``{party_number}`` template): a line's view
        without its call may then be decided differently than with it."""
        return self._call_context

    @property
    def defaults(self) -> bool:
        """Whether these are ``DEFAULT_RULES`` (the file has no ``rules:``)."""
        return self._defaults

    def evaluate(
        self,
        person: Person,
        view: LineView,
        now: datetime,
        *,
        why: dict[str, str] | None = None,
    ) -> dict[str, Status | None]:
        """The desired status of every enabled target (``None``: nothing from us).

        The result has exactly one entry per enabled target and is a fresh dict
        the caller may keep. Targets in ``person.opt_out`` always get ``None``.
        ``now`` should be timezone-aware (a naive one is read as UTC). When
        ``why`` is given it is filled with target → the name of the rule that
        decided it (``"opt-out"`` for an opt-out; no entry when no rule
        matched), for logs. Never raises for any ``LineView``.
        """
        result: dict[str, Status | None] = dict.fromkeys(self._order)
        decided = 0
        if person.opt_out:
            bits = self._bits
            for target in person.opt_out:
                bit = bits.get(target, 0)
                decided |= bit
                if bit and why is not None:
                    why[target] = "opt-out"
        everything = self._all
        for rule in self._rules:
            if not rule.mask & ~decided:
                continue
            for holds in rule.when:
                if not holds(person, view, now):
                    break
            else:
                if rule.unless:
                    for holds in rule.unless:
                        if not holds(person, view, now):
                            break
                    else:
                        continue
                for bit, target, output in rule.outputs:
                    if decided & bit:
                        continue
                    if isinstance(output, Template):
                        result[target] = output.render(self, person, view)
                    else:
                        result[target] = output
                    if why is not None:
                        why[target] = rule.name
                decided |= rule.mask
                if decided == everything:
                    break
        return result

"""The rules compiler: YAML rules in, one ``RuleSet`` out, every problem found.

This module owns the rule syntax (documented to admins in
``config.example.yaml``), its validation and the default rules; the
``RuleSet`` it builds (``ruleset``) is the hot path that turns a ``LineView``
into the desired ``Status`` of every enabled target.

A rule is ``{name?, when?, unless?, set}``. Rules are tried in order; for each
target the first rule that matches and names it (or ``"*"``) decides, and
``null`` decides "cleared: the person's own status". Everything that can be decided when the
configuration is loaded is decided then: conditions become small predicates,
each rule knows the bit mask of the targets it can still decide, templates are
parsed into parts, and a status without a template is one frozen ``Status``
shared by every evaluation. Evaluation allocates the result dict and nothing
else on the common path.

Validation collects every problem before it raises one ``ConfigError``; each
problem carries the key path of the offending value (``("rules", 2, "set",
"slack_status", "text")``) so the config loader can name its file and line
(``Settings.problem``), and names and unknown words are spelled by
``errors.key_path`` and ``errors.unknown``, as the loader spells them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from presence_sync.errors import (
    ConfigError,
    ConfigProblem,
    KeyPath,
    closest,
    did_you_mean,
    key_path,
    unknown,
)
from presence_sync.model import STATUS_FIELDS, Direction, Line, LineView, Person, Presence, Status
from presence_sync.rules.ruleset import (
    GETTERS,
    TEMPLATE_FIELDS,
    Condition,
    NameLookup,
    Output,
    Predicate,
    Rule,
    RuleSet,
    Template,
    Window,
    digits,
    no_name,
)

__all__ = ["DEFAULT_RULES", "TargetFacts", "compile_rules", "wanted"]


class TargetFacts(Protocol):
    """What the compiler needs to know of an enabled target (its class's
    ``targets.base.TargetFacts`` is one, handed in by the config loader)."""

    @property
    def fields(self) -> frozenset[str]:
        """The ``Status`` fields the target shows."""
        ...

    @property
    def check(self) -> Callable[[Mapping[str, Any]], str | None] | None:
        """A check of the fixed values a rule sets (a message when wrong)."""
        ...


ProblemFactory = Callable[[Sequence[str | int], str], ConfigProblem]
Locator = Callable[[Sequence[str | int]], tuple[int | None, int | None]]

DEFAULT_RULES: Final[list[dict[str, Any]]] = [
    {
        "name": "on a call",
        "when": {"line": "in-use"},
        "set": {
            "teams_presence": {"availability": "Busy", "activity": "InACall"},
            "slack_status": {"text": "On a call", "emoji": ":telephone_receiver:"},
            "*": {
                "availability": "Busy",
                "activity": "InACall",
                "text": "On a call",
                "emoji": ":telephone_receiver:",
            },
        },
    },
    {
        "name": "do not disturb",
        "when": {"presence": "dnd"},
        "set": {
            "teams_presence": {"availability": "DoNotDisturb", "activity": "Presenting"},
            "slack_dnd": {"dnd": True},
        },
    },
]
"""The rules used when ``rules:`` is absent or empty (DESIGN.md, "Default rules").
Ringing, idle and every other state match nothing, so no target gets a status
from us; no default status contains a phone number."""

_RULE_KEYS = ("name", "when", "unless", "set")
_CONDITION_KEYS = ("line", "presence", "direction", "party", "party_in", "people", "groups", "time")
_TIME_KEYS = ("days", "from", "to", "timezone")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_INDEX = {**{d: i for i, d in enumerate(_DAYS)}, **{d: i for i, d in enumerate(_FULL_DAYS)}}
_HHMM = re.compile(r"(\d{1,2}):([0-5]\d)")


def wanted(key: str, value: Any) -> str:
    """A condition's value as the admin wrote it, in one line."""
    if key == "time" and isinstance(value, Mapping):
        days = value.get("days", "every day")
        if isinstance(days, list | tuple):
            days = ", ".join(str(d) for d in days)
        span = f"{value.get('from', '00:00')}-{value.get('to', '24:00')}"
        zone = f" {value['timezone']}" if "timezone" in value else ""
        return f"{days} {span}{zone}"
    prefix = "the other party on list " if key == "party_in" else ""
    if isinstance(value, list | tuple):
        return prefix + " or ".join("null" if v is None else str(v) for v in value)
    return prefix + ("null" if value is None else str(value))


def compile_rules(
    raw: list[Any] | None,
    *,
    targets: Mapping[str, TargetFacts],
    lists: Mapping[str, Mapping[str, str | None]] | None = None,
    timezone: str = "UTC",
    problem: ProblemFactory | None = None,
    names: NameLookup | None = None,
    locate: Locator | None = None,
    people: Collection[str] | None = None,
    groups: Collection[str] | None = None,
) -> RuleSet:
    """Validate ``raw`` (``settings.rules`` as parsed from YAML; ``None`` or
    empty means ``DEFAULT_RULES``) and compile it for ``targets``, the enabled
    target names and their metadata.

    ``lists`` maps a list name to ``{number: name or None}``; ``timezone`` is
    the default zone of time windows and ``{since}``; ``problem`` turns a key
    path and a message into a ``ConfigProblem`` with file and line (without it
    problems name the file ``<rules>``); ``names`` maps an internal number to
    a display name (or later: ``RuleSet.with_names``); ``locate`` gives
    the line (and column) of a key path, so ``explain`` can name each rule's
    line (``Settings.locate``).

    ``people`` (e-mail addresses, lower-case) and ``groups`` are everyone a
    rule's ``people:`` and ``groups:`` may name; a name outside them is a
    problem (a typo that could never match). None: not checked, for a caller
    whose people come from elsewhere as well. A rule that sets a target
    which is not in ``targets`` is a problem too; only ``DEFAULT_RULES``
    (``raw`` empty) name targets that may not be enabled, and drop them.

    Raises ``ConfigError`` listing every problem found, not just the first.
    """
    compiler = _Compiler(
        targets,
        lists or {},
        problem or _plain_problem,
        locate if raw else None,
        people=None if people is None else frozenset(people),
        groups=None if groups is None else frozenset(groups),
        strict=bool(raw),
    )
    zone = compiler.zone(timezone, ("timezone",)) or UTC
    rules = compiler.rules(raw if raw else DEFAULT_RULES, zone)
    if compiler.problems:
        raise ConfigError(compiler.problems)
    return RuleSet(
        rules,
        list(targets),
        compiler.list_names,
        names or no_name,
        uses_call_context=_uses_call_context(raw if raw else DEFAULT_RULES),
        defaults=not raw,
    )


_CALL_CONDITIONS: Final = frozenset({"direction", "party", "party_in"})
_CALL_FIELDS: Final = frozenset({"direction", "party_name", "party_number"})


def _uses_call_context(raw: Sequence[Any]) -> bool:
    """Whether any (already validated) rule reads the call behind a line."""
    for rule in raw:
        for part in ("when", "unless"):
            conditions = rule.get(part)
            if isinstance(conditions, Mapping) and _CALL_CONDITIONS & set(conditions):
                return True
        for status in (rule.get("set") or {}).values():
            for text in (status or {}).values():
                if isinstance(text, str) and any(
                    field in _CALL_FIELDS for _, field, _, _ in string.Formatter().parse(text)
                ):
                    return True
    return False


def _email_hint(email: str, known: frozenset[str]) -> str | None:
    """ "did you mean" for a mistyped e-mail address. Within one domain only
    the part before the @ is compared: by the whole address every
    colleague's would look close."""
    local, _, domain = email.partition("@")
    same = {k.partition("@")[0]: k for k in known if k.partition("@")[2] == domain}
    match = closest(local, same) if same else closest(email, known)
    if match is None:
        return None
    return f'did you mean "{same[match] if same else match}"?'


def _plain_problem(path: Sequence[str | int], message: str) -> ConfigProblem:
    return ConfigProblem("<rules>", None, None, key_path(path), message)


class _Compiler:
    """Turns raw rules into ``Rule`` values, recording every problem.

    Methods that find a problem record it and return a harmless stand-in, so
    one pass reports everything; callers that must know whether a part was
    sound compare ``len(self.problems)`` before and after.
    """

    def __init__(
        self,
        targets: Mapping[str, TargetFacts],
        lists: Mapping[str, Mapping[str, str | None]],
        problem: ProblemFactory,
        locate: Locator | None = None,
        *,
        people: frozenset[str] | None = None,
        groups: frozenset[str] | None = None,
        strict: bool = True,
    ) -> None:
        self.targets = targets
        self.known_people = people
        self.known_groups = groups
        self.strict = strict
        self.locate = locate
        self.order = list(targets)
        self.bits = {name: 1 << i for i, name in enumerate(self.order)}
        self.problem = problem
        self.problems: list[ConfigProblem] = []
        self.list_numbers: dict[str, frozenset[str]] = {}
        self.list_names: dict[str, str] = {}
        for list_name, entries in lists.items():
            numbers = set()
            for number, name in entries.items():
                number_digits = digits(str(number))
                numbers.add(number_digits)
                if name and number_digits not in self.list_names:
                    self.list_names[number_digits] = name
            self.list_numbers[list_name] = frozenset(numbers)
        self.condition_compilers: Mapping[
            str, Callable[[Any, KeyPath, tzinfo], Predicate | None]
        ] = {
            "line": self.line,
            "presence": self.presence,
            "direction": self.direction,
            "party": self.party,
            "party_in": self.party_in,
            "people": self.people,
            "groups": self.groups,
            "time": self.time,
        }
        assert tuple(self.condition_compilers) == _CONDITION_KEYS

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.problem(path, message))

    def unknown_key(self, path: KeyPath, key: Any, what: str, expected: Sequence[str]) -> None:
        self.fail(path, unknown(what, key, expected))

    def zone(self, value: Any, path: KeyPath) -> tzinfo | None:
        if not isinstance(value, str) or not value:
            self.fail(path, "must be a time zone name such as Europe/Berlin")
            return None
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(path, f'unknown time zone "{value}" (use an IANA name such as Europe/Berlin)')
            return None

    # -- rules --

    def rules(self, raw: Any, zone: tzinfo) -> list[Rule]:
        if not isinstance(raw, list | tuple):
            self.fail(("rules",), "must be a list of rules")
            return []
        compiled = []
        for index, item in enumerate(raw):
            rule = self.rule(item, ("rules", index), zone)
            if rule is not None:
                compiled.append(rule)
        return compiled

    def rule(self, raw: Any, path: KeyPath, zone: tzinfo) -> Rule | None:
        if not isinstance(raw, Mapping):
            self.fail(path, "a rule must be a mapping with `when`, `unless` and `set`")
            return None
        for key in raw:
            if key not in _RULE_KEYS:
                self.unknown_key((*path, str(key)), key, "rule key", _RULE_KEYS)
        name = raw.get("name")
        if name is None or (isinstance(name, str) and not name.strip()):
            # Unnamed: the key path, as configuration errors spell it.
            name = key_path(path)
        elif not isinstance(name, str):
            self.fail((*path, "name"), "must be a string")
            name = str(name)
        when = self.conditions(raw.get("when"), (*path, "when"), zone)
        unless = self.conditions(raw.get("unless"), (*path, "unless"), zone)
        # {since} speaks the zone of the rule's own time window, if it has one.
        rule_zone = next((c.holds.zone for c in when if isinstance(c.holds, Window)), zone)
        outputs = self.outputs(raw, path, rule_zone)
        mask = 0
        for bit, _, _ in outputs:
            mask |= bit
        targets = raw.get("set")
        named = frozenset(str(t) for t in targets) if isinstance(targets, Mapping) else frozenset()
        return Rule(
            name,
            tuple(c.holds for c in when),
            tuple(c.holds for c in unless),
            mask,
            tuple(outputs),
            line=None if self.locate is None else self.locate(path)[0],
            conditions=when,
            exceptions=unless,
            names=named,
        )

    # -- conditions --

    def conditions(self, raw: Any, path: KeyPath, zone: tzinfo) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping):
            self.fail(path, f"must be a mapping of conditions ({', '.join(_CONDITION_KEYS)})")
            return ()
        predicates: list[Condition] = []
        for key, value in raw.items():
            where = (*path, str(key))
            compile_one = self.condition_compilers.get(key)
            if compile_one is None:
                self.unknown_key(where, key, "condition", _CONDITION_KEYS)
                continue
            predicate = compile_one(value, where, zone)
            if predicate is not None:
                predicates.append(Condition(key, predicate, wanted(key, value)))
        return tuple(predicates)

    def items(self, value: Any, path: KeyPath, what: str) -> list[tuple[KeyPath, Any]]:
        """The values of a one-or-list condition, each with its own key path."""
        if isinstance(value, list | tuple):
            if not value:
                self.fail(path, f"must name at least one {what}")
            return [((*path, i), item) for i, item in enumerate(value)]
        return [(path, value)]

    def choices(self, value: Any, path: KeyPath, allowed: Sequence[str], what: str) -> set[str]:
        found: set[str] = set()
        for where, item in self.items(value, path, what):
            if isinstance(item, str) and item in allowed:
                found.add(item)
            else:
                self.unknown_key(where, item, what, allowed)
        return found

    def line(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        states = frozenset(Line(v) for v in self.choices(value, path, list(Line), "line state"))

        def line(person: Person, view: LineView, now: datetime) -> bool:
            return view.line in states

        return line

    def presence(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        # YAML reads a bare `null` as None; here it can only mean NFON's "null".
        if isinstance(value, list | tuple):
            value = [Presence.NONE.value if v is None else v for v in value]
        elif value is None:
            value = Presence.NONE.value
        chosen = self.choices(value, path, list(Presence), "presence")
        states = frozenset(Presence(v) for v in chosen)

        def presence(person: Person, view: LineView, now: datetime) -> bool:
            return view.presence in states

        return presence

    def direction(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        allowed = [Direction.INBOUND.value, Direction.OUTBOUND.value]
        ways = frozenset(Direction(v) for v in self.choices(value, path, allowed, "direction"))

        def direction(person: Person, view: LineView, now: datetime) -> bool:
            call = view.call
            return call is not None and call.direction in ways

        return direction

    def party(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        chosen = self.choices(value, path, ["internal", "external"], "party")
        # Call.external: True, False, or None when the context is unknown.
        wanted = frozenset(v == "external" for v in chosen)

        def party(person: Person, view: LineView, now: datetime) -> bool:
            call = view.call
            return call is not None and call.external in wanted

        return party

    def party_in(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        numbers: set[str] = set()
        for where, name in self.items(value, path, "list"):
            if isinstance(name, str) and name in self.list_numbers:
                numbers |= self.list_numbers[name]
            elif self.list_numbers:
                self.unknown_key(where, name, "list", list(self.list_numbers))
            else:
                self.fail(where, f'unknown list "{name}" (no lists are defined under `lists:`)')
        members = frozenset(numbers)

        def party_in(person: Person, view: LineView, now: datetime) -> bool:
            call = view.call
            return call is not None and call.party is not None and digits(call.party) in members

        return party_in

    def people(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        found: set[str] = set()
        for where, item in self.items(value, path, "e-mail address"):
            if not isinstance(item, str) or "@" not in item.strip()[1:-1]:
                self.fail(where, f'"{item}" is not an e-mail address')
                continue
            email = item.strip().lower()
            found.add(email)
            # Everyone is under `people:` today, so a name not there can never
            # match. Once people also come from elsewhere (a directory such as
            # an Entra group), the caller passes people=None (or all of them)
            # and this check is left to whoever knows the whole list.
            if self.known_people is not None and email not in self.known_people:
                hint = _email_hint(email, self.known_people)
                self.fail(
                    where,
                    f'no one under `people:` has the e-mail "{email}"'
                    + (f" ({hint})" if hint else ""),
                )
        emails = frozenset(found)

        def people(person: Person, view: LineView, now: datetime) -> bool:
            return person.key in emails

        return people

    def groups(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate:
        found: set[str] = set()
        for where, item in self.items(value, path, "group"):
            if not isinstance(item, str) or not item.strip():
                self.fail(where, f'"{item}" is not a group name')
                continue
            group = item.strip()
            found.add(group)
            # Groups are what `people:` entries list (see people() above).
            if self.known_groups is not None and group not in self.known_groups:
                hint = did_you_mean(group, self.known_groups)
                if hint is None:
                    listed = ", ".join(sorted(self.known_groups))
                    hint = f"groups in use: {listed}" if listed else "no one is in any group"
                self.fail(where, f'no one under `people:` is in the group "{group}" ({hint})')
        wanted = frozenset(found)

        def groups(person: Person, view: LineView, now: datetime) -> bool:
            return not wanted.isdisjoint(person.groups)

        return groups

    def time(self, value: Any, path: KeyPath, zone: tzinfo) -> Predicate | None:
        if not isinstance(value, Mapping):
            self.fail(path, 'must be a mapping like {days: mon-fri, from: "08:00", to: "18:00"}')
            return None
        before = len(self.problems)
        for key in value:
            if key not in _TIME_KEYS:
                self.unknown_key((*path, str(key)), key, "time key", _TIME_KEYS)
        days = self.days(value["days"], (*path, "days")) if "days" in value else set(range(7))
        start = self.clock_time(value.get("from"), (*path, "from"), 0, end=False)
        end = self.clock_time(value.get("to"), (*path, "to"), 24 * 60, end=True)
        if "timezone" in value:
            zone = self.zone(value["timezone"], (*path, "timezone")) or zone
        if len(self.problems) > before:
            return None
        if start == end:
            self.fail(path, "`from` and `to` are equal; omit both for the whole day")
            return None
        return Window(frozenset(days), start, end, zone)

    def days(self, value: Any, path: KeyPath) -> set[int]:
        days: set[int] = set()
        for where, item in self.items(value, path, "day"):
            parts = item.split(",") if isinstance(item, str) else [item]
            for part in parts:
                days |= self.day_range(part, where)
        return days

    def day_range(self, item: Any, path: KeyPath) -> set[int]:
        first_name, dash, last_name = str(item).strip().lower().partition("-")
        first = _DAY_INDEX.get(first_name.strip())
        last = _DAY_INDEX.get(last_name.strip()) if dash else first
        if not isinstance(item, str) or first is None or last is None:
            self.fail(
                path, f'"{item}" is not a day (use mon, tue, ... sun, or a range like mon-fri)'
            )
            return set()
        # A range may wrap around the week: fri-mon is fri, sat, sun, mon.
        return {(first + i) % 7 for i in range((last - first) % 7 + 1)}

    def clock_time(self, value: Any, path: KeyPath, default: int, *, end: bool) -> int:
        """Minutes after midnight (``default`` when absent)."""
        if value is None:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            # ``from: 8`` or ``from: 0800`` is a number to YAML. Reading it as
            # hours, minutes or HHMM would each be a guess that is sometimes
            # wrong, silently; the admin has to say which time is meant.
            self.fail(
                path, f'{value} is a number, not a time of day: write times in quotes, e.g. "08:00"'
            )
            return default
        limit = 24 * 60 if end else 24 * 60 - 1
        minutes = -1
        if isinstance(value, str) and (match := _HHMM.fullmatch(value.strip())):
            minutes = int(match[1]) * 60 + int(match[2])
        if not 0 <= minutes <= limit:
            latest = "24:00" if end else "23:59"
            self.fail(
                path, f'"{value}" is not a time of day (use "HH:MM" from "00:00" to "{latest}")'
            )
            return default
        return minutes

    # -- set --

    def outputs(
        self, raw: Mapping[Any, Any], path: KeyPath, zone: tzinfo
    ) -> list[tuple[int, str, Output]]:
        if "set" not in raw:
            self.fail(path, "a rule needs `set` (what each target should show)")
            return []
        targets = raw["set"]
        path = (*path, "set")
        if not isinstance(targets, Mapping) or not targets:
            self.fail(
                path,
                "must map target names to a status (or null: cleared, the person's own status)",
            )
            return []
        outputs: list[tuple[int, str, Output]] = []
        for target, value in targets.items():
            where = (*path, str(target))
            if target == "*":
                continue
            info = self.targets.get(target)
            if info is None:
                if self.strict:
                    # It would never decide anything: surely not what was meant.
                    self.fail(
                        where,
                        unknown("target", target, self.order)
                        + "; a rule sets only targets enabled under `targets:`",
                    )
                continue  # a default rule's target that is not enabled
            outputs.append(
                (self.bits[target], target, self.status(value, where, zone, info, target))
            )
        if "*" in targets:
            output = self.status(targets["*"], (*path, "*"), zone, None, "*")
            outputs.extend(
                (self.bits[target], target, output)
                for target in self.order
                if target not in targets
            )
        return outputs

    def status(
        self, value: Any, path: KeyPath, zone: tzinfo, info: TargetFacts | None, target: str
    ) -> Output:
        """What ``target`` gets; checked against the fields it shows when ``info`` is known."""
        if value is None:
            return None
        if not isinstance(value, Mapping) or not value:
            self.fail(
                path,
                f"must be a status ({', '.join(STATUS_FIELDS)}) "
                "or null (cleared, the person's own status)",
            )
            return None
        fixed: dict[str, Any] = {}
        texts: dict[str, list[tuple[str, str | None, str]]] = {}
        for field, item in value.items():
            where = (*path, str(field))
            if field not in STATUS_FIELDS:
                self.unknown_key(where, field, "status field", STATUS_FIELDS)
            elif info is not None and field not in info.fields:
                shown = ", ".join(sorted(info.fields)) or "nothing"
                self.fail(where, f'target "{target}" does not show "{field}" (it shows: {shown})')
            elif field == "dnd":
                if isinstance(item, bool):
                    fixed[field] = item
                else:
                    self.fail(where, "must be true or false")
            elif not isinstance(item, str):
                self.fail(where, "must be a string")
            else:
                parts = self.template(item, where)
                if all(name is None for _, name, _ in parts):
                    fixed[field] = "".join(text for text, _, _ in parts)
                else:
                    texts[field] = parts
        if info is not None and info.check is not None:
            problem = info.check(fixed)
            if problem is not None:
                self.fail(path, problem)
        if not texts:
            return Status(**fixed)
        used = sorted({name for parts in texts.values() for _, name, _ in parts if name})
        index = {name: i for i, name in enumerate(used)}
        compiled = {
            field: tuple(
                (text, -1 if name is None else index[name], spec) for text, name, spec in parts
            )
            for field, parts in texts.items()
        }
        return Template(fixed, compiled, tuple(GETTERS[name] for name in used), zone)

    def template(self, text: str, path: KeyPath) -> list[tuple[str, str | None, str]]:
        """``text`` as (literal, field or None, format spec) parts."""
        try:
            pieces = list(string.Formatter().parse(text))
        except ValueError as exc:
            self.fail(path, f"bad template: {exc} (write {{{{ and }}}} for literal braces)")
            return [(text, None, "")]
        parts: list[tuple[str, str | None, str]] = []
        for literal, field, spec, conversion in pieces:
            if field is None:
                parts.append((literal, None, ""))
                continue
            if field not in GETTERS:
                expected = [f"{{{name}}}" for name in TEMPLATE_FIELDS]
                self.unknown_key(path, f"{{{field}}}", "template field", expected)
                field = None
            elif conversion:
                self.fail(path, f'"{{{field}!{conversion}}}": conversions are not supported')
            elif spec:
                try:
                    format("", spec)
                except ValueError as exc:
                    self.fail(path, f'bad format "{{{field}:{spec}}}": {exc}')
            parts.append((literal, field, spec or ""))
        return parts

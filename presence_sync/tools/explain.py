"""``presence-sync explain``: which rule decides what each target shows for
one person in a situation the admin describes, and why no earlier rule did.

Offline: it reads the configuration and asks ``RuleSet.explain``, the same
compiled rules the daemon runs; nothing is contacted. The situation is what
the admin types (line, presence, call direction, the other party's number,
a time), so the only phone number the output can show is the one typed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from typing import Protocol, TextIO

from presence_sync.config import Settings
from presence_sync.model import (
    CLEARED,
    Call,
    Direction,
    Line,
    LineView,
    Person,
    Presence,
    describe,
    find_person,
)
from presence_sync.rules import Explanation, RuleSet, explain
from presence_sync.targets.slack import long_text

__all__ = [
    "Loaded",
    "add_arguments",
    "describe_situation",
    "local_time_note",
    "parse_at",
    "render",
    "run",
    "situation",
]

EXIT_UNKNOWN_PERSON = 1
"""No one in the file has the extension or e-mail address asked about."""
EXIT_USAGE = 2

_LINES = (Line.IDLE, Line.RINGING, Line.IN_USE, Line.OFFLINE)
_PRESENCES = (Presence.AVAILABLE, Presence.AWAY, Presence.BUSY, Presence.DND, Presence.OFFLINE)
_CALL_LINES = (Line.RINGING, Line.IN_USE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (``-c`` is added by the CLI)."""
    parser.add_argument("who", metavar="EXT|EMAIL", help="the person: extension or e-mail address")
    parser.add_argument(
        "--line",
        choices=[line.value for line in _LINES],
        help="the line state (default: in-use with --direction or --party, else idle)",
    )
    parser.add_argument(
        "--presence",
        choices=[p.value for p in _PRESENCES],
        default=Presence.AVAILABLE.value,
        help="the NFON presence (default: %(default)s)",
    )
    parser.add_argument(
        "--direction",
        choices=[Direction.INBOUND.value, Direction.OUTBOUND.value],
        help="the call's direction (default with a ringing or in-use line: inbound)",
    )
    parser.add_argument(
        "--party",
        metavar="NUMBER",
        help="the other party's number (an internal extension when it is one of "
        "the configured people's, else external)",
    )
    parser.add_argument(
        "--at",
        metavar="TIME",
        type=_at,
        help='when: "2026-12-02 09:00" in the configuration\'s timezone, or ISO 8601 '
        'with an offset ("2026-12-02T09:00+01:00"); default: now',
    )


def _at(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'"{text}" is not a time: write "2026-12-02 09:00" or "2026-12-02T09:00+01:00"'
        ) from None


def parse_at(given: datetime | None, zone: tzinfo, now: datetime) -> datetime:
    """``given`` (naive: in ``zone``), else ``now``, as an aware time. A
    naive time that ``zone`` skips (the hour the clocks jump forward) raises
    ``ValueError`` naming the gap; one it has twice (the hour they go back)
    is the first of the two (``fold=0``), as ``local_time_note`` says."""
    if given is None:
        return now.astimezone(zone)
    if given.tzinfo is not None:
        return given
    at = given.replace(tzinfo=zone)
    before, after = at.replace(fold=0).utcoffset(), at.replace(fold=1).utcoffset()
    if before is not None and after is not None and before < after:
        # Only in a gap does fold=0 (the offset before it) read differently
        # from fold=1 (the one after) with the earlier offset first.
        raise ValueError(
            f"{given:%Y-%m-%d %H:%M} does not exist in {zone}: the clocks go "
            f"from {_offset(before)} to {_offset(after)} then and skip "
            f"{_minutes(after - before)}; give a time outside the gap, or an offset"
        )
    return at


def local_time_note(given: datetime | None, zone: tzinfo) -> str | None:
    """For a naive ``given`` that happens twice in ``zone`` (the clocks go
    back), which of the two ``explain`` uses; None otherwise."""
    if given is None or given.tzinfo is not None:
        return None
    at = given.replace(tzinfo=zone)
    first, second = at.replace(fold=0).utcoffset(), at.replace(fold=1).utcoffset()
    if first is None or second is None or first <= second:
        return None
    return (
        f"{given:%Y-%m-%d %H:%M} happens twice in {zone} (the clocks go back): "
        f"using the first, {_offset(first)}; write {_offset(second)} for the second"
    )


def _offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    return f"{minutes} minutes"


def situation(
    person: Person,
    people: Sequence[Person],
    *,
    line: str | None,
    presence: str,
    direction: str | None,
    party: str | None,
    at: datetime,
) -> LineView:
    """The line view the options describe. Raises ``ValueError`` for a call
    detail without a ringing or in-use line."""
    call_given = direction is not None or party is not None
    state = Line(line) if line else (Line.IN_USE if call_given else Line.IDLE)
    if call_given and state not in _CALL_LINES:
        raise ValueError("--direction and --party describe a call: use --line ringing or in-use")
    call = None
    if state in _CALL_LINES:
        internal = party is not None and any(p.extension == party for p in people)
        call = Call(
            uuid="explain",
            direction=Direction(direction or Direction.INBOUND.value),
            external=None if party is None else not internal,
            party=party,
            answered=state is Line.IN_USE,
            since=at,
        )
    return LineView(person.extension, state, Presence(presence), call, since=at)


def describe_situation(view: LineView, at: datetime, zone: tzinfo) -> str:
    """The situation in one line, as ``explain`` prints it."""
    parts = [f"line {view.line.value}", f"presence {view.presence.value}"]
    call = view.call
    if call is not None:
        with_whom = ""
        if call.party:
            kind = "external" if call.external else "internal"
            with_whom = f" {'from' if call.direction is Direction.INBOUND else 'to'} "
            with_whom += f"{call.party} ({kind})"
        parts.append(f"{call.direction.value} call{with_whom}")
    local = at.astimezone(zone)
    parts.append(f"{local:%a %Y-%m-%d %H:%M} {zone} ({local.isoformat(timespec='minutes')})")
    return ", ".join(parts)


def _rule(name: str, line: int | None) -> str:
    where = f" (line {line})" if line is not None else ""
    # An unnamed rule is called by its key path, which needs no quotes.
    shown = name if name.startswith("rules[") else f'rule "{name}"'
    return f"{shown}{where}"


def render(
    person: Person,
    situation_text: str,
    rules_text: str,
    explained: Mapping[str, Explanation],
) -> str:
    """The whole answer: who, the situation, then per target what it shows
    and which rule decided, with every earlier rule and why it did not."""
    who = f"{person.name} <{person.email}>" if person.name else person.email
    out = [
        f"{who}, extension {person.extension}",
        f"Situation: {situation_text}",
        f"Rules: {rules_text}",
        "",
    ]
    for target, why in explained.items():
        shown = CLEARED if why.status is None else describe(why.status)
        out.append(f"{target} → {shown}")
        if why.rule == "opt-out":
            out.append(f"  {person.email} opted out of {target} (opt_out in people:)")
        elif why.rule is not None:
            out.append(f"  decided by {_rule(why.rule, why.line)}")
        else:
            out.append("  no rule decides it, so the person keeps their own status")
        if why.missed:
            out.append("  rules before that did not decide it:" if why.rule else "  rules tried:")
            out.extend(f"    {_rule(m.rule, m.line)}: {m.reason}" for m in why.missed)
        out.append("")
    return "\n".join(out)


class Loaded(Protocol):
    """What ``app.load`` returns, as far as this command needs it (the CLI
    hands ``app.load`` in: commands sit below the composition root)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def rules(self) -> RuleSet: ...


def run(
    args: argparse.Namespace,
    load: Callable[[str], Loaded],
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: ``load`` is ``app.load``; ``out``/``err`` default to the
    standard streams. Raises ``ConfigError`` for an invalid file (exit 78)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    call_given = args.direction is not None or args.party is not None
    if call_given and args.line is not None and Line(args.line) not in _CALL_LINES:
        print(
            "presence-sync explain: error: --direction and --party describe a call: "
            "use --line ringing or in-use",
            file=err,
        )
        return EXIT_USAGE
    loaded = load(args.config)
    settings = loaded.settings
    for warning in settings.warnings:
        print(f"warning: {warning}", file=err)
    people = [entry.to_person() for entry in settings.people if entry.extension is not None]
    wanted = args.who.strip()
    person = find_person(people, wanted)
    if person is None:
        print(
            f"presence-sync: no one under people: in {settings.source_file} has the "
            f"extension or e-mail address {wanted!r}",
            file=err,
        )
        return EXIT_UNKNOWN_PERSON
    zone = settings.zone
    try:
        at = parse_at(args.at, zone, datetime.now(zone))
    except ValueError as exc:
        print(f"presence-sync explain: error: argument --at: {exc}", file=err)
        return EXIT_USAGE
    note = local_time_note(args.at, zone)
    if note is not None:
        print(f"note: --at {note}", file=err)
    view = situation(
        person,
        people,
        line=args.line,
        presence=args.presence,
        direction=args.direction,
        party=args.party,
        at=at,
    )
    rules = loaded.rules
    if rules.defaults:
        rules_text = f"the default rules ({settings.source_file} has no rules:)"
    else:
        count = len(settings.rules or ())
        rules_text = f"{count} rule{'s' * (count != 1)} in {settings.source_file}"
    explained = explain(rules, person, view, at)
    for target, why in explained.items():
        spec = settings.targets.get(target)
        text = None if why.status is None else why.status.text
        if spec is not None and spec.kind == "slack_status" and text:
            too_long = long_text(text)
            if too_long is not None:
                print(f"warning: {target}: {too_long}", file=err)
    print(render(person, describe_situation(view, at, zone), rules_text, explained), file=out)
    return 0

"""The rules compiler: every condition, first match per target, templates,
the default rules, and configuration errors with their key paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from presence_sync.config import load
from presence_sync.errors import ConfigError, ConfigProblem
from presence_sync.model import Call, Direction, Line, LineView, Person, Presence, Status
from presence_sync.rules import DEFAULT_RULES, compile_rules
from presence_sync.targets.base import TargetInfo

ALL_FIELDS = frozenset({"availability", "activity", "text", "emoji", "dnd"})
INFOS = {
    "teams_presence": TargetInfo(
        "teams_presence", "Teams presence", frozenset({"availability", "activity"})
    ),
    "teams_status_message": TargetInfo(
        "teams_status_message", "Teams message", frozenset({"text"})
    ),
    "outlook_calendar": TargetInfo("outlook_calendar", "Outlook event", frozenset({"text"})),
    "slack_status": TargetInfo("slack_status", "Slack status", frozenset({"text", "emoji"})),
    "slack_dnd": TargetInfo("slack_dnd", "Slack snooze", frozenset({"dnd"})),
    "webhook": TargetInfo("webhook", "HTTP POST", ALL_FIELDS),
    "log": TargetInfo("log", "log lines", ALL_FIELDS),
}

MONDAY = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)  # a Monday in CET (UTC+1)
HIT = Status(text="hit")


def targets(*names: str) -> dict[str, TargetInfo]:
    return {name: INFOS[name] for name in names}


def person(
    email: str = "anna@example.com",
    name: str | None = "Anna",
    groups: Sequence[str] = (),
    opt_out: Sequence[str] = (),
) -> Person:
    return Person(
        key=email.lower(),
        email=email,
        extension="100",
        name=name,
        groups=frozenset(groups),
        opt_out=frozenset(opt_out),
    )


def call(
    direction: Direction = Direction.INBOUND,
    external: bool | None = True,
    party: str | None = "4989123456",
    since: datetime | None = None,
) -> Call:
    return Call(uuid="c1", direction=direction, external=external, party=party, since=since)


def view(
    line: Line = Line.IDLE,
    presence: Presence = Presence.AVAILABLE,
    call: Call | None = None,
    since: datetime | None = None,
) -> LineView:
    return LineView(extension="100", line=line, presence=presence, call=call, since=since)


LISTS: dict[str, dict[str, str | None]] = {
    "vip": {"4989123456": "Big Customer", "4930999": None},
    "family": {"4917000": "Home"},
}


# --- conditions ---------------------------------------------------------------------

IN_USE = view(Line.IN_USE)
INBOUND_EXT = view(Line.IN_USE, call=call(Direction.INBOUND, external=True))
OUTBOUND_INT = view(Line.IN_USE, call=call(Direction.OUTBOUND, external=False, party="101"))

CONDITION_CASES: list[tuple[str, dict[str, Any], Person, LineView, datetime, bool]] = [
    # line
    ("line matches", {"line": "in-use"}, person(), IN_USE, MONDAY, True),
    ("line differs", {"line": "in-use"}, person(), view(Line.RINGING), MONDAY, False),
    ("line list", {"line": ["ringing", "in-use"]}, person(), view(Line.RINGING), MONDAY, True),
    ("line list miss", {"line": ["ringing", "in-use"]}, person(), view(Line.IDLE), MONDAY, False),
    ("line unknown", {"line": "unknown"}, person(), view(Line.UNKNOWN), MONDAY, True),
    # presence
    ("presence", {"presence": "dnd"}, person(), view(presence=Presence.DND), MONDAY, True),
    ("presence list miss", {"presence": ["dnd", "busy"]}, person(), view(), MONDAY, False),
    (
        "presence YAML null",
        {"presence": None},
        person(),
        view(presence=Presence.NONE),
        MONDAY,
        True,
    ),
    (
        "presence 'null'",
        {"presence": ["null"]},
        person(),
        view(presence=Presence.NONE),
        MONDAY,
        True,
    ),
    # direction
    ("inbound", {"direction": "inbound"}, person(), INBOUND_EXT, MONDAY, True),
    ("inbound vs outbound", {"direction": "inbound"}, person(), OUTBOUND_INT, MONDAY, False),
    (
        "direction without call",
        {"direction": ["inbound", "outbound"]},
        person(),
        IN_USE,
        MONDAY,
        False,
    ),
    (
        "direction unknown",
        {"direction": ["inbound", "outbound"]},
        person(),
        view(Line.IN_USE, call=call(Direction.UNKNOWN)),
        MONDAY,
        False,
    ),
    # party
    ("external", {"party": "external"}, person(), INBOUND_EXT, MONDAY, True),
    ("external vs internal", {"party": "external"}, person(), OUTBOUND_INT, MONDAY, False),
    ("internal", {"party": "internal"}, person(), OUTBOUND_INT, MONDAY, True),
    (
        "party unknown context",
        {"party": ["internal", "external"]},
        person(),
        view(Line.IN_USE, call=call(external=None)),
        MONDAY,
        False,
    ),
    ("party without call", {"party": "internal"}, person(), IN_USE, MONDAY, False),
    # party_in
    ("party in list", {"party_in": "vip"}, person(), INBOUND_EXT, MONDAY, True),
    (
        "party in list, unnamed entry",
        {"party_in": "vip"},
        person(),
        view(Line.IN_USE, call=call(party="4930999")),
        MONDAY,
        True,
    ),
    (
        "party in list, written with separators",
        {"party_in": "vip"},
        person(),
        view(Line.IN_USE, call=call(party="49 89 123-456")),
        MONDAY,
        True,
    ),
    ("party in another list", {"party_in": "family"}, person(), INBOUND_EXT, MONDAY, False),
    ("party in either list", {"party_in": ["family", "vip"]}, person(), INBOUND_EXT, MONDAY, True),
    (
        "party withheld",
        {"party_in": "vip"},
        person(),
        view(Line.IN_USE, call=call(party=None)),
        MONDAY,
        False,
    ),
    ("party_in without call", {"party_in": "vip"}, person(), IN_USE, MONDAY, False),
    # people
    ("people, any case", {"people": ["Anna@Example.COM"]}, person(), IN_USE, MONDAY, True),
    ("people single", {"people": "anna@example.com"}, person(), IN_USE, MONDAY, True),
    ("people other", {"people": ["bob@example.com"]}, person(), IN_USE, MONDAY, False),
    # groups
    ("groups", {"groups": ["support"]}, person(groups=["sales", "support"]), IN_USE, MONDAY, True),
    ("groups single", {"groups": "support"}, person(groups=["support"]), IN_USE, MONDAY, True),
    ("groups miss", {"groups": ["support"]}, person(groups=["sales"]), IN_USE, MONDAY, False),
    ("groups none", {"groups": ["support"]}, person(), IN_USE, MONDAY, False),
    # nothing: always
    ("no conditions", {}, person(), view(Line.OFFLINE), MONDAY, True),
    # several: all must hold
    ("all hold", {"line": "in-use", "party": "external"}, person(), INBOUND_EXT, MONDAY, True),
    ("one fails", {"line": "in-use", "party": "internal"}, person(), INBOUND_EXT, MONDAY, False),
]

BERLIN_OFFICE = {"days": "mon-fri", "from": "08:00", "to": "18:00", "timezone": "Europe/Berlin"}
FRIDAY_NIGHT = {"days": ["fri"], "from": "22:00", "to": "06:00"}

TIME_CASES: list[tuple[str, dict[str, Any], datetime, bool]] = [
    ("office hours", BERLIN_OFFICE, datetime(2024, 3, 4, 7, 0, tzinfo=UTC), True),
    ("before opening", BERLIN_OFFICE, datetime(2024, 3, 4, 6, 59, tzinfo=UTC), False),
    ("end is exclusive", BERLIN_OFFICE, datetime(2024, 3, 4, 17, 0, tzinfo=UTC), False),
    ("last minute", BERLIN_OFFICE, datetime(2024, 3, 4, 16, 59, tzinfo=UTC), True),
    ("saturday", BERLIN_OFFICE, datetime(2024, 3, 9, 10, 0, tzinfo=UTC), False),
    # 06:30 UTC is 07:30 in winter (CET) and 08:30 in summer (CEST, from 31 March).
    ("winter 06:30 UTC", BERLIN_OFFICE, datetime(2024, 3, 25, 6, 30, tzinfo=UTC), False),
    ("summer 06:30 UTC", BERLIN_OFFICE, datetime(2024, 4, 1, 6, 30, tzinfo=UTC), True),
    # Berlin's Monday starts on Sunday 23:00 UTC.
    (
        "zone shifts the day",
        BERLIN_OFFICE | {"from": "00:00"},
        datetime(2024, 3, 3, 23, 30, tzinfo=UTC),
        True,
    ),
    # across midnight: the hours after midnight belong to the day the window opened
    ("friday night", FRIDAY_NIGHT, datetime(2024, 3, 8, 23, 0, tzinfo=UTC), True),
    ("saturday early", FRIDAY_NIGHT, datetime(2024, 3, 9, 3, 0, tzinfo=UTC), True),
    ("saturday 06:00", FRIDAY_NIGHT, datetime(2024, 3, 9, 6, 0, tzinfo=UTC), False),
    ("saturday night", FRIDAY_NIGHT, datetime(2024, 3, 9, 23, 0, tzinfo=UTC), False),
    ("friday early is thursday's", FRIDAY_NIGHT, datetime(2024, 3, 8, 3, 0, tzinfo=UTC), False),
    ("friday evening", FRIDAY_NIGHT, datetime(2024, 3, 8, 21, 59, tzinfo=UTC), False),
    # day lists
    ("weekend list", {"days": ["sat", "sun"]}, datetime(2024, 3, 10, 12, 0, tzinfo=UTC), True),
    ("weekend list monday", {"days": ["sat", "sun"]}, MONDAY, False),
    ("comma days", {"days": "sat,sun"}, datetime(2024, 3, 9, 12, 0, tzinfo=UTC), True),
    ("full day names", {"days": ["Monday"]}, MONDAY, True),
    ("range wraps the week", {"days": "fri-mon"}, datetime(2024, 3, 10, 12, 0, tzinfo=UTC), True),
    ("wrapped range misses", {"days": "fri-mon"}, datetime(2024, 3, 6, 12, 0, tzinfo=UTC), False),
    # one bound only
    ("from only, after", {"from": "18:00"}, datetime(2024, 3, 4, 19, 0, tzinfo=UTC), True),
    ("from only, before", {"from": "18:00"}, datetime(2024, 3, 4, 17, 0, tzinfo=UTC), False),
    ("to only, before", {"to": "08:00"}, datetime(2024, 3, 4, 7, 59, tzinfo=UTC), True),
    ("to only, after", {"to": "08:00"}, datetime(2024, 3, 4, 8, 0, tzinfo=UTC), False),
    ("to 24:00", {"from": "20:00", "to": "24:00"}, datetime(2024, 3, 4, 23, 59, tzinfo=UTC), True),
    ("naive now is UTC", {"from": "10:00", "to": "11:00"}, datetime(2024, 3, 4, 10, 30), True),
]


def hits(when: dict[str, Any], who: Person, line: LineView, now: datetime, **kw: Any) -> bool:
    rules = compile_rules(
        [{"when": when, "set": {"webhook": {"text": "hit"}}}],
        targets=targets("webhook"),
        lists=LISTS,
        **kw,
    )
    result = rules.evaluate(who, line, now)
    assert result["webhook"] in (HIT, None)
    return result["webhook"] == HIT


@pytest.mark.parametrize(
    ("when", "who", "line", "now", "expected"),
    [case[1:] for case in CONDITION_CASES],
    ids=[case[0] for case in CONDITION_CASES],
)
def test_condition(
    when: dict[str, Any], who: Person, line: LineView, now: datetime, expected: bool
) -> None:
    assert hits(when, who, line, now) is expected


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [case[1:] for case in TIME_CASES],
    ids=[case[0] for case in TIME_CASES],
)
def test_time_window(window: dict[str, Any], now: datetime, expected: bool) -> None:
    assert hits({"time": window}, person(), IN_USE, now) is expected


def test_time_window_answers_each_minute_anew() -> None:
    rules = compile_rules(
        [{"when": {"time": {"from": "10:00", "to": "10:01"}}, "set": {"webhook": {"text": "hit"}}}],
        targets=targets("webhook"),
    )
    answers = [
        rules.evaluate(person(), IN_USE, datetime(2024, 3, 4, 10, m, s, tzinfo=UTC))["webhook"]
        for m, s in ((0, 0), (0, 59), (1, 0), (0, 30))
    ]
    assert answers == [HIT, HIT, None, HIT]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2024, 1, 8, 14, 0, tzinfo=UTC), True),  # 09:00 EST
        (datetime(2024, 1, 8, 13, 59, tzinfo=UTC), False),  # 08:59 EST
        (datetime(2024, 7, 8, 13, 0, tzinfo=UTC), True),  # 09:00 EDT
    ],
)
def test_time_window_uses_the_default_zone(now: datetime, expected: bool) -> None:
    window = {"from": "09:00", "to": "17:00"}
    assert hits({"time": window}, person(), IN_USE, now, timezone="America/New_York") is expected


@pytest.mark.parametrize(
    ("line", "presence", "expected"),
    [
        (Line.IN_USE, Presence.AVAILABLE, True),
        (Line.IN_USE, Presence.DND, False),
        (Line.IDLE, Presence.AVAILABLE, False),
    ],
)
def test_unless(line: Line, presence: Presence, expected: bool) -> None:
    when = {"line": "in-use"}
    rules = compile_rules(
        [{"when": when, "unless": {"presence": "dnd"}, "set": {"webhook": {"text": "hit"}}}],
        targets=targets("webhook"),
    )
    assert (rules.evaluate(person(), view(line, presence), MONDAY)["webhook"] == HIT) is expected


def test_unless_needs_all_of_its_conditions() -> None:
    rules = compile_rules(
        [
            {
                "unless": {"presence": "dnd", "groups": ["night"]},
                "set": {"webhook": {"text": "hit"}},
            }
        ],
        targets=targets("webhook"),
    )
    dnd = view(presence=Presence.DND)
    assert rules.evaluate(person(), dnd, MONDAY)["webhook"] == HIT
    assert rules.evaluate(person(groups=["night"]), dnd, MONDAY)["webhook"] is None


# --- deciding per target ----------------------------------------------------------------


def test_first_matching_rule_wins_per_target() -> None:
    rules = compile_rules(
        [
            {"when": {"line": "in-use"}, "set": {"teams_presence": {"availability": "Busy"}}},
            {
                "when": {"line": ["in-use", "ringing"]},
                "set": {
                    "teams_presence": {"availability": "Away"},
                    "slack_status": {"text": "phone"},
                },
            },
        ],
        targets=targets("teams_presence", "slack_status"),
    )
    assert rules.evaluate(person(), IN_USE, MONDAY) == {
        "teams_presence": Status(availability="Busy"),
        "slack_status": Status(text="phone"),
    }
    assert rules.evaluate(person(), view(Line.RINGING), MONDAY) == {
        "teams_presence": Status(availability="Away"),
        "slack_status": Status(text="phone"),
    }


def test_null_decides_nothing_and_stops_later_rules() -> None:
    rules = compile_rules(
        [
            {"name": "quiet calls", "when": {"line": "in-use"}, "set": {"slack_status": None}},
            {"name": "always", "set": {"slack_status": {"text": "here"}, "webhook": {"text": "x"}}},
        ],
        targets=targets("slack_status", "webhook"),
    )
    why: dict[str, str] = {}
    assert rules.evaluate(person(), IN_USE, MONDAY, why=why) == {
        "slack_status": None,
        "webhook": Status(text="x"),
    }
    assert why == {"slack_status": "quiet calls", "webhook": "always"}
    assert rules.evaluate(person(), view(), MONDAY)["slack_status"] == Status(text="here")


def test_star_covers_every_other_enabled_target() -> None:
    rules = compile_rules(
        [
            {"when": {"presence": "away"}, "set": {"log": {"text": "away"}}},
            {
                "when": {"line": "in-use"},
                "set": {
                    "teams_presence": {"availability": "Busy", "activity": "InACall"},
                    "webhook": None,
                    "*": {"text": "On a call", "dnd": True},
                },
            },
        ],
        targets=targets("teams_presence", "slack_status", "webhook", "log"),
    )
    star = Status(text="On a call", dnd=True)
    assert rules.evaluate(person(), view(Line.IN_USE, Presence.AWAY), MONDAY) == {
        "teams_presence": Status(availability="Busy", activity="InACall"),
        "slack_status": star,
        "webhook": None,
        "log": Status(text="away"),
    }


def test_opt_out_always_gives_nothing() -> None:
    rules = compile_rules(
        [{"set": {"*": {"text": "hi"}}}], targets=targets("slack_status", "webhook")
    )
    why: dict[str, str] = {}
    result = rules.evaluate(
        person(opt_out=["slack_status", "no_such_target"]), IN_USE, MONDAY, why=why
    )
    assert result == {"slack_status": None, "webhook": Status(text="hi")}
    assert why["slack_status"] == "opt-out"


def test_result_has_every_enabled_target_and_only_those() -> None:
    rules = compile_rules(
        [{"when": {"line": "in-use"}, "set": {"log": {"text": "x"}}}],
        targets=targets("log", "webhook"),
    )
    assert rules.targets == frozenset({"log", "webhook"})
    assert rules.evaluate(person(), view(), MONDAY) == {"log": None, "webhook": None}
    assert rules.evaluate(person(), IN_USE, MONDAY) == {"log": Status(text="x"), "webhook": None}


def test_static_status_is_one_shared_object() -> None:
    rules = compile_rules(None, targets=targets("teams_presence"))
    first = rules.evaluate(person(), IN_USE, MONDAY)["teams_presence"]
    second = rules.evaluate(person("bob@example.com"), INBOUND_EXT, MONDAY)["teams_presence"]
    assert first is second


# --- templates ------------------------------------------------------------------------------


def render(text: str, who: Person, line: LineView, **kw: Any) -> str | None:
    rules = compile_rules(
        [{"set": {"webhook": {"text": text}}}], targets=targets("webhook"), lists=LISTS, **kw
    )
    status = rules.evaluate(who, line, MONDAY)["webhook"]
    assert status is not None
    return status.text


def extension_names(number: str) -> str | None:
    return {"101": "Bob Builder", "4989123456": "not an extension"}.get(number)


CALL_START = datetime(2024, 3, 4, 9, 5, tzinfo=UTC)
LINE_CHANGE = datetime(2024, 3, 4, 9, 1, tzinfo=UTC)

TEMPLATE_CASES: list[tuple[str, str, Person, LineView, dict[str, Any], str]] = [
    ("direction", "{direction}", person(), INBOUND_EXT, {}, "inbound"),
    ("direction, no call", "{direction}", person(), IN_USE, {}, "unknown"),
    ("line", "{line}", person(), view(Line.RINGING), {}, "ringing"),
    ("presence", "{presence}", person(), view(presence=Presence.NONE), {}, "null"),
    ("name", "{name}", person(), IN_USE, {}, "Anna"),
    ("name from e-mail", "{name}", person("j.doe@example.com", name=None), IN_USE, {}, "j.doe"),
    (
        "party name, extension",
        "{party_name}",
        person(),
        OUTBOUND_INT,
        {"names": extension_names},
        "Bob Builder",
    ),
    # an external party is never looked up as an extension
    (
        "party name, list",
        "{party_name}",
        person(),
        INBOUND_EXT,
        {"names": extension_names},
        "Big Customer",
    ),
    (
        "party name, unnamed list entry",
        "{party_name}",
        person(),
        view(call=call(party="4930999")),
        {},
        "unknown",
    ),
    (
        "party name, stranger",
        "{party_name}",
        person(),
        view(call=call(party="4940111")),
        {},
        "unknown",
    ),
    ("party name, withheld", "{party_name}", person(), view(call=call(party=None)), {}, "unknown"),
    ("party name, no call", "{party_name}", person(), IN_USE, {}, "unknown"),
    ("party number", "{party_number}", person(), INBOUND_EXT, {}, "4989123456"),
    (
        "party number, withheld",
        "{party_number}",
        person(),
        view(call=call(party=None)),
        {},
        "unknown",
    ),
    (
        "since call start",
        "{since}",
        person(),
        view(call=call(since=CALL_START), since=LINE_CHANGE),
        {},
        "09:05",
    ),
    ("since line change", "{since}", person(), view(call=call(), since=LINE_CHANGE), {}, "09:01"),
    (
        "since in zone",
        "{since}",
        person(),
        view(since=LINE_CHANGE),
        {"timezone": "Europe/Berlin"},
        "10:01",
    ),
    ("since unknown", "[{since}]", person(), IN_USE, {}, "[]"),
    ("escapes", "{{name}} {name}}}", person(), IN_USE, {}, "{name} Anna}"),
    ("format spec", "{party_name:.3}!", person(), INBOUND_EXT, {}, "Big!"),
    ("no template", "On a call", person(), INBOUND_EXT, {}, "On a call"),
]


@pytest.mark.parametrize(
    ("text", "who", "line", "kw", "expected"),
    [case[1:] for case in TEMPLATE_CASES],
    ids=[case[0] for case in TEMPLATE_CASES],
)
def test_template(
    text: str, who: Person, line: LineView, kw: dict[str, Any], expected: str
) -> None:
    assert render(text, who, line, **kw) == expected


def test_since_speaks_the_zone_of_the_rules_time_window() -> None:
    rules = compile_rules(
        [
            {
                "when": {"time": {"timezone": "Asia/Tokyo", "days": "mon-sun"}},
                "set": {"webhook": {"text": "since {since}"}},
            }
        ],
        targets=targets("webhook"),
        timezone="Europe/Berlin",
    )
    status = rules.evaluate(person(), view(since=LINE_CHANGE), MONDAY)["webhook"]
    assert status == Status(text="since 18:01")


def test_names_can_be_given_later() -> None:
    rules = compile_rules(
        [{"set": {"webhook": {"text": "with {party_name}"}}}], targets=targets("webhook")
    )
    assert rules.evaluate(person(), OUTBOUND_INT, MONDAY)["webhook"] == Status(text="with unknown")
    rules = rules.with_names(extension_names)
    assert rules.evaluate(person(), OUTBOUND_INT, MONDAY)["webhook"] == Status(
        text="with Bob Builder"
    )


def test_rendered_statuses_are_reused_for_the_same_inputs() -> None:
    rules = compile_rules(
        [
            {
                "set": {
                    "webhook": {"text": "{line} for {name}", "emoji": ":x:", "availability": "Busy"}
                }
            }
        ],
        targets=targets("webhook"),
    )
    first = rules.evaluate(person(), IN_USE, MONDAY)["webhook"]
    again = rules.evaluate(person(), view(Line.IN_USE, Presence.DND), MONDAY)["webhook"]
    other = rules.evaluate(person(), view(Line.RINGING), MONDAY)["webhook"]
    assert first == Status(text="in-use for Anna", emoji=":x:", availability="Busy")
    assert first is again
    assert other == Status(text="ringing for Anna", emoji=":x:", availability="Busy")


# --- default rules ------------------------------------------------------------------------

BUSY = Status(availability="Busy", activity="InACall")
ON_A_CALL = Status(text="On a call", emoji=":telephone_receiver:")
STAR = Status(
    availability="Busy", activity="InACall", text="On a call", emoji=":telephone_receiver:"
)
NOBODY: dict[str, Status | None] = dict.fromkeys(INFOS)

DEFAULT_CASES: list[tuple[str, LineView, dict[str, Status | None]]] = [
    (
        "in-use",
        INBOUND_EXT,
        {
            "teams_presence": BUSY,
            "slack_status": ON_A_CALL,
            "teams_status_message": STAR,
            "outlook_calendar": STAR,
            "slack_dnd": STAR,
            "webhook": STAR,
            "log": STAR,
        },
    ),
    (
        "dnd",
        view(Line.IDLE, Presence.DND),
        NOBODY
        | {
            "teams_presence": Status(availability="DoNotDisturb", activity="Presenting"),
            "slack_dnd": Status(dnd=True),
        },
    ),
    ("ringing", view(Line.RINGING, call=call()), NOBODY),
    ("idle", view(Line.IDLE), NOBODY),
    ("offline", view(Line.OFFLINE, Presence.OFFLINE), NOBODY),
    (
        "in-use and dnd: the call wins",
        view(Line.IN_USE, Presence.DND, call=call()),
        {
            "teams_presence": BUSY,
            "slack_status": ON_A_CALL,
            "teams_status_message": STAR,
            "outlook_calendar": STAR,
            "slack_dnd": STAR,
            "webhook": STAR,
            "log": STAR,
        },
    ),
]


@pytest.mark.parametrize(
    ("line", "expected"),
    [case[1:] for case in DEFAULT_CASES],
    ids=[case[0] for case in DEFAULT_CASES],
)
@pytest.mark.parametrize("raw", [None, []], ids=["absent", "empty"])
def test_default_rules(
    raw: list[Any] | None, line: LineView, expected: dict[str, Status | None]
) -> None:
    rules = compile_rules(raw, targets=INFOS)
    assert rules.evaluate(person(), line, MONDAY) == expected


def test_default_rules_with_teams_only() -> None:
    rules = compile_rules(None, targets=targets("teams_presence"))
    assert rules.evaluate(person(), view(Line.IN_USE, Presence.DND), MONDAY) == {
        "teams_presence": BUSY
    }
    assert rules.evaluate(person(), view(Line.IDLE, Presence.DND), MONDAY) == {
        "teams_presence": Status(availability="DoNotDisturb", activity="Presenting")
    }


@pytest.mark.parametrize("line", [Line.IN_USE, Line.RINGING, Line.IDLE])
@pytest.mark.parametrize("presence", [Presence.AVAILABLE, Presence.DND])
def test_default_rules_never_show_the_number(line: Line, presence: Presence) -> None:
    rules = compile_rules(None, targets=INFOS, names=lambda number: None)
    number = "4989123456"
    for external in (True, False, None):
        for direction in (Direction.INBOUND, Direction.OUTBOUND):
            line_view = view(line, presence, call=call(direction, external, party=number))
            for status in rules.evaluate(person(), line_view, MONDAY).values():
                fields = status.to_dict().values() if status else ()
                assert all(number not in str(value) for value in fields)
    assert "party" not in repr(DEFAULT_RULES)


# --- configuration errors ---------------------------------------------------------------------


class Recorder:
    """A ``problem`` callback standing in for the config loader."""

    def __init__(self) -> None:
        self.paths: list[tuple[str | int, ...]] = []

    def __call__(self, path: Sequence[str | int], message: str) -> ConfigProblem:
        self.paths.append(tuple(path))
        return ConfigProblem(
            "presence.yaml", 100 + len(self.paths), 3, "/".join(map(str, path)), message
        )


def problems(raw: Any, **kw: Any) -> tuple[list[tuple[str | int, ...]], ConfigError]:
    recorder = Recorder()
    kw.setdefault("targets", targets("teams_presence", "slack_status", "webhook"))
    with pytest.raises(ConfigError) as caught:
        compile_rules(raw, lists=LISTS, problem=recorder, **kw)
    return recorder.paths, caught.value


SET = {"slack_status": {"text": "x"}}


def rule(**parts: Any) -> list[Any]:
    return [{"set": SET} | parts]


ERROR_CASES: list[tuple[str, Any, list[tuple[str | int, ...]], str]] = [
    (
        "unknown condition",
        rule(when={"lines": "in-use"}),
        [("rules", 0, "when", "lines")],
        'did you mean "line"',
    ),
    (
        "bad line",
        rule(when={"line": "in_use"}),
        [("rules", 0, "when", "line")],
        'did you mean "in-use"',
    ),
    (
        "bad line in list",
        rule(when={"line": ["ringing", "talking"]}),
        [("rules", 0, "when", "line", 1)],
        "talking",
    ),
    ("empty line list", rule(when={"line": []}), [("rules", 0, "when", "line")], "at least one"),
    (
        "bad presence",
        rule(when={"presence": ["dnd", "lunch"]}),
        [("rules", 0, "when", "presence", 1)],
        "lunch",
    ),
    (
        "bad direction",
        rule(when={"direction": "sideways"}),
        [("rules", 0, "when", "direction")],
        "inbound",
    ),
    ("bad party", rule(when={"party": "foreign"}), [("rules", 0, "when", "party")], "external"),
    (
        "unknown list",
        rule(when={"party_in": "vips"}),
        [("rules", 0, "when", "party_in")],
        'did you mean "vip"',
    ),
    (
        "not an e-mail",
        rule(when={"people": ["anna"]}),
        [("rules", 0, "when", "people", 0)],
        "e-mail",
    ),
    ("bad group", rule(when={"groups": ["ok", 7]}), [("rules", 0, "when", "groups", 1)], "group"),
    (
        "bad day",
        rule(when={"time": {"days": "mon-fry"}}),
        [("rules", 0, "when", "time", "days")],
        "mon-fry",
    ),
    (
        "bad day in list",
        rule(when={"time": {"days": ["mon", "xyz"]}}),
        [("rules", 0, "when", "time", "days", 1)],
        "xyz",
    ),
    (
        "bad from",
        rule(when={"time": {"from": "25:00"}}),
        [("rules", 0, "when", "time", "from")],
        "HH:MM",
    ),
    ("bad to", rule(when={"time": {"to": "6pm"}}), [("rules", 0, "when", "time", "to")], "HH:MM"),
    (
        "hour as a number",
        rule(when={"time": {"from": 8}}),
        [("rules", 0, "when", "time", "from")],
        'write times in quotes, e.g. "08:00"',
    ),
    (
        "minutes as a number",
        rule(when={"time": {"to": 1080}}),
        [("rules", 0, "when", "time", "to")],
        'write times in quotes, e.g. "08:00"',
    ),
    (
        "bad zone",
        rule(when={"time": {"timezone": "Mars/Olympus"}}),
        [("rules", 0, "when", "time", "timezone")],
        "Mars/Olympus",
    ),
    (
        "unknown time key",
        rule(when={"time": {"until": "08:00"}}),
        [("rules", 0, "when", "time", "until")],
        "until",
    ),
    (
        "empty window",
        rule(when={"time": {"from": "08:00", "to": "08:00"}}),
        [("rules", 0, "when", "time")],
        "equal",
    ),
    ("time not a mapping", rule(when={"time": "9-5"}), [("rules", 0, "when", "time")], "mapping"),
    ("when not a mapping", rule(when=["line"]), [("rules", 0, "when")], "mapping"),
    (
        "bad unless",
        rule(unless={"presense": "dnd"}),
        [("rules", 0, "unless", "presense")],
        'did you mean "presence"',
    ),
    ("unknown rule key", rule(when_not={"line": "idle"}), [("rules", 0, "when_not")], "when_not"),
    ("name not a string", rule(name=["x"]), [("rules", 0, "name")], "string"),
    ("rule not a mapping", ["line: in-use"], [("rules", 0)], "mapping"),
    ("rules not a list", {"set": SET}, [("rules",)], "list"),
    ("missing set", [{"when": {"line": "idle"}}], [("rules", 0)], "set"),
    ("empty set", [{"set": {}}], [("rules", 0, "set")], "target"),
    (
        "unknown target",
        [{"set": {"slack_stauts": {"text": "x"}}}],
        [("rules", 0, "set", "slack_stauts")],
        'did you mean "slack_status"',
    ),
    (
        "status not a mapping",
        [{"set": {"slack_status": "busy"}}],
        [("rules", 0, "set", "slack_status")],
        "null",
    ),
    ("empty status", [{"set": {"webhook": {}}}], [("rules", 0, "set", "webhook")], "status"),
    (
        "unknown status field",
        [{"set": {"webhook": {"colour": "red"}}}],
        [("rules", 0, "set", "webhook", "colour")],
        "colour",
    ),
    (
        "field the target does not show",
        [{"set": {"slack_status": {"text": "x", "availability": "Busy"}}}],
        [("rules", 0, "set", "slack_status", "availability")],
        'target "slack_status" does not show "availability"',
    ),
    (
        "dnd not a boolean",
        [{"set": {"webhook": {"dnd": "yes"}}}],
        [("rules", 0, "set", "webhook", "dnd")],
        "true or false",
    ),
    (
        "text not a string",
        [{"set": {"webhook": {"text": 5}}}],
        [("rules", 0, "set", "webhook", "text")],
        "string",
    ),
    (
        "unknown template field",
        [{"set": {"slack_status": {"text": "Call from {caller}"}}}],
        [("rules", 0, "set", "slack_status", "text")],
        "{caller}",
    ),
    (
        "unbalanced template",
        [{"set": {"slack_status": {"text": "Call from {party_name"}}}],
        [("rules", 0, "set", "slack_status", "text")],
        "template",
    ),
    (
        "template conversion",
        [{"set": {"slack_status": {"emoji": "{name!r}"}}}],
        [("rules", 0, "set", "slack_status", "emoji")],
        "conversion",
    ),
    (
        "template format",
        [{"set": {"slack_status": {"text": "{name:d}"}}}],
        [("rules", 0, "set", "slack_status", "text")],
        "format",
    ),
    (
        "star status is checked too",
        [{"set": {"*": {"text": "{calller}"}}}],
        [("rules", 0, "set", "*", "text")],
        "calller",
    ),
    (
        "a standard target that is off could never be set",
        [{"set": {"slack_dnd": {"dnd": True}}}],
        [("rules", 0, "set", "slack_dnd")],
        'unknown target "slack_dnd" (expected one of: teams_presence, slack_status, webhook); '
        "a rule sets only targets enabled under `targets:`",
    ),
    (
        "a misspelt enabled target",
        [{"set": {"slack_stauts": {"text": "x"}}}],
        [("rules", 0, "set", "slack_stauts")],
        'unknown target "slack_stauts" (did you mean "slack_status"?)',
    ),
]


@pytest.mark.parametrize(
    ("raw", "paths", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_bad_rules(raw: Any, paths: list[tuple[str | int, ...]], message: str) -> None:
    found, error = problems(raw)
    assert found == paths
    assert [p.line for p in error.problems] == [101 + i for i in range(len(paths))]
    assert message in str(error)


@pytest.mark.parametrize(
    ("window", "number", "keys"),
    [
        ("{from: 8, to: 18}", "8", ["rules[0].when.time.from", "rules[0].when.time.to"]),
        ("{from: 0800, to: '18:00'}", "0800", ["rules[0].when.time.from"]),
    ],
)
def test_unquoted_number_as_a_clock_time_is_refused_with_its_line(
    tmp_path: Path, window: str, number: str, keys: list[str]
) -> None:
    # Through the real loader: YAML 1.2 reads 8 and 0800 as the integers 8
    # and 800, which must not become 00:08 or 13:20.
    path = tmp_path / "config.yaml"
    path.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "targets: {webhook: {url: 'https://hooks.example.com/x'}}\n"
        "rules:\n"
        "  - name: office\n"
        f"    when: {{time: {window}}}\n"
        "    set: {webhook: {text: x}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(path, {})

    problem = caught.value.problems[0]
    assert (problem.file, problem.line, problem.key) == (str(path), 5, "rules[0].when.time.from")
    assert problem.column == path.read_text().splitlines()[4].index(number) + 1
    assert 'write times in quotes, e.g. "08:00"' in problem.message
    assert [p.key for p in caught.value.problems] == keys


def test_every_problem_is_reported_at_once() -> None:
    raw = [
        {"when": {"line": "busy"}, "set": SET},
        "not a rule",
        {"when": {"presence": "dnd"}, "set": {"teams": {"availability": "Busy"}}},
        {"set": {"slack_status": {"text": "{who}", "emoji": 3}}},
    ]
    found, error = problems(raw, timezone="Berlin/Mitte")
    assert found == [
        ("timezone",),
        ("rules", 0, "when", "line"),
        ("rules", 1),
        ("rules", 2, "set", "teams"),
        ("rules", 3, "set", "slack_status", "text"),
        ("rules", 3, "set", "slack_status", "emoji"),
    ]
    assert len(error.problems) == 6
    assert str(error).splitlines()[0].startswith("presence.yaml:101:3: timezone: ")


def test_without_a_problem_callback_the_key_path_is_spelled_out() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_rules([{"set": {"webhok": {"text": "x"}}}], targets=targets("webhook"))
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.key) == ("<rules>", None, "rules[0].set.webhok")
    assert 'did you mean "webhook"' in problem.message


def test_star_may_set_any_field() -> None:
    rules = compile_rules(
        [{"set": {"*": {"availability": "Away", "dnd": True}}}],
        targets=targets("slack_status", "slack_dnd"),
    )
    assert rules.evaluate(person(), view(), MONDAY) == {
        "slack_status": Status(availability="Away", dnd=True),
        "slack_dnd": Status(availability="Away", dnd=True),
    }


def test_enabled_target_with_a_custom_name_is_known() -> None:
    custom = {"alerts": TargetInfo("webhook", "alerts hook", ALL_FIELDS)}
    rules = compile_rules([{"set": {"alerts": {"text": "x"}}}], targets=custom)
    assert rules.evaluate(person(), view(), MONDAY) == {"alerts": Status(text="x")}
    # Its kind is no name of its own: a rule setting "webhook" sets nothing.
    with pytest.raises(ConfigError, match='unknown target "webhook"'):
        compile_rules([{"set": {"alerts": {"text": "x"}, "webhook": None}}], targets=custom)


def test_the_default_rules_leave_out_the_targets_that_are_off() -> None:
    # DEFAULT_RULES name teams_presence, slack_status and slack_dnd whatever
    # is enabled: only a file's own rules must name enabled targets.
    rules = compile_rules(None, targets=targets("log"))
    assert rules.evaluate(person(), IN_USE, MONDAY) == {
        "log": Status(
            availability="Busy",
            activity="InACall",
            text="On a call",
            emoji=":telephone_receiver:",
        )
    }


KNOWN = {"people": ["anna@example.com", "bob@example.com"], "groups": ["support", "sales"]}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            {"groups": ["suport"]},
            'no one under `people:` is in the group "suport" (did you mean "support"?)',
        ),
        (
            {"groups": "finance"},
            'no one under `people:` is in the group "finance" (groups in use: sales, support)',
        ),
        (
            {"people": ["zed@example.com"]},
            'no one under `people:` has the e-mail "zed@example.com"',
        ),
        (
            {"people": ["Ana@Example.com"]},
            'no one under `people:` has the e-mail "ana@example.com" '
            '(did you mean "anna@example.com"?)',
        ),
    ],
)
def test_people_and_groups_nobody_has_are_problems(condition: dict[str, Any], message: str) -> None:
    key = next(iter(condition))
    where = ("rules", 0, "when", key) + ((0,) if isinstance(condition[key], list) else ())
    found, error = problems(rule(when=condition), **KNOWN)
    assert found == [where]
    assert str(error).endswith(message)


def test_people_and_groups_someone_has_are_fine() -> None:
    rules = compile_rules(
        rule(when={"people": ["Bob@example.com"], "groups": ["sales"]}),
        targets=targets("slack_status"),
        **KNOWN,
    )
    bob = replace(person("bob@example.com"), groups=frozenset({"sales"}))
    assert rules.evaluate(bob, view(), MONDAY) == {"slack_status": Status(text="x")}


def test_people_are_not_checked_when_not_all_are_known() -> None:
    # people=None: some people come from elsewhere (a directory, later).
    rules = compile_rules(
        rule(when={"people": ["zed@example.com"]}), targets=targets("webhook", "slack_status")
    )
    assert rules.evaluate(person("zed@example.com"), view(), MONDAY)["slack_status"] == Status(
        text="x"
    )

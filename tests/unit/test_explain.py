"""``RuleSet.explain``: per target the deciding rule and, for every rule
before it, the condition that kept it from deciding."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from presence_sync.config import load
from presence_sync.model import Call, Direction, Line, LineView, Person, Presence, Status
from presence_sync.rules import Explanation, Miss, compile_rules, explain
from presence_sync.targets.base import TargetInfo

ALL_FIELDS = frozenset({"availability", "activity", "text", "emoji", "dnd"})
INFOS = {
    "teams_presence": TargetInfo(
        "teams_presence", "Teams presence", frozenset({"availability", "activity"})
    ),
    "slack_status": TargetInfo("slack_status", "Slack status", frozenset({"text", "emoji"})),
    "webhook": TargetInfo("webhook", "HTTP POST", ALL_FIELDS),
}
BERLIN = ZoneInfo("Europe/Berlin")
WEDNESDAY_9 = datetime(2026, 12, 2, 9, 0, tzinfo=BERLIN)
SATURDAY_9 = datetime(2026, 12, 5, 9, 0, tzinfo=BERLIN)
ANNA = Person(key="anna@example.com", email="anna@example.com", extension="100")
LISTS: dict[str, dict[str, str | None]] = {"vip": {"4930123456": "Big Customer"}}

RULES = [
    {
        "name": "VIP calls",
        "when": {"line": "in-use", "party_in": "vip"},
        "set": {"*": {"text": "VIP call"}},
    },
    {
        "when": {
            "line": "in-use",
            "direction": "outbound",
            "party": "external",
            "time": {"days": "mon-fri", "from": "08:00", "to": "18:00"},
        },
        "set": {"webhook": {"text": "Calling a customer"}},
    },
    {
        "name": "on a call",
        "when": {"line": ["in-use", "ringing"]},
        "unless": {"groups": "support"},
        "set": {
            "teams_presence": {"availability": "Busy", "activity": "InACall"},
            "slack_status": {"text": "On a call"},
            "webhook": {"text": "On a call"},
        },
    },
]


def in_call(direction: Direction, party: str | None, external: bool | None = True) -> LineView:
    call = Call(uuid="c1", direction=direction, external=external, party=party)
    return LineView("100", Line.IN_USE, Presence.AVAILABLE, call)


def test_default_rules_explain_an_idle_line_and_a_call() -> None:
    rules = compile_rules(None, targets=INFOS)
    assert rules.defaults

    idle = explain(rules, ANNA, LineView("100", Line.IDLE, Presence.AVAILABLE), WEDNESDAY_9)
    assert idle["teams_presence"] == Explanation(
        "teams_presence",
        None,
        None,
        None,
        (
            Miss("on a call", None, "line: wants in-use, but the line is idle"),
            Miss("do not disturb", None, "presence: wants dnd, but presence is available"),
        ),
    )
    assert idle["slack_status"].missed[1] == Miss(
        "do not disturb", None, "does not set slack_status (it sets: slack_dnd, teams_presence)"
    )

    call = explain(rules, ANNA, in_call(Direction.INBOUND, None), WEDNESDAY_9)
    assert {t: (e.rule, e.status) for t, e in call.items()} == {
        "teams_presence": ("on a call", Status(availability="Busy", activity="InACall")),
        "slack_status": ("on a call", Status(text="On a call", emoji=":telephone_receiver:")),
        "webhook": (
            "on a call",
            Status(
                availability="Busy",
                activity="InACall",
                text="On a call",
                emoji=":telephone_receiver:",
            ),
        ),
    }
    assert all(e.missed == () for e in call.values())


def test_a_vip_call_is_decided_by_the_list_rule() -> None:
    rules = compile_rules(RULES, targets=INFOS, lists=LISTS, timezone="Europe/Berlin")
    explained = explain(rules, ANNA, in_call(Direction.INBOUND, "+49 30 123456"), WEDNESDAY_9)
    assert {t: (e.rule, e.status, e.missed) for t, e in explained.items()} == {
        t: ("VIP calls", Status(text="VIP call"), ()) for t in INFOS
    }


def test_direction_party_and_time_window_each_say_why_they_did_not_match() -> None:
    rules = compile_rules(RULES, targets=INFOS, lists=LISTS, timezone="Europe/Berlin")

    inbound = explain(rules, ANNA, in_call(Direction.INBOUND, "4989777"), WEDNESDAY_9)["webhook"]
    assert (inbound.rule, inbound.status) == ("on a call", Status(text="On a call"))
    assert [(m.rule, m.reason) for m in inbound.missed] == [
        ("VIP calls", "party_in: wants the other party on list vip, but 4989777 is not on it"),
        ("rules[1]", "direction: wants outbound, but the call is inbound"),
    ]

    internal = in_call(Direction.OUTBOUND, "101", external=False)
    assert explain(rules, ANNA, internal, WEDNESDAY_9)["webhook"].missed[1] == Miss(
        "rules[1]", None, "party: wants external, but the other party is internal"
    )

    weekend = explain(rules, ANNA, in_call(Direction.OUTBOUND, "4989777"), SATURDAY_9)["webhook"]
    assert weekend.missed[1] == Miss(
        "rules[1]",
        None,
        "time: wants mon-fri 08:00-18:00, but it is Sat 2026-12-05 09:00 Europe/Berlin",
    )

    weekday = explain(rules, ANNA, in_call(Direction.OUTBOUND, "4989777"), WEDNESDAY_9)
    assert (weekday["webhook"].rule, weekday["webhook"].status) == (
        "rules[1]",
        Status(text="Calling a customer"),
    )
    # The same call, for a target rules[1] does not set.
    assert weekday["slack_status"].missed[1] == Miss(
        "rules[1]", None, "does not set slack_status (it sets: webhook)"
    )


def test_unless_and_opt_out_are_named() -> None:
    rules = compile_rules(RULES, targets=INFOS, lists=LISTS, timezone="Europe/Berlin")
    support = Person(
        key="sam@example.com",
        email="sam@example.com",
        extension="100",
        groups=frozenset({"support"}),
        opt_out=frozenset({"slack_status"}),
    )
    explained = explain(rules, support, in_call(Direction.INBOUND, None), WEDNESDAY_9)
    assert explained["slack_status"] == Explanation("slack_status", None, "opt-out", None, ())
    teams = explained["teams_presence"]
    assert (teams.rule, teams.status) == (None, None)
    assert teams.missed[-1] == Miss("on a call", None, "its unless matches (groups: support)")


def test_explain_agrees_with_evaluate() -> None:
    rules = compile_rules(RULES, targets=INFOS, lists=LISTS, timezone="Europe/Berlin")
    for view in (
        LineView("100", Line.IDLE),
        LineView("100", Line.RINGING, Presence.DND),
        in_call(Direction.INBOUND, "4930123456"),
        in_call(Direction.OUTBOUND, "4989777"),
        in_call(Direction.OUTBOUND, None, external=None),
    ):
        for now in (WEDNESDAY_9, SATURDAY_9, datetime(2026, 12, 2, 23, 0, tzinfo=UTC)):
            why: dict[str, str] = {}
            decided = rules.evaluate(ANNA, view, now, why=why)
            explained = explain(rules, ANNA, view, now)
            assert {t: e.status for t, e in explained.items()} == decided
            assert {t: e.rule for t, e in explained.items() if e.rule} == why


def test_rules_know_their_line_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "targets: {log: {}}\n"
        "rules:\n"
        "  - name: ringing\n"
        "    when: {line: ringing}\n"
        "    set: {log: {text: ring}}\n"
        "  - when: {line: in-use}\n"
        "    set: {log: {text: call}}\n"
    )
    settings = load(path, {})
    rules = compile_rules(
        settings.rules,
        targets={"log": INFOS["webhook"]},
        problem=settings.problem,
        locate=settings.locate,
    )
    call = explain(rules, ANNA, in_call(Direction.INBOUND, None), WEDNESDAY_9)["log"]
    assert (call.rule, call.line) == ("rules[1]", 7)
    assert call.missed == (Miss("ringing", 4, "line: wants ringing, but the line is in-use"),)

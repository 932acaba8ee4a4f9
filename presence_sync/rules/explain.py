"""Why each target gets what it gets: ``explain`` walks the rules as
``RuleSet.evaluate`` does and says, for each rule before the deciding one,
why it did not decide (for ``presence-sync explain`` and the tests, not the
hot path)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from presence_sync.model import LineView, Person, Status
from presence_sync.rules.ruleset import Predicate, Rule, RuleSet, Window

__all__ = ["Explanation", "Miss", "explain"]


@dataclass(frozen=True, slots=True)
class Miss:
    """A rule that came before the deciding one and did not decide a target."""

    rule: str
    line: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one target gets what it gets: ``status`` (None: cleared, the
    person's own status), the deciding ``rule`` (None when no rule matched;
    ``"opt-out"`` for an opt-out) and its ``line``, and every rule tried
    before it with the reason it did not decide."""

    target: str
    status: Status | None
    rule: str | None
    line: int | None
    missed: tuple[Miss, ...]


def explain(
    rules: RuleSet, person: Person, view: LineView, now: datetime
) -> dict[str, Explanation]:
    """Per enabled target of ``rules``, what ``evaluate`` decides and why: the deciding
    rule and every earlier rule with the reason it did not decide (a
    condition that does not hold, an ``unless`` that does, a target it
    does not set). Pure, like ``evaluate``, and just as total; slower,
    for people rather than the hot path. Reasons name the other party's
    number only from ``view``, i.e. what the caller of this put there."""
    # The statuses are evaluate's own (test_explain_agrees_with_evaluate
    # checks that the walk below finds the same rules).
    decided = rules.evaluate(person, view, now)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    # Each rule's verdict, the same for every target: None when it matches.
    verdicts = [(rule, _verdict(rule, person, view, now)) for rule in rules.every_rule]
    out: dict[str, Explanation] = {}
    for target in rules.order:
        if target in person.opt_out:
            out[target] = Explanation(target, None, "opt-out", None, ())
            continue
        missed: list[Miss] = []
        rule_name: str | None = None
        line: int | None = None
        for rule, verdict in verdicts:
            if not any(name == target for _, name, _ in rule.outputs):
                if target in rule.names:
                    reason = "sets this target, but none of its values are used"
                elif rule.names:
                    listed = ", ".join(sorted(rule.names))
                    reason = f"does not set {target} (it sets: {listed})"
                else:
                    reason = "sets no target"
                missed.append(Miss(rule.name, rule.line, reason))
            elif verdict is not None:
                missed.append(Miss(rule.name, rule.line, verdict))
            else:
                rule_name, line = rule.name, rule.line
                break
        out[target] = Explanation(target, decided[target], rule_name, line, tuple(missed))
    return out


def _verdict(rule: Rule, person: Person, view: LineView, now: datetime) -> str | None:
    """None when ``rule``'s conditions match, else why not, in plain words."""
    for condition in rule.conditions:
        if not condition.holds(person, view, now):
            actual = _ACTUAL[condition.key](person, view, now, condition.holds)
            return f"{condition.key}: wants {condition.wanted}, but {actual}"
    if rule.exceptions and all(c.holds(person, view, now) for c in rule.exceptions):
        matched = "; ".join(f"{c.key}: {c.wanted}" for c in rule.exceptions)
        return f"its unless matches ({matched})"
    return None


_Actual = Callable[[Person, LineView, datetime, Predicate], str]


def _no_call(view: LineView) -> str | None:
    return "there is no call" if view.call is None else None


def _actual_party(person: Person, view: LineView, now: datetime, holds: Predicate) -> str:
    if view.call is None:
        return "there is no call"
    external = view.call.external
    if external is None:
        return "it is not known whether the other party is internal or external"
    return f"the other party is {'external' if external else 'internal'}"


def _actual_party_in(person: Person, view: LineView, now: datetime, holds: Predicate) -> str:
    if view.call is None:
        return "there is no call"
    if not view.call.party:
        return "the other party's number is not known"
    return f"{view.call.party} is not on it"


def _actual_groups(person: Person, view: LineView, now: datetime, holds: Predicate) -> str:
    if not person.groups:
        return f"{person.email} is in no group"
    return f"{person.email} is in {', '.join(sorted(person.groups))}"


def _actual_time(person: Person, view: LineView, now: datetime, holds: Predicate) -> str:
    zone = holds.zone if isinstance(holds, Window) else UTC
    local = now.astimezone(zone)
    return f"it is {local:%a %Y-%m-%d %H:%M} {zone}"


_ACTUAL: Final[Mapping[str, _Actual]] = {
    "line": lambda person, view, now, holds: f"the line is {view.line.value}",
    "presence": lambda person, view, now, holds: f"presence is {view.presence.value}",
    "direction": lambda person, view, now, holds: (
        _no_call(view) or f"the call is {view.call.direction.value}"  # type: ignore[union-attr]
    ),
    "party": _actual_party,
    "party_in": _actual_party_in,
    "people": lambda person, view, now, holds: f"{person.email} is not one of them",
    "groups": _actual_groups,
    "time": _actual_time,
}

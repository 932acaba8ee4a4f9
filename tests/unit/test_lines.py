"""State and call events folded into one view per extension."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from presence_sync.clock import ManualClock
from presence_sync.lines import Lines
from presence_sync.model import (
    CallEvent,
    CallState,
    Direction,
    Line,
    LineView,
    Presence,
    StateEvent,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def state(ext: str, line: Line, presence: Presence = Presence.AVAILABLE, at: int | None = None):
    updated = None if at is None else T0 + timedelta(seconds=at)
    return StateEvent(ext, line, presence, "K1234", updated)


def call(uuid: str, st: CallState, ext: str = "100", direction=Direction.INBOUND, external=True):
    context = "global" if external else "K1234"
    return CallEvent(
        uuid=uuid,
        state=st,
        extension=ext,
        direction=direction,
        caller="4930123456" if direction is Direction.INBOUND else "100",
        caller_context=context if direction is Direction.INBOUND else "K1234",
        callee="100" if direction is Direction.INBOUND else "4930123456",
        callee_context="K1234" if direction is Direction.INBOUND else context,
    )


class Book:
    """The caller's side of ``Lines``: it keeps the views each fold returns,
    as the engine does, and is what the folds read (``LineViews``)."""

    def __init__(self) -> None:
        self.fold = Lines(ManualClock(T0))
        self.views: dict[str, LineView] = {}

    def line(self, extension: str) -> LineView | None:
        return self.views.get(extension)

    get = line

    def _keep(self, view: LineView | None) -> LineView | None:
        if view is not None:
            self.views[view.extension] = view
        return view

    def on_state(self, event: StateEvent) -> LineView | None:
        return self._keep(self.fold.on_state(event, self))

    def on_call(self, event: CallEvent) -> LineView | None:
        return self._keep(self.fold.on_call(event, self))

    def on_full_state(self, states: list[StateEvent], *, complete: bool = True) -> list[LineView]:
        views = self.fold.on_full_state(states, self, complete=complete)
        if complete:
            self.views = {}
        for view in views:
            self._keep(view)
        return views


@pytest.fixture
def lines() -> Book:
    book = Book()
    book.on_full_state([state("100", Line.IDLE), state("101", Line.IDLE)])
    return book


def test_ring_answer_hangup_builds_and_clears_call_context(lines: Book) -> None:
    ringing = lines.on_call(call("c1", CallState.RING))
    assert ringing is not None
    assert ringing.call is not None
    assert ringing.call.direction is Direction.INBOUND
    assert ringing.call.external is True
    assert ringing.call.party == "4930123456"
    assert ringing.call.answered is False
    answered = lines.on_call(call("c1", CallState.ANSWER))
    assert answered is not None
    assert answered.call is not None
    assert answered.call.answered
    in_use = lines.on_state(state("100", Line.IN_USE))
    assert in_use is not None
    assert in_use.line is Line.IN_USE
    assert in_use.call == answered.call
    ended = lines.on_call(call("c1", CallState.HANGUP))
    assert ended is not None
    assert ended.call is None


def test_internal_outbound_call_is_not_external(lines: Book) -> None:
    view = lines.on_call(call("c2", CallState.DIAL, direction=Direction.OUTBOUND, external=False))
    assert view is not None
    assert view.call is not None
    assert view.call.external is False
    assert view.call.direction is Direction.OUTBOUND


def test_hangup_of_a_call_never_seen_changes_nothing(lines: Book) -> None:
    assert lines.on_call(call("ghost", CallState.HANGUP)) is None
    assert lines.get("100") is not None
    assert lines.get("100").call is None


def test_call_waiting_does_not_replace_the_answered_call(lines: Book) -> None:
    lines.on_call(call("c1", CallState.ANSWER))
    assert lines.on_call(call("c2", CallState.RING)) is None
    view = lines.get("100")
    assert view is not None
    assert view.call is not None
    assert view.call.uuid == "c1"


def test_line_going_idle_ends_the_call_even_without_hangup(lines: Book) -> None:
    lines.on_call(call("c1", CallState.ANSWER))
    lines.on_state(state("100", Line.IN_USE))
    view = lines.on_state(state("100", Line.IDLE))
    assert view is not None
    assert view.call is None


def test_same_state_again_is_no_change(lines: Book) -> None:
    assert lines.on_state(state("100", Line.IDLE)) is None
    assert lines.on_state(state("100", Line.IDLE, Presence.DND)) is not None


def test_line_since_moves_only_when_the_line_changes(lines: Book) -> None:
    busy = lines.on_state(state("100", Line.IN_USE, at=5))
    assert busy is not None
    assert busy.since == T0 + timedelta(seconds=5)
    dnd = lines.on_state(state("100", Line.IN_USE, Presence.DND, at=9))
    assert dnd is not None
    assert dnd.since == T0 + timedelta(seconds=5)


def test_full_state_replaces_and_forgets_missing_extensions(lines: Book) -> None:
    views = lines.on_full_state([state("100", Line.IN_USE)])
    assert [v.extension for v in views] == ["100"]
    assert lines.get("101") is None


def test_full_state_older_than_a_change_keeps_the_change(lines: Book) -> None:
    lines.on_state(state("100", Line.IN_USE, at=10))
    views = {v.extension: v for v in lines.on_full_state([state("100", Line.IDLE, at=8)])}
    assert views["100"].line is Line.IN_USE
    views = {v.extension: v for v in lines.on_full_state([state("100", Line.IDLE, at=12)])}
    assert views["100"].line is Line.IDLE


def test_full_state_keeps_call_context_of_a_line_still_in_use(lines: Book) -> None:
    lines.on_call(call("c1", CallState.ANSWER))
    lines.on_state(state("100", Line.IN_USE))
    views = {v.extension: v for v in lines.on_full_state([state("100", Line.IN_USE)])}
    assert views["100"].call is not None
    assert views["100"].call.uuid == "c1"
    views = {v.extension: v for v in lines.on_full_state([state("100", Line.IDLE)])}
    assert views["100"].call is None


def test_a_bootstrap_is_merged_not_trusted_to_be_complete(lines: Book) -> None:
    views = lines.on_full_state([state("100", Line.IN_USE)], complete=False)
    assert [v.extension for v in views] == ["100"]
    kept = lines.get("101")
    assert kept is not None
    assert kept.line is Line.IDLE

"""Folding NFON state and call events into one ``LineView`` per extension.

``Lines`` keeps no views: the engine's book does (the views it decides on),
and a feed holds back the few it has not handed over yet (call settle).
Each fold reads the newest view of an extension through ``LineViews`` and
returns the next one, for the caller to hand on. ``Lines`` remembers only
the server's timestamps, to tell a stale full state from a fresh one.

The state stream says *whether* a line is busy; the call stream says *with
whom* and in which direction. Neither stream is reliable on its own (the call
stream never replays, the state stream re-bootstraps), so the rules are:

- the line state is the truth about being on a call: a line that goes idle or
  offline ends whatever call we thought it had;
- a call event adds context to the line (direction, internal/external, the
  other party) and is dropped at hang-up; a hang-up for a call never seen is
  ignored, and a second call ringing while one is answered (call waiting)
  does not replace the answered one;
- a full state (bootstrap or snapshot) replaces line and presence, but never
  with something older than what a change already told us. Only a snapshot
  is known to be complete; a stream's bootstrap has no end marker, so it is
  merged in rather than trusted to list every extension.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from presence_sync.clock import Clock
from presence_sync.model import Call, CallEvent, CallState, Line, LineView, StateEvent

__all__ = ["LineViews", "Lines"]

_RINGING = frozenset({CallState.RING, CallState.CALLER_RING, CallState.DIAL, CallState.CALLER_DIAL})
_ANSWERED = frozenset({CallState.ANSWER, CallState.CALLER_ANSWER})
_ENDED = frozenset({CallState.HANGUP, CallState.END})
_NOT_ON_A_CALL = frozenset({Line.IDLE, Line.OFFLINE})


class LineViews(Protocol):
    """Where the newest view of each extension is kept."""

    def line(self, extension: str) -> LineView | None:
        """The newest view of ``extension``; None when NFON never named it."""
        ...


class Lines:
    """The fold of NFON's events into line views (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._stamps: dict[str, datetime] = {}

    def on_state(self, event: StateEvent, views: LineViews) -> LineView | None:
        """Fold one state change into its line's view in ``views``; returns
        the new view, or ``None`` when nothing a rule could see has changed."""
        old = views.line(event.extension)
        self._remember(event)
        stamp = event.updated or self._clock.now()
        if old is None:
            view = LineView(event.extension, event.line, event.presence, None, stamp)
        else:
            if old.line == event.line and old.presence == event.presence:
                return None
            call = None if event.line in _NOT_ON_A_CALL else old.call
            since = stamp if event.line != old.line else old.since
            view = LineView(event.extension, event.line, event.presence, call, since)
        return view

    def _remember(self, event: StateEvent) -> None:
        # Only the server's own timestamps are comparable with a snapshot's.
        if event.updated is not None:
            self._stamps[event.extension] = event.updated
        else:
            self._stamps.pop(event.extension, None)

    def on_call(self, event: CallEvent, views: LineViews) -> LineView | None:
        """Fold one call event into its line's view in ``views``; returns the
        new view when it changed."""
        if not event.extension:
            return None
        old = views.line(event.extension) or LineView(event.extension)
        current = old.call
        now = event.updated or self._clock.now()
        if event.state in _ENDED:
            if current is None or current.uuid != event.uuid:
                return None
            view = replace(old, call=None)
        elif event.state in _RINGING or event.state in _ANSWERED:
            answered = event.state in _ANSWERED
            if current is not None and current.uuid != event.uuid and current.answered:
                return None
            if current is not None and current.uuid == event.uuid:
                if current.answered or not answered:
                    return None
                call = replace(current, answered=True, since=now)
            else:
                call = Call(event.uuid, event.direction, event.external, event.party, answered, now)
            view = replace(old, call=call)
        else:
            return None
        return view

    def on_full_state(
        self, states: Iterable[StateEvent], views: LineViews, *, complete: bool = True
    ) -> list[LineView]:
        """Fold the state of many lines at once (stream bootstrap or snapshot)
        into their views in ``views`` and return the new ones. With
        ``complete`` the caller replaces every view by them (extensions
        missing from it are gone); without, merges them in. A state older
        than a change already folded in keeps the newer view."""
        fresh: dict[str, LineView] = {}
        stamps: dict[str, datetime] = {}
        for event in states:
            old = views.line(event.extension)
            seen = self._stamps.get(event.extension)
            if (
                old is not None
                and seen is not None
                and event.updated is not None
                and event.updated < seen
            ):
                fresh[event.extension] = old
                stamps[event.extension] = seen
                continue
            stamp = event.updated or self._clock.now()
            if old is not None and old.line == event.line and old.presence == event.presence:
                view = old
            else:
                keep_call = old is not None and event.line not in _NOT_ON_A_CALL
                call = old.call if keep_call and old is not None else None
                since = old.since if old is not None and old.line == event.line else stamp
                view = LineView(event.extension, event.line, event.presence, call, since)
            fresh[event.extension] = view
            if event.updated is not None:
                stamps[event.extension] = event.updated
        if complete:
            self._stamps = stamps
        else:
            for extension in fresh:
                self._stamps.pop(extension, None)
            self._stamps.update(stamps)
        return list(fresh.values())

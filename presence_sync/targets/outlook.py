"""The ``outlook_calendar`` target: a busy event in the person's calendar for
each call, its end set at hang-up.

The event is created with a ``transactionId`` chosen and saved (in
``Memory.objects``) before the POST, so a POST retried after a timeout finds
the event the first one made instead of making a second. Its end is
provisional (``extend`` from now) and moved on while the call lasts, through
``Applied.expires``; at the end it is set to the hang-up. The event id stays
in ``Memory.objects`` until the event is closed, so an event a crash left open
is closed by the next start.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Final

from pydantic import Field

from presence_sync.model import Applied, Line, Status, frozen_map
from presence_sync.sections import Duration
from presence_sync.targets.base import Change, TargetEnv, TargetInfo
from presence_sync.targets.graph import GraphClient, GraphOptions, graph_datetime

__all__ = ["OutlookCalendarOptions", "OutlookCalendarTarget"]

_PERMISSION: Final = "Calendars.ReadWrite"
_EVENT: Final = "event"
_TRANSACTION: Final = "transaction"
_START: Final = "start"
DEFAULT_SUBJECT: Final = "On a call"


class OutlookCalendarOptions(GraphOptions):
    """The ``outlook_calendar`` block.

    - ``min_duration``: a call shorter than this leaves no event (it is
      deleted at hang-up); 0 keeps every event;
    - ``category``: an Outlook category put on each event;
    - ``extend``: how far ahead the provisional end lies while the call lasts.
    """

    min_duration: Annotated[Duration, Field(ge=0)] = 0.0
    category: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    extend: Annotated[Duration, Field(ge=300, le=4 * 3600)] = 900.0


class OutlookCalendarTarget:
    """One event per call (``showAs: busy``, no reminder, subject = the
    rule's ``text``, "On a call" when it sets none). The caller's number
    reaches the subject only when the rule's template asks for it."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="outlook_calendar",
        description="A busy Outlook calendar event per call, ending at hang-up",
        fields=frozenset({"text"}),
        # Outlook allows 4 concurrent requests per app and mailbox and
        # 10,000 per 10 minutes; one person's key never runs twice at once.
        rate=10.0,
        burst=10,
        concurrency=4,
        restores=True,
        refresh_before=120.0,
        requires=("microsoft", "tls"),
    )
    Options: ClassVar[type[OutlookCalendarOptions]] = OutlookCalendarOptions

    def __init__(self, name: str, options: OutlookCalendarOptions, env: TargetEnv) -> None:
        self.name = name
        self.options = options
        self._clock = env.clock
        self._graph = GraphClient(name, env, timeout=options.timeout)

    def __repr__(self) -> str:
        return f"<OutlookCalendarTarget {self.name!r}>"

    async def apply(self, change: Change) -> Applied:
        """Open or extend the call's event, or close it for None."""
        memory = change.memory
        user = await self._graph.user_id(change.person, memory)
        objects = dict(memory.objects())
        now = self._clock.now()
        if change.desired is None:
            await self._close(change, user, objects, now)
            return Applied(status=None, at=now)
        subject = change.desired.text or DEFAULT_SUBJECT
        end = now + timedelta(seconds=self.options.extend)
        event = objects.get(_EVENT)
        if event is not None:
            response = await self._graph.call(
                "PATCH",
                f"/users/{user}/events/{event}",
                json={"subject": subject, "end": graph_datetime(end)},
                permission=_PERMISSION,
                ok=frozenset({404}),
            )
            if response.status_code != 404:
                return self._applied(change.desired, now, end, event)
            # Deleted by the person: their choice, no new event for this call.
            for kind in (_EVENT, _START, _TRANSACTION):
                memory.drop_object(kind)
            return Applied(status=change.desired, at=now, data=frozen_map({"deleted": True}))
        event = await self._create(change, user, objects, subject, now, end)
        return self._applied(change.desired, now, end, event)

    def _applied(self, status: Status, now: datetime, end: datetime, event: str) -> Applied:
        return Applied(status=status, at=now, expires=end, data=frozen_map({"event": event}))

    async def _create(
        self,
        change: Change,
        user: str,
        objects: dict[str, str],
        subject: str,
        now: datetime,
        end: datetime,
    ) -> str:
        memory = change.memory
        start = objects.get(_START)
        if start is None:
            call = change.view.call if change.view is not None else None
            began = call.since if call is not None and call.since is not None else now
            start = min(began, now).isoformat()
            memory.put_object(_START, start)
        transaction = objects.get(_TRANSACTION)
        if transaction is None:
            # Saved before the POST: a retry after a timeout sends the same id.
            transaction = str(uuid.uuid4())
            memory.put_object(_TRANSACTION, transaction)
        body: dict[str, Any] = {
            "subject": subject,
            "start": graph_datetime(datetime.fromisoformat(start)),
            "end": graph_datetime(end),
            "showAs": "busy",
            "isReminderOn": False,
            "sensitivity": "normal",
            "transactionId": transaction,
        }
        if self.options.category is not None:
            body["categories"] = [self.options.category]
        response = await self._graph.call(
            "POST", f"/users/{user}/events", json=body, permission=_PERMISSION
        )
        event = str(response.json()["id"])
        memory.put_object(_EVENT, event)
        return event

    async def _close(
        self, change: Change, user: str, objects: dict[str, str], now: datetime
    ) -> None:
        memory = change.memory
        event = objects.get(_EVENT)
        if event is None and _TRANSACTION in objects:
            # A POST whose answer was lost may have made an event: the same
            # transactionId finds it (or makes it, to be closed right away).
            applied = change.applied.status if change.applied is not None else None
            subject = (applied.text if applied is not None else None) or DEFAULT_SUBJECT
            event = await self._create(change, user, objects, subject, now, now)
        if event is None:
            return
        start = datetime.fromisoformat(objects.get(_START) or now.isoformat())
        end = _hang_up(change, start, now)
        if (end - start).total_seconds() < self.options.min_duration:
            await self._graph.call(
                "DELETE",
                f"/users/{user}/events/{event}",
                permission=_PERMISSION,
                ok=frozenset({404}),
            )
        else:
            await self._graph.call(
                "PATCH",
                f"/users/{user}/events/{event}",
                json={"end": graph_datetime(end)},
                permission=_PERMISSION,
                ok=frozenset({404}),
            )
        for kind in (_EVENT, _START, _TRANSACTION):
            memory.drop_object(kind)

    async def aclose(self) -> None:
        await self._graph.aclose()


def _hang_up(change: Change, start: datetime, now: datetime) -> datetime:
    """When the call ended: the line's last change when the line is no longer
    in use (right after a restart too), else now."""
    view = change.view
    if view is not None and view.line is not Line.IN_USE and view.since is not None:
        since = view.since
        if since.tzinfo is not None and start <= since <= now:
            return since
    return now

"""One user's Outlook calendar as the Graph simulator keeps it: events that
are created, patched, deleted and read.

``transactionId`` (Graph's event resource): "a custom identifier specified by
a client app for the server to avoid redundant POST operations in case of
client retries to create the same event", which "you cannot change ... in a
subsequent update" and which is "only returned in a response payload if an
app has set it". Here a POST whose ``transactionId`` matches an event still
in the calendar creates nothing and answers ``201`` with that event, so a
client that timed out and retried sees what the first POST made.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from presence_sync.sim.graph_wire import (
    GraphError,
    bad_request,
    format_datetime_tz,
    parse_datetime_tz,
)

__all__ = ["Calendar"]

SHOW_AS = frozenset({"free", "tentative", "busy", "oof", "workingElsewhere", "unknown"})
SENSITIVITY = frozenset({"normal", "personal", "private", "confidential"})
_READ_ONLY = frozenset(
    {"id", "createdDateTime", "lastModifiedDateTime", "changeKey", "iCalUId", "@odata.etag"}
)
_seq = itertools.count(1)


@dataclass
class Calendar:
    """Events of one mailbox, by id, in creation order."""

    owner: str
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    def create(self, body: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """POST /events: the new event, or the existing one with the same
        ``transactionId``."""
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.", "ErrorInvalidRequest")
        transaction = body.get("transactionId")
        if transaction is not None:
            if not isinstance(transaction, str) or not transaction:
                raise bad_request("transactionId must be a non-empty string.")
            for event in self.events.values():
                if event.get("transactionId") == transaction:
                    return dict(event)
        event = self._validated({"subject": "", "showAs": "busy", "isReminderOn": True}, body)
        event_id = "AAMk" + uuid.uuid4().hex + f"{next(_seq):08d}"
        stamp = now.isoformat()
        event.update(
            {
                "id": event_id,
                "createdDateTime": stamp,
                "lastModifiedDateTime": stamp,
                "changeKey": uuid.uuid4().hex,
            }
        )
        if "start" not in event or "end" not in event:
            raise bad_request("An event needs start and end.", "ErrorInvalidRequest")
        self.events[event_id] = event
        return dict(event)

    def update(self, event_id: str, body: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """PATCH /events/{id}."""
        current = self.get(event_id)
        if not isinstance(body, Mapping):
            raise bad_request("The request body must be a JSON object.", "ErrorInvalidRequest")
        if "transactionId" in body and body["transactionId"] != current.get("transactionId"):
            raise bad_request(
                "transactionId cannot be changed once the event exists.", "ErrorInvalidRequest"
            )
        updated = self._validated(dict(current), body)
        updated["lastModifiedDateTime"] = now.isoformat()
        updated["changeKey"] = uuid.uuid4().hex
        self.events[event_id] = updated
        return dict(updated)

    def delete(self, event_id: str) -> None:
        self.get(event_id)
        del self.events[event_id]

    def get(self, event_id: str) -> dict[str, Any]:
        try:
            return dict(self.events[event_id])
        except KeyError:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            ) from None

    def list(self) -> list[dict[str, Any]]:
        return [dict(event) for event in self.events.values()]

    @staticmethod
    def _validated(event: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in body.items():
            if key in _READ_ONLY:
                continue
            if key in ("start", "end"):
                value = format_datetime_tz(parse_datetime_tz(value, key))
            elif key == "showAs" and value not in SHOW_AS:
                raise bad_request(f"Invalid showAs value {value!r}.", "ErrorInvalidRequest")
            elif key == "sensitivity" and value not in SENSITIVITY:
                raise bad_request(f"Invalid sensitivity value {value!r}.", "ErrorInvalidRequest")
            event[key] = value
        if "start" in event and "end" in event:
            start = parse_datetime_tz(event["start"], "start")
            end = parse_datetime_tz(event["end"], "end")
            if end < start:
                raise bad_request(
                    "The end of an event cannot be before its start.", "ErrorInvalidRequest"
                )
        return event

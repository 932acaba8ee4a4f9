"""The daemon's API for pausing people (``presence-sync pause`` / ``resume``).

- ``POST /api/people/{who}/pause`` with a JSON body ``{"for": "2h" or null,
  "target": NAME or null}`` (both optional; an empty body pauses every target
  until resumed) → 200 and the PERSON document;
- ``POST /api/people/{who}/resume`` → 200 and the PERSON document with
  ``"was_paused"``: false when they were not paused (nothing changed then:
  resuming is idempotent).

``who`` is a person's key, e-mail address or extension. Errors are JSON
``{"error": "..."}``: 404 for nobody of that name, 400 for an unknown target,
a duration that is none, or a body that is not the object above (also one
nested too deeply to parse), 413 for a body over the listener's limit (a few
KiB), 500 when the state database cannot keep the change (nothing changed
then). The
listener's ``WriteGuard`` (a bearer token off loopback, no requests from
other web sites) covers these routes like every other change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from presence_sync.api.http import error, json_response
from presence_sync.config import parse_duration
from presence_sync.errors import StoreError
from presence_sync.model import Person
from presence_sync.pauses import BadPause, Pauses, UnknownPerson

__all__ = ["PersonDoc", "minimal_person", "pause_routes"]

log = logging.getLogger(__name__)

PersonDoc = Callable[[Person], Mapping[str, Any]]
"""Builds the PERSON document the API answers with."""

_FIELDS = ("for", "target")


def minimal_person(pauses: Pauses) -> PersonDoc:
    """A PERSON document with who they are and their pause only (the status
    API fills in the rest)."""

    def doc(person: Person) -> Mapping[str, Any]:
        return {
            "key": person.key,
            "email": person.email,
            "name": person.name,
            "extension": person.extension,
            "paused": pauses.doc(person.key),
        }

    return doc


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (empty body: ``{}``); ``BadPause`` otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadPause('the body is not JSON: send {"for": "2h", "target": null}') from None
    except RecursionError:
        # Nesting deeper than the parser's recursion (~1000 levels fit in a
        # few KiB): no pause looks like that.
        raise BadPause("the body is nested too deeply to be a pause") from None
    if not isinstance(body, dict):
        raise BadPause('the body must be a JSON object like {"for": "2h", "target": null}')
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise BadPause(f"unknown field {unknown[0]!r}: a pause takes only 'for' and 'target'")
    return body


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadPause('\'for\' must be a duration like "30m" or "2h", or null')
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadPause(f"'for': {exc}") from None


def _target(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadPause("'target' must be a target's name, or null for every target")


def pause_routes(pauses: Pauses, person_doc: PersonDoc | None = None) -> list[Route]:
    """The pause and resume routes over ``pauses``; answers carry
    ``person_doc(person)`` (default: ``minimal_person``)."""
    doc = person_doc or minimal_person(pauses)

    def answer(
        act: Callable[[], Person], unstored: str, extra: Mapping[str, Any] | None = None
    ) -> Response:
        """``act()``'s person as a PERSON document (with the fields ``extra``
        holds once it ran), or the error it raised."""
        try:
            person = act()
        except UnknownPerson as exc:
            return error(404, str(exc))
        except BadPause as exc:
            return error(400, str(exc))
        except StoreError as exc:
            log.error("%s: %s", unstored, exc)
            return error(500, f"{unstored}: {exc}")
        return json_response({**doc(person), **(extra or {})})

    async def pause(request: Request) -> Response:
        try:
            body = await _body(request)
        except BadPause as exc:
            return error(400, str(exc))
        return answer(
            lambda: pauses.pause(
                request.path_params["who"],
                seconds=_seconds(body.get("for")),
                target=_target(body.get("target")),
            )[0],
            "the pause could not be stored, nothing changed",
        )

    async def resume(request: Request) -> Response:
        extra: dict[str, Any] = {}

        def act() -> Person:
            person, ended = pauses.resume(request.path_params["who"])
            extra["was_paused"] = ended is not None
            return person

        return answer(act, "the resume could not be stored, the pause stays", extra)

    return [
        Route("/api/people/{who}/pause", pause, methods=["POST"]),
        Route("/api/people/{who}/resume", resume, methods=["POST"]),
    ]

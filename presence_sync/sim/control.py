"""The simulators' ``/_sim/`` control routes: JSON in, JSON out.

Every simulator offers the same small contract to a test or an admin in
another process: the body is a JSON object (or empty), the answer is the
handler's result as JSON (``{"ok": true}`` when it returns nothing), and a
problem is ``{"error": "..."}`` with 400 for bad input, 404 for something
unknown (the handler raised ``KeyError``) and 409 for a request that does
not fit the current state (``Conflict``).

Every control route says in one line what each of its methods does
(``ControlRoute.about``), and ``index_route`` answers ``GET /_sim/`` with
the list of them, read from the app's own route table, so the index an
admin reads cannot drift from what the simulator serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = [
    "INDEX",
    "Conflict",
    "ControlRoute",
    "Handler",
    "control_calls",
    "index_route",
    "json_route",
]

INDEX = "/_sim/"
"""Where every simulator lists its control calls."""

Handler = Callable[[dict[str, Any], Mapping[str, str]], Any]
"""``(body, path parameters) → result``."""


class Conflict(Exception):
    """The request is well formed but the simulator's state refuses it (409)."""


def _error(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status_code=status)


class ControlRoute(Route):
    """A ``/_sim/`` route with a one-line description per HTTP method
    (``about``: method → text); its methods are the keys of ``about``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], about: Mapping[str, str]) -> None:
        super().__init__(path, endpoint, methods=list(about))
        self.about = dict(about)


def control_calls(routes: Sequence[BaseRoute]) -> list[dict[str, str]]:
    """``{"method", "path", "description"}`` of every control call in
    ``routes``, in table order."""
    return [
        {"method": method, "path": route.path, "description": text}
        for route in routes
        if isinstance(route, ControlRoute)
        for method, text in route.about.items()
    ]


def index_route(simulator: str, routes: Sequence[BaseRoute]) -> ControlRoute:
    """``GET /_sim/``: what ``simulator`` is and its control calls, read
    from ``routes`` (the app's route list, this route included) when asked."""

    async def endpoint(_: Request) -> Response:
        body = {"simulator": simulator, "calls": control_calls(routes)}
        return Response(
            json.dumps(body, indent=2, ensure_ascii=False) + "\n", media_type="application/json"
        )

    return ControlRoute(INDEX, endpoint, {"GET": "this list of control calls"})


def json_route(path: str, fn: Handler, method: str, about: str = "") -> ControlRoute:
    """A control route calling ``fn`` with the request's JSON body and path
    parameters (see the module docstring for the answers); ``about`` says in
    one line what it does, for the index."""

    async def endpoint(request: Request) -> Response:
        body: dict[str, Any] = {}
        raw = await request.body()
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except ValueError:
                return _error("body is not JSON", 400)
            if not isinstance(parsed, dict):
                return _error("body is not a JSON object", 400)
            body = parsed
        try:
            result = fn(body, request.path_params)
        except KeyError as exc:
            return _error(str(exc.args[0]) if exc.args else "not found", 404)
        except Conflict as exc:
            return _error(str(exc), 409)
        except (TypeError, ValueError) as exc:
            return _error(str(exc), 400)
        return JSONResponse({"ok": True} if result is None else result)

    return ControlRoute(path, endpoint, {method: about})

"""The simulators' ``/_sim/`` control routes: JSON in, JSON out.

Every simulator offers the same small contract to a test or an admin in
another process: the body is a JSON object (or empty), the answer is the
handler's result as JSON (``{"ok": true}`` when it returns nothing), and a
problem is ``{"error": "..."}`` with 400 for bad input, 404 for something
unknown (the handler raised ``KeyError``) and 409 for a request that does
not fit the current state (``Conflict``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["Conflict", "Handler", "json_route"]

Handler = Callable[[dict[str, Any], Mapping[str, str]], Any]
"""``(body, path parameters) → result``."""


class Conflict(Exception):
    """The request is well formed but the simulator's state refuses it (409)."""


def _error(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def json_route(path: str, fn: Handler, method: str) -> Route:
    """A control route calling ``fn`` with the request's JSON body and path
    parameters (see the module docstring for the answers)."""

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

    return Route(path, endpoint, methods=[method])

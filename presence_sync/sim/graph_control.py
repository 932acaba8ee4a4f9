"""The Graph simulator's ``/_sim/`` control API: not part of any Microsoft
contract; JSON in and out, for driving a simulator in another process
(``presence-sync sim microsoft``). Each route calls one public ``GraphSim``
method; a bad request answers 400 ``{"error": "..."}``.

- ``GET|POST /_sim/users``: list; add ``{userPrincipalName, mail?, id?, displayName?}``
- ``POST /_sim/apps``: register ``{client_id?, tenant?, secret?, certificate_pem?, roles?}``
- ``POST|DELETE /_sim/users/{id}/preferred``: ``{availability, activity, expiration_minutes?}``
- ``POST /_sim/users/{id}/status-message``: ``{content, expires? (ISO 8601)}``
- ``POST /_sim/users/{id}/client``: a Teams client signs in ``{availability?, activity?}``
  (``{}`` signs it out)
- ``GET /_sim/users/{id}/presence``, ``GET /_sim/users/{id}/events``
- ``POST /_sim/fail``: ``{path?, status?, count?, retry_after?, message?}``
- ``POST /_sim/hang``: ``{seconds, path?, count?}``
- ``GET|DELETE /_sim/requests`` (``?path=`` prefix)
- ``POST /_sim/clock/advance``: ``{seconds}`` (only with a ``SimClock``)
- ``GET /_sim/``: this list, with a line on each call
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presence_sync.sim.control import ControlRoute, index_route
from presence_sync.sim.graph_sim import GraphSim
from presence_sync.sim.graph_wire import SimClock

__all__ = ["control_routes"]


class _Control:
    """``/_sim/``: set-up and inspection for another process (JSON in and out)."""

    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim

    async def _call(self, request: Request, action: Callable[[dict[str, Any]], Any]) -> Response:
        try:
            raw = await request.body()
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = action(body)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result if result is not None else {"ok": True})

    async def users(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse([u.selectable() for u in self.sim.users()])

        def act(b: dict[str, Any]) -> dict[str, str]:
            user_id = self.sim.add_user(
                b["userPrincipalName"],
                mail=b.get("mail", ""),
                user_id=b.get("id"),
                display_name=b.get("displayName"),
            )
            rest = {k: v for k, v in b.items() if k not in _ADD_USER_KEYS}
            if rest:
                self.sim.change_user(user_id, **rest)
            return {"id": user_id}

        return await self._call(request, act)

    async def user(self, request: Request) -> Response:
        user_id = request.path_params["user"]
        return await self._call(request, lambda b: self.sim.change_user(user_id, **b))

    async def groups(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(
                [
                    {"id": g.id, "displayName": g.display_name, "members": g.members}
                    for g in self.sim.groups()
                ]
            )

        def act(b: dict[str, Any]) -> dict[str, str]:
            group_id = self.sim.add_group(str(b["displayName"]), group_id=b.get("id"))
            for member in b.get("members") or []:
                self.sim.add_member(group_id, str(member))
            return {"id": group_id}

        return await self._call(request, act)

    async def members(self, request: Request) -> Response:
        group_id = request.path_params["group"]
        if request.method == "DELETE":
            return await self._call(request, lambda b: self.sim.remove_member(group_id, b["id"]))
        return await self._call(request, lambda b: self.sim.add_member(group_id, b["id"]))

    async def apps(self, request: Request) -> Response:
        def act(b: dict[str, Any]) -> dict[str, str]:
            pem = b.get("certificate_pem")
            extra = {"roles": b["roles"]} if "roles" in b else {}
            client_id = self.sim.register_app(
                b.get("client_id"),
                tenant=b.get("tenant"),
                secret=b.get("secret"),
                certificate_pem=pem.encode() if pem else None,
                **extra,
            )
            return {"client_id": client_id}

        return await self._call(request, act)

    async def preferred(self, request: Request) -> Response:
        user = request.path_params["user"]
        if request.method == "DELETE":
            return await self._call(request, lambda _b: self.sim.clear_preferred(user))

        def act(b: dict[str, Any]) -> None:
            minutes = b.get("expiration_minutes")
            expiration = None if minutes is None else timedelta(minutes=float(minutes))
            self.sim.set_preferred(user, b["availability"], b["activity"], expiration)

        return await self._call(request, act)

    async def status_message(self, request: Request) -> Response:
        user = request.path_params["user"]

        def act(b: dict[str, Any]) -> None:
            expires = b.get("expires")
            moment = None if expires is None else datetime.fromisoformat(expires)
            self.sim.set_status_message(user, b["content"], moment)

        return await self._call(request, act)

    async def client(self, request: Request) -> Response:
        user = request.path_params["user"]
        return await self._call(
            request,
            lambda b: self.sim.sign_in_client(user, b.get("availability"), b.get("activity")),
        )

    async def presence(self, request: Request) -> Response:
        user = request.path_params["user"]
        return await self._call(
            request,
            lambda _b: {**self.sim.presence(user), "sessions": self.sim.sessions(user)},
        )

    async def events(self, request: Request) -> Response:
        user = request.path_params["user"]
        return await self._call(request, lambda _b: {"value": self.sim.events(user)})

    async def fail(self, request: Request) -> Response:
        return await self._call(
            request,
            lambda b: self.sim.fail_next(
                b.get("path", ""),
                int(b.get("status", 429)),
                int(b.get("count", 1)),
                b.get("retry_after", 1.0),
                str(b.get("message", "Injected failure.")),
            ),
        )

    async def hang(self, request: Request) -> Response:
        return await self._call(
            request,
            lambda b: self.sim.hang_next(
                float(b["seconds"]), b.get("path", ""), int(b.get("count", 1))
            ),
        )

    async def requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.sim.clear_requests()
            return JSONResponse({"ok": True})
        prefix = request.query_params.get("path", "")
        return JSONResponse(
            [
                {
                    "method": r.method,
                    "path": r.path,
                    "query": r.query,
                    "body": r.body,
                    "status": r.status,
                    "at": r.at.isoformat(),
                    "client_id": r.client_id,
                }
                for r in self.sim.requests(prefix)
            ]
        )

    async def advance(self, request: Request) -> Response:
        clock = self.sim.clock
        if not isinstance(clock, SimClock):
            return JSONResponse({"error": "this simulator's clock cannot be moved"}, 409)
        return await self._call(request, lambda b: clock.advance(float(b["seconds"])))


_ADD_USER_KEYS = frozenset({"userPrincipalName", "mail", "id", "displayName"})


def control_routes(sim: GraphSim) -> list[Route]:
    """The ``/_sim/`` routes for ``sim``, the index included."""
    c = _Control(sim)
    user = "/_sim/users/{user}"
    routes: list[Route] = [
        ControlRoute("/_sim/users", c.users, {
            "GET": "every user",
            "POST": "add a user {userPrincipalName, mail?, id?, displayName?, businessPhones?, "
                    "mobilePhone?, employeeId?, accountEnabled?, extensionAttributeN?}; "
                    "answers {id}",
        }),
        ControlRoute(user, c.user, {
            "PATCH": "change a user {businessPhones?, mobilePhone?, employeeId?, "
                     "accountEnabled?, displayName?, mail?, extensionAttributeN?}",
        }),
        ControlRoute("/_sim/groups", c.groups, {
            "GET": "every group with its direct members",
            "POST": "add a group {displayName, id?, members?: [object ids]}; answers {id}",
        }),
        ControlRoute("/_sim/groups/{group}/members", c.members, {
            "POST": "add a user or group as a direct member {id}",
            "DELETE": "remove a direct member {id}",
        }),
        ControlRoute("/_sim/apps", c.apps, {
            "POST": "register an app {client_id?, tenant?, secret?, certificate_pem?, roles?}",
        }),
        ControlRoute(user + "/preferred", c.preferred, {
            "POST": "the user picks a status in Teams {availability, activity, "
                    "expiration_minutes?}",
            "DELETE": "the user resets their status in Teams",
        }),
        ControlRoute(user + "/status-message", c.status_message, {
            "POST": "the user sets their status message {content, expires?}",
        }),
        ControlRoute(user + "/client", c.client, {
            "POST": "a Teams client signs in {availability?, activity?}; {} signs it out",
        }),
        ControlRoute(user + "/presence", c.presence, {
            "GET": "the user's presence as they see it, with every session",
        }),
        ControlRoute(user + "/events", c.events, {"GET": "the user's calendar events"}),
        ControlRoute("/_sim/fail", c.fail, {
            "POST": "answer the next requests to a path with an error {path?, status?, "
                    "count?, retry_after?, message? (error.message)}",
        }),
        ControlRoute("/_sim/hang", c.hang, {
            "POST": "hold the answer to the next requests {seconds, path?, count?}",
        }),
        ControlRoute("/_sim/requests", c.requests, {
            "GET": "every Graph and sign-in request so far (?path= a prefix), secrets masked",
            "DELETE": "forget the requests so far",
        }),
        ControlRoute("/_sim/clock/advance", c.advance, {
            "POST": "move the simulator's clock forward {seconds} (simulated clock only)",
        }),
    ]  # fmt: skip
    routes.append(index_route("Microsoft Entra ID and Graph", routes))
    return routes

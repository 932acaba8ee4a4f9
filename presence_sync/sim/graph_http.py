"""HTTP face of the Graph simulator: Entra ID's token endpoints under
``/{tenant}/``, Graph v1.0 under ``/v1.0/``, and the ``/_sim/`` control API from
``graph_control.py``.

Every Microsoft request is recorded, then may wait (``hang_next``) or fail
(``fail_next``) before it is handled. Graph requests need a bearer token of
this tenant with the role the call needs; presence calls also spend the
app's 1,500 / 30 s budget. Graph errors have Graph's shape
``{"error": {"code", "message", "innerError": {date, request-id,
client-request-id}}}``; a 401 carries ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presence_sync.sim.graph_control import control_routes
from presence_sync.sim.graph_identity import Principal, TokenRejected, aadsts
from presence_sync.sim.graph_presence import StatusMessage
from presence_sync.sim.graph_sim import GraphSim, User
from presence_sync.sim.graph_wire import (
    GraphError,
    RecordedRequest,
    bad_request,
    parse_datetime_tz,
)

__all__ = ["build_app"]

GRAPH = "/v1.0"
_SECRET_FIELDS = ("client_secret", "client_assertion")
_FILTER = re.compile(r"^\s*(mail|userPrincipalName)\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_USER_PROPERTIES = (
    "id", "userPrincipalName", "mail", "displayName", "givenName", "surname",
    "businessPhones", "jobTitle", "mobilePhone", "officeLocation", "preferredLanguage",
    "accountEnabled", "employeeId", "onPremisesExtensionAttributes",
)  # fmt: skip
_GROUP_FILTER = re.compile(r"^\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_READ_MEMBERS = frozenset(
    {"GroupMember.Read.All", "Group.Read.All", "Directory.Read.All", "Group.ReadWrite.All"}
)
_MEMBERS_DEFAULT_PAGE = 100
_MEMBERS_MAX_PAGE = 999
_READ_USERS = frozenset({"User.Read.All"})
_READ_PRESENCE = frozenset({"Presence.Read.All", "Presence.ReadWrite.All"})
_WRITE_PRESENCE = frozenset({"Presence.ReadWrite.All"})
_READ_CALENDARS = frozenset({"Calendars.Read", "Calendars.ReadBasic", "Calendars.ReadWrite"})
_WRITE_CALENDARS = frozenset({"Calendars.ReadWrite"})
_STATUS_CODES = {429: "TooManyRequests", 503: "ServiceUnavailable", 500: "InternalServerError",
                 502: "BadGateway", 504: "GatewayTimeout"}  # fmt: skip

Handler = Callable[[Request, Principal, Any], Awaitable[Response]]


def _guid(key: str) -> None:
    """Presence endpoints take object ids (GUIDs) only, not UPNs."""
    try:
        uuid.UUID(key)
    except ValueError:
        raise bad_request(
            f"'{key}' is not a valid user id: presence needs the object id (a GUID)."
        ) from None


def _form(raw: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (last value wins)."""
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if status == 204 or body is None:
        return Response(status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


class _Graph:
    """Handlers; all state lives in the simulator."""

    def __init__(self, sim: GraphSim) -> None:
        self.sim = sim

    # -- plumbing --------------------------------------------------------------
    def error(self, exc: GraphError) -> Response:
        request_id = str(uuid.uuid4())
        headers = {"request-id": request_id, **exc.headers}
        return JSONResponse(
            exc.body(request_id, self.sim.now()), status_code=exc.status, headers=headers
        )

    def unauthorized(self, request: Request, message: str) -> GraphError:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return GraphError(
            401,
            "InvalidAuthenticationToken",
            message,
            {
                "WWW-Authenticate": (
                    f'Bearer realm="", authorization_uri="{origin}/common/oauth2/authorize", '
                    'client_id="00000003-0000-0000-c000-000000000000"'
                )
            },
        )

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return None
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = _form(raw)
            return {k: ("***" if k in _SECRET_FIELDS else v) for k, v in form.items()}
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    async def _prelude(self, request: Request) -> tuple[Any, GraphError | None]:
        """Body for the log; the injected hang and failure."""
        body = await self._body(request)
        path = request.url.path
        hang = self.sim.take_hang(path)
        if hang:
            await asyncio.sleep(hang)
        failure = self.sim.take_failure(path)
        if failure is not None:
            status, retry_after, message = failure
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            code = _STATUS_CODES.get(status, "ServiceError")
            return body, GraphError(status, code, message, headers)
        return body, None

    def _record(self, request: Request, body: Any, status: int, client_id: str | None) -> None:
        self.sim.record(
            RecordedRequest(
                request.method,
                request.url.path,
                request.url.query,
                body,
                status,
                self.sim.now(),
                client_id,
            )
        )

    def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None or not header.strip():
            raise self.unauthorized(request, "Access token is empty.")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.unauthorized(request, "Access token is empty.")
        try:
            with self.sim.lock():
                who = self.sim.identity.principal(token.strip())
        except TokenRejected as exc:
            raise self.unauthorized(request, str(exc)) from None
        if who.tenant != self.sim.tenant:
            raise self.unauthorized(
                request, "Access token validation failure. The token is for another tenant."
            )
        return who

    def graph(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body, failed = await self._prelude(request)
            client_id = None
            if failed is not None:
                response = self.error(failed)
            else:
                try:
                    who = self.principal(request)
                    client_id = who.client_id
                    raw = await request.body()
                    parsed: Any = None
                    if raw:
                        try:
                            parsed = json.loads(raw)
                        except ValueError:
                            raise bad_request("Unable to read JSON request payload.") from None
                    response = await handler(request, who, parsed)
                except GraphError as exc:
                    response = self.error(exc)
            self._record(request, body, response.status_code, client_id)
            return response

        return endpoint

    def identity(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body, failed = await self._prelude(request)
            if failed is not None:
                status, reply = aadsts(
                    failed.status, "temporarily_unavailable", 90033, failed.message, self.sim.now()
                )
                response: Response = JSONResponse(reply, status_code=status, headers=failed.headers)
            else:
                response = await handler(request)
            client_id = body.get("client_id") if isinstance(body, dict) else None
            self._record(request, body, response.status_code, client_id)
            return response

        return endpoint

    @staticmethod
    def require(who: Principal, allowed: frozenset[str], code: str, message: str) -> None:
        if not who.roles & allowed:
            raise GraphError(403, code, message)

    def user(self, key: str, *, guid: bool = False) -> str:
        if guid:
            _guid(key)
        user = self.sim.find_user(key)
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        return user.id

    # -- identity ----------------------------------------------------------------
    async def openid(self, request: Request) -> Response:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        with self.sim.lock():
            status, body = self.sim.identity.openid_configuration(
                request.path_params["tenant"], origin
            )
        return JSONResponse(body, status_code=status)

    async def keys(self, request: Request) -> Response:
        with self.sim.lock():
            return JSONResponse(self.sim.identity.jwks())

    async def instance(self, request: Request) -> Response:
        # MSAL's instance discovery, for a client that points
        # ``instance_discovery`` at this host instead of turning it off.
        origin = f"{request.url.scheme}://{request.url.netloc}"
        endpoint = request.query_params.get("authorization_endpoint", "")
        tenant = urlsplit(endpoint).path.strip("/").split("/")[0] or self.sim.tenant
        return JSONResponse(
            {
                "tenant_discovery_endpoint": (
                    f"{origin}/{tenant}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [
                    {
                        "preferred_network": request.url.netloc,
                        "preferred_cache": request.url.netloc,
                        "aliases": [request.url.netloc],
                    }
                ],
            }
        )

    async def token(self, request: Request) -> Response:
        form = _form(await request.body())
        tenant = request.path_params["tenant"]
        endpoint = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
        with self.sim.lock():
            status, body = self.sim.identity.token(tenant, form, endpoint)
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    # -- users -----------------------------------------------------------------------
    def _select(self, request: Request, user: User) -> dict[str, Any]:
        select = request.query_params.get("$select")
        if not select:
            return user.resource()
        wanted = [p.strip() for p in select.split(",") if p.strip()]
        for name in wanted:
            if name not in _USER_PROPERTIES:
                raise bad_request(
                    f"Could not find a property named '{name}' on type 'microsoft.graph.user'."
                )
        resource = user.selectable()
        return {name: resource[name] for name in wanted}

    async def get_user(self, request: Request, who: Principal, _body: Any) -> Response:
        self.require(who, _READ_USERS, "Authorization_RequestDenied",
                     "Insufficient privileges to complete the operation.")  # fmt: skip
        user = self.sim.find_user(self.user(request.path_params["user"]))
        assert user is not None
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity"}
        return _json(200, body | self._select(request, user))

    async def list_users(self, request: Request, who: Principal, _body: Any) -> Response:
        self.require(who, _READ_USERS, "Authorization_RequestDenied",
                     "Insufficient privileges to complete the operation.")  # fmt: skip
        users = self.sim.users()
        query = request.query_params.get("$filter")
        if query is not None:
            match = _FILTER.match(query)
            if match is None:
                raise bad_request(
                    f"Unsupported or invalid query filter clause specified: {query}",
                    "Request_UnsupportedQuery",
                )
            prop, value = match.group(1).lower(), match.group(2).replace("''", "'").lower()
            users = [
                u
                for u in users
                if ((u.mail or "") if prop == "mail" else u.user_principal_name).lower() == value
            ]
        return _json(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
                "value": [self._select(request, u) for u in users],
            },
        )

    # -- groups --------------------------------------------------------------------
    def _members_call(self, who: Principal) -> None:
        self.require(who, _READ_MEMBERS, "Authorization_RequestDenied",
                     "Insufficient privileges to complete the operation.")  # fmt: skip

    async def list_groups(self, request: Request, who: Principal, _body: Any) -> Response:
        self._members_call(who)
        groups = self.sim.groups()
        query = request.query_params.get("$filter")
        if query is not None:
            match = _GROUP_FILTER.match(query)
            if match is None:
                raise bad_request(
                    f"Unsupported or invalid query filter clause specified: {query}",
                    "Request_UnsupportedQuery",
                )
            # displayName eq is case-insensitive in Entra.
            wanted = match.group(1).replace("''", "'").lower()
            groups = [g for g in groups if g.display_name.lower() == wanted]
        select = request.query_params.get("$select")
        names = [p.strip() for p in select.split(",")] if select else ["id", "displayName"]
        value = [{"id": g.id, "displayName": g.display_name} for g in groups]
        return _json(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups",
                "value": [{k: v for k, v in g.items() if k in names} for g in value],
            },
        )

    async def transitive_users(self, request: Request, who: Principal, _body: Any) -> Response:
        self._members_call(who)
        group_id = request.path_params["group"]
        _guid(group_id)
        if self.sim.find_group(group_id) is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{group_id}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        raw_top = request.query_params.get("$top")
        try:
            top = _MEMBERS_DEFAULT_PAGE if raw_top is None else int(raw_top)
        except ValueError:
            raise bad_request(f"Invalid page size specified: '{raw_top}'.") from None
        if not 1 <= top <= _MEMBERS_MAX_PAGE:
            raise bad_request(
                f"Invalid page size specified: '{raw_top}'. Must be between 1 and 999 inclusive.",
                "Request_UnsupportedQuery",
            )
        token = request.query_params.get("$skiptoken")
        start = 0
        if token is not None:
            try:
                start = int(token, 16)
            except ValueError:
                raise bad_request("Invalid $skiptoken.", "Request_UnsupportedQuery") from None
        users = self.sim.transitive_users(group_id)
        page = users[start : start + top]
        body: dict[str, Any] = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
            "value": [
                {"@odata.type": "#microsoft.graph.user"} | self._select(request, u) for u in page
            ],
        }
        if start + top < len(users):
            query = [
                (k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True)
                if k != "$skiptoken"
            ]  # fmt: skip
            query.append(("$skiptoken", format(start + top, "x")))
            origin = f"{request.url.scheme}://{request.url.netloc}"
            body["@odata.nextLink"] = f"{origin}{request.url.path}?{urlencode(query)}"
        return _json(200, body)

    # -- presence ------------------------------------------------------------------
    def _presence_call(self, who: Principal, allowed: frozenset[str]) -> None:
        self.require(who, allowed, "Forbidden",
                     "Insufficient privileges to complete the operation.")  # fmt: skip
        self.sim.spend_presence_budget(who)

    async def get_presence(self, request: Request, who: Principal, _body: Any) -> Response:
        self._presence_call(who, _READ_PRESENCE)
        user_id = self.user(request.path_params["user"], guid=True)
        with self.sim.lock():
            return _json(200, self.sim.presence_state(user_id).resource(self.sim.now()))

    async def presences_by_id(self, request: Request, who: Principal, body: Any) -> Response:
        self._presence_call(who, _READ_PRESENCE)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or len(ids) > 650:
            raise bad_request("ids must be a list of 1 to 650 user ids.")
        for key in ids:
            _guid(str(key))
        with self.sim.lock():
            now = self.sim.now()
            found = [str(i) for i in ids if self.sim.find_user(str(i)) is not None]
            value = [self.sim.presence_state(i).resource(now) for i in found]
        for item in value:
            item.pop("@odata.context", None)
        return _json(200, {"value": value})

    async def set_presence(self, request: Request, who: Principal, body: Any) -> Response:
        self._presence_call(who, _WRITE_PRESENCE)
        user_id = self.user(request.path_params["user"], guid=True)
        with self.sim.lock():
            self.sim.presence_state(user_id).set_presence(
                body if isinstance(body, dict) else {}, who.client_id, self.sim.now()
            )
        return Response(status_code=200)

    async def clear_presence(self, request: Request, who: Principal, body: Any) -> Response:
        self._presence_call(who, _WRITE_PRESENCE)
        user_id = self.user(request.path_params["user"], guid=True)
        with self.sim.lock():
            self.sim.presence_state(user_id).clear_presence(
                body if isinstance(body, dict) else {}, who.client_id, self.sim.now()
            )
        return Response(status_code=200)

    async def set_status_message(self, request: Request, who: Principal, body: Any) -> Response:
        self._presence_call(who, _WRITE_PRESENCE)
        user_id = self.user(request.path_params["user"], guid=True)
        status = body.get("statusMessage") if isinstance(body, dict) else None
        message = status.get("message") if isinstance(status, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise bad_request("statusMessage.message.content is required.")
        content_type = message.get("contentType", "text")
        if content_type != "text":
            raise bad_request("Only contentType 'text' is supported for a status message.")
        expiry_raw = status.get("expiryDateTime") if isinstance(status, dict) else None
        expires = None if expiry_raw is None else parse_datetime_tz(expiry_raw, "expiryDateTime")
        with self.sim.lock():
            now = self.sim.now()
            self.sim.presence_state(user_id).set_status_message(
                StatusMessage(message["content"], "text", expires, expiry_raw, now)
            )
        return Response(status_code=200)

    # -- events ----------------------------------------------------------------------
    async def events(self, request: Request, who: Principal, body: Any) -> Response:
        user_id = self.user(request.path_params["user"])
        if request.method == "GET":
            self.require(who, _READ_CALENDARS, "ErrorAccessDenied",
                         "Access is denied. Check credentials and try again.")  # fmt: skip
            with self.sim.lock():
                return _json(200, {"value": self.sim.calendar(user_id).list()})
        self.require(who, _WRITE_CALENDARS, "ErrorAccessDenied",
                     "Access is denied. Check credentials and try again.")  # fmt: skip
        with self.sim.lock():
            return _json(201, self.sim.calendar(user_id).create(body, self.sim.now()))

    async def event(self, request: Request, who: Principal, body: Any) -> Response:
        user_id = self.user(request.path_params["user"])
        event_id = request.path_params["event"]
        allowed = _READ_CALENDARS if request.method == "GET" else _WRITE_CALENDARS
        self.require(who, allowed, "ErrorAccessDenied",
                     "Access is denied. Check credentials and try again.")  # fmt: skip
        with self.sim.lock():
            calendar = self.sim.calendar(user_id)
            if request.method == "GET":
                return _json(200, calendar.get(event_id))
            if request.method == "DELETE":
                calendar.delete(event_id)
                return Response(status_code=204)
            return _json(200, calendar.update(event_id, body, self.sim.now()))

    async def unknown(self, request: Request, who: Principal, _body: Any) -> Response:
        raise GraphError(
            400, "BadRequest", f"Resource not found for the segment '{request.url.path}'."
        )


def build_app(sim: GraphSim) -> Starlette:
    """The simulator's ASGI app."""
    g = _Graph(sim)
    user = GRAPH + "/users/{user}"
    routes = [
        Route(GRAPH + "/users", g.graph(g.list_users), methods=["GET"]),
        Route(GRAPH + "/groups", g.graph(g.list_groups), methods=["GET"]),
        Route(
            GRAPH + "/groups/{group}/transitiveMembers/microsoft.graph.user",
            g.graph(g.transitive_users),
            methods=["GET"],
        ),
        Route(user, g.graph(g.get_user), methods=["GET"]),
        Route(user + "/presence", g.graph(g.get_presence), methods=["GET"]),
        Route(user + "/presence/setPresence", g.graph(g.set_presence), methods=["POST"]),
        Route(user + "/presence/clearPresence", g.graph(g.clear_presence), methods=["POST"]),
        Route(user + "/presence/setStatusMessage", g.graph(g.set_status_message), methods=["POST"]),
        Route(
            GRAPH + "/communications/getPresencesByUserId",
            g.graph(g.presences_by_id),
            methods=["POST"],
        ),
        Route(user + "/events", g.graph(g.events), methods=["GET", "POST"]),
        Route(user + "/calendar/events", g.graph(g.events), methods=["GET", "POST"]),
        Route(user + "/events/{event}", g.graph(g.event), methods=["GET", "PATCH", "DELETE"]),
        Route(
            user + "/calendar/events/{event}",
            g.graph(g.event),
            methods=["GET", "PATCH", "DELETE"],
        ),
        Route(GRAPH + "/{rest:path}", g.graph(g.unknown)),
        *control_routes(sim),
        Route("/common/discovery/instance", g.identity(g.instance), methods=["GET"]),
        Route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            g.identity(g.openid),
            methods=["GET"],
        ),
        Route("/{tenant}/discovery/v2.0/keys", g.identity(g.keys), methods=["GET"]),
        Route("/{tenant}/oauth2/v2.0/token", g.identity(g.token), methods=["POST"]),
    ]
    return Starlette(routes=routes)

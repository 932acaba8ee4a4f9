"""HTTP face of the NFON simulator: the CTI API routes under ``/v1`` as the
OpenAPI document describes them, and the ``/_sim/`` control API (not part of
the NFON contract) for the demo and for driving a simulator in another
process.

Status codes and bodies follow the spec's ``components.responses``: 400, 403,
404, 406 and 500 carry ``{"error": "..."}`` and every NFON response except
login and JWKS carries ``X-Request-Id``; 401 has no body. Login's documented
400/401 have empty bodies.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presence_sync.sim.control import Conflict, index_route, json_route
from presence_sync.sim.nfon_sim import NfonSim
from presence_sync.sim.nfon_streams import Outlet, SseResponse, StreamKind
from presence_sync.sim.nfon_tokens import Issued, TokenPair

__all__ = ["build_app"]

BASE = "/v1"
_NO_REQUEST_ID = ("/login", "/.well-known/jwks.json")
_STREAM_TYPES = frozenset({"text/event-stream", "text/*", "*/*"})
_JSON_TYPES = frozenset({"application/json", "application/*"})
_CALL_UUID = re.compile(r"\w{8}-\w{4}-\w{4}-\w{4}-\w{12}")
"""The pattern the spec gives the ``uuid`` path parameter of ``DELETE``."""


def _request_id() -> dict[str, str]:
    return {"X-Request-Id": str(uuid.uuid4())}


def _accepted(header: str | None) -> set[str]:
    """Media ranges the client accepts (q > 0); an absent or empty header
    accepts anything."""
    if header is None or not header.strip():
        return {"*/*"}
    accepted: set[str] = set()
    for part in header.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            accepted.add(media.lower())
    return accepted


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class _Nfon:
    """Handlers of the NFON routes; all state lives in the simulator."""

    def __init__(self, sim: NfonSim) -> None:
        self.sim = sim

    def error(
        self, status: int, message: str, api_path: str, retry_after: str | None = None
    ) -> Response:
        """An error response shaped as the spec says for ``status`` on ``api_path``."""
        headers = {} if api_path in _NO_REQUEST_ID else _request_id()
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if status == 401:
            self.sim.record_unauthorized()
        if status == 401 or (api_path == "/login" and status == 400):
            return Response(status_code=status, headers=headers)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def begin(self, request: Request) -> tuple[str, Response | None]:
        """Record the request; an injected failure answers it at once."""
        full_path = request.url.path
        api_path = full_path[len(BASE) :] if full_path.startswith(BASE + "/") else full_path
        self.sim.record_request(request.method, api_path, request.headers.get("user-agent"))
        failure = self.sim.take_failure(request.method, full_path, api_path)
        if failure is None:
            return api_path, None
        status = failure.status
        return api_path, self.error(
            status, f"injected failure {status}", api_path, failure.retry_after
        )

    def authenticate(self, request: Request, api_path: str) -> Issued | Response:
        issued = self.sim.authenticate(_bearer(request))
        if issued is None:
            return self.error(401, "unauthorized", api_path)
        return issued

    def open(self, request: Request) -> tuple[str, Issued] | Response:
        """``begin`` and ``authenticate``: the API path and the caller's token,
        or the answer that ends the request here (an injected failure, 401)."""
        api_path, early = self.begin(request)
        if early is not None:
            return early
        issued = self.authenticate(request, api_path)
        if isinstance(issued, Response):
            return issued
        return api_path, issued

    async def login(self, request: Request) -> Response:
        api_path, early = self.begin(request)
        if early is not None:
            return early
        if request.method == "PUT":
            return self._refresh(request, api_path)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        fields = body if isinstance(body, dict) else {}
        username, password = fields.get("username"), fields.get("password")
        outcome = self.sim.login(
            username if isinstance(username, str) else None,
            password if isinstance(password, str) else None,
        )
        if outcome == "malformed":
            return self.error(400, "bad request body", api_path)
        if outcome == "refused":
            return self.error(401, "logins refused", api_path)
        if outcome == "invalid":
            return self.error(401, "invalid user credentials", api_path)
        return self._tokens(outcome)

    def _refresh(self, request: Request, api_path: str) -> Response:
        absent = request.headers.get("authorization") is None
        outcome = self.sim.refresh(None if absent else _bearer(request) or "")
        if outcome == "missing":
            return self.error(400, "missing refresh token", api_path)
        if outcome == "invalid":
            return self.error(401, "invalid tokens", api_path)
        return self._tokens(outcome)

    def _tokens(self, pair: TokenPair) -> Response:
        return JSONResponse({"access-token": pair.access, "refresh-token": pair.refresh})

    async def jwks(self, request: Request) -> Response:
        _, early = self.begin(request)
        if early is not None:
            return early
        return JSONResponse(self.sim.tokens.jwks())

    async def data(self, request: Request) -> Response:
        opened = self.open(request)
        if isinstance(opened, Response):
            return opened
        return JSONResponse(self.sim.directory(), headers=_request_id())

    async def states(self, request: Request) -> Response:
        opened = self.open(request)
        if isinstance(opened, Response):
            return opened
        api_path, issued = opened
        accepted = _accepted(request.headers.get("accept"))
        if "text/event-stream" not in accepted and accepted & _JSON_TYPES:
            wanted: set[str] | None = None
            values = request.query_params.getlist("extension")
            if values:
                wanted = {item.strip() for value in values for item in value.split(",")}
                wanted.discard("")
            return JSONResponse(self.sim.snapshot(wanted), headers=_request_id())
        if not accepted & _STREAM_TYPES:
            return self.error(
                406, "Accept must allow text/event-stream or application/json", api_path
            )
        return self._stream("states", request, issued)

    async def calls(self, request: Request) -> Response:
        opened = self.open(request)
        if isinstance(opened, Response):
            return opened
        api_path, issued = opened
        if not _accepted(request.headers.get("accept")) & _STREAM_TYPES:
            return self.error(406, "Accept must allow text/event-stream", api_path)
        return self._stream("calls", request, issued)

    async def originate(self, request: Request) -> Response:
        """``POST /extensions/phone/calls``: 202 with the ``start`` event for
        a JSON or empty ``Accept`` (the default here, unlike ``/states``), an
        SSE stream from ``start`` to ``end`` for ``text/event-stream``."""
        opened = self.open(request)
        if isinstance(opened, Response):
            return opened
        api_path = opened[0]
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return self.error(400, "the body must be a call object", api_path)
        fields: dict[str, Any] = {}
        for key in ("caller", "callee", "caller_context", "callee_context", "extension"):
            value = body.get(key)
            if value is not None and not isinstance(value, str):
                return self.error(400, f"{key} must be a string", api_path)
            fields[key] = value
        accepted = _accepted(request.headers.get("accept"))
        streamed = "text/event-stream" in accepted and not accepted & _JSON_TYPES
        outlet = (
            Outlet("calls", max_buffer=self.sim.max_stream_buffer, expires_at=None)
            if streamed
            else None
        )
        try:
            start = self.sim.originate(
                fields["caller"] or "",
                fields["callee"] or "",
                caller_context=fields["caller_context"],
                callee_context=fields["callee_context"],
                extension=fields["extension"],
                timeout=body.get("timeout", 20),
                outlet=outlet,
            )
        except ValueError as exc:
            return self.error(400, str(exc), api_path)
        except KeyError as exc:
            return self.error(404, str(exc.args[0]), api_path)
        if outlet is None:
            return JSONResponse(start, status_code=202, headers=_request_id())
        return SseResponse(
            outlet, headers=_request_id(), keepalive=self.sim.keepalive, on_end=lambda _: None
        )

    async def cancel(self, request: Request) -> Response:
        """``DELETE /extensions/phone/calls/{uuid}``: 204, 400 for a uuid
        outside the spec's pattern, 404 for no such call in progress."""
        opened = self.open(request)
        if isinstance(opened, Response):
            return opened
        api_path = opened[0]
        call_id = request.path_params["uuid"]
        if not _CALL_UUID.fullmatch(call_id):
            return self.error(400, "uuid does not match the call uuid pattern", api_path)
        try:
            self.sim.cancel(call_id)
        except KeyError:
            return self.error(404, "Requested object (call) does not exist", api_path)
        return Response(status_code=204, headers=_request_id())

    def _stream(self, kind: StreamKind, request: Request, issued: Issued) -> Response:
        last_id = request.headers.get("last-event-id")
        outlet = self.sim.open_stream(kind, issued.deadline, last_id)
        return SseResponse(
            outlet,
            headers=_request_id(),
            keepalive=self.sim.keepalive,
            on_end=self.sim.close_stream,
        )

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and methods, answered in the spec's error shape."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if request.url.path.startswith(BASE + "/"):
            api_path, early = self.begin(request)
            if early is not None:
                return early
            return self.error(status, str(detail), api_path)
        return JSONResponse({"error": str(detail)}, status_code=status)


class _Control:
    """The ``/_sim/`` control API: JSON in, JSON out, errors as ``{"error"}``
    (400 bad input, 404 unknown extension or call, 409 wrong call state)."""

    def __init__(self, sim: NfonSim) -> None:
        self.sim = sim

    @staticmethod
    def route(path: str, fn: Callable[[dict[str, Any]], Any], method: str, about: str) -> Route:
        return json_route(path, lambda body, _params: fn(body), method, about)

    def routes(self) -> list[Route]:
        sim = self.sim
        r = self.route
        return [
            r("/_sim/state", self.state, "POST",
              "set an extension's line and/or presence {extension, line?, presence?}"),
            r("/_sim/call", self.call, "POST",
              "start a call that rings (or is answered at once) {extension, direction?, "
              "party?, external?, answer?}; answers {uuid}"),
            r("/_sim/answer", lambda b: self.transition(sim.answer, b), "POST",
              "answer a ringing call {uuid}"),
            r("/_sim/hangup", lambda b: self.transition(sim.hangup, b), "POST",
              "end a call {uuid}"),
            r("/_sim/answer-caller", lambda b: self.transition(sim.answer_caller, b), "POST",
              "the caller picks up a click-to-dial call whose phone rings {uuid}"),
            r("/_sim/answer-delay", self.answer_delay, "POST",
              "seconds a caller's phone rings before it answers a click-to-dial call by "
              "itself {seconds}; null: never"),
            r("/_sim/drop", lambda b: sim.drop_streams(), "POST",
              "close every open event stream from the server side"),
            r("/_sim/logins", self.logins, "POST",
              "refuse (or accept again) every login {refuse: true|false}"),
            r("/_sim/fail", self.fail, "POST",
              "answer the next requests to a path with an error {path, status?, count?, "
              "retry_after?}"),
            r("/_sim/expire-tokens", self.expire, "POST",
              "expire every access token now (and refresh tokens with {refresh: true})"),
            r("/_sim/traffic", self.traffic, "POST",
              "random calls and presence changes {rate, mean_call_seconds?}; rate 0 stops"),
            r("/_sim/raw", self.raw, "POST",
              "write text as it is into every open stream {stream: states|calls, text}"),
            r("/_sim/extensions", self.add_extension, "POST",
              "add an extension to the directory {extension, name}"),
            r("/_sim/extensions/remove", self.remove_extension, "POST",
              "remove an extension from the directory {extension}"),
            r("/_sim/stats", lambda b: sim.stats.as_dict(), "GET",
              "request, login and stream counters"),
            r("/_sim/states", lambda b: sim.states(), "GET",
              "every extension's line and presence"),
            r("/_sim/calls", lambda b: {"active": sim.active_calls()}, "GET",
              "the uuids of the calls in progress"),
        ]  # fmt: skip

    def state(self, body: Mapping[str, Any]) -> None:
        line = _opt_str(body, "line")
        presence = _opt_str(body, "presence")
        self.sim.set_state(_str(body, "extension"), line, presence)

    def call(self, body: Mapping[str, Any]) -> dict[str, str]:
        extension = _str(body, "extension")
        direction = _opt_str(body, "direction") or "inbound"
        party = _opt_str(body, "party") or "4930123456"
        external = _bool(body, "external", True)
        answer = _bool(body, "answer", False)
        run = self.sim.call if answer else self.sim.ring
        return {"uuid": run(extension, direction=direction, party=party, external=external)}

    def transition(self, step: Callable[[str], None], body: Mapping[str, Any]) -> None:
        call_id = _str(body, "uuid")
        try:
            step(call_id)
        except ValueError as exc:
            raise Conflict(str(exc)) from None

    def answer_delay(self, body: Mapping[str, Any]) -> None:
        seconds = body.get("seconds")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float)
        ):
            raise ValueError("'seconds' must be a number, or null for never")
        self.sim.set_answer_delay(None if seconds is None else float(seconds))

    def logins(self, body: Mapping[str, Any]) -> None:
        self.sim.refuse_logins(_bool(body, "refuse", True))

    def fail(self, body: Mapping[str, Any]) -> None:
        status = body.get("status", 503)
        count = body.get("count", 1)
        if not isinstance(status, int) or not isinstance(count, int):
            raise ValueError("status and count must be integers")
        retry_after = body.get("retry_after")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int | float | str)
        ):
            raise ValueError("'retry_after' must be seconds or an HTTP date")
        self.sim.fail_next(_str(body, "path"), status, count, retry_after=retry_after)

    def expire(self, body: Mapping[str, Any]) -> None:
        self.sim.expire_tokens(refresh=_bool(body, "refresh", False))

    def traffic(self, body: Mapping[str, Any]) -> None:
        rate = _number(body, "rate")
        if rate <= 0:
            self.sim.stop_traffic()
            return
        mean = body.get("mean_call_seconds", 3.0)
        if not isinstance(mean, int | float) or isinstance(mean, bool):
            raise ValueError("mean_call_seconds must be a number")
        self.sim.start_traffic(rate, mean_call_seconds=float(mean))

    def raw(self, body: Mapping[str, Any]) -> dict[str, int]:
        return {"streams": self.sim.inject_raw(_str(body, "stream"), _str(body, "text"))}

    def add_extension(self, body: Mapping[str, Any]) -> None:
        self.sim.add_extension(_str(body, "extension"), _str(body, "name"))

    def remove_extension(self, body: Mapping[str, Any]) -> None:
        self.sim.remove_extension(_str(body, "extension"))


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false")
    return value


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be a number")
    return float(value)


def build_app(sim: NfonSim) -> Starlette:
    """The simulator's ASGI application."""
    nfon = _Nfon(sim)
    routes = [
        Route(f"{BASE}/login", nfon.login, methods=["POST", "PUT"]),
        Route(f"{BASE}/.well-known/jwks.json", nfon.jwks, methods=["GET"]),
        Route(f"{BASE}/extensions/phone/data", nfon.data, methods=["GET"]),
        Route(f"{BASE}/extensions/phone/states", nfon.states, methods=["GET"]),
        Route(f"{BASE}/extensions/phone/calls", nfon.calls, methods=["GET"]),
        Route(f"{BASE}/extensions/phone/calls", nfon.originate, methods=["POST"]),
        Route(f"{BASE}/extensions/phone/calls/{{uuid}}", nfon.cancel, methods=["DELETE"]),
        *_Control(sim).routes(),
    ]
    routes.append(index_route("NFON CTI API", routes))
    return Starlette(routes=routes, exception_handlers={HTTPException: nfon.http_error})

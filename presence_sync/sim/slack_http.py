"""HTTP face of the Slack simulator: Web API calls under ``/api/{method}``
read off the wire the ways Slack accepts them, and the ``/_sim/`` control
API (not part of Slack's contract) for driving a simulator by hand or from
another process.

A call's arguments come from the query string and from the body, which is
form-encoded (``application/x-www-form-urlencoded``) or JSON
(``application/json``); body values win over query values. The token is the
``Authorization: Bearer`` header, else a ``token`` form field. Any HTTP verb
is accepted, as Slack does (``slack_sdk`` POSTs everything).

Wire errors, as Slack names them: a body that is not valid JSON
``invalid_json``, JSON that is not an object ``json_not_object``, another
content type (multipart included: no simulated method takes files)
``invalid_form_data``. JSON without ``charset`` is still answered, with the
warning ``missing_charset``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from presence_sync.sim.control import index_route, json_route
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_api import Incoming

__all__ = ["build_app", "parse"]

JSON_TYPE = "application/json; charset=utf-8"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def parse(query: Mapping[str, str], content_type: str, body: bytes, auth: str | None) -> Incoming:
    """Read a call's arguments and token from its query, body and headers."""
    args: dict[str, Any] = {k: v for k, v in query.items() if k != "token"}
    token = _bearer(auth)
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if not body.strip():
        return Incoming(args, token)
    if media == "application/json":
        warnings = () if "charset" in params.lower() else ("missing_charset",)
        try:
            value = json.loads(body)
        except ValueError:
            return Incoming(args, token, warnings, "invalid_json")
        if not isinstance(value, dict):
            return Incoming(args, token, warnings, "json_not_object")
        # A JSON body never authenticates: Slack wants the header then.
        args.update({k: v for k, v in value.items() if k != "token"})
        return Incoming(args, token, warnings)
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return Incoming(args, token, (), "invalid_form_data")
        fields = dict(form)
        form_token = fields.pop("token", None)
        args.update(fields)
        return Incoming(args, token or form_token or None)
    return Incoming(args, token, (), "invalid_form_data")


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=status,
        headers=dict(headers or {}),
        media_type=JSON_TYPE,
    )


def build_app(sim: SlackSim) -> Starlette:
    """The ASGI app serving ``sim``."""

    async def api(request: Request) -> Response:
        method = request.path_params["method"]
        incoming = parse(
            request.query_params,
            request.headers.get("content-type", ""),
            await request.body(),
            request.headers.get("authorization"),
        )
        hang = sim.hang_for(method)
        if hang > 0:
            # A slow Slack: holding the answer is what is being simulated.
            await asyncio.sleep(hang)
        answer = sim.handle(method, incoming)
        return _json(answer.body, answer.status, answer.headers)

    routes = [Route("/api/{method}", api, methods=["GET", "POST"]), *_control(sim)]
    routes.append(index_route("Slack Web API", routes))
    return Starlette(routes=routes)


def _need(body: Mapping[str, Any], key: str) -> Any:
    if key not in body:
        raise ValueError(f"missing {key!r}")
    return body[key]


def _control(sim: SlackSim) -> list[Route]:
    """``/_sim/``: JSON in, JSON out; 400/404 carry ``{"error": ...}``."""

    def add_user(b: dict[str, Any], _: Mapping[str, str]) -> Any:
        uid = sim.add_user(str(_need(b, "name")), str(_need(b, "email")),
                           role=b.get("role", "regular"), user_id=b.get("id"))  # fmt: skip
        return {"id": uid}

    def add_token(b: dict[str, Any], _: Mapping[str, str]) -> Any:
        if b.get("bot"):
            issued = sim.add_bot_token(*([b["scopes"]] if "scopes" in b else []))
        elif "scopes" in b:
            issued = sim.add_token(str(_need(b, "user")), b["scopes"], token_id=b.get("id"))
        else:
            issued = sim.add_token(str(_need(b, "user")), token_id=b.get("id"))
        return {"id": issued.id, "token": issued.secret, "user": issued.user_id}

    def status(b: dict[str, Any], p: Mapping[str, str]) -> Any:
        sim.set_own_status(p["user"], str(b.get("text", "")), str(b.get("emoji", "")),
                           int(b.get("expiration", 0)))  # fmt: skip
        return sim.person(p["user"]).as_dict()

    def snooze(b: dict[str, Any], p: Mapping[str, str]) -> Any:
        sim.snooze(p["user"], int(_need(b, "minutes")))
        return sim.person(p["user"]).as_dict()

    def fail(b: dict[str, Any], _: Mapping[str, str]) -> Any:
        retry = b.get("retry_after")
        sim.fail_next(str(_need(b, "method")), str(_need(b, "error")),
                      count=int(b.get("count", 1)), status=int(b.get("status", 200)),
                      retry_after=int(retry) if retry is not None else None)  # fmt: skip

    return [
        json_route("/_sim/people", lambda b, p: [x.as_dict() for x in sim.people()], "GET",
                   "every person with their status and snooze"),
        json_route("/_sim/requests", lambda b, p: [e.as_dict() for e in sim.requests()], "GET",
                   "every Web API call so far: method, token, person, status, error"),
        json_route("/_sim/users", add_user, "POST",
                   "add a person {name, email, role?: regular|admin|owner|primary_owner, id?}"),
        json_route("/_sim/users/{user}/deactivate", lambda b, p: sim.deactivate_user(p["user"]),
                   "POST", "deactivate a person"),
        json_route("/_sim/users/{user}/status", status, "POST",
                   "the person sets their own status {text?, emoji?, expiration?}"),
        json_route("/_sim/users/{user}/snooze", snooze, "POST",
                   "the person pauses notifications {minutes}"),
        json_route("/_sim/users/{user}/snooze", lambda b, p: sim.end_snooze(p["user"]),
                   "DELETE", "the person ends their pause"),
        json_route("/_sim/tokens", add_token, "POST",
                   "issue a token {user, scopes?, id?} or a bot token {bot: true, scopes?}"),
        json_route("/_sim/tokens/{token}/revoke", lambda b, p: sim.revoke_token(p["token"]),
                   "POST", "revoke a token (token_revoked)"),
        json_route("/_sim/tokens/{token}/expire", lambda b, p: sim.expire_token(p["token"]),
                   "POST", "expire a token (token_expired)"),
        json_route("/_sim/fail", fail, "POST",
                   "answer the next calls of a method with an error {method, error, count?, "
                   "status?, retry_after?}"),
        json_route(
            "/_sim/hang",
            lambda b, p: sim.hang_next(
                str(_need(b, "method")), float(_need(b, "seconds")), count=int(b.get("count", 1))
            ),
            "POST",
            "hold the answer to the next calls of a method {method, seconds, count?}",
        ),
        json_route("/_sim/advance", lambda b, p: sim.advance(float(_need(b, "seconds"))), "POST",
                   "move the simulator's clock forward {seconds}"),
        json_route("/_sim/budgets/reset", lambda b, p: sim.reset_budgets(), "POST",
                   "forget every rate limit budget used so far"),
    ]  # fmt: skip

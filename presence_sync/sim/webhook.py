"""A webhook receiver on loopback, for tests and the demo.

It accepts deliveries the way ``docs/webhook.md`` tells integrators to: POST
with a JSON body, and, when it has a secret, a valid
``X-Presence-Sync-Signature`` whose timestamp is within ``tolerance`` seconds
of its clock (anything else is answered 401). It records every request it
sees, and can be told to fail or stall the next requests.

Serve ``receiver.app`` with ``presence_sync.sim.serve.serve`` (same event loop) or
``serve_in_thread``; every public method is safe to call from any thread.
The same scripting and reading works over HTTP under ``/_sim/`` (``GET
/_sim/`` lists the calls), for ``presence-sync sim webhook``
(``webhook_cli``) and anyone driving a receiver from another process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from presence_sync.ops.logging import kv
from presence_sync.sim.control import index_route, json_route

__all__ = ["Delivery", "WebhookReceiver", "verify_signature"]

log = logging.getLogger(__name__)


def verify_signature(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float | None = 300.0,
) -> str | None:
    """Check one delivery as ``docs/webhook.md`` describes; ``headers`` keys
    are lower-case. Returns ``None`` when it is genuine, else why not."""
    timestamp = headers.get("x-presence-sync-timestamp", "")
    signature = headers.get("x-presence-sync-signature", "")
    if not timestamp or not signature:
        return "missing signature or timestamp"
    if not timestamp.isdigit():
        return "malformed timestamp"
    if tolerance is not None and abs(now - int(timestamp)) > tolerance:
        return "timestamp outside the tolerance"
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    if not hmac.compare_digest("sha256=" + mac.hexdigest(), signature):
        return "signature does not match"
    return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request the receiver saw, and how it answered.

    ``body`` is the parsed JSON (``None`` if it was not JSON); ``headers``
    has lower-case names; ``signature_valid`` is ``None`` when the receiver
    has no secret; ``answered`` is the status code it sent (or would have
    sent, had the client waited).
    """

    body: Any
    raw: bytes
    headers: Mapping[str, str]
    signature_valid: bool | None
    answered: int
    reason: str | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def accepted(self) -> bool:
        return 200 <= self.answered < 300

    @property
    def signature(self) -> str:
        """``valid``, ``invalid`` or ``none`` (the receiver checks none)."""
        return {None: "none", True: "valid", False: "invalid"}[self.signature_valid]

    def as_dict(self) -> dict[str, Any]:
        """The delivery as JSON for the control API (the raw bytes left out)."""
        return {
            "received_at": datetime.fromtimestamp(self.received_at).astimezone().isoformat(),
            "id": self.headers.get("x-presence-sync-delivery"),
            "signature": self.signature,
            "answered": self.answered,
            "reason": self.reason,
            "body": self.body,
        }


def _whole(body: Mapping[str, Any], key: str, default: int | None) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be a whole number")
    return value


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int
    headers: Mapping[str, str]


class WebhookReceiver:
    """A receiver at ``path`` (default ``/hook``).

    ``secret`` makes it verify signatures; ``tolerance`` is how far (seconds)
    a delivery's timestamp may be from ``now()`` (``None``: no replay check).
    Pass the target's clock as ``now`` when it is a ``ManualClock``.
    ``on_delivery`` is called with each delivery once it is recorded (on the
    server's loop: keep it short).
    """

    def __init__(
        self,
        secret: str | None = None,
        *,
        path: str = "/hook",
        tolerance: float | None = 300.0,
        now: Callable[[], float] = time.time,
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.path = path
        self._on_delivery = on_delivery
        self._secret = secret.encode() if secret is not None else None
        self._tolerance = tolerance
        self._now = now
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._faults: deque[_Fault] = deque()
        self._delays: deque[float] = deque()
        routes = [Route(path, self._receive, methods=["POST"]), *self._control()]
        routes.append(index_route("webhook receiver", routes))
        self.app = Starlette(routes=routes)

    def _control(self) -> list[Route]:
        def fail(body: dict[str, Any], _: Mapping[str, str]) -> None:
            retry = body.get("retry_after")
            if retry is not None and not isinstance(retry, int | float | str):
                raise ValueError("'retry_after' must be seconds or an HTTP date")
            self.fail_next(_whole(body, "status", None), _whole(body, "count", 1), retry)

        def delay(body: dict[str, Any], _: Mapping[str, str]) -> None:
            seconds = body.get("seconds")
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise ValueError("'seconds' must be a number from 0 up")
            self.delay_next(float(seconds), _whole(body, "count", 1))

        return [
            json_route("/_sim/deliveries", lambda b, p: [d.as_dict() for d in self.deliveries],
                       "GET", "every request so far: when, signature, answer, document"),
            json_route("/_sim/deliveries", lambda b, p: self.clear(), "DELETE",
                       "forget the deliveries and any pending failure or delay"),
            json_route("/_sim/fail", fail, "POST",
                       "answer the next requests with an error {status, count?, retry_after?}"),
            json_route("/_sim/delay", delay, "POST",
                       "hold the answer to the next requests {seconds, count?}"),
        ]  # fmt: skip

    # --- scripting, from any thread ----------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: float | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (whatever they
        carry), adding ``Retry-After`` (seconds or an HTTP date) and ``headers``."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = (
                f"{retry_after:g}" if isinstance(retry_after, int | float) else retry_after
            )
        with self._lock:
            self._faults.extend(_Fault(status, MappingProxyType(extra)) for _ in range(count))

    def delay_next(self, seconds: float, count: int = 1) -> None:
        """Hold the answer to the next ``count`` requests for ``seconds``."""
        with self._lock:
            self._delays.extend([seconds] * count)

    def clear(self) -> None:
        """Forget recorded deliveries and pending faults and delays."""
        with self._lock:
            self._deliveries.clear()
            self._faults.clear()
            self._delays.clear()

    # --- reading results, from any thread --------------------------------------

    @property
    def deliveries(self) -> Sequence[Delivery]:
        """Every request seen so far, oldest first (a snapshot)."""
        with self._lock:
            return tuple(self._deliveries)

    def _first(self, predicate: Callable[[Delivery], bool]) -> Delivery | None:
        return next((d for d in self.deliveries if predicate(d)), None)

    def _timeout(self, timeout: float) -> TimeoutError:
        seen = [(d.answered, d.reason) for d in self.deliveries]
        return TimeoutError(f"no matching delivery within {timeout:g} s; seen: {seen}")

    async def wait_for(
        self,
        predicate: Callable[[Delivery], bool] = lambda d: True,
        timeout: float = 5.0,  # noqa: ASYNC109 - a polling deadline, named like wait_for_blocking's
    ) -> Delivery:
        """The first delivery matching ``predicate``, re-checked every few ms.
        Raises ``TimeoutError`` (listing what did arrive) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (found := self._first(predicate)) is None:
            if time.monotonic() > deadline:
                raise self._timeout(timeout)
            await asyncio.sleep(0.005)
        return found

    def wait_for_blocking(
        self, predicate: Callable[[Delivery], bool] = lambda d: True, timeout: float = 5.0
    ) -> Delivery:
        """``wait_for`` for a thread that is not running an event loop."""
        deadline = time.monotonic() + timeout
        while (found := self._first(predicate)) is None:
            if time.monotonic() > deadline:
                raise self._timeout(timeout)
            time.sleep(0.005)
        return found

    # --- the endpoint -------------------------------------------------------------

    def _verdict(self, headers: Mapping[str, str], raw: bytes) -> tuple[bool | None, str | None]:
        if self._secret is None:
            return None, None
        reason = verify_signature(
            self._secret, headers, raw, now=self._now(), tolerance=self._tolerance
        )
        return reason is None, reason

    async def _receive(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        valid, reason = self._verdict(headers, raw)
        body: Any = None
        try:
            body = json.loads(raw)
        except ValueError:
            reason = reason or "body is not JSON"
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            delay = self._delays.popleft() if self._delays else 0.0

        if fault is not None:
            status, extra, reason = fault.status, dict(fault.headers), "injected"
        elif valid is False:
            status, extra = 401, {}
        elif not headers.get("content-type", "").startswith("application/json"):
            status, extra, reason = 415, {}, "content type is not application/json"
        elif not isinstance(body, dict):
            status, extra, reason = 400, {}, reason or "body is not a JSON object"
        else:
            status, extra = 200, {}

        delivery = Delivery(body, raw, MappingProxyType(headers), valid, status, reason)
        with self._lock:
            self._deliveries.append(delivery)
        if self._on_delivery is not None:
            self._on_delivery(delivery)
        log.info(
            "webhook delivery received",
            extra=kv(
                delivery=headers.get("x-presence-sync-delivery", "-"),
                answered=status,
                signature=delivery.signature,
            ),
        )
        if delay > 0:
            # A slow peer: holding the answer is what is being simulated.
            await asyncio.sleep(delay)
        if status == 200:
            return JSONResponse({"received": headers.get("x-presence-sync-delivery")})
        if status in (204, 304) or 300 <= status < 400:
            return Response(status_code=status, headers=extra)
        return JSONResponse({"error": reason}, status_code=status, headers=extra)

"""Contract tests of the ``webhook`` target against the loopback receiver, over
real sockets with the real httpx client."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import certifi
import httpx
import pydantic
import pytest

from presence_sync.clock import ManualClock, SystemClock
from presence_sync.config import load
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import (
    Applied,
    Call,
    Direction,
    Line,
    LineView,
    Person,
    Presence,
    Status,
)
from presence_sync.sim.certs import LoopbackTls
from presence_sync.sim.serve import Running, serve
from presence_sync.sim.webhook import Delivery, WebhookReceiver
from presence_sync.targets.base import Change, TargetEnv, target_class
from presence_sync.targets.webhook import WebhookTarget

SECRET = "s3cr3t-for-the-hook-0123456789abcdef"
API_KEY = "key-9f8e7d6c5b4a"
PARTY = "+4989123456789"
USER_AGENT = "presence-sync/test (K1234)"


class DictMemory:
    """``targets.base.Memory`` in a few dicts."""

    def __init__(self) -> None:
        self._saved: Mapping[str, Any] | None = None
        self._objects: dict[str, str] = {}
        self._ids: dict[tuple[str, str], str] = {}

    def saved(self) -> Mapping[str, Any] | None:
        return self._saved

    def save(self, doc: Mapping[str, Any] | None) -> None:
        self._saved = doc

    def objects(self) -> Mapping[str, str]:
        return dict(self._objects)

    def put_object(self, kind: str, external_id: str) -> None:
        self._objects[kind] = external_id

    def drop_object(self, kind: str) -> None:
        self._objects.pop(kind, None)

    def cached_id(self, namespace: str, key: str, max_age: float | None = None) -> str | None:
        return self._ids.get((namespace, key))

    def cache_id(self, namespace: str, key: str, value: str) -> None:
        self._ids[(namespace, key)] = value


ANNA = Person(key="anna@example.com", email="Anna@example.com", extension="100", name="Anna Berg")
ON_A_CALL = Status(
    availability="Busy", activity="InACall", text="On a call", emoji=":telephone_receiver:"
)
CALL_START = datetime(2026, 1, 5, 8, 59, 30, 250000, tzinfo=UTC)
LINE_SINCE = datetime(2026, 1, 5, 8, 59, 29, tzinfo=UTC)


def in_call_view() -> LineView:
    call = Call(
        uuid="c0ffee00-1111-2222-3333-444455556666",
        direction=Direction.INBOUND,
        external=True,
        party=PARTY,
        answered=True,
        since=CALL_START,
    )
    return LineView(
        extension="100", line=Line.IN_USE, presence=Presence.AVAILABLE, call=call, since=LINE_SINCE
    )


def call_change(applied: Applied | None = None) -> Change:
    return Change(ANNA, ON_A_CALL, applied, in_call_view(), DictMemory())


Hook = tuple[WebhookReceiver, Running]
MakeTarget = Callable[..., WebhookTarget]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def _serve_receiver(receiver: WebhookReceiver) -> AsyncIterator[Hook]:
    async with serve(receiver.app) as running:
        yield receiver, running


@pytest.fixture
async def hook(clock: ManualClock) -> AsyncIterator[Hook]:
    """A receiver that verifies signatures against the test's clock."""
    receiver = WebhookReceiver(SECRET, now=lambda: clock.now().timestamp())
    async for pair in _serve_receiver(receiver):
        yield pair


@pytest.fixture
async def open_hook() -> AsyncIterator[Hook]:
    """A receiver without a secret: it accepts unsigned deliveries."""
    async for pair in _serve_receiver(WebhookReceiver()):
        yield pair


@pytest.fixture
async def make_target(clock: ManualClock) -> AsyncIterator[MakeTarget]:
    """Builds targets through the registry and config model, closes them after."""
    made: list[WebhookTarget] = []

    def make(url: str, name: str = "hook", **options: Any) -> WebhookTarget:
        cls = target_class("webhook")
        opts = cls.Options.model_validate({"url": url, **options})
        target = cls(name, opts, TargetEnv(clock=clock, user_agent=USER_AGENT))
        assert isinstance(target, WebhookTarget)
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


def url_of(hook: Hook) -> str:
    receiver, running = hook
    return f"{running.origin}{receiver.path}"


def expected_signature(secret: str, delivery: Delivery) -> str:
    timestamp = delivery.headers["x-presence-sync-timestamp"]
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + delivery.raw, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# --- the document ---------------------------------------------------------------------


async def test_call_status_delivers_the_documented_document(
    hook: Hook, make_target: MakeTarget, clock: ManualClock
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), name="crm", secret=SECRET, headers={"X-Api-Key": API_KEY})
    previous = Applied(status=Status(text="Lunch", emoji=":sandwich:"), at=clock.now())

    applied = await target.apply(call_change(applied=previous))

    assert applied.status == ON_A_CALL
    assert applied.at == clock.now()
    (delivery,) = receiver.deliveries
    assert delivery.accepted
    assert delivery.signature_valid is True
    doc = delivery.body
    assert uuid.UUID(doc["id"]).version == 4
    assert doc == {
        "version": 1,
        "id": doc["id"],
        "target": "crm",
        "at": "2026-01-05T09:00:00.000Z",
        "person": {"email": "Anna@example.com", "name": "Anna Berg", "extension": "100"},
        "status": {
            "availability": "Busy",
            "activity": "InACall",
            "text": "On a call",
            "emoji": ":telephone_receiver:",
            "dnd": False,
        },
        "previous": {
            "availability": None,
            "activity": None,
            "text": "Lunch",
            "emoji": ":sandwich:",
            "dnd": False,
        },
        "line": {
            "extension": "100",
            "line": "in-use",
            "presence": "available",
            "since": "2026-01-05T08:59:29.000Z",
            "call": {
                "direction": "inbound",
                "external": True,
                "answered": True,
                "since": "2026-01-05T08:59:30.250Z",
            },
        },
    }
    headers = delivery.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-presence-sync-delivery"] == doc["id"]
    assert headers["x-presence-sync-timestamp"] == str(int(clock.now().timestamp()))
    assert headers["x-presence-sync-signature"] == expected_signature(SECRET, delivery)
    assert headers["x-api-key"] == API_KEY
    assert headers["user-agent"] == USER_AGENT
    assert json.loads(delivery.raw) == doc


async def test_each_delivery_has_its_own_id(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    await target.apply(call_change())
    await target.apply(call_change())
    first, second = receiver.deliveries
    assert first.body["id"] != second.body["id"]
    assert first.body["status"] == second.body["status"]


async def test_desired_none_sends_status_null(
    hook: Hook, make_target: MakeTarget, clock: ManualClock
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    idle = LineView(extension="100", line=Line.IDLE, presence=Presence.NONE, since=LINE_SINCE)
    change = Change(ANNA, None, Applied(status=ON_A_CALL, at=clock.now()), idle, DictMemory())

    applied = await target.apply(change)

    assert applied.status is None
    doc = receiver.deliveries[0].body
    assert doc["status"] is None
    assert doc["previous"]["activity"] == "InACall"
    assert doc["line"] == {
        "extension": "100",
        "line": "idle",
        "presence": "null",
        "since": "2026-01-05T08:59:29.000Z",
        "call": None,
    }


async def test_person_without_line_view_or_history(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    nameless = Person(key="bo@example.com", email="bo@example.com", extension="101")

    await target.apply(Change(nameless, None, None, None, DictMemory()))

    doc = receiver.deliveries[0].body
    assert doc["person"] == {"email": "bo@example.com", "name": None, "extension": "101"}
    assert doc["status"] is None
    assert doc["previous"] is None
    assert doc["line"] is None


async def test_without_secret_no_signature_header(open_hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = open_hook
    target = make_target(url_of(open_hook))

    await target.apply(call_change())

    (delivery,) = receiver.deliveries
    assert delivery.accepted
    assert "x-presence-sync-signature" not in delivery.headers
    assert delivery.headers["x-presence-sync-timestamp"].isdigit()
    assert delivery.headers["x-presence-sync-delivery"] == delivery.body["id"]


async def test_party_number_only_when_asked_for(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    default = make_target(url_of(hook), secret=SECRET)
    opted_in = make_target(url_of(hook), secret=SECRET, include_party_number=True)

    await default.apply(call_change())
    await opted_in.apply(call_change())

    without, with_number = receiver.deliveries
    assert "party_number" not in without.body["line"]["call"]
    assert PARTY.encode() not in without.raw
    assert with_number.body["line"]["call"]["party_number"] == PARTY


# --- how answers become errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "error", "wait"),
    [
        (500, None, TransientError, None),
        (502, None, TransientError, None),
        (503, 12, TransientError, 12.0),
        (408, None, TransientError, None),
        (429, 7, TransientError, 7.0),
        (429, None, TransientError, None),
        (404, None, PermanentError, None),
        (400, None, PermanentError, None),
        (410, None, PermanentError, None),
        (401, None, AuthError, None),
        (403, None, AuthError, None),
    ],
)
async def test_error_answers(
    hook: Hook,
    make_target: MakeTarget,
    status: int,
    retry_after: int | None,
    error: type[Exception],
    wait: float | None,
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    receiver.fail_next(status, retry_after=retry_after)

    with pytest.raises(error) as caught:
        await target.apply(call_change())

    assert str(status) in str(caught.value)
    if isinstance(caught.value, TransientError):
        assert caught.value.retry_after == wait
    if isinstance(caught.value, TransientError | PermanentError):
        assert caught.value.status == status
    # The fault was used up: the next delivery goes through.
    assert (await target.apply(call_change())).status == ON_A_CALL
    assert [d.answered for d in receiver.deliveries] == [status, 200]


async def test_retry_after_as_http_date(
    hook: Hook, make_target: MakeTarget, clock: ManualClock
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    receiver.fail_next(429, retry_after=format_datetime(clock.now() + timedelta(seconds=90), True))

    with pytest.raises(TransientError) as caught:
        await target.apply(call_change())

    assert caught.value.retry_after == 90.0


async def test_unreadable_retry_after_is_ignored(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    receiver.fail_next(503, retry_after="soon-ish")

    with pytest.raises(TransientError) as caught:
        await target.apply(call_change())

    assert caught.value.retry_after is None


async def test_redirect_is_not_followed(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    elsewhere = f"{url_of(hook)}?token=leaky"
    receiver.fail_next(302, headers={"Location": elsewhere})

    with pytest.raises(PermanentError) as caught:
        await target.apply(call_change())

    assert caught.value.status == 302
    assert "redirect" in str(caught.value)
    assert "leaky" not in str(caught.value)
    assert len(receiver.deliveries) == 1


async def test_slow_receiver_times_out(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET, timeout="200ms")
    receiver.delay_next(0.8)

    with pytest.raises(TransientError) as caught:
        await target.apply(call_change())

    assert "0.2" in str(caught.value)
    assert caught.value.status is None
    # The receiver got it; only the answer came too late.
    assert len(receiver.deliveries) == 1


async def test_connection_refused_is_transient(make_target: MakeTarget) -> None:
    # A bound socket that never listens: the port stays ours and refuses connections.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        target = make_target(f"http://127.0.0.1:{port}/hook", secret=SECRET)

        with pytest.raises(TransientError) as caught:
            await target.apply(call_change())

    assert caught.value.status is None
    # Where and why, not just "ConnectError".
    assert f"127.0.0.1:{port}: connection refused" in str(caught.value)


# --- the receiver checks what the docs tell receivers to check --------------------------


async def test_receiver_rejects_a_wrong_secret(hook: Hook, make_target: MakeTarget) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret="not-the-receivers-secret")

    with pytest.raises(AuthError):
        await target.apply(call_change())

    (delivery,) = receiver.deliveries
    assert delivery.signature_valid is False
    assert delivery.answered == 401


async def test_receiver_rejects_tampered_and_replayed_deliveries(
    hook: Hook, make_target: MakeTarget, clock: ManualClock
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    await target.apply(call_change())
    genuine = receiver.deliveries[0]
    assert genuine.signature_valid is True
    sent = {k: v for k, v in genuine.headers.items() if k.startswith(("x-presence", "content-t"))}
    tampered = genuine.raw.replace(b'"Busy"', b'"Free"')
    assert tampered != genuine.raw

    async with httpx.AsyncClient() as client:
        forged = await client.post(url_of(hook), content=tampered, headers=sent)
        unsigned = await client.post(
            url_of(hook), content=genuine.raw, headers={"Content-Type": "application/json"}
        )
        await clock.advance(301)
        replayed = await client.post(url_of(hook), content=genuine.raw, headers=sent)

    assert (forged.status_code, unsigned.status_code, replayed.status_code) == (401, 401, 401)
    assert [d.signature_valid for d in receiver.deliveries] == [True, False, False, False]
    assert receiver.deliveries[-1].reason == "timestamp outside the tolerance"


def docs_verify() -> Callable[[bytes, dict[str, str], bytes], bool]:
    """The ``verify`` function of the Python snippet in docs/webhook.md."""
    text = (Path(__file__).parents[2] / "docs" / "webhook.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    verify: Callable[[bytes, dict[str, str], bytes], bool] = namespace["verify"]
    return verify


async def test_documented_verification_accepts_real_deliveries_only() -> None:
    # Real time on both sides: the snippet reads the wall clock, as receivers do.
    receiver = WebhookReceiver(SECRET)
    opts = WebhookTarget.Options.model_validate({"url": "http://127.0.0.1:1/", "secret": SECRET})
    async with serve(receiver.app) as running:
        target = WebhookTarget(
            "hook",
            opts.model_copy(update={"url": f"{running.origin}{receiver.path}"}),
            TargetEnv(clock=SystemClock(), user_agent=USER_AGENT),
        )
        try:
            await target.apply(call_change())
        finally:
            await target.aclose()
    (delivery,) = receiver.deliveries
    headers = dict(delivery.headers)
    verify = docs_verify()

    assert delivery.signature_valid is True
    assert verify(SECRET.encode(), headers, delivery.raw)
    assert not verify(b"another secret", headers, delivery.raw)
    assert not verify(SECRET.encode(), headers, delivery.raw.replace(b"Busy", b"Free"))
    stale = {**headers, "x-presence-sync-timestamp": str(int(time.time()) - 301)}
    assert not verify(SECRET.encode(), stale, delivery.raw)


async def test_wait_for_finds_a_delivery_and_times_out_with_what_arrived(
    hook: Hook, make_target: MakeTarget
) -> None:
    receiver, _ = hook
    target = make_target(url_of(hook), secret=SECRET)
    await target.apply(call_change())

    found = await receiver.wait_for(lambda d: d.body["status"] is not None, timeout=1)
    assert found.body["status"]["text"] == "On a call"
    with pytest.raises(TimeoutError, match="200"):
        await receiver.wait_for(lambda d: d.body["status"] is None, timeout=0.05)


# --- secrets and personal data -----------------------------------------------------------


async def test_repr_hides_secret_header_values_and_url_credentials(
    make_target: MakeTarget,
) -> None:
    target = make_target(
        "https://user:pw-in-url@hooks.example.com/presence?sig=query-token",
        name="crm",
        secret=SECRET,
        headers={"X-Api-Key": API_KEY},
    )
    shown = f"{target!r} {target._options!r} {target._options}"

    for hidden in (SECRET, API_KEY, "pw-in-url", "user:", "query-token"):
        assert hidden not in shown
    assert "hooks.example.com/presence" in repr(target)
    assert "X-Api-Key" in repr(target)


async def test_logs_carry_no_secret_header_value_or_number(
    hook: Hook, make_target: MakeTarget, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, _ = hook
    target = make_target(
        url_of(hook), secret=SECRET, headers={"X-Api-Key": API_KEY}, include_party_number=True
    )
    caplog.set_level(logging.DEBUG)

    await target.apply(call_change())
    receiver.fail_next(500)
    with pytest.raises(TransientError):
        await target.apply(call_change())

    assert any(r.name == "presence_sync.targets.webhook" for r in caplog.records)
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'ctx', '')}" for r in caplog.records)
    for hidden in (SECRET, API_KEY, PARTY):
        assert hidden not in logged


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({}, "url"),
        ({"url": "https://h.example/x", "secret": ""}, "secret"),
        ({"url": "https://h.example/x", "timeout": 0}, "timeout"),
        ({"url": "https://h.example/x", "headers": {"Content-Type": "text/plain"}}, "Content-Type"),
        ({"url": "https://h.example/x", "headers": {"X-Presence-Sync-Delivery": "1"}}, "set by"),
        ({"url": "https://h.example/x", "headers": {"Bad Name": "v"}}, "header name"),
        ({"url": "https://h.example/x", "headers": {"X-Key": "a\r\nInjected: 1"}}, "line break"),
        ({"url": "https://h.example/x", "colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        WebhookTarget.Options.model_validate(options)
    assert complaint in str(caught.value)
    assert "Injected" not in str(caught.value)


async def test_configured_from_yaml_with_a_secret_file(
    hook: Hook, tmp_path: Path, clock: ManualClock
) -> None:
    receiver, _ = hook
    (tmp_path / "hook-secret").write_text(SECRET + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: api-user, password: api-secret}\n"
        "people: [{extension: '100', email: anna@example.com}]\n"
        "targets:\n"
        "  crm_hook:\n"
        "    kind: webhook\n"
        f"    url: {url_of(hook)}\n"
        "    secret_file: hook-secret\n"
        "    timeout: 1500ms\n"
        "    headers: {X-Api-Key: " + API_KEY + "}\n"
    )
    spec = load(config, environ={}).targets["crm_hook"]
    assert isinstance(spec.options, WebhookTarget.Options)
    assert spec.options.timeout == 1.5
    target = WebhookTarget(spec.name, spec.options, TargetEnv(clock=clock, user_agent=USER_AGENT))
    try:
        await target.apply(call_change())
    finally:
        await target.aclose()

    (delivery,) = receiver.deliveries
    assert delivery.signature_valid is True
    assert delivery.body["target"] == "crm_hook"
    assert delivery.headers["x-api-key"] == API_KEY


def test_declared_metadata() -> None:
    info = WebhookTarget.info
    assert info.kind == "webhook"
    assert info.fields == frozenset({"availability", "activity", "text", "emoji", "dnd"})
    assert info.restores is False


async def test_a_configured_ca_bundle_is_what_lets_https_deliveries_through(
    tmp_path: Path, clock: ManualClock
) -> None:
    tls = LoopbackTls.create(tmp_path)
    receiver = WebhookReceiver()
    async with serve(receiver.app, **tls.serve_options()) as running:
        opts = WebhookTarget.Options.model_validate({"url": f"{running.origin}/hook"})
        trusting = WebhookTarget(
            "hook", opts, TargetEnv(clock=clock, user_agent=USER_AGENT, verify=str(tls.ca_file))
        )
        public_roots = WebhookTarget(
            "hook", opts, TargetEnv(clock=clock, user_agent=USER_AGENT, verify=certifi.where())
        )
        try:
            # Without our CA the handshake fails and nothing reaches the receiver...
            with pytest.raises(TransientError, match="TLS certificate not accepted"):
                await public_roots.apply(call_change())
            assert receiver.deliveries == ()
            # ...with it, the delivery goes through.
            applied = await trusting.apply(call_change())
        finally:
            await trusting.aclose()
            await public_roots.aclose()
    assert running.origin.startswith("https://127.0.0.1:")
    assert applied.status == ON_A_CALL
    assert [d.answered for d in receiver.deliveries] == [200]

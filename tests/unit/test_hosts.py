"""The names the listener answers to (``api.hosts``, DNS rebinding), ``Host``
parsing (``net.split_host``), and that an unexpected error is JSON too."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request
from starlette.routing import Route

from presence_sync.api.hosts import Hosts
from presence_sync.api.http import build_app
from presence_sync.net import split_host


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("LocalHost.", ("localhost", None)),
        ("[::1]:9477", ("::1", 9477)),
        ("[0:0::1]", ("::1", None)),
        ("presence.example.com:80", ("presence.example.com", 80)),
        ("", None),
        ("a b", None),
        ("host:", None),
        ("host:99999", None),
        ("host:-1", None),
        ("[::1]x", None),
        ("[nope]:1", None),
        ("::1", None),
        ("bad/host", None),
        ("é.example", None),
    ],
)
def test_split_host(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert split_host(value) == parsed


def test_loopback_answers_to_its_address_and_the_loopback_names_with_its_port() -> None:
    hosts = Hosts.of("127.0.0.1", 9477, loopback=True)
    for ok in ("127.0.0.1:9477", "localhost:9477", "[::1]:9477", None):
        assert hosts.allows(ok), ok
    for refused in ("localhost", "localhost:9478", "127.0.0.2:9477", "rebind.evil.test:9477"):
        assert not hosts.allows(refused), refused


def test_a_wildcard_listener_answers_to_any_address_but_no_other_name() -> None:
    hosts = Hosts.of("0.0.0.0", 9477, loopback=False)
    for ok in ("192.0.2.7:9477", "[2001:db8::1]:9477", "localhost:9477", "0.0.0.0:9477"):
        assert hosts.allows(ok), ok
    for refused in ("192.0.2.7:80", "192.0.2.7", "presence.example.com:9477"):
        assert not hosts.allows(refused), refused


def test_a_listener_on_an_address_answers_to_that_address_only() -> None:
    hosts = Hosts.of("192.0.2.7", 9477, loopback=False)
    assert hosts.allows("192.0.2.7:9477")
    assert not hosts.allows("localhost:9477")
    assert not hosts.allows("192.0.2.8:9477")


def test_public_url_and_allowed_hosts_add_names() -> None:
    hosts = Hosts.of(
        "presence.internal",
        9477,
        loopback=False,
        public_url="https://Presence.Example.com/status",
        extra=["status.example.org:8080", "ops.example.org"],
    )
    for ok in (
        "presence.internal:9477",
        "presence.example.com",
        "presence.example.com:443",
        "status.example.org:8080",
        "ops.example.org:1",
    ):
        assert hosts.allows(ok), ok
    for refused in ("presence.internal:80", "status.example.org:8081", "localhost:9477"):
        assert not hosts.allows(refused), refused


async def test_an_unexpected_error_is_a_json_500_with_the_headers() -> None:
    async def broken(_: Request) -> None:
        raise RuntimeError("a bug")

    app = build_app(
        lambda: (True, {}),
        lambda: (True, {}),
        routes=[Route("/broken", broken)],
        hosts=Hosts.of("127.0.0.1", 80, loopback=True),
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.get("/broken")
        refused = await client.get("/healthz", headers={"Host": "testserver"})

    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the daemon's log)"}
    assert "a bug" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert refused.status_code == 421

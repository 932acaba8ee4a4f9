"""``describe_error`` against real failures on real sockets, for each HTTP
stack the daemon uses: httpx (NFON, Graph, webhook), requests (MSAL's token
calls) and urllib (slack_sdk). The admin must read the host and the cause,
never just ``ConnectError``."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError

from presence_sync.net import describe_error, error_cause, tls_context
from presence_sync.sim.certs import LoopbackTls
from presence_sync.sim.serve import serve_in_thread
from presence_sync.sim.webhook import WebhookReceiver

Fetch = Callable[[str, Path | None], object]


def by_httpx(url: str, ca: Path | None) -> object:
    with httpx.Client(verify=tls_context(ca), timeout=0.5) as client:
        return client.get(url)


def by_requests(url: str, ca: Path | None) -> object:
    return requests.get(url, verify=str(ca) if ca else True, timeout=0.5)


def by_slack_sdk(url: str, ca: Path | None) -> object:
    context = tls_context(ca)
    ssl_context = context if not isinstance(context, bool) else None
    client = WebClient(base_url=url, timeout=0.5, ssl=ssl_context, retry_handlers=[])
    return client.api_call("auth.test")


STACKS = [by_httpx, by_requests, by_slack_sdk]


def failure(fetch: Fetch, url: str, ca: Path | None = None) -> BaseException:
    with pytest.raises((httpx.HTTPError, requests.RequestException, OSError)) as info:
        fetch(url, ca)
    return info.value


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A socket that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


@pytest.fixture
def https_sim(tmp_path: Path) -> Iterator[str]:
    """A simulator served over HTTPS with a certificate from its own CA."""
    tls = LoopbackTls.create(tmp_path / "sim")
    with serve_in_thread(WebhookReceiver().app, **tls.serve_options()) as running:
        yield running.origin


@pytest.mark.parametrize("fetch", STACKS)
def test_a_refused_connection_names_host_and_port(fetch: Fetch, closed_port: int) -> None:
    error = failure(fetch, f"http://127.0.0.1:{closed_port}/api/auth.test")
    assert error_cause(error) == "refused"
    text = describe_error(error, f"http://127.0.0.1:{closed_port}/x")
    assert text.startswith(f"127.0.0.1:{closed_port}: connection refused")


@pytest.mark.parametrize("fetch", STACKS)
def test_an_unknown_host_name_says_dns(fetch: Fetch) -> None:
    error = failure(fetch, "http://nfon.invalid/api/auth.test")
    assert error_cause(error) == "dns"
    assert describe_error(error, "http://nfon.invalid/v1") == (
        "nfon.invalid:80: host name not found (DNS)"
    )


@pytest.mark.parametrize("fetch", STACKS)
def test_a_server_that_never_answers_is_a_timeout(fetch: Fetch, silent_port: int) -> None:
    error = failure(fetch, f"http://127.0.0.1:{silent_port}/api/auth.test")
    assert error_cause(error) == "timeout"
    assert describe_error(error, f"http://127.0.0.1:{silent_port}") == (
        f"127.0.0.1:{silent_port}: no answer in time (timeout)"
    )


@pytest.mark.parametrize("fetch", STACKS)
def test_a_certificate_from_another_ca_says_tls_and_what_to_do(
    fetch: Fetch, https_sim: str, tmp_path: Path
) -> None:
    other_ca = LoopbackTls.create(tmp_path / "other", ca_name="some other CA").ca_file
    try:
        fetch(https_sim + "/api/auth.test", other_ca)
    except (httpx.HTTPError, requests.RequestException, OSError, SlackClientError) as exc:
        error: BaseException = exc
    else:
        pytest.fail("a certificate from an untrusted CA was accepted")
    assert error_cause(error) == "tls"
    port = https_sim.rsplit(":", 1)[1]
    text = describe_error(error, https_sim)
    assert text.startswith(f"127.0.0.1:{port}: TLS certificate not accepted (")
    assert "tls.ca_bundle" in text


def test_the_host_comes_from_the_request_when_no_url_is_given(closed_port: int) -> None:
    error = failure(by_httpx, f"http://127.0.0.1:{closed_port}/v1/login")
    assert describe_error(error).startswith(f"127.0.0.1:{closed_port}: connection refused")


def test_a_reset_connection_says_so() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            peer, _ = server.accept()
            # Linger 0: closing sends RST instead of FIN.
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()

            def exchange() -> None:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                client.recv(10)

            with pytest.raises(ConnectionResetError) as info:
                exchange()
    assert describe_error(info.value, f"http://127.0.0.1:{port}") == (
        f"127.0.0.1:{port}: the connection was closed or reset by the other side"
    )


def test_anything_else_keeps_the_library_words() -> None:
    error = httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol.")
    assert error_cause(error) == "network"
    assert describe_error(error).startswith("UnsupportedProtocol: Request URL is missing")

"""The shared network helpers: Retry-After, User-Agent, listen addresses, TLS, proxies."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import certifi
import pytest

from presence_sync import __version__
from presence_sync.net import parse_listen, proxy_for, retry_after, tls_context, user_agent

NOW = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Mon, 02 Mar 2026 10:02:00 GMT", 120.0),
        ("Monday, 02-Mar-26 10:02:00 GMT", 120.0),  # RFC 850, obsolete but allowed
        ("Mon Mar  2 10:02:00 2026", 120.0),  # asctime, no zone: GMT
    ],
)
def test_retry_after_reads_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert retry_after(value, NOW) == seconds


def test_retry_after_an_http_date_in_the_past_means_now() -> None:
    assert retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon-ish", "-5", "nan", "inf", "12 s", "Mon, 99"])
def test_retry_after_unreadable_is_none(value: str | None) -> None:
    assert retry_after(value, NOW) is None


def test_user_agent_names_version_and_k_account() -> None:
    assert user_agent("K1234") == f"presence-sync/{__version__} (K1234)"
    assert user_agent(None) == f"presence-sync/{__version__}"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9477", ("::1", 9477)),
        ("[2001:db8::5]:65535", ("2001:db8::5", 65535)),
        (" 0.0.0.0:80 ", ("0.0.0.0", 80)),
    ],
)
def test_parse_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        ("::1:9477", "expected host:port"),  # IPv6 needs brackets
        ("127.0.0.1:65536", "0..65535"),
        ("127.0.0.1:http", "expected host:port"),
        ("[not-v6]:80", "not an IPv6 address"),
        ("bad_host!:80", "not a host name"),
    ],
)
def test_parse_listen_rejects_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_tls_context_default_and_explicit() -> None:
    assert tls_context(None) is True
    assert tls_context("") is True
    assert tls_context(False) is False


def test_tls_context_from_a_bundle_file_and_a_directory(tmp_path: Path) -> None:
    from_file = tls_context(Path(certifi.where()))
    assert isinstance(from_file, ssl.SSLContext)
    assert from_file.cert_store_stats()["x509_ca"] > 0
    # A directory is a capath: its certificates load lazily, on first use.
    from_dir = tls_context(tmp_path)
    assert isinstance(from_dir, ssl.SSLContext)
    assert from_dir.verify_mode == ssl.CERT_REQUIRED


def test_tls_context_missing_bundle_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tls_context(tmp_path / "missing.pem")


PROXY = "http://proxy.example.net:3128"


@pytest.mark.parametrize(
    ("url", "env", "proxy"),
    [
        ("https://graph.microsoft.com/v1.0", {"HTTPS_PROXY": PROXY}, PROXY),
        ("https://graph.microsoft.com/v1.0", {"https_proxy": PROXY, "HTTPS_PROXY": "x"}, PROXY),
        ("https://graph.microsoft.com/v1.0", {}, None),
        # HTTP_PROXY is for http:// URLs only, as curl and httpx read it.
        ("https://slack.com/api/", {"HTTP_PROXY": PROXY}, None),
        ("http://hooks.example.com/", {"HTTP_PROXY": PROXY, "HTTPS_PROXY": "x"}, PROXY),
        ("https://slack.com/api/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "slack.com"}, None),
        ("https://api.slack.com/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "slack.com"}, None),
        ("https://notslack.com/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "slack.com"}, PROXY),
        ("https://crm.corp:8443/x", {"HTTPS_PROXY": PROXY, "no_proxy": "a, .corp"}, None),
        ("https://crm.corp/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "*"}, None),
        ("https://[::1]:9/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "example.com"}, PROXY),
        ("https://[::1]:9/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "::1"}, None),
        ("https://10.0.0.5:8443/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.5:8443"}, None),
        ("https://10.0.0.5/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.5:8443"}, PROXY),
        ("https://10.0.0.5/", {"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.5:443"}, None),
    ],
)
def test_proxy_for_reads_https_proxy_and_no_proxy(
    url: str, env: dict[str, str], proxy: str | None
) -> None:
    assert proxy_for(url, env) == proxy

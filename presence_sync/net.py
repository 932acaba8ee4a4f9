"""Network helpers every layer may use: one each for what clients, targets,
the configuration and the simulators would otherwise write again.

- ``tls_context``: what to hand httpx as ``verify`` for an optional CA bundle.
- ``retry_after``: seconds to wait from a ``Retry-After`` header.
- ``user_agent``: the ``User-Agent`` every outbound request carries.
- ``parse_listen``: ``host:port`` / ``[v6]:port`` → ``(host, port)``; ``bind``:
  a listening TCP socket for the daemon's listener and the simulators;
  ``split_host``: a ``Host`` header (or ``http.allowed_hosts`` entry) →
  ``(host, port or None)``, normalized.
- ``describe_error`` / ``error_cause``: why an outbound request failed, in
  words an admin can act on (which host; refused, DNS, TLS, timeout, reset),
  for httpx, requests (MSAL) and urllib (slack_sdk) alike.
- ``proxy_for``: the outbound proxy for a URL, from ``HTTPS_PROXY``/``NO_PROXY``.

Imports only the standard library and ``presence_sync.__version__``, so that
a leaf may use it without pulling in anything of ours.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from presence_sync import __version__

__all__ = [
    "ERROR_CAUSES",
    "bind",
    "describe_error",
    "error_cause",
    "parse_listen",
    "proxy_for",
    "retry_after",
    "split_host",
    "tls_context",
    "user_agent",
]


def tls_context(ca_bundle: str | os.PathLike[str] | bool | None = None) -> ssl.SSLContext | bool:
    """The ``verify`` argument for httpx.

    ``None`` or ``""``: ``True`` (the system's trust store). A bool is
    returned as given. A path gives an ``SSLContext`` trusting that CA
    bundle file, or, for a directory, the hashed certificates in it
    (``capath``). httpx 0.28 deprecates a bare path, hence a context.
    Raises ``OSError`` when the file cannot be read and ``ssl.SSLError``
    when it holds no usable certificate.
    """
    if isinstance(ca_bundle, bool):
        return ca_bundle
    if ca_bundle is None or not os.fspath(ca_bundle):
        return True
    path = os.fspath(ca_bundle)
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy to reach ``url`` through, or None to connect directly.

    One rule for every client, as curl and httpx read it: ``HTTPS_PROXY``
    for ``https://`` URLs, ``HTTP_PROXY`` for ``http://`` ones (lower-case
    names win over upper-case), unless ``NO_PROXY`` names the host (a
    comma-separated list of hosts or domains; ``example.com`` also covers
    its subdomains; ``*`` covers all). httpx applies the same variables
    itself; MSAL's ``requests`` session and ``slack_sdk`` are handed the
    answer explicitly, because on their own the first ignores the
    environment (``trust_env`` is off for ``tls.ca_bundle``'s sake) and the
    second also sends ``https://`` requests to ``HTTP_PROXY``. ``environ``
    defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    proxy = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    port = parts.port or (443 if scheme == "https" else 80)
    if no_proxy and _bypassed(parts.hostname, port, no_proxy):
        return None
    return proxy


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    # As the standard library reads NO_PROXY: names compared without a
    # leading dot, a name covers its subdomains, an entry may add :port.
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        name = entry.strip().lower()
        if name == "*":
            return True
        wanted: int | None = None
        match = re.fullmatch(r"(.+):([0-9]{1,5})", name)
        if match and (match[1].startswith("[") or ":" not in match[1]):
            name, wanted = match[1], int(match[2])
        name = name.strip("[]").lstrip(".").rstrip(".")
        if not name or (wanted is not None and wanted != port):
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value (RFC 9110 10.2.3).

    Accepts delay-seconds (``"120"``; a fraction is tolerated) and an
    HTTP-date, read against ``now`` (an aware datetime; a date in the past
    means 0). ``None`` when the header is absent, negative, not finite or
    unreadable: the caller then uses its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 5322's "-0000" (and obsolete zone names) parse naive: HTTP-dates are GMT.
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def user_agent(customer: str | None = None) -> str:
    """``presence-sync/<version> (<K-Account>)`` as NFON asks every request to
    carry; without a customer just ``presence-sync/<version>``."""
    base = f"presence-sync/{__version__}"
    return f"{base} ({customer})" if customer else base


_LISTEN = re.compile(
    r"\[(?P<v6>[^\]]+)\]:(?P<port6>[0-9]{1,5})|(?P<host>[^:\[\]\s]+):(?P<port>[0-9]{1,5})"
)
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` → ``("127.0.0.1", 9477)``; ``"[::1]:9477"`` →
    ``("::1", 9477)``; a host name is allowed, port 0 means any free port.

    Raises ``ValueError`` with a message fit for a configuration error or a
    command-line option: no port, a bare IPv6 address without brackets, an
    invalid host, a port above 65535.
    """
    match = _LISTEN.fullmatch(text.strip())
    if match is None:
        raise ValueError('expected host:port, e.g. "127.0.0.1:9477" or "[::1]:9477"')
    if match["v6"] is not None:
        host, port = match["v6"], int(match["port6"])
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    else:
        host, port = match["host"], int(match["port"])
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host} is not a host name or IPv4 address")
    if port > 65535:
        raise ValueError("the port must be 0..65535")
    return host, port


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.COM:80"`` → ``("example.com", 80)``, ``"[::1]"`` →
    ``("::1", None)``: the host normalized (lower case, no final dot, an IP
    address in its short form) and the port if given; None when ``value``
    is not a host with an optional port."""
    value = value.strip()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket:
            return None
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            return None
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            return None
    else:
        host, colon, port_text_ = value.partition(":")
        port_text = port_text_ if colon else None
        host = host.lower().removesuffix(".")
        if not host or not all(c.isascii() and (c.isalnum() or c in "-._") for c in host):
            return None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or int(port_text) > 65535:
        return None
    return host, int(port_text)


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = any free port), bound
    before the server starts so its address is known at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on
    # sockets whose proto says TCP, and with Nagle on every response whose
    # headers and body are written separately waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# --- why a connection failed -------------------------------------------------------------

ERROR_CAUSES = ("refused", "dns", "tls", "timeout", "reset", "network")
"""What ``error_cause`` returns; a small fixed set, fit for a log field."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, outermost first. The libraries keep
    the socket's own error in different places: httpx and requests in
    ``__cause__``/``__context__``, urllib's ``URLError`` and urllib3's
    ``MaxRetryError`` in ``reason``, urllib3's ``ProtocolError`` in ``args``."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        link = todo.pop(0)
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        nested = [link.__cause__, link.__context__, getattr(link, "reason", None), *link.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))


def error_cause(exc: BaseException) -> str:
    """One of ``ERROR_CAUSES`` for a failed request: ``refused`` (nothing
    listens, or a firewall rejects), ``dns`` (the name does not resolve),
    ``tls`` (the handshake or the certificate failed), ``timeout``,
    ``reset`` (the peer dropped the connection), else ``network``."""
    links = list(_chain(exc))
    for link in links:
        if isinstance(link, ssl.SSLError):
            return "tls"
        if isinstance(link, socket.gaierror):
            return "dns"
        if isinstance(link, ConnectionRefusedError):
            return "refused"
        if isinstance(link, TimeoutError):
            return "timeout"
        if isinstance(link, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return "reset"
    # Errors raised by the libraries themselves, with no socket error inside
    # (httpx's pool timeout, a server that closed without answering).
    for link in links:
        name = type(link).__name__
        if "Timeout" in name:
            return "timeout"
        if name in ("RemoteProtocolError", "RemoteDisconnected"):
            return "reset"
    return "network"


def _where(exc: BaseException, url: object) -> str:
    """``host:port`` of ``url``, else of the request the error carries."""
    if url is None:
        for link in _chain(exc):
            try:
                url = getattr(link, "request", None)
            except RuntimeError:  # httpx: an error raised outside a request
                continue
            url = getattr(url, "url", None)
            if url is not None:
                break
    if url is None:
        return ""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    port = port or {"https": 443, "http": 80}.get(parts.scheme)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _tls_detail(exc: BaseException) -> str:
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            why = link.verify_message or link.reason or "not trusted"
            return (
                f"TLS certificate not accepted ({why}); if a company CA signs it, "
                "point tls.ca_bundle at that CA"
            )
    for link in _chain(exc):
        if isinstance(link, ssl.SSLError):
            return f"TLS handshake failed ({link.reason or link})"
    return "TLS failed"


def _text(link: BaseException) -> str:
    text = str(link).strip()
    return f"{type(link).__name__}: {text}" if text else type(link).__name__


def describe_error(exc: BaseException, url: object = None) -> str:
    """Where and why a request failed, e.g. ``api.example.com:443:
    connection refused`` or ``nfon.invalid:443: host name not found
    (DNS)``. ``url`` is what was asked for (a string or ``httpx.URL``);
    without it the request the error carries is used, if any. Never raises
    and never includes credentials (only scheme-less ``host:port``)."""
    try:
        where = _where(exc, url)
    except Exception:  # a describer must never hide the error it describes
        where = ""
    cause = error_cause(exc)
    if cause == "refused":
        what = "connection refused (nothing listens there, or a firewall rejects it)"
    elif cause == "dns":
        what = "host name not found (DNS)"
    elif cause == "tls":
        what = _tls_detail(exc)
    elif cause == "timeout":
        what = "no answer in time (timeout)"
    elif cause == "reset":
        what = "the connection was closed or reset by the other side"
    else:
        what = _text(exc)
    return f"{where}: {what}" if where else what

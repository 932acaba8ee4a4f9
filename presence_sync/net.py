"""Network helpers every layer may use: one each for what clients, targets,
the configuration and the simulators would otherwise write again.

- ``tls_context``: what to hand httpx as ``verify`` for an optional CA bundle.
- ``retry_after``: seconds to wait from a ``Retry-After`` header.
- ``user_agent``: the ``User-Agent`` every outbound request carries.
- ``parse_listen``: ``host:port`` / ``[v6]:port`` → ``(host, port)``.
- ``proxy_for``: the outbound proxy for a URL, from ``HTTPS_PROXY``/``NO_PROXY``.

Imports only the standard library and ``presence_sync.__version__``, so that
a leaf may use it without pulling in anything of ours.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from presence_sync import __version__

__all__ = ["parse_listen", "proxy_for", "retry_after", "tls_context", "user_agent"]


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
    parts = urllib.parse.urlsplit(url)
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

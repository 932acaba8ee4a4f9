"""Which ``Host`` values the listener answers to (DNS rebinding).

A web page on another site cannot read the listener's answers or post to it
as itself; but a page whose *name* is made to resolve to 127.0.0.1 after it
loaded (DNS rebinding) is, to the browser, the same site as the listener,
and its requests carry ``Host: <that name>``. So every request, GETs
included, must name the listener:

- the listener's own address or name with its port (``127.0.0.1:9477``,
  ``[::1]:9477``, ``presence.internal:9477``);
- on loopback also ``localhost``, ``127.0.0.1`` and ``[::1]`` with the port;
- on every address (``0.0.0.0``, ``::``) any IP address with the port (an
  address cannot be rebound) and the loopback names;
- the host of ``http.public_url`` (any port: a reverse proxy in front
  forwards the name people use);
- each entry of ``http.allowed_hosts``: a name (any port) or ``name:port``.

A request without ``Host`` (HTTP/1.0) passes: browsers always send one.
Names are compared without case and without a final dot.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from presence_sync.net import split_host

__all__ = ["LOOPBACK_NAMES", "Hosts"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

_ANY: int = -1
"""A port that matches every port (an entry given without one)."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Hosts:
    """The ``Host`` values a listener answers to (see the module docstring).
    ``allowed`` holds (host, port) pairs, port ``-1`` for any port;
    ``any_address``: any IP address with ``port`` names the listener."""

    allowed: frozenset[tuple[str, int]]
    port: int
    any_address: bool = False

    @classmethod
    def of(
        cls,
        host: str,
        port: int,
        *,
        loopback: bool,
        public_url: str | None = None,
        extra: Iterable[str] = (),
    ) -> Hosts:
        """The names of a listener bound on ``host`` (an address or a name,
        as ``http.listen`` gives it) and ``port`` (the bound one);
        ``loopback``: only this machine can reach it."""
        own = split_host(f"[{host}]" if ":" in host else host)
        if own is None:
            raise ValueError(f"not a host: {host!r}")
        wildcard = _is_address(own[0]) and ipaddress.ip_address(own[0]).is_unspecified
        allowed = {(own[0], port)}
        if loopback or wildcard:
            allowed.update((name, port) for name in LOOPBACK_NAMES)
        if public_url:
            public = urllib.parse.urlsplit(public_url).hostname
            if public:
                allowed.add((public.lower().removesuffix("."), _ANY))
        for entry in extra:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"not a host name or host:port: {entry!r}")
            allowed.add((parsed[0], _ANY if parsed[1] is None else parsed[1]))
        return cls(frozenset(allowed), port, any_address=wildcard)

    def allows(self, value: str | None) -> bool:
        """Whether a request with ``Host: value`` (None: without one) is for
        this listener. A ``Host`` without a port means port 80."""
        if value is None:
            return True
        parsed = split_host(value)
        if parsed is None:
            return False
        host, given = parsed
        port = 80 if given is None else given
        if (host, _ANY) in self.allowed or (host, port) in self.allowed:
            return True
        return self.any_address and port == self.port and _is_address(host)

"""The client side of the daemon's API for the one-shot commands (``status``,
``resync``, ``pause``, ``check --test-call``).

``locate`` finds the running daemon the way every command does: ``--url``
when given, else ``http.listen`` of the configuration file (a wildcard
address such as ``0.0.0.0`` is reached on loopback), and the token of
``http.token``/``token_file`` for changes. ``Client`` speaks JSON to it;
nothing answering is ``DaemonDown``, whose message says where we looked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import httpx

from presence_sync.config import Settings, load
from presence_sync.errors import PresenceSyncError
from presence_sync.net import parse_listen, user_agent

__all__ = ["ApiError", "Client", "DaemonDown", "daemon_url", "locate"]

TIMEOUT: Final = 10.0


class DaemonDown(PresenceSyncError):
    """Nothing answers at the daemon's address; the message says where we looked."""


class ApiError(PresenceSyncError):
    """The daemon answered with an error (``status``: its HTTP status)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def daemon_url(listen: str) -> str:
    """The URL to reach a daemon listening on ``listen`` from this machine.
    Raises ``ValueError`` for port 0 (a port the daemon picks at start)."""
    host, port = parse_listen(listen)
    if port == 0:
        raise ValueError(f"http.listen {listen!r} lets the daemon pick a free port: give --url")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"


@dataclass
class Located:
    """Where the daemon should be, and the configuration it was found from."""

    url: str
    where: str
    """How ``url`` was found, for messages: ``--url`` or ``http.listen in FILE``."""
    config: str

    @cached_property
    def settings(self) -> Settings:
        """The configuration file, loaded on first use (raises ``ConfigError``).
        Of the secrets only ``http.token`` is read: the others are systemd
        credentials, which an admin's shell does not have."""
        return load(self.config, secrets=_http_only)

    def token(self) -> str | None:
        """``http.token`` of the configuration; None when there is none, or
        with ``--url`` when the configuration file does not exist."""
        if self.where == "--url" and not Path(self.config).exists():
            return None
        token = self.settings.http.token
        return None if token is None else token.get_secret_value()


def _http_only(path: tuple[str | int, ...]) -> bool:
    return path[:1] == ("http",)


def locate(config: str | os.PathLike[str], url: str | None) -> Located:
    """Where the daemon of ``config`` listens (``url`` wins). Raises
    ``ConfigError`` for a bad file and ``PresenceSyncError`` when the file
    turns the listener off or lets it pick its port."""
    path = os.fspath(config)
    if url:
        return Located(url.rstrip("/"), "--url", path)
    located = Located("", f"http.listen in {path}", path)
    listen = located.settings.http.listen
    if not listen:
        raise PresenceSyncError(
            f"http.listen is off in {path}, so the daemon has no API; turn it on or give --url"
        )
    try:
        located.url = daemon_url(listen)
    except ValueError as exc:
        raise PresenceSyncError(str(exc)) from None
    return located


class Client:
    """JSON requests to the daemon at ``located``; ``token`` for changes."""

    def __init__(self, located: Located, token: str | None = None) -> None:
        self.located = located
        headers = {"User-Agent": user_agent(), "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=located.url, headers=headers, timeout=TIMEOUT)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._answer(lambda: self._http.get(path, params=params))

    def post(self, path: str, body: Any = None) -> Any:
        return self._answer(lambda: self._http.post(path, json=body))

    def _answer(self, send: Callable[[], httpx.Response]) -> Any:
        try:
            response = send()
        except httpx.TransportError as exc:
            raise DaemonDown(
                f"the daemon is not running or not reachable: nothing answers at "
                f"{self.located.url} ({self.located.where}): {exc or type(exc).__name__}"
            ) from exc
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if response.is_success and doc is not None:
            return doc
        message = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(message, str):
            message = f"{response.status_code} {response.reason_phrase}"
            if response.status_code == 404:
                message += f": is a presence-sync daemon listening at {self.located.url}?"
        raise ApiError(f"the daemon refused: {message}", response.status_code)

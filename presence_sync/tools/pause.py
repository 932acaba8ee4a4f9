"""``presence-sync pause`` and ``resume``: ask the running daemon, through its
API (``presence_sync.ops.pause_api``), to leave a person alone for a while or
to sync them again, and say what it did.

The daemon is found at the configuration's ``http.listen`` (a wildcard
address is reached on loopback), or at ``--url``; a token configured for the
listener is sent as ``Authorization: Bearer``. Exit codes: 0 done; 1 the
daemon refused (nobody of that name, no such target) or did not answer;
78 invalid configuration (when ``--url`` is not given).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from presence_sync.errors import PresenceSyncError

__all__ = ["add_arguments", "daemon_url", "resume", "run_pause", "run_resume"]

TIMEOUT = 10.0


def _duration(text: str) -> float:
    """argparse type: a duration (``30m``, ``2h``, ``1d``); a usage error otherwise."""
    from presence_sync.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a pause must last more than 0s")
    return seconds


def add_arguments(parser: argparse.ArgumentParser, *, pause: bool) -> None:
    """The options of ``pause`` (``pause=True``) or ``resume``."""
    parser.add_argument("who", metavar="PERSON", help="e-mail address or extension")
    if pause:
        parser.add_argument(
            "--for",
            dest="duration",
            type=_duration,
            default=None,
            metavar="DURATION",
            help="how long, e.g. 30m, 2h or 1d (default: until resumed)",
        )
        parser.add_argument(
            "--target",
            default=None,
            metavar="NAME",
            help="pause only this target, e.g. slack_status (default: every target)",
        )
    parser.add_argument(
        "--url",
        default=None,
        help="the daemon's address, e.g. http://127.0.0.1:9477 (default: the config's http.listen)",
    )


def daemon_url(config: str, url: str | None) -> tuple[str, str | None]:
    """The daemon's base URL and its API token (if one is configured): ``url``
    when given (the configuration is then read only if it exists, for the
    token), else from the configuration's ``http`` section. Raises
    ``ConfigError`` for an invalid configuration and ``PresenceSyncError``
    when it names no address a client can reach."""
    from presence_sync.config import load

    if url and not Path(config).exists():
        return url.rstrip("/"), None
    http = load(config).http
    # ``http.token`` comes with the API's write guard; a configuration
    # without it sends no token.
    secret: Any = getattr(http, "token", None)
    token = None if secret is None else str(getattr(secret, "get_secret_value", lambda: secret)())
    if url:
        return url.rstrip("/"), token
    address = http.address
    if address is None:
        raise PresenceSyncError(
            f"{config}: http.listen is off, so the daemon has no API to ask; "
            "turn it on or give --url"
        )
    host, port = address
    if port == 0:
        raise PresenceSyncError(f"{config}: http.listen uses port 0 (any port); give --url")
    # A wildcard listener is reached on loopback (it is not bound here).
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}", token


def _post(base: str, token: str | None, path: str, body: Mapping[str, Any] | None) -> Any:
    """POST to the daemon; its JSON answer, or ``PresenceSyncError`` with its
    error message or why it did not answer."""
    import httpx  # here: the command line parser imports this module

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(base + path, json=body, headers=headers, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise PresenceSyncError(
            f"the daemon does not answer at {base} ({type(exc).__name__}: {exc}); "
            "is it running? (--url points elsewhere)"
        ) from None
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code != 200:
        error = doc.get("error") if isinstance(doc, dict) else None
        raise PresenceSyncError(error or f"the daemon answered HTTP {response.status_code}")
    return doc


def _who(doc: Mapping[str, Any]) -> str:
    name = doc.get("name")
    return f"{doc['email']} ({name})" if name else str(doc["email"])


def _say_paused(doc: Mapping[str, Any], out: TextIO) -> None:
    paused = doc.get("paused") or {}
    targets = paused.get("targets")
    where = "every target" if targets is None else ", ".join(targets)
    until = paused.get("until")
    when = f"until {until}" if until else "until resumed"
    print(f"Paused {_who(doc)} at {where}, {when}.", file=out)
    print(
        "Their own status is given back; nothing is sent for them meanwhile "
        f"(presence-sync resume {doc['email']} ends it sooner).",
        file=out,
    )


def pause(base: str, token: str | None, who: str, seconds: float | None, target: str | None) -> Any:
    """Ask the daemon at ``base`` to pause ``who``; the PERSON document."""
    body = {"for": seconds, "target": target}
    return _post(base, token, f"/api/people/{quote(who, safe='@')}/pause", body)


def resume(base: str, token: str | None, who: str) -> Any:
    """Ask the daemon at ``base`` to resume ``who``; the PERSON document."""
    return _post(base, token, f"/api/people/{quote(who, safe='@')}/resume", None)


def run_pause(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    base, token = daemon_url(args.config, args.url)
    _say_paused(pause(base, token, args.who, args.duration, args.target), out)
    return 0


def run_resume(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    base, token = daemon_url(args.config, args.url)
    doc = resume(base, token, args.who)
    print(f"Resumed {_who(doc)}: presence-sync shows their line again.", file=out)
    return 0

"""``presence-sync pause`` and ``resume``: ask the running daemon, through its
API (``presence_sync.ops.pause_api``), to leave a person alone for a while or
to sync them again, and say what it did.

The daemon is found like for every command (``tools.client.locate``:
``--url``, else the configuration's ``http.listen``, with its token). Exit
codes: 0 done; 1 the daemon refused (nobody of that name, no such target) or
did not answer; 2 a bad ``--for``; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import quote

from presence_sync.ops.logging import printable

__all__ = ["add_arguments", "run_pause", "run_resume"]


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
    """The options of ``pause`` (``pause=True``) or ``resume``, beside
    ``--config`` and ``--url``."""
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


def _post(args: argparse.Namespace, action: str, body: Mapping[str, Any] | None) -> Any:
    """POST ``/api/people/{who}/{action}`` to the daemon; its PERSON document."""
    from presence_sync.tools.client import Client, locate

    located = locate(args.config, args.url)
    with Client(located, located.token()) as client:
        return client.post(f"/api/people/{quote(args.who.strip(), safe='@')}/{action}", body)


def _who(doc: Mapping[str, Any]) -> str:
    # The name may be NFON's: shown escaped, as every remote text on a terminal.
    name = doc.get("name")
    return printable(f"{doc['email']} ({name})" if name else str(doc["email"]))


def run_pause(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``presence-sync pause``; returns the exit code."""
    doc = _post(args, "pause", {"for": args.duration, "target": args.target})
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
    return 0


def run_resume(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``presence-sync resume``; returns the exit code."""
    doc = _post(args, "resume", None)
    print(f"Resumed {_who(doc)}: presence-sync shows their line again.", file=out)
    return 0

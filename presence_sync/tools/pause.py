"""``presence-sync pause`` and ``resume``: ask the running daemon, through its
API (``presence_sync.api.pause``), to leave a person alone for a while or
to sync them again, and say what it did.

The daemon is found like for every command (``tools.client.locate``:
``--url``, else the configuration's ``http.listen``, with its token). Exit
codes: 0 done (also ``resume`` of someone not paused, which says so); 1
nobody of that name, or the daemon did not answer; 2 a usage error: a
``--for`` that is no duration, is not more than 0s or is over 366d, or a
``--target`` the daemon does not have, each said the way argparse says it
(``presence-sync pause: error: argument --for: ...``); 78 invalid
configuration.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import quote

from presence_sync.ops.logging import printable

__all__ = ["EXIT_USAGE", "add_arguments", "run_pause", "run_resume"]

EXIT_USAGE = 2


def _duration(text: str) -> float:
    """argparse type: a duration (``30m``, ``2h``, ``1d``) a pause may last;
    a usage error otherwise, in the daemon's words."""
    from presence_sync.config import parse_duration
    from presence_sync.pauses import duration_problem

    given = text.strip()
    try:
        seconds = parse_duration(given.removeprefix("-"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    problem = duration_problem(-seconds if given.startswith("-") else seconds)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{given}: {problem}")
    return seconds


def _usage_error(option: str, message: str, err: TextIO) -> int:
    """A usage error found after parsing, said as argparse says its own."""
    print(f"presence-sync pause: error: argument {option}: {message}", file=err)
    return EXIT_USAGE


def add_arguments(parser: argparse.ArgumentParser, *, pause: bool) -> None:
    """The options of ``pause`` (``pause=True``) or ``resume``, beside
    ``--config`` and ``--url``."""
    parser.add_argument("who", metavar="PERSON", help="e-mail address or extension")
    if pause:
        # "--for -5m" is a duration given wrong, not an unknown option: let
        # values that start with "-" and a digit through to _duration.
        parser._negative_number_matcher = re.compile(r"^-\d")
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


def run_pause(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``presence-sync pause``; returns the exit code."""
    from presence_sync.tools.client import ApiError

    try:
        doc = _post(args, "pause", {"for": args.duration, "target": args.target})
    except ApiError as exc:
        # --for was checked here; what the daemon refuses with 400 is --target.
        if exc.status != 400:
            raise
        return _usage_error("--target", str(exc).removeprefix("the daemon refused: "), err)
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
    if doc.get("was_paused") is False:
        # Not an error: what was asked for (not paused) is what they are.
        print(f"{_who(doc)} was not paused: nothing to resume.", file=out)
        return 0
    print(f"Resumed {_who(doc)}: presence-sync shows their line again.", file=out)
    return 0

"""``presence-sync sim webhook``: a webhook receiver on loopback that checks
every delivery the way ``docs/webhook.md`` tells integrators to, and prints
one line per delivery, so an admin can watch the ``webhook`` target work
(and a receiver's author can compare notes) without a server of their own."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from datetime import datetime
from typing import Any, TextIO

from presence_sync.sim import options

__all__ = ["add_arguments", "describe_delivery", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``presence-sync sim webhook``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=options.port, default=8070,
                        help="port (0 = any free port)")  # fmt: skip
    parser.add_argument("--path", default="/hook", type=_path,
                        help="where deliveries are received (default: %(default)s)")  # fmt: skip
    parser.add_argument("--secret", default=None,
                        help="the shared secret to check signatures with "
                        "(default: a new random one, printed)")  # fmt: skip
    parser.add_argument("--tolerance", type=options.positive, default=300.0, metavar="SECONDS",
                        help="how far a delivery's timestamp may be from now")  # fmt: skip


def _path(text: str) -> str:
    if not text.startswith("/") or text.startswith("/_sim"):
        raise argparse.ArgumentTypeError(f"must start with / and not with /_sim: {text!r}")
    return text


def describe_delivery(body: Any, signature: str, answered: int) -> str:
    """One line about a delivery: who, what status, whether it was genuine.
    No caller number, even when the target sends one."""
    when = datetime.now().astimezone().strftime("%H:%M:%S")
    if not isinstance(body, dict):
        return f"{when}  not a JSON document · signature {signature} · answered {answered}"
    if body.get("event") == "ping":  # presence-sync check: no change to show
        target = body.get("target") or "?"
        return f"{when}  ping for {target} · signature {signature} · answered {answered}"
    person = body.get("person") or {}
    who = person.get("name") or person.get("email") or "?"
    status = body.get("status")
    if isinstance(status, dict):
        shown = "/".join(str(status[k]) for k in ("availability", "activity") if status.get(k))
        text = status.get("text")
        what = " ".join(part for part in (shown, f'"{text}"' if text else "") if part)
    else:
        what = "cleared, own status restored"
    return f"{when}  {who} · {what or 'status'} · signature {signature} · answered {answered}"


async def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Serve a receiver until cancelled; prints its URL, secret and control
    endpoint, then a line per delivery. Returns 0."""
    from presence_sync.sim.serve import serve
    from presence_sync.sim.webhook import WebhookReceiver

    secret = args.secret or secrets.token_hex(16)
    receiver = WebhookReceiver(
        secret,
        path=args.path,
        tolerance=args.tolerance,
        on_delivery=lambda d: print(
            describe_delivery(d.body, d.signature, d.answered), file=out, flush=True
        ),
    )
    async with serve(receiver.app, args.host, args.port) as running:
        url = running.origin + args.path
        print(
            f"webhook receiver: url={url} secret={secret} control={running.origin}/_sim/\n"
            "\nPaste into config.yaml:\n"
            f"targets:\n  webhook:\n    url: {url}\n    secret: {secret}\n",
            file=out,
            flush=True,
        )
        await asyncio.Event().wait()
    return 0

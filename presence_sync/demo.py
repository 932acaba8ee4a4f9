"""``presence-sync demo``: the whole system on one machine, no accounts needed.

It starts the built-in NFON simulator with a few colleagues and random call
traffic, a webhook receiver, and the real daemon configured against both (the
``log`` target shows what a real one would; the ``webhook`` target delivers JSON
documents). The configuration it writes is printed, so the demo doubles as a
worked example.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from presence_sync.sim.nfon import NfonSim
from presence_sync.sim.nfon import serve_in_thread as serve_nfon
from presence_sync.sim.webhook import WebhookReceiver

__all__ = ["demo_config", "run_demo", "watch_simulator"]

DEMO_SECRET = "demo-shared-secret"  # noqa: S105 - the demo's webhook signs with a known key

COLLEAGUES = [
    ("Anna Schmidt", "anna"),
    ("Ben Müller", "ben"),
    ("Clara Weber", "clara"),
    ("David Fischer", "david"),
    ("Eva Wagner", "eva"),
    ("Felix Becker", "felix"),
    ("Greta Hoffmann", "greta"),
    ("Hannah Schulz", "hannah"),
    ("Ilja Koch", "ilja"),
    ("Jana Richter", "jana"),
]


def colleagues(count: int) -> list[tuple[str, str, str]]:
    """``count`` simulated colleagues as (extension, name, e-mail)."""
    out = []
    for i in range(count):
        name, local = COLLEAGUES[i % len(COLLEAGUES)]
        suffix = "" if i < len(COLLEAGUES) else str(i // len(COLLEAGUES))
        out.append((str(100 + i), name, f"{local}{suffix}@example.com"))
    return out


def demo_config(
    nfon_url: str, webhook_url: str, people: list[tuple[str, str, str]], state_dir: Path
) -> str:
    """The YAML configuration the demo runs with."""
    lines = [
        "nfon:",
        f"  base_url: {nfon_url}",
        "  customer: K1234",
        "  username: api-user",
        "  password: api-secret",
        "people:",
    ]
    for ext, name, email in people:
        lines += [f'  - extension: "{ext}"', f"    email: {email}", f"    name: {name}"]
    lines += [
        "targets:",
        "  log: {}",
        "  webhook:",
        f"    url: {webhook_url}",
        f"    secret: {DEMO_SECRET}",
        "resync:",
        "  interval: 1m",
        "state:",
        f"  path: {state_dir / 'state.db'}",
        "http:",
        '  listen: "127.0.0.1:0"',
        "logging:",
        "  level: info",
        "  format: text",
    ]
    return "\n".join(lines) + "\n"


async def run_demo(args: argparse.Namespace) -> int:
    """Run simulators and daemon until Ctrl-C or ``args.duration`` seconds."""
    from presence_sync.app import Daemon
    from presence_sync.sim.serve import serve_in_thread

    people = colleagues(args.people)
    sim = NfonSim(extensions=[(ext, name) for ext, name, _ in people], keepalive=15.0)
    receiver = WebhookReceiver(secret=DEMO_SECRET)
    with (
        tempfile.TemporaryDirectory(prefix="presence-sync-demo-") as tmp,
        serve_nfon(sim) as nfon,
        serve_in_thread(receiver.app) as hook,
    ):
        config = Path(tmp) / "config.yaml"
        config.write_text(demo_config(nfon.base_url, hook.origin + "/hook", people, Path(tmp)))
        print(_banner(config, nfon.base_url, hook.origin), flush=True)
        nfon.sim.start_traffic(args.rate)
        daemon = Daemon(config)
        # The daemon's own lines tell the story; the receiver would repeat them.
        logging.getLogger("presence_sync.sim").setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        stopper = None
        if args.duration is not None:
            stopper = loop.call_later(args.duration, daemon.stop)
        try:
            code = await daemon.run()
        finally:
            if stopper is not None:
                stopper.cancel()
            nfon.sim.stop_traffic()
        delivered = hook.call(lambda: len(receiver.deliveries))
        print(f"\ndemo finished: the webhook receiver got {delivered} signed documents.")
        return code


def _banner(config: Path, nfon_url: str, hook_origin: str) -> str:
    return "\n".join(
        [
            "presence-sync demo: simulated NFON telephony with random calls, mirrored by",
            "the real daemon into a log and a webhook. Ctrl-C stops.",
            f"  NFON CTI simulator: {nfon_url}   (user api-user, password api-secret)",
            f"  webhook receiver:   {hook_origin}/hook",
            f"  configuration:      {config}",
            "",
            config.read_text(),
        ]
    )


async def watch_simulator(out: TextIO, *, rate: float) -> int:
    """``presence-sync nfon watch --sim``: the watcher against a simulator."""
    from presence_sync.nfon import NfonClient
    from presence_sync.nfon.watch import watch

    people = colleagues(6)
    sim = NfonSim(extensions=[(ext, name) for ext, name, _ in people])
    with serve_nfon(sim) as handle:
        handle.sim.start_traffic(rate)
        client = NfonClient(handle.base_url, "K1234", "api-user", "api-secret")
        # Ctrl-C cancels this coroutine (the CLI's handlers): the watch ends
        # and the simulator is still shut down in order.
        with contextlib.suppress(asyncio.CancelledError):
            await watch(client, out)
        await client.aclose()
        handle.sim.stop_traffic()
    print("", file=sys.stdout)
    return 0

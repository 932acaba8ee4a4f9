"""``presence-sync demo``: the whole system on one machine, no accounts needed.

It starts the built-in simulators, the NFON CTI API with a few colleagues,
Entra ID and Microsoft Graph (over HTTPS with a CA of its own), a Slack
workspace and a webhook receiver, and then the real daemon configured
against all of them with the ``teams_presence``, ``teams_status_message``,
``slack_status`` and ``webhook`` targets and the default rules. Random calls
ring, get answered or missed and end.

It prints the daemon's status page first, then a short line for each change
a colleague would notice: the phone line, Teams, the Teams status message,
Slack, and each webhook delivery (read back from the simulators, so a line
means the change really arrived there). The configuration it writes is
shown in the banner, so the demo doubles as a worked example. Ctrl-C (or
SIGTERM, or ``--duration``) stops the daemon cleanly: exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import random
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from presence_sync.ops.logging import printable
from presence_sync.sim import world
from presence_sync.sim.graph_sim import DIRECTORY_ROLES
from presence_sync.sim.nfon import NfonSim
from presence_sync.sim.nfon import serve_in_thread as serve_nfon

if TYPE_CHECKING:
    from presence_sync.app import Daemon
    from presence_sync.sim.webhook import WebhookReceiver

__all__ = ["colleagues", "demo_config", "run_demo", "watch_simulator"]

DEMO_SECRET = "demo-shared-secret"  # noqa: S105 - the demo's webhook signs with a known key
GRAPH_SECRET = "demo-client-secret"  # noqa: S105 - the simulated Entra app's, printed anyway
WATCH_INTERVAL = 0.2
"""Seconds between two looks at what the simulators show."""

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


@dataclass(frozen=True)
class Services:
    """Where the simulators listen, for the configuration."""

    nfon_url: str
    graph_origin: str
    graph_tenant: str
    graph_client_id: str
    graph_ca: Path
    slack_url: str
    slack_token: str
    webhook_url: str


def demo_config(services: Services, people: list[tuple[str, str, str]], state_dir: Path) -> str:
    """The YAML configuration the demo runs with."""
    s = services
    lines = [
        "nfon:",
        f"  base_url: {s.nfon_url}",
        "  customer: K1234",
        "  username: api-user",
        "  password: api-secret",
        # Who is synced comes from the Entra group, as in a real rollout.
        "directory:",
        "  microsoft:",
        f"    group: {world.GROUP}",
        "    extension_from: businessPhones",
        f'    number_prefix: "{world.PREFIX}"',
        "  refresh: 1h",
    ]
    lines += [
        "microsoft:",
        f"  tenant_id: {s.graph_tenant}",
        f"  client_id: {s.graph_client_id}",
        f"  client_secret: {GRAPH_SECRET}",
        f"  authority: {s.graph_origin}",
        f"  graph_url: {s.graph_origin}",
        "slack:",
        f"  base_url: {s.slack_url}",
        f"  token: {s.slack_token}",
        "tls:",
        f"  ca_bundle: {s.graph_ca}",
        "targets:",
        "  teams_presence: {}",
        "  teams_status_message: {}",
        "  slack_status: {}",
        "  webhook:",
        f"    url: {s.webhook_url}",
        f"    secret: {DEMO_SECRET}",
        "resync:",
        "  interval: 1m",
        "state:",
        f"  path: {state_dir / 'state.db'}",
        "http:",
        '  listen: "127.0.0.1:0"',
        "logging:",
        "  level: warning",
        "  format: text",
    ]
    return "\n".join(lines) + "\n"


# --- random calls, on the NFON simulator's loop --------------------------------------------


async def random_calls(sim: NfonSim, per_minute: float, rng: random.Random) -> None:
    """About ``per_minute`` calls a minute to or from idle colleagues: an
    inbound call rings a few seconds and is answered four times in five, an
    outbound one is in use at once; a conversation lasts about 12 s. Runs on
    the simulator's loop until cancelled."""
    calls: set[asyncio.Task[None]] = set()

    async def play(extension: str, direction: str) -> None:
        party = "49" + "".join(str(rng.randrange(10)) for _ in range(10))
        uuid = sim.ring(extension, direction=direction, party=party, external=True)
        with contextlib.suppress(KeyError, ValueError):  # ended by someone else
            await asyncio.sleep(rng.uniform(1.5, 4.0) if direction == "inbound" else 0.5)
            if direction == "outbound" or rng.random() < 0.8:
                sim.answer(uuid)
                await asyncio.sleep(min(60.0, 3.0 + rng.expovariate(1 / 9.0)))
            sim.hangup(uuid)

    while True:
        await asyncio.sleep(rng.expovariate(per_minute / 60.0))
        extension = sim.pick_idle(rng)
        if extension is None:
            continue
        task = asyncio.create_task(play(extension, rng.choice(("inbound", "inbound", "outbound"))))
        calls.add(task)
        task.add_done_callback(calls.discard)


# --- what colleagues see ---------------------------------------------------------------------


def _words(camel: str) -> str:
    """``InACall`` → ``In a call``, ``DoNotDisturb`` → ``Do not disturb``."""
    parts = re.findall(r"[A-Z][a-z]*|[a-z]+", camel)
    return " ".join([parts[0], *(p.lower() for p in parts[1:])]) if parts else camel


_LINE_WORDS = {"idle": "free", "ringing": "ringing", "in-use": "in a call"}


class Watcher:
    """Looks at what each simulator shows every ``WATCH_INTERVAL`` seconds
    from a thread of its own and prints a line per change:
    ``10:31:02  Anna Schmidt · Teams: Busy/In a call``. ``views`` maps a
    label to a function giving every person's text for it (by e-mail).
    ``closed()`` is called (from its thread) when ``out`` is a pipe whose
    reader went away (``demo | head``); it prints nothing more then."""

    def __init__(
        self,
        names: dict[str, str],
        views: dict[str, Callable[[], dict[str, str]]],
        out: TextIO,
        closed: Callable[[], None],
    ) -> None:
        self.names = names
        self.views = views
        self.out = out
        self.closed = closed
        self._stop = threading.Event()
        self._seen: dict[tuple[str, str], str] = {}
        self._thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)

    def start(self) -> None:
        self._look(report=False)  # what everyone shows before the first call
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL):
            try:
                self._look(report=True)
            except BrokenPipeError:
                self.closed()
                return
            except Exception as exc:  # a simulator going away at the very end
                if not self._stop.is_set():
                    print(f"demo: cannot read a simulator: {exc}", file=sys.stderr)

    def _look(self, *, report: bool) -> None:
        for label, view in self.views.items():
            for email, text in view().items():
                key = (label, email)
                if self._seen.get(key) == text:
                    continue
                self._seen[key] = text
                if report:
                    when = datetime.now().astimezone().strftime("%H:%M:%S")
                    name = self.names.get(email, email)
                    shown = printable(f"{name} · {label}: {text}")
                    print(f"{when}  {shown}", file=self.out, flush=True)


# --- running it ----------------------------------------------------------------------------


async def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run simulators and daemon until Ctrl-C, SIGTERM or ``args.duration``
    seconds; returns the daemon's exit code (0 after a clean stop)."""
    from presence_sync.app import Daemon
    from presence_sync.sim.graph import GraphSim
    from presence_sync.sim.graph import serve_in_thread as serve_graph
    from presence_sync.sim.serve import serve_in_thread
    from presence_sync.sim.slack import SlackSim
    from presence_sync.sim.slack_serve import serve_in_thread as serve_slack
    from presence_sync.sim.webhook import WebhookReceiver

    people = colleagues(args.people)
    names = {email: name for _, name, email in people}
    nfon_sim = NfonSim(extensions=[(ext, name) for ext, name, _ in people], keepalive=15.0)
    graph = GraphSim()
    client_id = graph.register_app(secret=GRAPH_SECRET, roles=DIRECTORY_ROLES)
    world.seed_graph(
        graph,
        [world.Person(ext, name, email, f"{world.PREFIX} {ext}") for ext, name, email in people],
    )
    entra = {user.mail or user.user_principal_name: user.id for user in graph.users()}
    slack = SlackSim()
    admin = slack.add_user("it-admin", "it-admin@example.com", role="admin", real_name="IT Admin")
    members = {
        email: slack.add_user(email.split("@")[0], email, real_name=name)
        for _, name, email in people
    }
    for uid in list(members.values())[1::3]:
        # Some set a status of their own: it comes back exactly after a call.
        slack.set_own_status(uid, "Working from home", ":house_with_garden:")
    receiver = WebhookReceiver(secret=DEMO_SECRET)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="presence-sync-demo-")))
        nfon = stack.enter_context(serve_nfon(nfon_sim))
        graph_handle = stack.enter_context(serve_graph(graph, tls_dir=tmp / "tls"))
        slack_handle = stack.enter_context(serve_slack(slack))
        hook = stack.enter_context(serve_in_thread(receiver.app))
        services = Services(
            nfon_url=nfon.base_url,
            graph_origin=graph_handle.origin,
            graph_tenant=graph.tenant,
            graph_client_id=client_id,
            graph_ca=graph_handle.ca_path,
            slack_url=slack_handle.base_url,
            slack_token=slack.add_token(admin).secret,
            webhook_url=hook.origin + receiver.path,
        )
        config = tmp / "config.yaml"
        config.write_text(demo_config(services, people, tmp))
        # The simulators' own lines would repeat what the watcher prints.
        logging.getLogger("presence_sync.sim").setLevel(logging.WARNING)

        def phone() -> dict[str, str]:
            by_ext = {s["extension"]: s for s in nfon.sim.states()}
            return {
                email: _LINE_WORDS.get(by_ext[ext]["line"], by_ext[ext]["line"])
                for ext, _, email in people
                if ext in by_ext
            }

        def teams() -> dict[str, str]:
            return {e: _teams(graph.presence(uid)) for e, uid in entra.items()}

        def message() -> dict[str, str]:
            return {e: _message(graph.presence(uid)) for e, uid in entra.items()}

        def slack_status() -> dict[str, str]:
            shown = {}
            for email, uid in members.items():
                status = slack.status_of(uid)
                text = " ".join(p for p in (status.emoji, status.text) if p)
                shown[email] = text or "(no status)"
            return shown

        def webhook() -> dict[str, str]:
            return _last_documents(receiver)

        watcher = Watcher(
            names,
            {
                "phone": phone,
                "Teams": teams,
                "Teams message": message,
                "Slack": slack_status,
                "webhook": webhook,
            },
            out,
            lambda: _call_in(loop, output_closed),
        )
        daemon = Daemon(config)
        loop = asyncio.get_running_loop()
        closed = False

        def output_closed() -> None:
            # Whoever read the demo's lines is gone: it has no one to show
            # anything to, so it stops (and the command exits as for ``| head``).
            nonlocal closed
            closed = True
            daemon.stop()

        calls_rng = random.Random()
        calls = asyncio.run_coroutine_threadsafe(
            random_calls(nfon_sim, args.calls_per_minute, calls_rng), nfon.running.loop
        )
        started = asyncio.ensure_future(_when_listening(daemon, out, config, services, watcher))
        started.add_done_callback(
            lambda task: (
                output_closed()
                if not task.cancelled() and isinstance(task.exception(), BrokenPipeError)
                else None
            )
        )
        stopper = None
        if args.duration is not None:
            stopper = loop.call_later(args.duration, daemon.stop)
        try:
            code = await daemon.run()
        finally:
            started.cancel()
            calls.cancel()
            watcher.stop()
            if stopper is not None:
                stopper.cancel()
        if closed:
            raise BrokenPipeError(errno.EPIPE, "the demo's output was closed")
        count = len(receiver.deliveries)
        print(
            f"\ndemo finished: the webhook receiver got {count} signed "
            f"document{'' if count == 1 else 's'}.",
            file=out,
            flush=True,
        )
        return code


def _call_in(loop: asyncio.AbstractEventLoop, function: Callable[[], None]) -> None:
    """Run ``function`` in ``loop`` soon (from another thread)."""
    loop.call_soon_threadsafe(function)


async def _when_listening(
    daemon: Daemon, out: TextIO, config: Path, services: Services, watcher: Watcher
) -> None:
    """Print the status page's address as soon as the daemon listens, then
    the banner, then start watching."""
    while daemon.listen_address is None:  # noqa: ASYNC110 - set by the daemon's start
        await asyncio.sleep(0.01)
    host, port = daemon.listen_address[:2]
    print(f"Status page: http://{host}:{port}/", file=out, flush=True)
    print(_banner(config, services), file=out, flush=True)
    watcher.start()


def _teams(presence: dict[str, Any]) -> str:
    availability, activity = presence["availability"], presence["activity"]
    return availability if activity == availability else f"{availability}/{_words(activity)}"


def _message(presence: dict[str, Any]) -> str:
    message = (presence.get("statusMessage") or {}).get("message") or {}
    content = message.get("content")
    return f'"{content}"' if content else "(no message)"


def _last_documents(receiver: WebhookReceiver) -> dict[str, str]:
    """The status of the latest accepted delivery per person."""
    out: dict[str, str] = {}
    for delivery in receiver.deliveries:
        body = delivery.body
        if not delivery.accepted or not isinstance(body, dict) or "person" not in body:
            continue  # a ping (presence-sync check) shows nobody
        status = body.get("status")
        if isinstance(status, dict):
            shown = "/".join(str(status[k]) for k in ("availability", "activity") if status.get(k))
        else:
            shown = "cleared, own status restored"
        out[body["person"]["email"]] = f"{shown} (signature {delivery.signature})"
    return out


def _banner(config: Path, services: Services) -> str:
    return "\n".join(
        [
            "",
            "presence-sync demo: simulated NFON telephony with random calls, mirrored by the",
            "real daemon into Teams, Slack and a webhook (all simulated). Ctrl-C stops.",
            f"  NFON CTI API:    {services.nfon_url}  (user api-user, password api-secret)",
            f"  Microsoft Graph: {services.graph_origin}",
            f"  Slack Web API:   {services.slack_url}",
            f"  webhook:         {services.webhook_url}",
            "  Each simulator lists its control calls at /_sim/ (docs/simulators.md).",
            f"  configuration:   {config}",
            "",
            config.read_text(),
            "What colleagues see, as it changes:",
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

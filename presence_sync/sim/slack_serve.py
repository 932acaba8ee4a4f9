"""Running a Slack simulator on a loopback socket (``serve_in_thread`` for
synchronous tests, ``serve`` on the current event loop), and the
``presence-sync sim slack`` command (``add_arguments``, ``run``).

``SlackSim`` is thread-safe itself, so the handle gives it out as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TextIO

from presence_sync.sim import options, world
from presence_sync.sim import serve as _serving
from presence_sync.sim.slack import IssuedToken, SlackSim
from presence_sync.sim.slack_http import build_app

__all__ = ["SlackHandle", "add_arguments", "populate", "run", "serve", "serve_in_thread"]

_NAMES = (
    "anna", "ben", "clara", "david", "elif", "felix", "greta", "hannes", "ida", "jonas",
    "kira", "lukas", "mara", "niklas", "olga", "paul", "rosa", "samir", "tilda", "umut",
)  # fmt: skip


@dataclass(frozen=True)
class SlackHandle:
    """A simulator being served."""

    base_url: str
    """``http://127.0.0.1:PORT/api/``: give it to ``slack_sdk`` as ``base_url``."""
    origin: str
    """``http://127.0.0.1:PORT``: the control API lives at ``{origin}/_sim/``."""
    sim: SlackSim
    running: _serving.Running


def _handle(sim: SlackSim, running: _serving.Running) -> SlackHandle:
    return SlackHandle(f"{running.origin}/api/", running.origin, sim, running)


@contextlib.contextmanager
def serve_in_thread(sim: SlackSim, host: str = "127.0.0.1", port: int = 0) -> Iterator[SlackHandle]:
    """Serve ``sim`` from a thread of its own; listening when the block starts."""
    with _serving.serve_in_thread(build_app(sim), host, port) as running:
        yield _handle(sim, running)


@contextlib.asynccontextmanager
async def serve(
    sim: SlackSim, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[SlackHandle]:
    """Serve ``sim`` on the running event loop for the ``async with`` block."""
    async with _serving.serve(build_app(sim), host, port) as running:
        yield _handle(sim, running)


def populate(sim: SlackSim, people: int) -> tuple[IssuedToken, list[IssuedToken]]:
    """Add an admin and ``people`` regular colleagues (``anna@example.com``,
    ...), each with a user token of every scope the targets need. Returns
    the admin's token and the colleagues' tokens."""
    admin = sim.add_user("it-admin", "it-admin@example.com", role="admin", real_name="IT Admin")
    tokens = []
    for n in range(people):
        name = _NAMES[n % len(_NAMES)] + (str(n // len(_NAMES)) if n >= len(_NAMES) else "")
        uid = sim.add_user(name, f"{name}@example.com", real_name=name.capitalize())
        tokens.append(sim.add_token(uid, token_id=name))
    return sim.add_token(admin, token_id="admin"), tokens  # noqa: S106 - an id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``presence-sync sim slack``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=options.port, default=8090,
                        help="port (0 = any free port)")  # fmt: skip
    parser.add_argument("--people", type=options.whole(0, 10_000), default=5,
                        metavar="N", help="colleagues to create, each with a token")  # fmt: skip
    parser.add_argument("--free-plan", action="store_true",
                        help="a free workspace: no setting other people's profiles")  # fmt: skip
    world.add_argument(parser)


def describe(
    handle: SlackHandle, admin: IssuedToken, tokens: list[IssuedToken], out: TextIO
) -> None:
    """Print where the simulator is, its tokens and a ``slack:`` config block."""
    sim = handle.sim
    print(f"Slack simulator: base_url={handle.base_url} team={sim.team_id} "
          f"control={handle.origin}/_sim/", file=out)  # fmt: skip
    print(f"admin token ({admin.user_id}, it-admin@example.com): {admin.secret}", file=out)
    for token in tokens:
        email = sim.person(token.user_id).email
        print(f"user token ({token.user_id}, {email}): {token.secret}", file=out)
    print("\nPaste into config.yaml:\nslack:", file=out)
    print(f"  base_url: {handle.base_url}\n  token: {admin.secret}", file=out, flush=True)


async def run(args: argparse.Namespace) -> int:
    """Serve a simulator built from ``args`` until cancelled. Returns 0."""
    sim = SlackSim(paid=not args.free_plan)
    people = getattr(args, "world", None)
    if people is None:
        admin, tokens = populate(sim, args.people)
    else:
        admin, tokens = populate(sim, 0)
        for person in people:
            uid = sim.add_user(person.handle, person.email, real_name=person.name)
            tokens.append(sim.add_token(uid, token_id=person.handle))
    async with serve(sim, args.host, args.port) as handle:
        describe(handle, admin, tokens, sys.stdout)
        await asyncio.Event().wait()
    return 0

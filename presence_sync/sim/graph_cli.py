"""``presence-sync sim microsoft``: its options, and serving a Graph
simulator until Ctrl-C. Imports the simulator only when it runs, so that
building the command line stays cheap."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from presence_sync.sim import options, world

if TYPE_CHECKING:
    from presence_sync.sim.graph import GraphHandle

__all__ = ["add_arguments", "config_block", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``presence-sync sim microsoft``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=options.port, default=8443, help="port (0 = any free port)")
    parser.add_argument("--tenant", default="00000000-0000-4000-8000-000000000001",
                        help="tenant id")  # fmt: skip
    parser.add_argument("--client-id", default="00000000-0000-4000-8000-0000000000a1",
                        help="client id of the app registration to accept")  # fmt: skip
    parser.add_argument("--client-secret", default="sim-secret", help="its client secret")
    parser.add_argument("--users", type=options.whole(0), default=5, metavar="N",
                        help="users user1@example.com .. userN@example.com")  # fmt: skip
    parser.add_argument("--token-lifetime", type=options.positive, default=3600.0,
                        metavar="SECONDS", help="access token lifetime")  # fmt: skip
    world.add_argument(parser)
    parser.add_argument("--tls-dir", type=Path, default=None, metavar="DIR",
                        help="where to write the CA and server certificate "
                        "(default: a temporary directory, removed at exit)")  # fmt: skip


_DIRECTORY_BLOCK = f"""directory:
  microsoft:
    group: {world.GROUP}
    extension_from: businessPhones
    number_prefix: "{world.PREFIX}"
  refresh: 1h
"""


def config_block(handle: GraphHandle, client_id: str, secret: str) -> str:
    """A ``microsoft:`` and ``tls:`` configuration for this simulator."""
    return (
        "microsoft:\n"
        f"  tenant_id: {handle.sim.tenant}\n"
        f"  client_id: {client_id}\n"
        f"  client_secret: {secret}\n"
        f"  authority: {handle.authority_host}\n"
        f"  graph_url: {handle.graph_url}\n"
        "tls:\n"
        f"  ca_bundle: {handle.ca_path}\n"
    )


async def run(args: argparse.Namespace) -> int:
    """Serve a simulator built from ``args`` until cancelled; prints where it
    is, its CA and a configuration block. Returns 0, or 1 (with a message)
    when it cannot write its certificates; raises ``CannotListen`` when it
    cannot listen."""
    from presence_sync.sim.graph import GraphSim, serve
    from presence_sync.sim.graph_sim import ALL_ROLES, DIRECTORY_ROLES

    sim = GraphSim(tenant=args.tenant, token_lifetime=args.token_lifetime)
    people = getattr(args, "world", None)
    roles = DIRECTORY_ROLES if people is not None else ALL_ROLES
    client_id = sim.register_app(args.client_id, secret=args.client_secret, roles=roles)
    if people is not None:
        world.seed_graph(sim, people)
    else:
        for n in range(1, args.users + 1):
            sim.add_user(f"user{n}@example.com", user_id=str(uuid.UUID(int=n)))
    from presence_sync.sim.serve import CannotListen

    try:
        server = serve(sim, args.host, args.port, args.tls_dir)
        handle = await server.__aenter__()
    except CannotListen:
        raise  # the command shows it as a usage error
    except OSError as exc:
        print(f"presence-sync: cannot start the Graph simulator: {exc}", file=sys.stderr)
        return 1
    try:
        print(
            f"Graph simulator: authority={handle.authority()} graph_url={handle.graph_url}\n"
            f"CA certificate: {handle.ca_path}\n"
            f"control API: {handle.origin}/_sim/\n\n"
            + config_block(handle, client_id, args.client_secret)
            + (_DIRECTORY_BLOCK if people is not None else ""),
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await server.__aexit__(None, None, None)
    return 0

"""NFON CTI API simulator: a loopback server that speaks the published
contract (``/work/shared/nfon/cti-openapi.json``) so that tests, benchmarks
and the demo can run the real daemon against something that behaves like
NFON: tokens that really expire, SSE streams with bootstrap, snapshots, call
events, scripted and random traffic, injected failures.

This module is the public face: ``NfonSim`` (the tenant and its behaviour,
from ``nfon_sim``), ``serve_in_thread``/``serve``/``Server`` (from
``nfon_serve``), which run it on a loopback socket and hand back a
``SimHandle`` whose ``sim`` proxy may be driven from any thread, and the
``presence-sync sim nfon`` command.

What it does where NFON's documentation is silent is listed in ``nfon_sim``.
"""

from __future__ import annotations

import argparse
import asyncio

from presence_sync.sim import options, world
from presence_sync.sim.nfon_serve import Server, SimHandle, SimProxy, serve, serve_in_thread
from presence_sync.sim.nfon_sim import NfonSim, NfonStats
from presence_sync.sim.nfon_streams import StreamKind

__all__ = [
    "NfonSim",
    "NfonStats",
    "Server",
    "SimHandle",
    "SimProxy",
    "StreamKind",
    "add_arguments",
    "run",
    "serve",
    "serve_in_thread",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``presence-sync sim nfon``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=options.port, default=8080, help="port (0 = any free port)")
    parser.add_argument("--extensions", type=options.whole(0, 100_000), default=20, metavar="N",
                        help="number of extensions, numbered from 100")  # fmt: skip
    parser.add_argument("--customer", default="K1234", help="simulated K-Account")
    parser.add_argument("--username", default="api-user", help="API username to accept")
    parser.add_argument("--password", default="api-secret", help="API password to accept")
    parser.add_argument("--token-lifetime", type=options.positive, default=300.0, metavar="SECONDS",
                        help="access token lifetime")  # fmt: skip
    parser.add_argument("--refresh-lifetime", type=options.positive, default=3600.0,
                        metavar="SECONDS", help="refresh token lifetime")  # fmt: skip
    parser.add_argument("--keepalive", type=options.not_negative, default=15.0, metavar="SECONDS",
                        help="idle seconds before a ': keepalive' comment (0 = never)")  # fmt: skip
    parser.add_argument("--traffic", type=options.not_negative, default=0.0, metavar="RATE",
                        help="random state changes per second (0 = none)")  # fmt: skip
    parser.add_argument("--close-on-expiry", action="store_true",
                        help="close a stream when the token that opened it expires")  # fmt: skip
    parser.add_argument("--event-ids", action="store_true", help="add 'id:' lines to events")
    parser.add_argument("--seed", type=int, default=None, help="seed for names, uuids, traffic")
    world.add_argument(parser)


async def run(args: argparse.Namespace) -> int:
    """Serve a simulator built from ``args`` until cancelled. Prints one line
    with the base URL and the credentials to use. Returns 0."""
    sim = NfonSim(
        customer=args.customer,
        username=args.username,
        password=args.password,
        extensions=(
            args.extensions
            if getattr(args, "world", None) is None
            else [(p.extension, p.name) for p in args.world]
        ),
        token_lifetime=args.token_lifetime,
        refresh_lifetime=getattr(args, "refresh_lifetime", 3600.0),
        keepalive=args.keepalive or None,
        event_ids=args.event_ids,
        close_streams_on_token_expiry=args.close_on_expiry,
        seed=getattr(args, "seed", None),
    )
    async with serve(sim, args.host, args.port) as handle:
        if args.traffic:
            sim.start_traffic(args.traffic)
        print(
            f"NFON simulator: base_url={handle.base_url} customer={sim.customer} "
            f"username={sim.username} password={sim.password} "
            f"control={handle.origin}/_sim/",
            flush=True,
        )
        await asyncio.Event().wait()
    return 0

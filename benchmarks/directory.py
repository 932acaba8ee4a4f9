"""Directory figures: people from an Entra group, at scale.

Against the Graph and Slack simulators over loopback (real msal, httpx and
slack_sdk):

1. load ``--members`` group members (``members.GroupMembers``: the group by
   name, then ``transitiveMembers`` in pages of 999): requests and time,
   then match them to as many NFON extensions (``directory.Directory``);
2. refresh with no change: requests and time, load and compare included;
   beside it, what one ``GET /users/{upn}`` per person would cost in
   requests;
3. Slack ids for every member through the ``slack_status`` target's client:
   ``users.lookupByEmail`` calls and ``users.list`` pages, beside one
   lookup each;
4. memory: what the directory holds for that many people
   (``tracemalloc``, the members and the people together).

Usage: ``python benchmarks/directory.py [--members 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import tracemalloc
from types import MappingProxyType

from pydantic import SecretStr

from presence_sync.clock import ManualClock
from presence_sync.config.models import MicrosoftSettings, SlackSettings, TlsSettings
from presence_sync.directory import Directory
from presence_sync.members import PAGE_SIZE, GroupMembers
from presence_sync.model import ExtensionInfo, Person
from presence_sync.sim.graph import GraphSim, serve
from presence_sync.sim.graph_sim import DIRECTORY_ROLES
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import serve_in_thread as serve_slack
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import TargetEnv
from presence_sync.targets.slack_client import SlackClient

SECRET = "bench-secret"
PREFIX = "+49 89 45300"


class AutoClock(ManualClock):
    """Simulated time that moves by itself when someone waits (a rate
    limit's ``Retry-After``), so minutes of Slack take no real time."""

    async def sleep(self, seconds: float) -> None:
        await self.advance(max(0.0, seconds))


class Group:
    group = "Phone users"
    extension_from = "businessPhones"
    number_prefix: str | None = PREFIX


async def graph_figures(count: int) -> list[Person]:
    sim = GraphSim()
    client_id = sim.register_app(secret=SECRET, roles=DIRECTORY_ROLES)
    group = sim.add_group("Phone users")
    for i in range(count):
        user = sim.add_user(f"p{i:05}@example.com", display_name=f"Person {i}")
        sim.change_user(user, businessPhones=[f"{PREFIX} {10000 + i}"])
        sim.add_member(group, user)
    extensions = [ExtensionInfo(str(10000 + i), f"Person {i}") for i in range(count)]
    async with serve(sim) as handle:
        microsoft = MicrosoftSettings(
            tenant_id=sim.tenant,
            client_id=client_id,
            client_secret=SecretStr(SECRET),
            authority=handle.origin,
            graph_url=handle.origin,
        )
        reader = GroupMembers(
            microsoft,
            group="Phone users",
            extension_from="businessPhones",
            clock=ManualClock(),
            user_agent="presence-sync/bench",
            verify=str(handle.ca_path),
        )
        directory = Directory([], Group())
        directory.update_extensions(extensions)
        try:
            await reader.load()  # the token and the connection, outside the figures
            directory = Directory([], Group())
            directory.update_extensions(extensions)
            sim.clear_requests()
            before = reader.requests
            start = time.perf_counter()
            members = await reader.load()
            change = directory.update_members(members)
            took = time.perf_counter() - start
            print(
                f"load {len(members)} members (pages of {PAGE_SIZE}) and match: "
                f"{reader.requests - before} requests, {took:.2f} s, "
                f"{len(change.added)} people"
            )
            before = reader.requests
            start = time.perf_counter()
            again = await reader.load()
            change = directory.update_members(again)
            took = time.perf_counter() - start
            naive = count
            print(
                f"refresh with no change: {reader.requests - before} requests, {took:.2f} s, "
                f"{'no change' if not change else 'CHANGED'}; one GET /users each: "
                f"{naive} requests (ratio {naive / max(1, reader.requests - before):.0f}x)"
            )
        finally:
            await reader.aclose()
    tracemalloc.start()
    snap = tracemalloc.take_snapshot()
    held = Directory([], Group())
    held.update_extensions(extensions)
    held.update_members(members)
    after = tracemalloc.take_snapshot()
    size = sum(s.size_diff for s in after.compare_to(snap, "filename"))
    tracemalloc.stop()
    print(f"memory of the directory with {len(held.people())} people: {size / 1e6:.1f} MB")
    return held.people()


def slack_figures(people: list[Person]) -> None:
    clock = AutoClock()
    sim = SlackSim(clock=clock)
    admin = sim.add_user("adam", "it-admin@example.com", role="admin")
    token = sim.add_token(admin, token_id="adam").secret
    for person in people:
        sim.add_user(person.email.split("@")[0], person.email)
    with serve_slack(sim) as handle:
        settings = SlackSettings(token=SecretStr(token), base_url=handle.base_url)
        sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
        env = TargetEnv(clock=clock, user_agent="presence-sync/bench", sections=sections)
        client = SlackClient("slack_status", settings, env)
        store = MemoryStore(clock=clock)

        async def resolve() -> None:
            for person in people:
                memory = TargetMemory(store, "slack_status", person.key)
                await client.who(person, memory, ids=("slack_status",))
            await client.aclose()

        start = time.perf_counter()
        simulated = clock.monotonic()
        asyncio.run(resolve())
        took = time.perf_counter() - start
        simulated = clock.monotonic() - simulated
        lookups = len(sim.requests("users.lookupByEmail"))
        pages = len(sim.requests("users.list"))
        naive_minutes = len(people) / 50
        print(
            f"Slack ids for {len(people)} people: {lookups} users.lookupByEmail + {pages} "
            f"users.list pages = {lookups + pages} requests, {simulated / 60:.1f} min of Slack's "
            f"rate limits ({took:.1f} s here); one lookup "
            f"each: {len(people)} requests, Tier 3 (~50/min) = {naive_minutes / 60:.1f} h "
            f"(ratio {len(people) / max(1, lookups + pages):.0f}x)"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10000)
    args = parser.parse_args(argv)
    people = asyncio.run(graph_figures(args.members))
    slack_figures(people)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Slack figures: requests per call, and a 300-people burst beside a naive forwarder.

Runs the real ``slack_status`` target (the real ``slack_sdk`` over loopback)
against the Slack simulator with Slack's published budgets, on an injected
clock shared by the simulator, the target and the engine, so minutes of
rate-limited Slack take seconds here:

1. requests per call: one person with their own status picks up and hangs
   up; the reads and writes it took (goal: at most 1 read and 2 writes);
2. the burst: ``--people`` pick up within one second, every third hangs up
   ``--hangup`` seconds later. Through the real engine: the (simulated) time
   until every status is right, the writes made and any request Slack
   refused. Beside it, in the same run, a forwarder that sends one
   ``users.profile.set`` per event in arrival order, under the same token
   bucket and retrying after each 429 as told: its time and writes.

Usage: ``python benchmarks/slack.py [--people 300] [--hangup 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from presence_sync.clock import ManualClock
from presence_sync.config.models import SlackSettings, SlackUserToken, TlsSettings
from presence_sync.engine import Engine
from presence_sync.model import Line, LineView, Person, Presence, Status
from presence_sync.sim.slack import SlackSim
from presence_sync.sim.slack_serve import serve_in_thread
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import Change, TargetEnv
from presence_sync.targets.slack import BURST, RATE, SlackStatusOptions, SlackStatusTarget

ON_A_CALL = Status(text="On a call", emoji=":telephone_receiver:")
START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


class CallRules:
    def evaluate(
        self, person: Person, view: LineView, now: datetime, *, why: dict[str, str] | None = None
    ) -> dict[str, Status | None]:
        return {"slack_status": ON_A_CALL if view.line is Line.IN_USE else None}


def target_for(settings: SlackSettings, clock: ManualClock) -> SlackStatusTarget:
    sections = MappingProxyType({"slack": settings, "tls": TlsSettings()})
    env = TargetEnv(clock=clock, user_agent="presence-sync/bench", sections=sections)
    return SlackStatusTarget("slack_status", SlackStatusOptions(), env)


async def requests_per_call() -> Counter[str]:
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    anna = sim.add_user("anna", "anna@example.com")
    secret = sim.add_token(anna).secret
    sim.set_own_status(anna, "Lunch", ":pizza:")
    with serve_in_thread(sim) as handle:
        own = SlackUserToken(email="anna@example.com", token=SecretStr(secret))
        settings = SlackSettings(base_url=handle.base_url, user_tokens=[own])
        target = target_for(settings, clock)
        person = Person(key="anna@example.com", email="anna@example.com", extension="100")
        memory = TargetMemory(MemoryStore(clock=clock), "slack_status", person.key)
        applied = await target.apply(Change(person, ON_A_CALL, None, None, memory))
        await clock.advance(180)
        await target.apply(Change(person, None, applied, None, memory))
        assert sim.status_of(anna).text == "Lunch"
    return Counter(r.method for r in sim.requests())


def burst_people(sim: SlackSim, count: int) -> tuple[str, list[Person], dict[str, str]]:
    admin = sim.add_user("adam", "it-admin@example.com", role="admin")
    secret = sim.add_token(admin).secret
    people = [
        Person(key=f"p{i}@example.com", email=f"p{i}@example.com", extension=str(1000 + i))
        for i in range(count)
    ]
    return secret, people, {p.key: sim.add_user(p.key, p.email) for p in people}


async def engine_burst(people_count: int, hangup: float) -> dict[str, Any]:
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    secret, people, _ = burst_people(sim, people_count)
    hangups = people[::3]
    with serve_in_thread(sim) as handle:
        settings = SlackSettings(token=SecretStr(secret), base_url=handle.base_url)
        engine = Engine(targets={"slack_status": target_for(settings, clock)},
                        store=MemoryStore(clock=clock), rules=CallRules(), clock=clock)  # fmt: skip
        engine.set_people(people)
        engine.resync([LineView(p.extension, Line.IDLE, Presence.AVAILABLE) for p in people])
        task = asyncio.get_running_loop().create_task(engine.run())
        try:
            for i, p in enumerate(people):
                engine.observe(LineView(p.extension, Line.IN_USE, Presence.AVAILABLE))
                if i % 100 == 99:
                    await clock.advance(0.3)
            hung = False
            while engine.pending() or not hung:
                if clock.monotonic() >= hangup and not hung:
                    hung = True
                    for p in hangups:
                        engine.observe(LineView(p.extension, Line.IDLE, Presence.AVAILABLE))
                await asyncio.sleep(0.002)
                deadline = clock.next_deadline
                step = 0.5 if deadline is None else max(0.001, deadline - clock.monotonic())
                await clock.advance(min(step, 0.5))
        finally:
            engine.stop()
            await task
    writes = [r for r in sim.requests("users.profile.set") if r.ok]
    return {
        "converged_s": max(r.at for r in writes) - START.timestamp(),
        "writes": len(writes),
        "reads": len(sim.requests("users.profile.get")),
        "lookups": len(sim.requests("users.lookupByEmail")),
        "refused": sum(1 for r in sim.requests() if not r.ok),
    }


async def naive_burst(people_count: int, hangup: float) -> dict[str, Any]:
    """One ``users.profile.set`` per event, in arrival order, paced by the
    same bucket (``BURST`` at once, ``RATE`` a second), a 429 retried after
    its ``Retry-After``."""
    clock = ManualClock(START)
    sim = SlackSim(clock=clock)
    secret, people, uid = burst_people(sim, people_count)
    events: list[tuple[float, str, Status | None]] = [
        (0.3 * (i // 100), p.key, ON_A_CALL) for i, p in enumerate(people)
    ]
    events += [(hangup, p.key, None) for p in people[::3]]
    events.sort(key=lambda e: e[0])
    refused = 0
    with serve_in_thread(sim) as handle:
        client = WebClient(token=secret, base_url=handle.base_url, retry_handlers=[])
        tokens, last = float(BURST), 0.0
        for at, key, status in events:
            if clock.monotonic() < at:
                await clock.advance(at - clock.monotonic())
            while True:
                now = clock.monotonic()
                tokens = min(float(BURST), tokens + (now - last) * RATE)
                last = now
                if tokens < 1:
                    await clock.advance((1 - tokens) / RATE)
                    continue
                tokens -= 1
                profile = {
                    "status_text": status.text if status else "",
                    "status_emoji": status.emoji if status else "",
                }
                try:
                    await asyncio.to_thread(client.users_profile_set, user=uid[key],
                                            profile=profile)  # fmt: skip
                    break
                except SlackApiError as exc:
                    refused += 1
                    wait = float(exc.response.headers.get("Retry-After", 30))
                    await clock.advance(wait)
    writes = [r for r in sim.requests("users.profile.set") if r.ok]
    return {
        "converged_s": max(r.at for r in writes) - START.timestamp(),
        "writes": len(writes),
        "refused": refused,
    }


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--hangup", type=float, default=20.0)
    args = parser.parse_args(argv)

    per_call = await requests_per_call()
    reads = per_call["users.profile.get"] + per_call["users.lookupByEmail"]
    writes = per_call["users.profile.set"]
    print(f"requests per call (own token, own status restored): {reads} reads, {writes} writes "
          f"({dict(per_call)})")  # fmt: skip
    print(f"  per phase: start {reads // 2} read + {writes // 2} write, end the same")

    ours = await engine_burst(args.people, args.hangup)
    naive = await naive_burst(args.people, args.hangup)
    hangups = len(range(0, args.people, 3))
    print(f"burst: {args.people} pick up within 1 s, {hangups} hang up at {args.hangup:g} s; "
          f"bucket {BURST} + {RATE}/s (admin token, 30 profiles/min)")  # fmt: skip
    print(f"  presence-sync: right after {ours['converged_s']:.0f} s, {ours['writes']} writes, "
          f"{ours['reads']} reads + {ours['lookups']} lookups, "
          f"{ours['refused']} refused")  # fmt: skip
    print(f"  naive forwarder: right after {naive['converged_s']:.0f} s, {naive['writes']} "
          f"writes, {naive['refused']} refused (and nobody's own status restored)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

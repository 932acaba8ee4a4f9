"""Reconciler figures: throughput, event-to-apply latency, resync cost, memory.

Runs the real engine with the compiled default rules, a SQLite store in a
temporary directory and the ``log`` target (muted), on the real clock:

1. events through rules + engine per second (observe, dispatch, apply, store
   write), goal ≥ 20,000/s on one core;
2. p99 from ``observe`` to the target's ``apply`` call at 1,000 events/s,
   goal < 5 ms;
3. a full resync of every extension with nothing changed, goal < 1 s and zero
   target calls;
4. resident memory after the run, goal < 150 MB.

Usage: ``python benchmarks/engine.py [--people 10000] [--events 200000]
[--store sqlite|memory]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from presence_sync.clock import SystemClock
from presence_sync.engine import Decider, Engine
from presence_sync.model import Line, LineView, Person, Presence
from presence_sync.rules import compile_rules
from presence_sync.store import MemoryStore, SqliteStore, Store
from presence_sync.targets.base import Change, TargetEnv
from presence_sync.targets.log import LogOptions, LogTarget


class TimedLogTarget(LogTarget):
    """The muted log target, noting when each apply call starts."""

    def __init__(self, name: str, options: LogOptions, env: TargetEnv) -> None:
        super().__init__(name, options, env)
        self.calls = 0
        self.sent: dict[str, float] = {}
        self.latencies: list[float] | None = None

    async def apply(self, change: Change) -> Any:
        self.calls += 1
        if self.latencies is not None:
            sent = self.sent.pop(change.person.key, None)
            if sent is not None:
                self.latencies.append(time.perf_counter() - sent)
        return await super().apply(change)


def vm(field: str) -> float:
    """A /proc/self/status size in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def line_view(extension: str, busy: bool) -> LineView:
    return LineView(
        extension=extension,
        line=Line.IN_USE if busy else Line.IDLE,
        presence=Presence.AVAILABLE,
    )


async def wait_idle(engine: Engine) -> None:
    # Yielding is the point: the engine's own tasks run in between.
    while engine.pending():  # noqa: ASYNC110
        await asyncio.sleep(0)


def report(name: str, value: str, goal: str, ok: bool) -> None:
    print(f"  {name:<46} {value:>16}   goal {goal:<10} {'ok' if ok else 'MISSED'}")


async def bench(
    people_count: int, events: int, store_kind: str, directory: Path, write_ahead: bool
) -> None:
    # The log target has no remote state, so the engine skips the write-ahead
    # record; --write-ahead measures the cost it has for targets that do.
    TimedLogTarget.info = dataclasses.replace(LogTarget.info, remote_state=write_ahead)
    clock = SystemClock()
    env = TargetEnv(clock=clock, user_agent="benchmark")
    target = TimedLogTarget("log", LogOptions(muted=True), env)
    rules: Decider = compile_rules(None, targets={"log": target.info})
    store: Store = (
        SqliteStore(directory / "state.db", clock=clock)
        if store_kind == "sqlite"
        else MemoryStore(clock=clock)
    )
    people = [
        Person(key=f"p{i}@example.com", email=f"p{i}@example.com", extension=str(10000 + i))
        for i in range(people_count)
    ]
    engine = Engine(targets={"log": target}, store=store, rules=rules, clock=clock)
    engine.set_people(people)
    engine.resync([line_view(p.extension, False) for p in people])
    runner = asyncio.get_running_loop().create_task(engine.run())
    await asyncio.sleep(0)

    print(f"engine benchmark: {people_count:,} people, compiled default rules, {store_kind} store,")
    print(
        f"log target muted (concurrency {target.info.concurrency}), "
        f"write-ahead records {'on' if write_ahead else 'off'}, Python {sys.version.split()[0]}"
    )

    # 1. throughput: every event changes its person's desired status
    batch = 1000
    start = time.perf_counter()
    calls_before = target.calls
    for n in range(0, events, batch):
        for i in range(n, min(n + batch, events)):
            p = people[i % people_count]
            engine.observe(line_view(p.extension, (i // people_count) % 2 == 0))
        await wait_idle(engine)
    took = time.perf_counter() - start
    applied = target.calls - calls_before
    rate = events / took
    report(
        f"1. events/s ({events:,} events, {applied:,} applies)",
        f"{rate:,.0f}/s",
        "≥ 20,000/s",
        rate >= 20_000,
    )

    # 2. event → apply latency at 1,000 events/s on the real clock
    target.latencies = []
    interval = 0.001
    samples = 5000
    busy = {p.key: False for p in people}
    next_at = time.perf_counter()
    for i in range(samples):
        p = people[(i * 7919) % people_count]
        busy[p.key] = not busy[p.key]
        now = time.perf_counter()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        next_at += interval
        target.sent[p.key] = time.perf_counter()
        engine.observe(line_view(p.extension, busy[p.key]))
    await wait_idle(engine)
    lat = sorted(target.latencies)
    target.latencies = None
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    report(
        f"2. observe → apply p99 at 1,000/s ({len(lat):,})",
        f"{p99:.3f} ms",
        "< 5 ms",
        p99 < 5,
    )
    print(f"     p50 {p50:.3f} ms, max {lat[-1] * 1000:.3f} ms")

    # 3. full resync, nothing changed
    views = [line_view(p.extension, busy[p.key]) for p in people]
    await wait_idle(engine)
    calls_before = target.calls
    gc.collect()
    start = time.perf_counter()
    dirty = engine.resync(views)
    took = time.perf_counter() - start
    await asyncio.sleep(0.05)
    await wait_idle(engine)
    calls = target.calls - calls_before
    report(
        f"3. resync of {people_count:,} unchanged extensions",
        f"{took * 1000:.1f} ms",
        "< 1 s",
        took < 1.0,
    )
    report("   target calls during that resync", f"{calls} ({dirty} dirty)", "0", calls == 0)

    # 4. memory
    rss, hwm = vm("VmRSS"), vm("VmHWM")
    report("4. resident memory after the run (VmRSS)", f"{rss:.1f} MB", "< 150 MB", rss < 150)
    print(f"     peak (VmHWM) {hwm:.1f} MB")

    engine.stop()
    await runner
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument(
        "--write-ahead",
        action="store_true",
        help="treat the log target as one with remote state (a record before each set)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args.people, args.events, args.store, Path(tmp), args.write_ahead))


if __name__ == "__main__":
    main()

"""Store figures: the engine on PostgreSQL against SQLite, and round trips per call.

Runs the real engine with the compiled default rules and the muted ``log``
target declared with remote state (so a "maybe applied" record is committed
before every set, as for Teams or Slack), once on a ``SqliteStore`` (synced,
as the daemon runs it) and once on a ``PostgresStore``, in alternating rounds
in one run:

1. events through rules + engine per second on each store, and the ratios
   PostgreSQL / SQLite, against SQLite as the daemon runs it (synced) and
   against SQLite not synced (``sync=False``): the throwaway cluster runs
   with fsync off, so the second ratio is the fair one for what a database
   over a socket costs against a local file, and the first depends on this
   machine's disk (no goals: the figures depend on the machine);
2. store round trips per call (a line going in use, then idle again, one
   person at a time, each change confirmed before the next): every time
   psycopg sends and waits for the server (a statement, an ``executemany``
   batch, a ``BEGIN``, a ``COMMIT``; a pipeline's statements together as
   one), counted at psycopg's calls, and the transactions among them.

PostgreSQL is a throwaway cluster started for the run (``tests/pgcluster.py``,
as the tests do; fsync off, on loopback) unless ``--url`` names a database
(its password from ``PGPASSWORD`` or ``PGPASSFILE``).

Usage: ``python benchmarks/store.py [--people 2000] [--events 20000]
[--rounds 4] [--calls 200] [--url postgresql://...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from presence_sync.clock import SystemClock
from presence_sync.engine import Decider, Engine
from presence_sync.model import Line, LineView, Person, Presence
from presence_sync.rules import compile_rules
from presence_sync.store import SqliteStore, Store
from presence_sync.store.postgres import PostgresStore
from presence_sync.targets.base import TargetEnv, TargetInfo
from presence_sync.targets.log import LogOptions, LogTarget

TESTS = Path(__file__).resolve().parents[1] / "tests"


class RemoteLogTarget(LogTarget):
    """The muted log target declared with remote state: write-ahead records."""

    info: ClassVar[TargetInfo] = dataclasses.replace(LogTarget.info, remote_state=True)


@dataclasses.dataclass
class Setup:
    label: str
    engine: Engine
    store: Store
    runner: asyncio.Task[None]
    events: int = 0
    seconds: float = 0.0
    rates: list[float] = dataclasses.field(default_factory=list)


def line_view(extension: str, busy: bool) -> LineView:
    return LineView(
        extension=extension, line=Line.IN_USE if busy else Line.IDLE, presence=Presence.AVAILABLE
    )


async def wait_idle(engine: Engine) -> None:
    while engine.pending():
        await engine.committed()
        await asyncio.sleep(0)


async def start(label: str, store: Store, people: list[Person]) -> Setup:
    clock = SystemClock()
    target = RemoteLogTarget("log", LogOptions(muted=True), TargetEnv(clock=clock, user_agent="b"))
    rules: Decider = compile_rules(None, targets={"log": target.info})
    engine = Engine(targets={"log": target}, store=store, rules=rules, clock=clock)
    engine.set_people(people)
    engine.resync([line_view(p.extension, False) for p in people])
    runner = asyncio.get_running_loop().create_task(engine.run())
    await asyncio.sleep(0)
    return Setup(label, engine, store, runner)


async def throughput(setup: Setup, people: list[Person], events: int) -> None:
    batch = 1000
    first = setup.events
    began = time.perf_counter()
    for n in range(first, first + events, batch):
        for i in range(n, min(n + batch, first + events)):
            p = people[i % len(people)]
            setup.engine.observe(line_view(p.extension, (i // len(people)) % 2 == 0))
        await wait_idle(setup.engine)
    took = time.perf_counter() - began
    setup.events += events
    setup.seconds += took
    setup.rates.append(events / took)


@dataclasses.dataclass
class Trips:
    requests: int = 0
    transactions: int = 0


@contextlib.contextmanager
def counted() -> Iterator[Trips]:
    """Count the round trips psycopg makes, in every thread: a statement, an
    ``executemany`` batch, a ``BEGIN`` and a ``COMMIT`` each wait for the
    server, except inside a pipeline, whose statements all go out and come
    back together (one round trip, at its end)."""
    trips = Trips()
    local = threading.local()
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, replacement: Any) -> Any:
        original = getattr(owner, name)
        patched.append((owner, name, original))
        setattr(owner, name, replacement(original))
        return original

    def statement(original: Any) -> Any:
        def counting(*args: Any, **kwargs: Any) -> Any:
            trips.requests += not getattr(local, "piped", False)
            return original(*args, **kwargs)

        return counting

    def transaction(original: Any) -> Any:
        def counting(*args: Any, **kwargs: Any) -> Any:
            trips.transactions += 1
            trips.requests += 0 if getattr(local, "piped", False) else 2
            return original(*args, **kwargs)

        return counting

    def pipeline(original: Any) -> Any:
        @contextlib.contextmanager
        def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
            # executemany opens a pipeline of its own, inside ours.
            outer = getattr(local, "piped", False)
            trips.requests += not outer
            local.piped = True
            try:
                with original(*args, **kwargs) as pipe:
                    yield pipe
            finally:
                local.piped = outer

        return counting

    patch(psycopg.Cursor, "execute", statement)
    patch(psycopg.Cursor, "executemany", statement)
    patch(psycopg.Connection, "execute", statement)
    patch(psycopg.Connection, "transaction", transaction)
    patch(psycopg.Connection, "pipeline", pipeline)
    try:
        yield trips
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)


async def per_call(store: Store, calls: int) -> tuple[float, float]:
    """Round trips and transactions per call: in use, confirmed, idle, confirmed."""
    people = [Person(key=f"c{i}@example.com", email=f"c{i}@example.com", extension=str(50000 + i))
              for i in range(calls)]  # fmt: skip
    setup = await start("calls", store, people)
    with counted() as trips:
        for p in people:
            for busy in (True, False):
                setup.engine.observe(line_view(p.extension, busy))
                await wait_idle(setup.engine)
    setup.engine.stop()
    await setup.runner
    return trips.requests / calls, trips.transactions / calls


async def bench(args: argparse.Namespace, url: str, password: str | None, tmp: Path) -> None:
    clock = SystemClock()
    people = [
        Person(key=f"p{i}@example.com", email=f"p{i}@example.com", extension=str(10000 + i))
        for i in range(args.people)
    ]
    sqlite = await start("SQLite (synced)", SqliteStore(tmp / "state.db", clock=clock), people)
    unsynced_store = SqliteStore(tmp / "unsynced.db", clock=clock, sync=False)
    unsynced = await start("SQLite (not synced)", unsynced_store, people)
    pg = PostgresStore(url, customer="K0001", password=password, clock=clock)
    postgres = await start("PostgreSQL", pg, people)
    setups = [sqlite, unsynced, postgres]
    print(f"store benchmark: {args.people:,} people, write-ahead target (log, muted),")
    print(f"Python {sys.version.split()[0]}, PostgreSQL at {pg!r}")
    per_round = max(1, args.events // args.rounds)
    for n in range(args.rounds):
        for setup in setups[n % len(setups) :] + setups[: n % len(setups)]:
            await throughput(setup, people, per_round)
    for setup in setups:
        rounds = ", ".join(f"{r:,.0f}" for r in setup.rates)
        rate = setup.events / setup.seconds
        print(f"  1. events/s on {setup.label:<18} {rate:>10,.0f}/s   rounds: {rounds}")

    def rate(setup: Setup) -> float:
        return setup.events / setup.seconds

    print(f"     ratio PostgreSQL / SQLite synced    {rate(postgres) / rate(sqlite):>10.3f}")
    # Both without a sync to the disk (the throwaway cluster runs with
    # fsync off): what the protocol costs.
    print(f"     ratio PostgreSQL / SQLite not synced{rate(postgres) / rate(unsynced):>10.3f}")
    for setup in setups:
        setup.engine.stop()
        await setup.runner
        setup.store.close()

    calls_store = PostgresStore(url, customer="K0002", password=password, clock=clock)
    requests, transactions = await per_call(calls_store, args.calls)
    calls_store.close()
    print(
        f"  2. PostgreSQL round trips per call ({args.calls} calls, each change confirmed "
        f"before the next): {requests:.1f}, in {transactions:.1f} transactions"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--url", help="a PostgreSQL database to use instead of a throwaway one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            asyncio.run(bench(args, args.url, None, Path(tmp)))
            return
        sys.path.insert(0, str(TESTS))
        from pgcluster import ROLE_PASSWORD, Cluster

        cluster = Cluster()
        try:
            asyncio.run(bench(args, cluster.database(), ROLE_PASSWORD, Path(tmp)))
        finally:
            cluster.close()


if __name__ == "__main__":
    main()

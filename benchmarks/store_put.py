"""Cost of one applied row in the store: alone (``put_applied``, one
transaction per row), grouped (``write_applied`` with 16 rows per
transaction) and grouped as the engine commits a busy loop turn
(``try_write_applied``: on the caller's thread while the write lock is free,
with WAL checkpoints moved to the store's writer thread). Prints median,
p99 and mean per row, as the calling thread (the event loop) pays it. The
store syncs each commit to the disk (``synchronous=FULL``), so a row
committed alone costs one fsync; ``benchmarks/engine.py`` compares synced
and unsynced write-ahead records side by side."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.store import AppliedWrite, MemoryStore, SqliteStore, Store

AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
BUSY = Status(availability="Busy", activity="InACall", text="On a call")


def row(i: int) -> Applied:
    return Applied(
        status=BUSY if i % 2 else None,
        at=AT + timedelta(seconds=i),
        expires=AT + timedelta(seconds=i + 900),
        data=frozen_map({"session": f"s-{i}"}),
    )


def measure(store: Store, people: list[Person], rounds: int) -> list[float]:
    costs: list[float] = []
    for i in range(rounds):
        person = people[i % len(people)]
        applied = row(i)
        t0 = time.perf_counter_ns()
        store.put_applied("teams_presence", person, applied)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    return costs


def measure_grouped(
    store: Store, people: list[Person], rounds: int, size: int = 16, now: bool = False
) -> list[float]:
    """Per row, in groups of ``size`` rows per ``write_applied`` (with
    ``now``: per ``try_write_applied``, which must succeed here)."""
    costs: list[float] = []
    for first in range(0, rounds, size):
        group = [
            AppliedWrite("teams_presence", people[i % len(people)], row(i))
            for i in range(first, min(first + size, rounds))
        ]
        t0 = time.perf_counter_ns()
        if now:
            assert store.try_write_applied(group)
        else:
            store.write_applied(group)
        took = (time.perf_counter_ns() - t0) / 1000
        costs.extend([took / len(group)] * len(group))
    return costs


def report(name: str, costs: list[float]) -> None:
    """Median and mean, and the tail: SQLite's automatic WAL checkpoint
    (every ~1000 pages, with fsync) lands on one write in about a thousand."""
    costs.sort()
    p99 = costs[int(len(costs) * 0.99)]
    p999 = costs[int(len(costs) * 0.999)]
    print(
        f"{name:<7} µs per row: median {statistics.median(costs):6.1f}  "
        f"mean {statistics.fmean(costs):6.1f}  p99 {p99:7.1f}  p99.9 {p999:8.1f}  "
        f"max {costs[-1]:8.1f}  (n={len(costs)})"
    )


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    people = [
        Person(
            key=f"p{n}@example.com",
            email=f"P{n}@example.com",
            extension=str(100 + n),
            name=f"Person {n}",
            groups=frozenset({"sales"}),
            ids=frozen_map({"slack_status": f"U{n:05d}"}),
        )
        for n in range(500)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.db")
        measure(store, people, 2000)  # warm-up: statement cache, pages
        report("sqlite", measure(store, people, rounds))
        report("grouped", measure_grouped(store, people, rounds))
        store.close()
        store = SqliteStore(Path(tmp) / "engine.db")
        measure(store, people, 2000)
        report("try-now", measure_grouped(store, people, rounds, now=True))
        store.close()
    report("memory", measure(MemoryStore(), people, rounds))


if __name__ == "__main__":
    main()

"""Status API figures: how long one ``/api/status`` document takes to build
with many people, which the status page asks for every second.

Builds the real engine with the compiled default rules, a memory store and
three muted ``log`` targets, gives it ``--people`` people and a full state
in which every tenth line is in use (the engine is not running, so those
keys stay queued: "not in sync"), and times ``StatusBuilder`` for the first
page, a search, the "not in sync" filter and one person. Goal: every
document < 50 ms at 10,000 people. Beside them, in the same run, the naive
page: every person's every key from the engine's whole picture
(``Engine.picture()``) on each poll, and the ratio of the two.

Usage: ``python benchmarks/status_api.py [--people 10000] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from presence_sync.clock import SystemClock
from presence_sync.engine import Engine
from presence_sync.lines import Lines
from presence_sync.model import Line, Person, Presence, StateEvent
from presence_sync.ops.status import Parts, StatusBuilder
from presence_sync.readiness import Readiness
from presence_sync.rules import compile_rules
from presence_sync.store import MemoryStore
from presence_sync.targets.base import TargetEnv
from presence_sync.targets.log import LogOptions, LogTarget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    clock = SystemClock()
    env = TargetEnv(clock=clock, user_agent="benchmark")
    targets = {name: LogTarget(name, LogOptions(), env) for name in ("teams", "slack", "hook")}
    rules = compile_rules(None, targets={name: t.info for name, t in targets.items()})
    engine = Engine(targets=targets, store=MemoryStore(), rules=rules, clock=clock)
    people = [
        Person(f"p{i}@example.com", f"p{i}@example.com", str(10_000 + i), f"Person {i}")
        for i in range(args.people)
    ]
    engine.set_people(people)
    lines = Lines(clock)
    states = [
        StateEvent(p.extension, Line.IN_USE if i % 10 == 0 else Line.IDLE, Presence.AVAILABLE)
        for i, p in enumerate(people)
    ]
    engine.resync(lines.on_full_state(states, engine))
    ready = Readiness(True, {}, "Ready: following NFON")
    builder = StatusBuilder(lambda: Parts(clock.now(), engine, ready, None))

    def timed(label: str, make: Callable[[], Any]) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            doc = make()
            times.append((time.perf_counter() - start) * 1000)
        matched = doc.get("matched", 1) if isinstance(doc, dict) else len(doc.keys)
        median = statistics.median(times)
        print(f"{label:<34} median {median:7.2f} ms  max {max(times):7.2f} ms  matched {matched}")
        return median

    print(f"{args.people} people × {len(targets)} targets")
    first = timed("first page (100)", lambda: builder.status())
    timed("last page (1000)", lambda: builder.status(offset=args.people - 1000, limit=1000))
    timed("search 'person 99'", lambda: builder.status(q="person 99"))
    timed("not in sync, first page", lambda: builder.status(filter="not-in-sync"))
    timed("one person by extension", lambda: builder.person(str(10_000 + args.people - 1)))
    naive = timed("naive: whole picture, every key", engine.picture)
    print(f"first page vs naive whole picture: {naive / first:.1f}x faster")


if __name__ == "__main__":
    main()

"""Crash-test child: writes to a ``SqliteStore`` in a tight loop until killed.

Usage: ``python store_writer.py DB_PATH FIRST``. Prints ``open`` before it
opens the store, ``ready`` after, then the number ``i`` of every iteration
once all of its writes have returned, i.e. committed. Iteration ``i`` writes
one row of kind ``i % 4`` (applied, saved, object, id) under key ``p{i}``, and
replaces the ``hot`` applied row with ``{"n": i}``; an applied row and its
``hot`` row go in one ``awrite_applied`` transaction (the writer thread), as
the engine groups them.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from presence_sync.model import Applied, Person, Status, frozen_map
from presence_sync.store import AppliedWrite, SqliteStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def person(key: str) -> Person:
    return Person(key=key, email=f"{key}@example.com", extension="100")


async def main() -> None:
    path, first = sys.argv[1], int(sys.argv[2])
    print("open", flush=True)
    store = SqliteStore(path)
    print("ready", flush=True)
    hot = person("hot")
    i = first
    while True:
        key = f"p{i}"
        kind = i % 4
        applied = Applied(
            status=Status(text=f"n{i}"),
            at=T0 + timedelta(microseconds=i),
            data=frozen_map({"n": i}),
        )
        if kind == 0:
            await store.awrite_applied(
                [AppliedWrite("crash", person(key), applied), AppliedWrite("hot", hot, applied)]
            )
            print(i, flush=True)
            i += 1
            continue
        if kind == 1:
            store.put_saved("crash", key, {"n": i})
        elif kind == 2:
            store.put_object("crash", key, "event", f"e{i}")
        else:
            store.put_id("crash", key, f"v{i}")
        store.put_applied("hot", hot, applied)
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(main())

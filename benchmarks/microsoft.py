"""Teams figures: the real daemon between the NFON simulator and the Graph
simulator (HTTPS, loopback), with ``teams_presence`` and the default rules.

1. latency from a call picked up in the NFON simulator to the ``setPresence``
   the Graph simulator answered, p50 / p99 (budget: p99 < 50 ms). The end
   point is when the simulator logged the request, after handling it, so
   the figure is a slight over-estimate;
2. Graph requests per call shorter than the session's expiration (goal: 2,
   a set and a clear);
3. Graph writes during full resyncs of ``--people`` people, nothing changed
   (goal: 0), while some of them stay in a call.

Each figure is printed beside what a naive forwarder would cost: one Graph
request per NFON event it relays (per call: ringing, in-use and idle, then an
``Available`` post), and a resync replayed as one write per person.

Usage: ``python benchmarks/microsoft.py [--people 1000] [--calls 50]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from presence_sync.sim.graph import GraphHandle, GraphSim, RecordedRequest
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon

T = TypeVar("T")
SECRET = "benchmark-secret"
NAIVE_REQUESTS_PER_CALL = 4
"""A forwarder relaying each line state of a call (ringing, in-use, idle) as
one setPresence, and posting Available at the end instead of clearing."""


def wait(check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


class Daemon:
    def __init__(self, config: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presence_sync", "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, pattern: str) -> int:
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def write_config(path: Path, nfon: SimHandle, graph: GraphHandle, client_id: str, n: int) -> Path:
    people = "".join(
        f'  - extension: "{1000 + i}"\n    email: p{i}@example.com\n' for i in range(n)
    )
    path.write_text(
        f"""nfon:
  base_url: {nfon.base_url}
  customer: K1234
  username: api-user
  password: api-secret
microsoft:
  tenant_id: {graph.sim.tenant}
  client_id: {client_id}
  client_secret: {SECRET}
  authority: {graph.origin}
  graph_url: {graph.graph_url}
tls:
  ca_bundle: {graph.ca_path}
people:
{people}targets:
  teams_presence: {{}}
resync:
  interval: 2s
state:
  path: {path.parent / "state.db"}
http:
  listen: "127.0.0.1:0"
logging:
  level: info
  format: text
"""
    )
    return path


def requests_after(sim: GraphSim, path: str, skip: int) -> list[RecordedRequest]:
    return sim.requests(path)[skip:]


def one_call(nfon: SimHandle, sim: GraphSim, extension: str, user: str) -> float:
    """Pick up on ``extension``, wait for the set, hang up, wait for the clear;
    milliseconds from pick-up to the set."""
    set_path = f"/v1.0/users/{user}/presence/setPresence"
    clear_path = f"/v1.0/users/{user}/presence/clearPresence"
    sets, clears = len(sim.requests(set_path)), len(sim.requests(clear_path))
    # Calls paced well below teams_presence's declared rate (25 requests/s,
    # 2 per call), so its token bucket never makes one wait.
    time.sleep(0.2)
    started = datetime.now(UTC)
    call = nfon.sim.call(extension)
    posted = wait(partial(requests_after, sim, set_path, sets), "setPresence")
    nfon.sim.hangup(call)
    wait(partial(requests_after, sim, clear_path, clears), "clearPresence")
    return (posted[0].at - started).total_seconds() * 1000


def presence_writes(sim: GraphSim) -> int:
    return sum(
        1
        for r in sim.requests("/v1.0/users/")
        if r.method == "POST" and r.path.endswith(("/setPresence", "/clearPresence"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    n, calls = args.people, min(args.calls, args.people)

    nfon_sim = NfonSim(extensions=[(str(1000 + i), f"Person {i}") for i in range(n)])
    graph_sim = GraphSim()
    client_id = graph_sim.register_app(secret=SECRET)
    users = [graph_sim.add_user(f"p{i}@example.com") for i in range(n)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_nfon(nfon_sim) as nfon,
        serve_graph(graph_sim) as graph,
    ):
        daemon = Daemon(write_config(Path(tmp) / "config.yaml", nfon, graph, client_id, n))
        try:
            wait(lambda: daemon.count(r"full state from NFON"), "the daemon's first resync")

            # 1 + 2: one call at a time, each on its own line; first each
            # person's first call (their object id is looked up), then again.
            first: list[float] = []
            again: list[float] = []
            before = len(graph_sim.requests("/v1.0/users/"))
            lookups_before = len(
                [r for r in graph_sim.requests("/v1.0/users") if r.method == "GET"]
            )
            for latencies in (first, again):
                for i in range(calls):
                    latencies.append(one_call(nfon, graph_sim, str(1000 + i), users[i]))
            presence = [
                r for r in graph_sim.requests("/v1.0/users/")[before:] if "/presence/" in r.path
            ]
            lookups = (
                len([r for r in graph_sim.requests("/v1.0/users") if r.method == "GET"])
                - lookups_before
            )

            # 3: some people in a call, then full resyncs with nothing changed.
            held = [nfon.sim.call(str(1000 + i)) for i in range(min(20, n))]
            shown = 4 * calls + len(held)
            wait(lambda: presence_writes(graph_sim) >= shown, "held calls shown")
            resyncs = daemon.count(r"full state from NFON|\bresync\b")
            wait(lambda: daemon.count(r"full state from NFON|\bresync\b") >= resyncs + 1, "resync")
            writes = presence_writes(graph_sim)
            wait(
                lambda: daemon.count(r"full state from NFON|\bresync\b") >= resyncs + 4,
                "three more resyncs",
            )
            unchanged_writes = presence_writes(graph_sim) - writes
            for call in held:
                nfon.sim.hangup(call)
        finally:
            daemon.stop()

    print(f"people {n}, calls {2 * calls}")
    for what, latencies in (("first call, id looked up", first), ("later calls", again)):
        cuts = statistics.quantiles(latencies, n=100)
        print(
            f"pick-up → setPresence ({what}): p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {cuts[98]:.1f} ms (budget: p99 < 50 ms; a Teams client then polls)"
        )
    print(
        f"Graph presence requests per call: {len(presence) / (2 * calls):.2f} "
        f"(naive forwarder: {NAIVE_REQUESTS_PER_CALL}); "
        f"user lookups: {lookups} for {calls} new people, then cached"
    )
    print(
        f"Graph writes in 3 resyncs of {n} people, nothing changed: {unchanged_writes} "
        f"(naive replay: {3 * n})"
    )


if __name__ == "__main__":
    main()

"""Teams figures: the real daemon between the NFON simulator and the Graph
simulator (HTTPS, loopback), with ``teams_presence`` and the default rules,
measured side by side in the same run with a naive forwarder.

1. latency from a call picked up in the NFON simulator to the ``setPresence``
   the Graph simulator answered, p50 / p99 (budget: p99 < 50 ms). The end
   point is when the simulator logged the request, after handling it, so
   the figure is a slight over-estimate;
2. Graph requests per call shorter than the session's expiration (goal: 2,
   a set and a clear);
3. Graph writes during full resyncs of ``--people`` people, nothing changed
   (goal: 0), while some of them stay in a call.

The naive forwarder is what relay and polling tools do: it logs in to the
NFON CTI API, follows the state stream and posts one ``setPresence`` per state
event it receives (``in-use``: Busy/InACall, anything else:
Available/Available), and a resync is a snapshot replayed as one write per
person. It runs after the daemon, against a fresh pair of simulators, with the
same people and the same scripted calls and resyncs; both sides are counted
in the Graph simulator's request log, by client id.

Usage: ``python benchmarks/microsoft.py [--people 1000] [--calls 50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msal
import requests

from presence_sync.sim.graph import GraphHandle, GraphSim, RecordedRequest
from presence_sync.sim.graph import serve_in_thread as serve_graph
from presence_sync.sim.nfon import NfonSim, SimHandle
from presence_sync.sim.nfon import serve_in_thread as serve_nfon

T = TypeVar("T")
SECRET = "benchmark-secret"
HELD = 20
"""People who stay in a call during the resyncs."""
RESYNCS = 3


def wait(check: Callable[[], T | None], what: str, within: float = 30.0, poll: float = 0.002) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll)
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


class NaiveForwarder:
    """One Graph request per NFON state event, as relay and polling tools do.

    Logs in to the CTI API (``POST /login``), follows the state stream in a
    thread of its own and, for every ``state`` frame, bootstrap included,
    posts one ``setPresence``: ``in-use`` is Busy/InACall, anything else
    Available/Available. ``resync()`` fetches the JSON snapshot and replays it
    as one write per person. It knows each person's Graph object id up
    front, so it never looks a user up. Errors are not retried.
    """

    def __init__(
        self, nfon: SimHandle, graph: GraphHandle, client_id: str, users: dict[str, str]
    ) -> None:
        self.client_id = client_id
        self.users = users
        self.nfon = httpx.Client(base_url=nfon.base_url, trust_env=False, timeout=10.0)
        login = self.nfon.post(
            "/login", json={"username": nfon.sim.username, "password": nfon.sim.password}
        )
        login.raise_for_status()
        self.nfon.headers["Authorization"] = f"Bearer {login.json()['access-token']}"
        # requests honours $REQUESTS_CA_BUNDLE over ``verify`` unless
        # trust_env is off: the simulator's CA is the only one trusted.
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(graph.ca_path)
        self.msal = msal.ConfidentialClientApplication(
            client_id,
            client_credential=SECRET,
            authority=graph.authority(),
            instance_discovery=False,
            http_client=self.session,
        )
        self.scope = graph.scope
        self.graph = httpx.Client(
            base_url=f"{graph.graph_url}/v1.0",
            verify=ssl.create_default_context(cafile=str(graph.ca_path)),
            trust_env=False,
            timeout=10.0,
        )
        self.lock = threading.Lock()
        self.stream: httpx.Response | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _token(self) -> str:
        # MSAL answers from its cache until the token is near expiry.
        result = self.msal.acquire_token_for_client([self.scope])
        if "access_token" not in result:
            raise SystemExit(f"naive forwarder: no Graph token: {result.get('error')}")
        return str(result["access_token"])

    def forward(self, state: dict[str, Any]) -> None:
        user = self.users.get(str(state.get("extension")))
        if user is None:
            return
        busy = state.get("line") == "in-use"
        with self.lock:
            self.graph.post(
                f"/users/{user}/presence/setPresence",
                headers={"Authorization": f"Bearer {self._token()}"},
                json={
                    "sessionId": self.client_id,
                    "availability": "Busy" if busy else "Available",
                    "activity": "InACall" if busy else "Available",
                    "expirationDuration": "PT1H",
                },
            )

    def _follow(self) -> None:
        try:
            with self.nfon.stream(
                "GET",
                "/extensions/phone/states",
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(10.0, read=None),
            ) as response:
                self.stream = response
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.forward(json.loads(line[5:]))
        except (httpx.HTTPError, RuntimeError):
            return  # closed by stop(), or the simulator went away

    def resync(self) -> None:
        snapshot = self.nfon.get("/extensions/phone/states", headers={"Accept": "application/json"})
        snapshot.raise_for_status()
        for state in snapshot.json():
            self.forward(state)

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.thread.join(timeout=5)
        self.nfon.close()
        self.graph.close()
        self.session.close()


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


@dataclass
class Side:
    """One forwarder under test, as the Graph simulator sees it."""

    nfon: SimHandle
    sim: GraphSim
    client_id: str
    users: list[str]

    def presence(self, user: str = "") -> list[RecordedRequest]:
        """This side's presence requests (for ``user``, or everyone's)."""
        prefix = f"/v1.0/users/{user}/presence/" if user else "/v1.0/users/"
        return [
            r
            for r in self.sim.requests(prefix)
            if r.client_id == self.client_id and "/presence/" in r.path
        ]

    def writes(self) -> list[RecordedRequest]:
        return [
            r
            for r in self.presence()
            if r.method == "POST" and r.path.endswith(("/setPresence", "/clearPresence"))
        ]

    def lookups(self) -> int:
        return sum(
            1
            for r in self.sim.requests("/v1.0/users")
            if r.client_id == self.client_id and r.method == "GET" and "/presence" not in r.path
        )

    def busy(self, user: str) -> bool:
        """The latest presence write for ``user`` shows them in a call."""
        mine = [r for r in self.presence(user) if r.method == "POST"]
        return bool(mine) and is_busy(mine[-1])


def is_busy(r: RecordedRequest) -> bool:
    return (
        r.path.endswith("/setPresence")
        and isinstance(r.body, dict)
        and r.body.get("availability") != "Available"
    )


def is_release(r: RecordedRequest) -> bool:
    return r.path.endswith("/clearPresence") or (
        r.path.endswith("/setPresence")
        and isinstance(r.body, dict)
        and r.body.get("availability") == "Available"
    )


def one_call(side: Side, i: int) -> float:
    """Pick up on person ``i``'s line, wait for a Busy set, hang up, wait for
    the release after it (a clear, or an Available set); milliseconds from
    pick-up to the set."""
    user = side.users[i]
    seen = len(side.presence(user))
    # Calls paced well below teams_presence's declared rate (25 requests/s,
    # 2 per call), so its token bucket never makes one wait.
    time.sleep(0.2)
    started = datetime.now(UTC)
    call = side.nfon.sim.call(str(1000 + i))
    busy = wait(lambda: [r for r in side.presence(user)[seen:] if is_busy(r)], "a Busy setPresence")
    side.nfon.sim.hangup(call)

    def released() -> bool:
        after = side.presence(user)[seen:]
        first = next(k for k, r in enumerate(after) if is_busy(r))
        return any(is_release(r) for r in after[first + 1 :])

    wait(released, "the release")
    return (busy[0].at - started).total_seconds() * 1000


@dataclass
class Figures:
    first: list[float]
    again: list[float]
    per_call: float
    call_refused: int
    """Presence requests during the calls the Graph simulator answered 429."""
    lookups: int
    resync_writes: int
    resync_refused: int
    """Resync writes the Graph simulator answered 429 (its per-app budget)."""


def drive_calls(side: Side, calls: int) -> tuple[list[float], list[float], float, int, int]:
    """Each person's first call (their object id may be looked up), then a
    second round; latencies of both rounds, presence requests per call, how
    many of them were answered 429, and user lookups."""
    before, lookups = len(side.presence()), side.lookups()
    first = [one_call(side, i) for i in range(calls)]
    again = [one_call(side, i) for i in range(calls)]
    new = side.presence()[before:]
    refused = sum(1 for r in new if r.status == 429)
    return first, again, len(new) / (2 * calls), refused, side.lookups() - lookups


@contextmanager
def hold_calls(side: Side, n: int) -> Iterator[None]:
    """Some people in a call, shown as such, for the duration."""
    held = [side.nfon.sim.call(str(1000 + i)) for i in range(min(HELD, n))]
    wait(
        lambda: all(side.busy(side.users[i]) for i in range(len(held))),
        "held calls shown",
        poll=0.05,
    )
    try:
        yield
    finally:
        for call in held:
            side.nfon.sim.hangup(call)


def resync_counts(side: Side, before: list[RecordedRequest]) -> tuple[int, int]:
    new = side.writes()[len(before) :]
    return len(new), sum(1 for r in new if r.status == 429)


def run_ours(n: int, calls: int) -> Figures:
    nfon_sim = NfonSim(extensions=[(str(1000 + i), f"Person {i}") for i in range(n)])
    graph_sim = GraphSim()
    client_id = graph_sim.register_app(secret=SECRET)
    users = [graph_sim.add_user(f"p{i}@example.com") for i in range(n)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_nfon(nfon_sim) as nfon,
        serve_graph(graph_sim) as graph,
    ):
        side = Side(nfon, graph_sim, client_id, users)
        daemon = Daemon(write_config(Path(tmp) / "config.yaml", nfon, graph, client_id, n))
        resyncs = r"full state from NFON|\bresync\b"
        try:
            wait(lambda: daemon.count(r"full state from NFON"), "the daemon's first resync")
            first, again, per_call, call_refused, lookups = drive_calls(side, calls)
            with hold_calls(side, n):
                done = daemon.count(resyncs)
                wait(lambda: daemon.count(resyncs) >= done + 1, "resync")
                before = side.writes()
                wait(lambda: daemon.count(resyncs) >= done + 1 + RESYNCS, "more resyncs")
                writes, refused = resync_counts(side, before)
        finally:
            daemon.stop()
    return Figures(first, again, per_call, call_refused, lookups, writes, refused)


def run_naive(n: int, calls: int) -> Figures:
    nfon_sim = NfonSim(extensions=[(str(1000 + i), f"Person {i}") for i in range(n)])
    graph_sim = GraphSim()
    client_id = graph_sim.register_app(secret=SECRET)
    users = [graph_sim.add_user(f"p{i}@example.com") for i in range(n)]
    with serve_nfon(nfon_sim) as nfon, serve_graph(graph_sim) as graph:
        side = Side(nfon, graph_sim, client_id, users)
        naive = NaiveForwarder(
            nfon, graph, client_id, {str(1000 + i): u for i, u in enumerate(users)}
        )
        try:
            # The stream's bootstrap: one write per person before any call.
            wait(lambda: len(side.writes()) >= n, "the naive bootstrap", poll=0.05)
            first, again, per_call, call_refused, lookups = drive_calls(side, calls)
            with hold_calls(side, n):
                before = side.writes()
                for _ in range(RESYNCS):
                    naive.resync()
                writes, refused = resync_counts(side, before)
        finally:
            naive.stop()
    return Figures(first, again, per_call, call_refused, lookups, writes, refused)


def ratio(ours: float, naive: float) -> str:
    if ours == 0:
        return f"+{naive:g} (ours 0)" if naive else "1.0x"
    return f"{naive / ours:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    n, calls = args.people, min(args.calls, args.people)

    ours = run_ours(n, calls)
    naive = run_naive(n, calls)

    print(f"people {n}, calls {2 * calls}; figure: ours | naive forwarder | naive / ours")
    for what, mine, theirs in (
        ("first call, id looked up", ours.first, naive.first),
        ("later calls", ours.again, naive.again),
    ):
        for name, cut in (("p50", 49), ("p99", 98)):
            a = statistics.quantiles(mine, n=100)[cut]
            b = statistics.quantiles(theirs, n=100)[cut]
            print(
                f"pick-up → setPresence, {what}, {name}: {a:.1f} ms | {b:.1f} ms | {ratio(a, b)}"
                + (" (budget: p99 < 50 ms)" if name == "p99" else "")
            )
    print(
        f"Graph presence requests per call: {ours.per_call:.2f} | {naive.per_call:.2f} | "
        f"{ratio(ours.per_call, naive.per_call)} "
        f"(answered 429: {ours.call_refused} | {naive.call_refused}; "
        f"user lookups: {ours.lookups} | {naive.lookups} for {calls} new people)"
    )
    print(
        f"Graph writes in {RESYNCS} resyncs of {n} people, nothing changed: "
        f"{ours.resync_writes} | {naive.resync_writes} | "
        f"{ratio(ours.resync_writes, naive.resync_writes)} "
        f"(answered 429: {ours.resync_refused} | {naive.resync_refused})"
    )


if __name__ == "__main__":
    main()

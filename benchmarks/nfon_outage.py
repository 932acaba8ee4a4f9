"""How soon the NFON streams are back after an outage. Prints figures; asserts nothing.

Each run plays one outage against the real stream client and the NFON
simulator over loopback sockets, on an injected clock (tests/outage.py):
logins answer 500 and streams 503 for OUTAGE seconds, then NFON is back.
The figure is the clock time from the end of the outage until both streams
are back (a new full state on the states stream, a new connection on the
calls stream); runs differ only in the jitter (seed 0, 1, ...).

Two behaviours side by side:
  - now: the first stream through wakes the other, the states stream backs
    off at most STATES_MAX_DELAY seconds;
  - before: each stream waits out its own backoff, up to 60 s (what issue 16
    point 16 measured: the states stream back more than 30 s after the end).

Run: ``python benchmarks/nfon_outage.py [--runs 20] [--outage 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from outage import Recovery, recovery

from presence_sync.nfon.stream import STATES_MAX_DELAY
from presence_sync.sim.nfon import NfonSim, serve_in_thread

BEHAVIOURS = {
    "now": {},
    "before": {"wake_streams": False, "states_max_delay": 60.0},
}


async def measure(runs: int, outage: float) -> dict[str, list[Recovery]]:
    results: dict[str, list[Recovery]] = {name: [] for name in BEHAVIOURS}
    with serve_in_thread(NfonSim(seed=7, keepalive=None)) as sim:
        for seed in range(runs):
            for name, options in BEHAVIOURS.items():
                results[name].append(await recovery(sim, seed, outage=outage, **options))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--outage", type=float, default=30.0)
    args = parser.parse_args()
    results = asyncio.run(measure(args.runs, args.outage))
    print(
        f"{args.runs} outages of {args.outage:g} s; seconds from the end of each until both "
        f"streams are back (states ceiling now {STATES_MAX_DELAY:g} s)"
    )
    print("seed  " + "".join(f"{name:>22}" for name in BEHAVIOURS))
    print("      " + "".join(f"{'states  calls   both':>22}" for _ in BEHAVIOURS))
    for seed in range(args.runs):
        cells = (results[name][seed] for name in BEHAVIOURS)
        print(
            f"{seed:>4}  "
            + "".join(f"{r.states:>8.2f}{r.calls:>7.2f}{r.both:>7.2f}" for r in cells)
        )
    summary = {}
    for name, runs in results.items():
        both = [r.both for r in runs]
        summary[name] = (statistics.median(both), max(both))
        late = sum(1 for value in both if value > 5.0)
        print(
            f"{name:>7}: p50 {summary[name][0]:6.2f} s  max {summary[name][1]:6.2f} s  "
            f"runs over 5 s: {late}/{len(both)}"
        )
    (now_p50, now_max), (old_p50, old_max) = summary["now"], summary["before"]
    print(
        f"  before/now: p50 {old_p50 / max(now_p50, 1e-9):.1f}x, "
        f"max {old_max / max(now_max, 1e-9):.1f}x"
    )


if __name__ == "__main__":
    main()

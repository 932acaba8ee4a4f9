"""The reconciler: desired status vs applied status, closed by per-target workers.

This package owns the loop at the heart of presence-sync (DESIGN.md, "The one
idea"). It never forwards an event. It keeps, per person, the desired status of
every target (computed by the rules from the person's *current* line view),
remembers per ``(person, target)`` key what the target confirmed (the applied
rows of the store), and works on keys whose two differ:

- a key that differs is *dirty*; the dirty set is de-duplicated, so it never
  grows past people × targets, and a worker reads the desired status when it
  picks the key up: a call that starts and ends while its key waits costs no
  request at all;
- each target has its own lane: its own dirty queue, concurrency bound
  (``TargetInfo.concurrency``), token bucket (``rate``/``burst``), pause (a
  ``Retry-After`` or rejected credentials) and apply timeout, so a failing,
  paused or slow target never delays another;
- when a lane cannot keep up, restores (desired ``None``: giving a person
  their own status back) go before new writes, first-in first-out within each;
- a key is worked by one worker at a time; a key that changes while in flight
  is looked at again when its worker finishes;
- ``TransientError`` backs the key off exponentially with full jitter
  (``retry_after`` pauses the whole lane instead), ``PermanentError`` parks
  the key until its desired status changes, ``AuthError`` pauses the lane for
  minutes (doubling up to an hour) and then probes with one request at a time;
- an applied status that the remote side forgets by itself
  (``Applied.expires``) is applied again ``TargetInfo.refresh_before`` seconds
  before it lapses, through the same dirty queue;
- a status counts as applied only once the target confirmed it. Before a
  status is sent to a target with remote state, it is recorded as *maybe
  applied* (write-ahead, a record flagged uncertain), so a crash at any instant,
  SIGKILL during the request included, leaves a store that knows what may
  need taking back. A request whose outcome is unknown (a timeout, a 5xx, a
  cancelled apply) keeps the key uncertain: the worse case (what it asked
  for, or what was there) stays recorded and the engine does not rest until
  one request for that key succeeds, even if the desired status comes back
  to what the store says. A request the target refused outright (4xx, 429,
  auth) changed nothing, and the record goes back to what it was.
- records are committed in groups and never make the event loop wait: a
  group the store cannot take at once (another process holds the database,
  a checkpoint runs) is written by the store's writer thread, and a request
  whose write-ahead record is in it waits (``starting``) until it is stored.
  A store that cannot write is retried every ``STORE_RETRY`` seconds and
  logged once; nothing recorded is dropped.

Every wait goes through the injected ``Clock``; nothing polls. The engine
knows targets and the store only through their protocols, and the rules
through ``Decider``.

The package, one piece per module, each readable alone:

- ``book``: people, departed people, line views and rules → desired status
  (pure);
- ``lane``: one target's per-key state (one ``Phase`` per key), queues,
  token bucket, health (one ``Health`` value), backoff and alarm;
  ``check_target``;
- ``ledger``: the records (a target's answer, flagged when uncertain) and
  the write-ahead records; group commits, off the event loop, retried
  while the store cannot write;
- ``worker``: one apply: build the change, call the target, say what it
  came to (an ``Outcome``);
- ``outcome``: the one table of what follows from each outcome (record,
  counters, health, the key's next phase, the log line);
- ``scheduler``: the dirty set and the loop that picks work once per loop
  turn; ``commits``: the groups a request waits for until its write-ahead
  record is stored;
- ``dispatch``: ``Engine``, the public API;
- ``picture``, ``draw``: counters and pictures (the engine's view of
  itself, for tests and the status page; NFON's full state is its
  *snapshot*, a different thing).
"""

from __future__ import annotations

# The types of ``check_target``'s signature, for callers checking a reload.
from presence_sync.targets.base import Target, TargetInfo

from .book import UNKNOWN, Decider, Desired
from .commits import STORE_RETRY
from .dispatch import Engine
from .lane import AUTH_PAUSE, AUTH_PAUSE_CAP, MIN_REFRESH, MIN_RETRY_AFTER, Backoff, check_target
from .picture import EnginePicture, KeyPicture, TargetPicture, TargetStats

__all__ = [
    "AUTH_PAUSE",
    "AUTH_PAUSE_CAP",
    "MIN_REFRESH",
    "MIN_RETRY_AFTER",
    "STORE_RETRY",
    "UNKNOWN",
    "Backoff",
    "Decider",
    "Desired",
    "Engine",
    "EnginePicture",
    "KeyPicture",
    "Target",
    "TargetInfo",
    "TargetPicture",
    "TargetStats",
    "check_target",
]

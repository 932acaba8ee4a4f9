"""The outcome table: for each thing a request can come to, the record the
ledger keeps, where the key goes, the lane's health, the counters and the
one log line. Pure unit tests: a real ledger, book and lane, no event loop
work, no target call."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import pytest
from engine_helpers import BUSY, DND, CallRules, Remote, make_target, person

from presence_sync.clock import ManualClock
from presence_sync.engine.book import Book
from presence_sync.engine.lane import Backoff, Flight, Lane, Mode, Phase
from presence_sync.engine.ledger import Ledger
from presence_sync.engine.outcome import TABLE, Kind, Outcome, Outcomes, cause
from presence_sync.errors import AuthError, PermanentError, TransientError
from presence_sync.model import Applied, Status
from presence_sync.store import MemoryStore

ANNA = person("anna", "100")
AWAY = Status(availability="Away", activity="Away")


@dataclass
class Bench:
    clock: ManualClock
    ledger: Ledger
    book: Book
    lane: Lane
    outcomes: Outcomes

    def flight(self, desired: Status | None = BUSY) -> Flight:
        """A request for ``desired`` sent as the engine sends one: queued,
        picked, written ahead, launched."""
        before = self.ledger.get("teams", ANNA.key)
        self.lane.enqueue(ANNA.key, restore=desired is None)
        flight = self.lane.start(ANNA.key, ANNA, desired, before, "on a call")
        if desired is not None:
            self.ledger.write_ahead("teams", ANNA, desired)
        self.lane.launch(ANNA.key, self.clock.monotonic())
        return flight

    def settle(self, flight: Flight, outcome: Outcome) -> None:
        """Settle as the scheduler does: by the table, then land the key."""
        self.outcomes.settle(self.lane, flight, outcome)
        self.lane.land(flight.key)


@pytest.fixture
def bench() -> Bench:
    clock = ManualClock()
    ledger = Ledger(MemoryStore(clock=clock), clock, lambda: None)
    ledger.load(["teams"])
    ledger.record("teams", ANNA, Applied(status=DND, at=clock.now(), data={"session": "s-1"}))
    book = Book(CallRules(("teams",)))
    book.set_people([ANNA], clock.now(), ledger.held)
    target = make_target("teams", Remote(clock))
    lane = Lane(
        "teams", target, type(target).info, clock, ring=lambda _: None, watch=lambda _: None
    )
    outcomes = Outcomes(
        book=book,
        ledger=ledger,
        backoff=Backoff(random.Random(1), 1.0, 300.0),
        auth_pause=300.0,
        auth_cap=3600.0,
    )
    return Bench(clock, ledger, book, lane, outcomes)


@dataclass(frozen=True)
class Case:
    outcome: Outcome
    record: tuple[Status | None, bool]
    """(status, uncertain) the ledger holds afterwards."""
    phase: Phase
    mode: Mode
    counters: dict[str, int]
    line: tuple[int, str] | None
    """(level, a part of the message) of the one line, None for no line."""


def _503() -> TransientError:
    return TransientError("teams: Graph answered 503 serviceUnavailable", status=503)


CASES = {
    Kind.APPLIED: Case(
        Outcome(Kind.APPLIED, applied=Applied(status=BUSY, at=ManualClock().now())),
        (BUSY, False),
        Phase.IDLE,
        Mode.OK,
        {"ok": 1},
        (logging.INFO, 'teams: anna@example.com DoNotDisturb/Presenting → Busy/InACall "On a'),
    ),
    Kind.OTHER: Case(
        Outcome(Kind.OTHER, applied=Applied(status=AWAY, at=ManualClock().now())),
        (AWAY, False),
        Phase.PARKED,
        Mode.OK,
        {"ok": 1},
        (logging.WARNING, "target shows something else than asked"),
    ),
    Kind.THROTTLED: Case(
        Outcome(
            Kind.THROTTLED,
            wait=30.0,
            error=TransientError("teams: Graph answered 429", retry_after=30.0, status=429),
        ),
        (DND, False),
        Phase.QUEUED,
        Mode.THROTTLED,
        {"transient": 1, "throttled": 1},
        (logging.WARNING, "teams: asked to wait 30 s (HTTP 429): Graph answered 429"),
    ),
    Kind.UNCERTAIN: Case(
        Outcome(Kind.UNCERTAIN, error=_503()),
        (BUSY, True),
        Phase.BACKOFF,
        Mode.FAILING,
        {"transient": 1},
        (
            logging.WARNING,
            "teams: target failing (HTTP 503), backing off: Graph answered 503 serviceUnavailable",
        ),
    ),
    Kind.TIMED_OUT: Case(
        Outcome(Kind.TIMED_OUT, error=TransientError("no answer within 30 s")),
        (BUSY, True),
        Phase.BACKOFF,
        Mode.FAILING,
        {"transient": 1, "timeouts": 1},
        (logging.WARNING, "teams: target failing, backing off: no answer within 30 s"),
    ),
    Kind.REFUSED: Case(
        Outcome(Kind.REFUSED, error=PermanentError("teams: 404 user not found", status=404)),
        (DND, False),
        Phase.PARKED,
        Mode.OK,
        {"permanent": 1},
        (logging.ERROR, "parked until that changes (HTTP 404): 404 user not found"),
    ),
    Kind.CREDENTIALS: Case(
        Outcome(Kind.CREDENTIALS, error=AuthError("teams: 401 invalid client secret")),
        (DND, False),
        Phase.QUEUED,
        Mode.LOCKED_OUT,
        {"auth": 1},
        (logging.ERROR, "teams: CREDENTIALS REJECTED, pausing this target for 300 s"),
    ),
    Kind.CANCELLED: Case(
        Outcome(Kind.CANCELLED),
        (BUSY, True),
        Phase.IDLE,
        Mode.OK,
        {},
        None,
    ),
}


def test_every_outcome_has_one_row() -> None:
    assert set(TABLE) == set(Kind) == set(CASES)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_each_outcome_leads_to_its_record_phase_health_counters_and_line(
    bench: Bench, kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES[kind]
    flight = bench.flight()
    caplog.set_level(logging.DEBUG, logger="presence_sync.engine")

    bench.settle(flight, case.outcome)

    record = bench.ledger.get("teams", ANNA.key)
    assert record is not None
    assert (record.status, record.uncertain) == case.record
    # The target's memo stays the target's: the flag is the record's own.
    assert "presence_sync.uncertain" not in record.applied.data
    assert bench.lane.phase(ANNA.key) is case.phase
    assert bench.lane.health.mode is case.mode
    stats = bench.lane.stats
    counted = {
        name: getattr(stats, name)
        for name in ("ok", "transient", "permanent", "auth", "throttled", "timeouts")
        if getattr(stats, name)
    }
    assert counted == case.counters
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    if case.line is None:
        assert lines == []
    else:
        [(level, message)] = lines
        assert level == case.line[0]
        assert case.line[1] in message, message


def test_a_failing_episode_is_one_warning_then_debug_lines_until_a_success(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="presence_sync.engine")
    for _ in range(3):
        flight = bench.flight()
        bench.settle(flight, Outcome(Kind.UNCERTAIN, error=_503()))
        bench.lane.due(bench.clock.monotonic() + 1000)  # the retry is due
    throttled = TransientError("teams: Graph answered 429", retry_after=5.0, status=429)
    bench.settle(bench.flight(), Outcome(Kind.THROTTLED, wait=5.0, error=throttled))
    assert bench.lane.head() == ANNA.key  # first when the pause ends
    bench.lane.drop(ANNA.key)
    bench.settle(
        bench.flight(), Outcome(Kind.APPLIED, applied=Applied(status=BUSY, at=bench.clock.now()))
    )

    loud = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in loud] == ["WARNING", "INFO", "INFO"]
    assert "target failing (HTTP 503)" in loud[0][1]
    assert loud[1][1] == "target recovered"
    assert "→" in loud[2][1]
    assert bench.lane.health.mode is Mode.OK


def test_the_key_error_names_the_cause_without_the_target_name(bench: Bench) -> None:
    """What the status page shows as the reason, beside the target's name."""
    flight = bench.flight()
    error = TransientError("webhook teams: receiver answered 503 Service Unavailable", status=503)
    bench.settle(flight, Outcome(Kind.UNCERTAIN, error=error))

    state = bench.lane.state(ANNA.key)
    assert state is not None
    assert state.error == "receiver answered 503 Service Unavailable"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("teams: Graph answered 503", "Graph answered 503"),
        ("webhook teams: receiver answered 503", "receiver answered 503"),
        ("slack teams: users.profile.set: ratelimited", "users.profile.set: ratelimited"),
        ("Microsoft tenant t, app a: token endpoint failed", "Microsoft tenant t, app a: token"),
        ("teamsx: something", "teamsx: something"),
        ("", "TransientError"),
    ],
)
def test_cause_drops_only_the_target_own_name(bench: Bench, text: str, said: str) -> None:
    assert cause(TransientError(text), bench.lane).startswith(said)


def test_rejected_credentials_of_one_batch_lock_out_once(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="presence_sync.engine")
    bob = person("bob", "101")
    bench.book.set_people([ANNA, bob], bench.clock.now(), bench.ledger.held)
    first = bench.flight()
    bench.lane.enqueue(bob.key, restore=False)
    second = bench.lane.start(bob.key, bob, BUSY, None)
    bench.lane.launch(bob.key, bench.clock.monotonic())

    rejected = AuthError("teams: 401")
    bench.settle(first, Outcome(Kind.CREDENTIALS, error=rejected))
    bench.settle(second, Outcome(Kind.CREDENTIALS, error=rejected))

    assert bench.lane.health.rejections == 1
    assert bench.lane.limit == 1  # probing with one request once the pause ends
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert bench.lane.stats.auth == 2

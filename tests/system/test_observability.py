"""What an admin watches, on the real daemon against the NFON simulator:
``/metrics`` scraped over HTTP before and after the simulator plays calls and
SIGHUPs, and the JSON log read by its fields (``event``, ``reason``, ...),
never by its wording. No label and no log line shows a person's number."""

from __future__ import annotations

import platform
import re
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from harness import PEOPLE, Daemon, Hook, write_config
from polling import eventually
from prometheus_client.parser import text_string_to_metric_families

from presence_sync import __version__
from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

PARTY = "4930123456"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scrape:
    """One ``GET /metrics``: its text and its samples by name and labels."""

    def __init__(self, daemon: Daemon) -> None:
        response = httpx.get(daemon.url() + "/metrics", timeout=5)
        assert response.status_code == 200
        self.text = response.text
        self.samples: Samples = {}
        self.labels: list[dict[str, str]] = []
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.samples[key] = sample.value
                self.labels.append(sample.labels)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self) -> set[str]:
        typed = set(re.findall(r"^# TYPE (\S+) ", self.text, re.MULTILINE))
        return typed | {name for name, _ in self.samples}


def start(tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]) -> Daemon:
    config = write_config(
        tmp_path / "config.yaml", nfon, hook, log_level="debug", log_format="json"
    )
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    eventually(
        lambda: (
            Scrape(daemon).value(
                "presence_sync_stream_state", stream="calls", presence_sync_stream_state="connected"
            )
            == 1
        ),
        "the calls stream connected",
    )
    return daemon


def no_personal_data(scrape: Scrape) -> None:
    personal = {PARTY} | {part for person in PEOPLE for part in person}
    for labels in scrape.labels:
        for value in labels.values():
            assert not any(p == value or (len(p) > 3 and p in value) for p in personal), labels


def test_call_metrics_move_when_the_simulator_plays_calls(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    before = Scrape(daemon)

    answered = nfon.sim.ring("100", party=PARTY)
    nfon.sim.answer(answered)
    nfon.sim.hangup(answered)
    missed = nfon.sim.ring("101", party=PARTY)
    nfon.sim.hangup(missed)
    outbound = nfon.sim.call("102", direction="outbound", party=PARTY)
    nfon.sim.hangup(outbound)

    def moved(name: str, **labels: str) -> float:
        return Scrape(daemon).value(name, **labels) - before.value(name, **labels)

    eventually(lambda: moved("presence_sync_calls_total", direction="outbound", result="answered"))
    assert moved("presence_sync_calls_total", direction="inbound", result="answered") == 1
    assert moved("presence_sync_calls_total", direction="inbound", result="missed") == 1
    assert moved("presence_sync_calls_total", direction="outbound", result="answered") == 1
    assert moved("presence_sync_calls_total", direction="outbound", result="missed") == 0
    # Both inbound calls rang; only the answered ones have a talk time.
    assert moved("presence_sync_call_ring_duration_seconds_count", direction="inbound") == 2
    assert moved("presence_sync_call_ring_duration_seconds_count", direction="outbound") == 1
    assert moved("presence_sync_call_talk_duration_seconds_count", direction="inbound") == 1
    assert moved("presence_sync_call_talk_duration_seconds_count", direction="outbound") == 1
    after = Scrape(daemon)
    assert (
        after.value(
            "presence_sync_call_talk_duration_seconds_bucket", direction="inbound", le="+Inf"
        )
        >= 1
    )

    # The NFON events are in the debug log, by extension and state, with
    # whether the other side is external, but never their number.
    states = [r["state"] for r in daemon.records(event="nfon_call", call=answered)]
    assert states == ["ring", "answer", "hangup"]
    ring = daemon.records(event="nfon_call", call=missed)[0]
    assert ring["level"] == "debug"
    assert (ring["extension"], ring["direction"], ring["party"]) == ("101", "inbound", "external")
    assert daemon.records(event="nfon_state", extension="100", line="in-use")
    assert PARTY not in daemon.output()
    no_personal_data(after)

    # Every line carries its time with the zone offset.
    for record in daemon.records():
        assert datetime.fromisoformat(record["ts"]).utcoffset() is not None, record


def test_reloads_readiness_and_build_are_scraped_and_a_refused_reload_is_one_entry(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    daemon = start(tmp_path, nfon, hook, daemons)
    config = tmp_path / "config.yaml"
    first = Scrape(daemon)
    build = {"version": __version__, "python": platform.python_version()}
    assert first.value("presence_sync_build_info", **build) == 1
    for component in ("nfon_stream", "nfon_login", "target:webhook"):
        assert first.value("presence_sync_ready", component=component) == 1, component
    assert not [name for name in first.names() if name.endswith("_created")]
    loaded_at = first.value("presence_sync_config_last_reload_success_timestamp_seconds")
    assert loaded_at > 0

    # A good reload: the timestamp moves to when it happened.
    sent = datetime.now(UTC).timestamp()  # microseconds, as the daemon's clock gives them
    daemon.signal(signal.SIGHUP)
    daemon.wait_record(event="reload_ok")
    good = Scrape(daemon)
    scraped = datetime.now(UTC).timestamp()
    assert good.value("presence_sync_config_reloads_total", result="ok") == 1
    assert good.value("presence_sync_config_reloads_total", result="refused") == 0
    reloaded_at = good.value("presence_sync_config_last_reload_success_timestamp_seconds")
    assert loaded_at < sent <= reloaded_at <= scraped

    # A refused one: two mistakes in the file, one log entry naming both.
    text = config.read_text()
    config.write_text(
        text.replace("    name: Anna Schmidt", "    nam: Anna Schmidt").replace(
            "resync:\n  interval: 1h", "resync:\n  interval: often"
        )
    )
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_record(event="reload_refused")
    assert refused["level"] == "error"
    assert refused["reason"] == "invalid configuration"
    assert len(refused["problems"]) == 2
    assert any("people[0].nam" in p and str(config) in p for p in refused["problems"])
    assert any("resync.interval" in p for p in refused["problems"])
    assert daemon.count(r"people\[0\]\.nam\b") == 1, "the problems are inside the one entry"
    eventually(
        lambda: Scrape(daemon).value("presence_sync_config_reloads_total", result="refused") == 1,
        "the refused reload counted",
    )
    last = Scrape(daemon)
    assert last.value("presence_sync_config_reloads_total", result="ok") == 1
    assert last.value("presence_sync_config_last_reload_success_timestamp_seconds") == good.value(
        "presence_sync_config_last_reload_success_timestamp_seconds"
    )

    # Every metric docs/metrics.md lists is in a scrape.
    documented = set(re.findall(r"`(presence_sync_[a-z_]+)`", DOCS.read_text()))
    assert len(documented) > 20
    assert documented - last.names() == set()
    no_personal_data(last)


def test_an_unreachable_nfon_is_logged_and_shown_with_host_and_cause(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "config.yaml", nfon, hook, log_format="json")
    config.write_text(config.read_text().replace(nfon.base_url, f"http://127.0.0.1:{port}/v1"))
    daemon = daemons("run", "-c", str(config))
    lost = daemon.wait_record(event="nfon_stream_lost", stream="states")
    assert lost["level"] == "warning"
    assert lost["detail"].startswith("NFON login failed: ")
    assert f"127.0.0.1:{port}: connection refused" in lost["detail"]
    body = daemon.wait_not_ready()
    assert f"127.0.0.1:{port}: connection refused" in body["components"]["nfon_stream"]["reason"]
    assert Scrape(daemon).value("presence_sync_ready", component="nfon_stream") == 0

"""The real ``presence-sync run`` process against the NFON simulator and a
webhook receiver, over loopback sockets: what an admin and a user would see."""

from __future__ import annotations

import hashlib
import hmac
import re
import signal
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import HOOK_SECRET, Daemon, Hook, write_config
from polling import eventually

from presence_sync import __version__
from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"


def test_a_call_produces_the_documented_webhook_document(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    # A rule that looks at the call: the document then always carries it.
    # (Under rules that do not, a line's in-use may be decided before its call
    # event arrives on the other stream, and the document has no call.) The
    # long settle keeps a slow machine from deciding before the call arrives.
    rules = (
        "rules:\n"
        "  - when: {line: in-use, party: external}\n"
        "    set: {webhook: {availability: Busy, activity: InACall, text: On a call,"
        " emoji: ':telephone_receiver:'}}\n"
    )
    config = write_config(
        tmp_path / "config.yaml", nfon, hook, rules=rules, nfon_extra="  call_settle: 5s\n"
    )
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    call = nfon.sim.call("100", direction="inbound", party="4930123456", external=True)
    doc = hook.wait_status(ANNA, "InACall")
    assert doc["version"] == 1
    assert doc["target"] == "webhook"
    assert doc["person"] == {"email": ANNA, "name": "Anna Schmidt", "extension": "100"}
    assert doc["status"]["availability"] == "Busy"
    assert doc["status"]["text"] == "On a call"
    assert doc["status"]["emoji"] == ":telephone_receiver:"
    assert doc["line"]["line"] == "in-use"
    assert doc["line"]["call"]["direction"] == "inbound"
    assert doc["line"]["call"]["external"] is True
    assert "party_number" not in doc["line"]["call"]
    datetime.fromisoformat(doc["at"])
    delivery = next(d for d in hook.deliveries() if d.body == doc)
    assert delivery.signature_valid is True
    expected = hmac.new(
        HOOK_SECRET.encode(),
        delivery.headers["x-presence-sync-timestamp"].encode() + b"." + delivery.raw,
        hashlib.sha256,
    ).hexdigest()
    assert delivery.headers["x-presence-sync-signature"] == f"sha256={expected}"
    # The caller's number is personal data: neither the document nor the log carries it.
    assert "4930123456" not in delivery.raw.decode()
    assert "4930123456" not in daemon.output()

    nfon.sim.hangup(call)
    ended = hook.wait_status(ANNA, None)
    assert ended["previous"]["activity"] == "InACall"
    assert ended["line"]["line"] == "idle"
    # Other people were never touched.
    assert hook.for_person("ben@example.com") == []
    # Every NFON request carried the documented User-Agent.
    agents = nfon.sim.stats.distinct_user_agents
    assert agents == {f"presence-sync/{__version__} (K1234)"}


def test_sigkill_mid_call_then_hangup_while_down_is_repaired_after_restart(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook, resync="1h")
    first = daemons("run", "-c", str(config))
    first.wait_ready()
    call = nfon.sim.call("100")
    hook.wait_status(ANNA, "InACall")
    first.kill()  # SIGKILL: no drain, no goodbye

    nfon.sim.hangup(call)
    before = len(hook.for_person(ANNA))
    assert before == 1  # nobody told the webhook the call ended

    second = daemons("run", "-c", str(config))
    # The resync at start (the stream's bootstrap) repairs it; the periodic
    # resync is an hour away.
    cleared = hook.wait_status(ANNA, None, after=before)
    assert cleared["previous"]["activity"] == "InACall"
    second.wait_line(r"full state from NFON.*changes=1")


def test_sigkill_while_the_status_is_on_the_wire_is_repaired_after_restart(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    first = daemons("run", "-c", str(config))
    first.wait_ready()
    hook.receiver.delay_next(30.0)  # the receiver has it, the daemon waits for the answer
    call = nfon.sim.call("100")
    eventually(lambda: hook.for_person(ANNA), "the delivery to reach the receiver")
    first.kill()  # before the daemon heard back
    nfon.sim.hangup(call)

    daemons("run", "-c", str(config))
    cleared = hook.wait_status(ANNA, None)
    assert cleared["line"]["line"] == "idle"


def test_sigterm_drains_in_flight_work_and_exits_zero(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(15)
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config), env={"NOTIFY_SOCKET": notify_path})
    assert b"READY=1" in notify.recv(4096)
    daemon.wait_ready()

    hook.receiver.delay_next(3.0)  # a slow receiver: the delivery stays in flight
    nfon.sim.call("100")
    eventually(lambda: hook.for_person(ANNA), "the delivery to reach the receiver")
    daemon.signal(signal.SIGTERM)
    assert b"STOPPING=1" in notify.recv(4096)
    assert daemon.wait_exit(timeout=10) == 0
    # The change in flight was finished and recorded, not dropped.
    assert re.search(r"webhook: anna@example\.com .*→ Busy/InACall.*result=ok", daemon.output())
    assert "stopped" in daemon.output()
    notify.close()


def test_sighup_reloads_rules_without_dropping_the_stream(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    def rules(text: str) -> str:
        return (
            "rules:\n"
            "  - name: calls\n"
            "    when: {line: in-use}\n"
            f'    set: {{webhook: {{availability: Busy, activity: InACall, text: "{text}"}}}}\n'
        )

    config = write_config(tmp_path / "config.yaml", nfon, hook, rules=rules("On the phone"))
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    connects = nfon.sim.stats.stream_connects["states"]

    write_config(tmp_path / "config.yaml", nfon, hook, rules=rules("Talking"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"configuration reloaded")
    call = nfon.sim.call("100")
    assert hook.wait_status(ANNA, "InACall")["status"]["text"] == "Talking"
    nfon.sim.hangup(call)
    hook.wait_status(ANNA, None)

    # An invalid file is refused with file:line and the running rules stay.
    (tmp_path / "config.yaml").write_text(config.read_text().replace("secret:", "secrte:", 1))
    daemon.signal(signal.SIGHUP)
    daemon.wait_line(r"reload refused")
    assert re.search(r"config\.yaml:\d+:\d+: targets\.webhook\.secrte", daemon.output())
    seen = len(hook.for_person(ANNA))
    nfon.sim.call("100")
    assert hook.wait_status(ANNA, "InACall", after=seen)["status"]["text"] == "Talking"
    assert daemon.proc.poll() is None
    assert nfon.sim.stats.stream_connects["states"] == connects


def test_a_resync_that_finds_nothing_to_change_sends_nothing(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook, resync="1s")
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    call = nfon.sim.call("101")
    hook.wait_status("ben@example.com", "InACall")
    nfon.sim.hangup(call)
    hook.wait_status("ben@example.com", None)
    sent = len(hook.deliveries())
    first = daemon.count(r"\bresync\b")
    line = daemon.wait_line(r"\bresync\b", nth=first + 3, timeout=20)
    assert "changes=0" in line
    assert len(hook.deliveries()) == sent


def test_dry_run_only_logs(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "--dry-run", "-c", str(config))
    daemon.wait_ready()
    nfon.sim.call("102")
    daemon.wait_line(r"webhook: clara@example\.com .*→ Busy/InACall")
    assert hook.deliveries() == []
    assert not (tmp_path / "state.db").exists()


def test_health_ready_and_metrics(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config))
    url = daemon.url()
    assert httpx.get(url + "/healthz").status_code == 200
    daemon.wait_ready()
    nfon.sim.call("100")
    hook.wait_status(ANNA, "InACall")
    metrics = httpx.get(url + "/metrics").text
    assert re.search(
        r'presence_sync_target_applies_total\{result="ok",target="webhook"\} 1', metrics
    )
    # No person, e-mail, extension or secret in the metrics.
    for private in (ANNA, "api-secret", HOOK_SECRET, 'extension="100"'):
        assert private not in metrics


def test_invalid_configuration_exits_78_naming_file_line_and_key(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook, extra="resnyc: {}\n")
    daemon = daemons("run", "-c", str(config))
    assert daemon.wait_exit(timeout=30) == 78
    line_no = config.read_text().splitlines().index("resnyc: {}") + 1
    assert f"config.yaml:{line_no}:1: resnyc" in daemon.output()
    assert "Traceback" not in daemon.output()


def test_nfon_watch_prints_lines_as_they_change(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    watch = daemons("nfon", "watch", "-c", str(config))
    watch.wait_line(r"\b102\b.*Clara Weber.*idle")
    nfon.sim.set_state("101", presence="dnd")
    watch.wait_line(r"\b101\b.*Ben Müller.*idle.*dnd")
    assert "api-secret" not in watch.output()


DND_RULES = (
    "rules:\n"
    "  - name: dnd\n"
    "    when: {presence: dnd}\n"
    "    set: {webhook: {availability: DoNotDisturb, activity: Presenting}}\n"
)


def test_a_person_whose_extension_disappears_is_cleared(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook, directory="1s", rules=DND_RULES)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()
    nfon.sim.set_state("100", presence="dnd")
    hook.wait_status(ANNA, "Presenting")
    nfon.sim.remove_extension("100")  # the extension is deleted in NFON
    cleared = hook.wait_status(ANNA, None)
    assert cleared["previous"]["availability"] == "DoNotDisturb"


def test_nfon_down_at_start_is_degraded_not_failed(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    nfon.sim.fail_next("/login", 503, count=1_000_000)
    config = write_config(
        tmp_path / "config.yaml", nfon, hook, nfon_extra="  reconnect_max_delay: 1s\n"
    )
    daemon = daemons("run", "-c", str(config))
    # Not ready while NFON refuses, but alive and retrying with backoff.
    body = daemon.wait_not_ready()
    assert body["components"]["nfon_stream"]["ok"] is False
    assert "NFON stream not connected yet" in body["components"]["nfon_stream"]["reason"]
    assert httpx.get(daemon.url() + "/healthz").status_code == 200
    eventually(lambda: nfon.sim.stats.injected_failures >= 3, "logins retried")
    assert daemon.readyz().status_code == 503
    assert daemon.proc.poll() is None

    nfon.sim.clear_failures()
    daemon.wait_ready()
    nfon.sim.call("100")
    hook.wait_status(ANNA, "InACall")
    assert daemon.proc.poll() is None


def test_a_call_made_while_the_stream_was_down_arrives_through_the_bootstrap(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path / "config.yaml", nfon, hook)
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    def drop_and_call(sim: Any) -> None:
        # In one step on the simulator's loop: the stream is gone before the
        # call happens, so only the reconnect's bootstrap can tell.
        sim.drop_streams()
        sim.call("102")

    nfon.sim.run(drop_and_call)
    hook.wait_status("clara@example.com", "InACall")
    daemon.wait_line(r"full state from NFON.*reconnect=True")

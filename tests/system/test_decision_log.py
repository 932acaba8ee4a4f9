"""The daemon's log as an admin follows it: one line per change at a target,
naming the person, the deciding rule, old → new and the time it took; read
here from the JSON log of the real process by its fields, not its wording."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Hook, write_config
from polling import eventually

from presence_sync.sim.nfon import SimHandle

pytestmark = pytest.mark.system

ANNA = "anna@example.com"
RULES = """\
rules:
  - name: calls from outside
    when: {line: in-use, party: external}
    set:
      webhook: {availability: Busy, activity: InACall}
      log: {text: On a call}
  - when: {line: in-use}
    set: {webhook: {availability: Busy, activity: InACall}, log: {text: Inside call}}
"""


def json_lines(daemon: Daemon) -> list[dict[str, Any]]:
    docs = []
    for line in daemon.output().splitlines():
        if line.startswith("{"):
            docs.append(json.loads(line))
    return docs


def changes(daemon: Daemon) -> list[dict[str, Any]]:
    """The change lines: one per (person, target, old → new)."""
    return [d for d in json_lines(daemon) if d.get("result") == "ok" and "new" in d]


def json_config(path: Path, nfon: SimHandle, hook: Hook, **kwargs: Any) -> Path:
    config = write_config(path, nfon, hook, **kwargs)
    config.write_text(config.read_text().replace("format: text", "format: json"))
    return config


def test_each_change_is_one_line_naming_the_rule(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = json_config(
        tmp_path / "config.yaml",
        nfon,
        hook,
        targets="  log: {}\n",
        rules=RULES,
        nfon_extra="  call_settle: 5s\n",
    )
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    call = nfon.sim.call("100", direction="inbound", party="4930123456", external=True)
    hook.wait_status(ANNA, "InACall")
    nfon.sim.hangup(call)
    hook.wait_status(ANNA, None)
    eventually(lambda: len(changes(daemon)) >= 4 or None, "four change lines")

    lines = changes(daemon)
    seen = sorted((d["target"], d["old"], d["new"], d["rule"]) for d in lines)
    assert seen == sorted(
        [
            ("webhook", "own status", "Busy/InACall", "calls from outside"),
            ("webhook", "Busy/InACall", "own status", None),
            ("log", "own status", '"On a call"', "calls from outside"),
            ("log", '"On a call"', "own status", None),
        ]
    )
    for doc in lines:
        assert doc["person"] == ANNA
        assert doc["logger"] == "presence_sync.engine"
        assert doc["level"] == "info"
        assert isinstance(doc["duration_ms"], int)
        assert 0 <= doc["request_ms"] <= doc["duration_ms"]
    cleared = [d for d in lines if d["new"] == "own status"]
    assert all("cleared, own status restored" in d["msg"] for d in cleared)
    # The log target writes no second line for the same change.
    assert not [d for d in json_lines(daemon) if d["logger"] == "presence_sync.targets.log"]
    # Nor does the caller's number reach the log.
    assert "4930123456" not in daemon.output()


def test_an_empty_people_list_is_a_warning_at_start(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = json_config(tmp_path / "config.yaml", nfon, hook)
    text = config.read_text()
    start, end = text.index("people:\n"), text.index("targets:\n")
    config.write_text(text[:start] + "people: []\n" + text[end:])
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    def warning() -> dict[str, Any] | None:
        found = [d for d in json_lines(daemon) if d.get("key") == "people"]
        return found[0] if found else None

    doc = eventually(warning, "the people warning")
    assert doc["level"] == "warning"
    assert (doc["file"], doc["line"]) == (str(config), text[:start].count("\n") + 1)


def test_no_configured_person_on_an_nfon_extension_is_a_warning_at_start(
    tmp_path: Path, nfon: SimHandle, hook: Hook, daemons: Callable[..., Daemon]
) -> None:
    config = json_config(tmp_path / "config.yaml", nfon, hook)
    # Typos in every extension: NFON lists 100-102, the file says 900-902.
    config.write_text(config.read_text().replace('extension: "10', 'extension: "90'))
    daemon = daemons("run", "-c", str(config))
    daemon.wait_ready()

    def warning() -> dict[str, Any] | None:
        found = [d for d in json_lines(daemon) if "nfon_extensions" in d]
        return found[0] if found else None

    doc = eventually(warning, "the unmapped-people warning")
    assert doc["level"] == "warning"
    assert (doc["configured"], doc["nfon_extensions"]) == (3, 3)
    assert doc["configured_extensions"] == "900, 901, 902"

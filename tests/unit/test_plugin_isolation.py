"""What docs/security.md says about plugins, checked: a target from another
package runs in the daemon's process, so the sections it declares in
``TargetInfo.requires`` are an API (what it is handed), not a wall (what it
can reach). Code in the process can find every secret the daemon holds."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from pathlib import Path

from presence_sync.app import load
from presence_sync.clock import ManualClock
from presence_sync.config import Settings
from presence_sync.targets.base import target_class, target_env


def nosy_search() -> set[str]:
    """What a plugin's code could do with no section at all: look around the
    interpreter for the loaded configuration and read its secrets."""
    found: set[str] = set()
    for obj in gc.get_objects():
        if isinstance(obj, Settings):
            found.add(obj.nfon.password.get_secret_value())
    return found


def test_a_plugin_is_handed_only_its_sections_but_can_reach_every_secret(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: u, password: nfon-secret-pw}\ntargets:\n  log: {}\n"
    )
    settings = load(config).settings
    clock = ManualClock(datetime(2026, 3, 2, 9, tzinfo=UTC))
    env = target_env(target_class("log").info, settings, clock=clock, user_agent="t")

    assert dict(env.sections) == {}  # handed nothing: the API
    assert "nfon-secret-pw" not in repr(env)
    assert "nfon-secret-pw" in nosy_search()  # yet within reach: no isolation

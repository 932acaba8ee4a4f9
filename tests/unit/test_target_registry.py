"""Targets are found by kind: built-ins lazily, third-party packages through the
``presence_sync.targets`` entry-point group."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from presence_sync.app import load
from presence_sync.clock import ManualClock
from presence_sync.errors import ConfigError
from presence_sync.model import Line, LineView, Person, Status
from presence_sync.store import MemoryStore, StoreMemory
from presence_sync.targets.base import (
    BUILTIN,
    Change,
    Target,
    TargetEnv,
    UnknownTargetError,
    known_kinds,
    target_class,
)

PLUGIN = '''
"""A third-party target, as a package outside presence-sync would ship it."""
from typing import ClassVar

from presence_sync.model import Applied
from presence_sync.targets.base import Change, TargetEnv, TargetInfo, TargetOptions


class PagerOptions(TargetOptions):
    channel: str
    loud: bool = False


class PagerTarget:
    info: ClassVar[TargetInfo] = TargetInfo(
        kind="pager", description="pages a channel", fields=frozenset({"text"}), rate=5, burst=5
    )
    Options: ClassVar[type[TargetOptions]] = PagerOptions

    def __init__(self, name: str, options: PagerOptions, env: TargetEnv) -> None:
        self.name = name
        self.options = options
        self.env = env
        self.sent: list[tuple[str, str | None]] = []

    async def apply(self, change: Change) -> Applied:
        text = change.desired.text if change.desired else None
        self.sent.append((self.options.channel, text))
        return Applied(status=change.desired, at=self.env.clock.now())

    async def aclose(self) -> None:
        pass
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install ``acme_pager`` with an entry point, the way pip would."""
    site = tmp_path / "site"
    (site / "acme_pager").mkdir(parents=True)
    (site / "acme_pager" / "__init__.py").write_text(PLUGIN)
    dist = site / "acme_pager-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pager\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[presence_sync.targets]\npager = acme_pager:PagerTarget\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtins_are_known_without_plugins() -> None:
    assert {"log", "webhook"} <= set(known_kinds())
    for kind in BUILTIN:
        assert target_class(kind).info.kind == kind
    with pytest.raises(UnknownTargetError):
        target_class("no_such_target")


async def test_a_plugin_target_is_configured_and_applies(plugin: Path, tmp_path: Path) -> None:
    assert "pager" in known_kinds()
    cls = target_class("pager")
    assert cls.info.kind == "pager"

    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            nfon: {customer: K1234, username: u, password: p}
            people: [{extension: "100", email: anna@example.com}]
            targets:
              oncall: {kind: pager, channel: "#support"}
            rules:
              - when: {line: in-use}
                set: {oncall: {text: "On a call"}}
            """
        )
    )
    loaded = load(config)
    spec = loaded.settings.targets["oncall"]
    assert spec.kind == "pager"
    clock = ManualClock(datetime(2026, 3, 2, 9, tzinfo=UTC))
    target: Target = cls("oncall", spec.options, TargetEnv(clock=clock, user_agent="t"))
    person = Person("anna@example.com", "anna@example.com", "100")
    view = LineView("100", Line.IN_USE)
    desired = loaded.rules.evaluate(person, view, clock.now())["oncall"]
    assert desired == Status(text="On a call")
    store = MemoryStore()
    applied = await target.apply(
        Change(person, desired, None, view, StoreMemory(store, "oncall", person.key))
    )
    assert applied.status == desired
    assert target.sent == [("#support", "On a call")]  # type: ignore[attr-defined]


def test_a_plugin_targets_options_are_validated_with_file_and_line(
    plugin: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "targets:\n"
        "  oncall:\n"
        "    kind: pager\n"
        "    chanel: '#support'\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(config)
    text = str(caught.value)
    assert f"{config}:5:5: targets.oncall.chanel" in text
    assert "targets.oncall.channel" in text  # the required key is missing, too


def test_a_rule_may_not_set_a_field_the_plugin_does_not_show(plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n"
        "targets:\n"
        "  oncall: {kind: pager, channel: x}\n"
        "rules:\n"
        "  - when: {line: in-use}\n"
        "    set: {oncall: {availability: Busy}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert f"{config}:6:" in str(caught.value)
    assert "availability" in str(caught.value)

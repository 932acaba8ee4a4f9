"""Targets are found by kind: built-ins lazily, third-party packages through the
``presence_sync.targets`` entry-point group."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from presence_sync.app import load
from presence_sync.cli import main
from presence_sync.clock import ManualClock
from presence_sync.config import Settings, SlackSettings
from presence_sync.errors import EX_CONFIG, ConfigError
from presence_sync.model import Line, LineView, Person, Status
from presence_sync.store import MemoryStore, TargetMemory
from presence_sync.targets.base import (
    BUILTIN,
    Change,
    Target,
    TargetEnv,
    UndeclaredSectionError,
    UnknownTargetError,
    known_kinds,
    target_class,
    target_env,
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


class ChatTarget(PagerTarget):
    """Posts to a chat with the Slack app's token."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="chat",
        description="posts to Slack",
        fields=frozenset({"text"}),
        requires=("slack", "tls"),
    )


class GreedyTarget(PagerTarget):
    """Asks for the NFON account, which no target is given."""

    info: ClassVar[TargetInfo] = TargetInfo(
        kind="greedy",
        description="wants everything",
        fields=frozenset({"text"}),
        requires=("nfon",),
    )
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
        "chat = acme_pager:ChatTarget\ngreedy = acme_pager:GreedyTarget\n"
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
    env = target_env(cls.info, loaded.settings, clock=clock, user_agent="t")
    assert dict(env.sections) == {}
    target: Target = cls("oncall", spec.options, env)
    person = Person("anna@example.com", "anna@example.com", "100")
    view = LineView("100", Line.IN_USE)
    desired = loaded.rules.evaluate(person, view, clock.now())["oncall"]
    assert desired == Status(text="On a call")
    store = MemoryStore()
    applied = await target.apply(
        Change(person, desired, None, view, TargetMemory(store, "oncall", person.key))
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


# --- scoped secrets: a target gets the sections it declares, nothing else ---------------

SECRETS = """\
nfon: {customer: K1234, username: u, password: nfon-secret-pw}
microsoft: {tenant_id: t, client_id: c, client_secret: ms-secret-value}
slack: {token: xoxb-slack-secret}
tls: {ca_bundle: ca.pem}
people: [{extension: "100", email: anna@example.com}]
targets:
  webhook: {url: "https://hooks.example.com/x", secret: hook-secret-value}
  team_chat: {kind: chat, channel: "#support"}
"""


def revealed(value: object) -> list[str]:
    """Every string reachable from ``value``, secrets unmasked: what a target
    could read from its environment if it tried."""
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in revealed(getattr(value, name))]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (str(k), *revealed(v))]
    if isinstance(value, list | tuple | frozenset | set):
        return [s for item in value for s in revealed(item)]
    return [str(value)]


async def test_a_target_gets_only_the_sections_it_declares(plugin: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "config.yaml"
    config.write_text(SECRETS)
    settings = load(config).settings
    clock = ManualClock(datetime(2026, 3, 2, 9, tzinfo=UTC))

    def env_of(name: str) -> TargetEnv:
        info = target_class(settings.targets[name].kind).info
        return target_env(info, settings, clock=clock, user_agent="t")

    hook, chat = env_of("webhook"), env_of("team_chat")

    assert dict(hook.sections) == {"tls": settings.tls}
    assert hook.verify == str(tmp_path / "ca.pem")
    assert dict(chat.sections) == {"slack": settings.slack, "tls": settings.tls}
    assert chat.section("slack", SlackSettings) is settings.slack
    with pytest.raises(UndeclaredSectionError, match="'nfon'"):
        chat.section("nfon")
    with pytest.raises(UndeclaredSectionError, match="'microsoft'"):
        hook.section("microsoft")
    # The search below can find a secret: the chat target is handed Slack's token.
    assert "xoxb-slack-secret" in revealed(chat.sections)
    for env in (hook, chat):
        for secret in ("nfon-secret-pw", "ms-secret-value"):
            assert secret not in repr(env)
            assert secret not in revealed(env.sections)
    assert "xoxb-slack-secret" not in revealed(hook.sections)

    # And a plugin target is built with exactly that environment.
    spec = settings.targets["team_chat"]
    target = target_class("chat")("team_chat", spec.options, chat)
    assert target.env is chat  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ("", "team_chat needs a slack: section"),
        ("slack:\n", "team_chat needs a slack: section"),
    ],
)
def test_a_target_whose_section_is_missing_exits_78_naming_its_line(
    plugin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sections: str,
    message: str,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: u, password: p}\n" + sections + "targets:\n"
        "  log: {}\n"
        "  team_chat: {kind: chat, channel: x}\n"
    )
    line = config.read_text().splitlines().index("  team_chat: {kind: chat, channel: x}") + 1

    with pytest.raises(ConfigError) as caught:
        load(config)
    (problem,) = caught.value.problems
    assert str(problem) == f"{config}:{line}:3: targets.team_chat: {message}"

    assert main(["run", "-c", str(config)]) == EX_CONFIG
    assert f"{config}:{line}:3: targets.team_chat: {message}" in capsys.readouterr().err


def test_no_target_is_given_the_nfon_account(plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "nfon: {customer: K1234, username: u, password: nfon-secret-pw}\n"
        "targets:\n"
        "  greedy: {channel: x}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(config)
    (problem,) = caught.value.problems
    assert (problem.line, problem.key) == (3, "targets.greedy")
    assert "'nfon', which is not given to targets" in problem.message

    # Settings built in code skip the loader's check; target_env refuses too.
    settings = Settings.model_validate(
        {"nfon": {"customer": "K1234", "username": "u", "password": "nfon-secret-pw"}}
    )
    clock = ManualClock(datetime(2026, 3, 2, 9, tzinfo=UTC))
    with pytest.raises(ValueError, match="may not require nfon"):
        target_env(target_class("greedy").info, settings, clock=clock, user_agent="t")

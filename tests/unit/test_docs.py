"""Every ``presence-sync`` command the guides show (README.md,
systemd/README.md, docs/*.md; code blocks and inline code) is one the real
command-line parser accepts, and the guides point to each other."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from documented import ROOT, Command, documented_commands, guides, subcommands

from presence_sync.cli import build_parser

# Commands the guides already show that land with other work (the admin
# tools). While one is missing from the parser, its lines are not parsed; once
# it exists, they are. Empty this once they are all in.

COMMANDS = documented_commands()


def test_the_guides_show_commands() -> None:
    shown = {command.argv[0] for command in COMMANDS if command.argv}
    assert {"run", "demo", "nfon", "sim", "check"} <= shown
    assert any(c.file == "systemd/README.md" for c in COMMANDS)
    assert any(c.file == "docs/operations.md" for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command: Command) -> None:
    parser = build_parser()
    known = subcommands(parser)
    name = command.argv[0] if command.argv else ""
    assert name in known or name.startswith("-"), f"{command}: no such command"
    if command.mention:
        return
    errors = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(list(command.argv))
        except SystemExit as exc:  # --help and --version end here with 0
            code = exc.code
    assert code == 0, f"{command}\n{errors.getvalue()}"


def test_operations_guide_is_linked_from_both_guides() -> None:
    assert (ROOT / "docs" / "operations.md").is_file()
    for guide in ("README.md", "systemd/README.md"):
        assert "docs/operations.md" in (ROOT / guide).read_text(), guide


def test_operations_guide_covers_day_two() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    headings = {line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")}
    assert {"Upgrade", "Roll back", "Uninstall", "Outbound proxy"} <= headings
    assert "Backing up the state database" in headings
    for symptom in (
        "Teams shows nothing",
        "Slack status stays after the call",
        "NFON login refused",
        "Throttled",
    ):
        assert symptom in headings, symptom
    assert "/var/lib/private/presence-sync" in text


def test_the_guides_cite_public_sources_not_notes_outside_the_repository() -> None:
    """A reader has the repository and the web, not the notes it was written
    from (issue 16 point 19)."""
    for guide in guides():
        text = guide.read_text()
        name = guide.relative_to(ROOT)
        assert not re.search(r"`reference/[\w-]+\.md`", text), name
        assert not re.search(r"(project|shared) notes", text), name
        for path in re.findall(r"`((?:docs|systemd|benchmarks|tests)/[\w./-]+\.(?:md|py))`", text):
            assert (ROOT / path).is_file(), f"{name} cites {path}, which is not in the repository"
    slack = (ROOT / "docs" / "slack.md").read_text()
    assert "https://api.slack.com/methods/users.profile.set" in slack
    assert "https://docs.slack.dev/apis/web-api/rate-limits" in slack
    simulators = (ROOT / "docs" / "simulators.md").read_text()
    assert "https://learn.microsoft.com/graph/throttling-limits" in simulators
    assert "https://api.slack.com/methods/users.profile.set" in simulators


def test_the_postgresql_store_is_documented_where_admins_look() -> None:
    guide = (ROOT / "docs" / "high-availability.md").read_text()
    for linked_from in ("README.md", "docs/operations.md"):
        assert "docs/high-availability.md" in (ROOT / linked_from).read_text(), linked_from
    for needed in ("state.url", "password_file", "sslmode=verify-full", "session pooling"):
        assert needed in guide, needed
    example = (ROOT / "config.example.yaml").read_text()
    assert "# url: postgresql://" in example
    assert "# password_file:" in example
    # The example's PostgreSQL comment sends the admin to that guide.
    postgres = example[
        example.index("# Or a PostgreSQL database") : example.index("# url: postgresql://")
    ]
    assert "See docs/high-availability.md." in postgres, postgres

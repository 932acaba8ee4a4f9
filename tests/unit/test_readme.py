"""The README's promises: its first lines give the two commands, and CI runs
exactly the test command it shows."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    head = (ROOT / "README.md").read_text().splitlines()[:12]
    return [line.strip() for line in head if line.startswith("    ")]


def test_readme_opens_with_install_and_test_commands() -> None:
    commands = _commands()
    assert len(commands) == 2
    install, test = commands
    assert "pip install ." in install
    assert install.endswith("presence-sync demo")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test = _commands()[1]
    assert ci[-1].strip() == test

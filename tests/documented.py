"""The ``presence-sync`` commands the guides show, found where an admin would
copy them from: code blocks (fenced or indented) and inline code in
``README.md``, ``systemd/README.md`` and ``docs/*.md``."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "Command", "documented_commands", "guides", "subcommands"]


@dataclass(frozen=True)
class Command:
    """One documented invocation: where it is, and the arguments after the
    program name."""

    file: str
    line: int
    argv: tuple[str, ...]
    mention: bool = False
    """Inline code naming a command without arguments (`presence-sync explain`
    in a heading or in prose): the command must exist, its arguments are not shown."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: presence-sync {shlex.join(self.argv)}"


def guides() -> list[Path]:
    return [ROOT / "README.md", ROOT / "systemd" / "README.md", *sorted(ROOT.glob("docs/*.md"))]


def _code_lines(text: str) -> list[tuple[int, str, bool]]:
    """``(line number, text, inline)`` of every line inside a code block, and
    of every inline code span, each with the line it appears on."""
    found: list[tuple[int, str, bool]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or re.match(r"(?: {4}|\t)", line):
            found.append((number, line.strip(), False))
        else:
            found.extend((number, span, True) for span in re.findall(r"`([^`]+)`", line))
    return found


def _program(word: str) -> bool:
    return word == "presence-sync" or word.endswith("/bin/presence-sync")


def _invocations(line: str) -> list[tuple[str, ...]]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # prose with an apostrophe in an inline span
        return []
    found = []
    # One command per part of a && / ; / | chain.
    part: list[str] = []
    for word in [*words, "&&"]:
        if word in ("&&", "||", ";", "|"):
            while part and re.fullmatch(r"[A-Z_]+=\S*", part[0]):
                part.pop(0)  # VAR=value before the command
            if part and _program(part[0]):
                found.append(tuple(part[1:]))
            part = []
        else:
            part.append(word)
    return found


def documented_commands() -> list[Command]:
    commands = []
    for path in guides():
        for number, line, inline in _code_lines(path.read_text()):
            for argv in _invocations(line):
                if inline and not argv:
                    continue  # `presence-sync` in prose is the name, not a command
                mention = inline and len(argv) == 1
                commands.append(Command(str(path.relative_to(ROOT)), number, argv, mention))
    return commands


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    """The top-level commands ``parser`` knows."""
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }

"""Dependencies point down (STYLE.md): the leaves import nothing of ours, the
adapters know only the leaves, and nothing but the demo and the CLI reaches
for the simulators."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import presence_sync

PACKAGE = Path(presence_sync.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``presence_sync`` module a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "presence_sync"}


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}

# Who may import what, beyond presence_sync itself (its __version__).
ALLOWED: dict[str, set[str]] = {
    "presence_sync.model": set(),
    "presence_sync.errors": set(),
    "presence_sync.clock": set(),
    "presence_sync.lines": {"presence_sync.clock", "presence_sync.model"},
    "presence_sync.targets.base": {"presence_sync.clock", "presence_sync.model"},
}
FORBIDDEN_BELOW_APP = ("presence_sync.app", "presence_sync.cli", "presence_sync.demo")


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_leaf_modules_import_only_what_they_may(module: str) -> None:
    assert MODULES[module] - {"presence_sync"} <= ALLOWED[module]


def test_only_the_demo_and_the_cli_import_the_simulators() -> None:
    may = ("presence_sync.sim", "presence_sync.demo", "presence_sync.cli")
    offenders = {
        module: sorted(m for m in imported if m.startswith("presence_sync.sim"))
        for module, imported in MODULES.items()
        if not module.startswith(may)
    }
    assert {m: v for m, v in offenders.items() if v} == {}


def test_nothing_below_the_composition_root_imports_it() -> None:
    top = {*FORBIDDEN_BELOW_APP, "presence_sync.__main__"}
    offenders = {
        module: sorted(imported & set(FORBIDDEN_BELOW_APP))
        for module, imported in MODULES.items()
        if module not in top
    }
    assert {m: v for m, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "module",
    [m for m in sorted(MODULES) if m.startswith(("presence_sync.nfon", "presence_sync.targets"))]
    + ["presence_sync.rules", "presence_sync.directory", "presence_sync.store"],
)
def test_adapters_do_not_know_the_engine(module: str) -> None:
    assert "presence_sync.engine" not in MODULES[module]
    assert "presence_sync.rules" not in MODULES[module] or module == "presence_sync.rules"


def test_the_engine_knows_targets_only_through_their_protocol() -> None:
    targets = {m for m in MODULES["presence_sync.engine"] if m.startswith("presence_sync.targets")}
    assert targets == {"presence_sync.targets.base"}

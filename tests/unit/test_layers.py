"""Dependencies point down (STYLE.md): the leaves import nothing of ours, the
adapters know only the leaves, and nothing but the demo and the CLI reaches
for the simulators. Checked for modules and for packages: ``FLOORS`` puts
every package on a floor and imports run only down (or within a floor)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import presence_sync

PACKAGE = Path(presence_sync.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


KNOWN = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_in(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every ``presence_sync`` module that ``source`` (the text of ``module``)
    imports, at any depth of the file (``TYPE_CHECKING`` blocks and function
    bodies included). ``from presence_sync import engine`` counts as
    ``presence_sync.engine``; relative imports are resolved."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(
                f"{origin}.{alias.name}"
                for alias in node.names
                if f"{origin}.{alias.name}" in KNOWN
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "presence_sync"}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}

# Who may import what, beyond presence_sync itself (its __version__).
ALLOWED: dict[str, set[str]] = {
    "presence_sync.model": set(),
    "presence_sync.errors": set(),
    "presence_sync.clock": set(),
    "presence_sync.lines": {"presence_sync.clock", "presence_sync.model"},
    "presence_sync.targets.base": {"presence_sync.clock", "presence_sync.model"},
    # Below both config and the targets, which share its types.
    "presence_sync.sections": {"presence_sync.ops.logging"},
    # Every layer may use net, so it may use nothing of ours but the errors.
    "presence_sync.net": {"presence_sync.errors"},
    # The store's contract and layout know only the model; the codec the
    # contract's rows and the log's helpers.
    "presence_sync.store.base": {"presence_sync.model"},
    "presence_sync.store.schema": set(),
    "presence_sync.store.codec": {
        "presence_sync.model",
        "presence_sync.ops.logging",
        "presence_sync.store.base",
    },
}
FORBIDDEN_BELOW_APP = (
    "presence_sync.app",
    "presence_sync.cli",
    "presence_sync.demo",
    # Commands that load a configuration as `run` does and log in with the
    # real clients: on top, beside the CLI that starts them.
    "presence_sync.tools.check",
    "presence_sync.tools.testcall",
)


def test_the_checker_sees_every_form_of_import() -> None:
    source = """
from typing import TYPE_CHECKING
import presence_sync.engine
from presence_sync import store
from presence_sync.targets import base as b
from . import auth
from .schema import parse
from .. import model
if TYPE_CHECKING:
    from presence_sync.app import Daemon
def later() -> None:
    from presence_sync.sim.nfon import NfonSim
"""
    assert imports_in(source, "presence_sync.nfon.client") == {
        "presence_sync",
        "presence_sync.engine",
        "presence_sync.store",
        "presence_sync.targets",
        "presence_sync.targets.base",
        "presence_sync.nfon",
        "presence_sync.nfon.auth",
        "presence_sync.nfon.schema",
        "presence_sync.model",
        "presence_sync.app",
        "presence_sync.sim.nfon",
    }


def test_every_listed_module_exists() -> None:
    assert set(ALLOWED) <= set(MODULES)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_leaf_modules_import_only_what_they_may(module: str) -> None:
    assert MODULES[module] - {"presence_sync"} <= ALLOWED[module]


def test_no_import_cycles() -> None:
    """Not even hidden behind ``TYPE_CHECKING`` or inside a function: a
    circle means two modules are one, or one reaches into the other."""
    graph = {m: {i for i in imported if i in MODULES and i != m} for m, imported in MODULES.items()}
    # Importing a package's submodule runs the package: not an edge of the
    # submodule's design, so the package root is left out.
    graph = {m: {i for i in deps if i != "presence_sync"} for m, deps in graph.items()}
    cycles = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


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
    [
        m
        for m in sorted(MODULES)
        if m.startswith(("presence_sync.nfon", "presence_sync.targets", "presence_sync.rules"))
    ]
    + ["presence_sync.directory"]
    + [m for m in sorted(MODULES) if m.startswith("presence_sync.store")],
)
def test_adapters_do_not_know_the_engine(module: str) -> None:
    assert not in_package(MODULES[module], "presence_sync.engine")
    if not in_package({module}, "presence_sync.rules"):
        assert not in_package(MODULES[module], "presence_sync.rules")


def test_the_store_backends_stand_on_the_floor_alone() -> None:
    """A backend knows the contract, the codec, the schema and the floor
    (clock, errors, model, logging), not the engine, config or targets; and
    no backend imports another, so each can be left out of a process."""
    floor = {
        "presence_sync.clock",
        "presence_sync.errors",
        "presence_sync.model",
        "presence_sync.ops.logging",
        "presence_sync.store.base",
        "presence_sync.store.codec",
        "presence_sync.store.schema",
    }
    backends = ["memory", "postgres", "sqlite"]
    for name in backends:
        module = f"presence_sync.store.{name}"
        assert module in MODULES
        assert MODULES[module] - {"presence_sync"} <= floor, module


def test_importing_the_store_does_not_load_postgresql() -> None:
    """psycopg loads only when ``state.url`` asks for it."""
    assert "presence_sync.store.postgres" not in MODULES["presence_sync.store"]


def test_config_and_targets_do_not_circle() -> None:
    """config finds target kinds (targets.base); so no target imports config,
    and the rules are handed what they need of a target."""
    targets = in_package(set(MODULES), "presence_sync.targets")
    imported = set().union(*(MODULES[m] for m in targets))
    assert not in_package(imported, "presence_sync.config")
    rules = set().union(*(MODULES[m] for m in in_package(set(MODULES), "presence_sync.rules")))
    assert not in_package(rules, "presence_sync.targets")
    assert not in_package(rules, "presence_sync.config")


def in_package(names: set[str], package: str) -> set[str]:
    """The names among ``names`` that are ``package`` or one of its modules."""
    return {n for n in names if n == package or n.startswith(package + ".")}


def test_the_engine_knows_targets_only_through_their_protocol() -> None:
    engine = in_package(set(MODULES), "presence_sync.engine")
    assert len(engine) > 1, "the engine is a package: every module of it is checked"
    imported = set().union(*(MODULES[m] for m in engine))
    assert in_package(imported, "presence_sync.targets") == {"presence_sync.targets.base"}
    assert not imported & {"presence_sync.rules", "presence_sync.nfon", "presence_sync.config"}


# --- packages ------------------------------------------------------------------------------


def package_of(module: str) -> str:
    """``presence_sync.X.Y`` → ``presence_sync.X`` (a top-level module is its
    own package); ``presence_sync`` itself stays."""
    return ".".join(module.split(".")[:2])


PACKAGES: dict[str, set[str]] = {}
for _module, _imported in MODULES.items():
    _deps = PACKAGES.setdefault(package_of(_module), set())
    _deps.update(package_of(i) for i in _imported if i in MODULES and i != "presence_sync")
for _package, _deps in PACKAGES.items():
    _deps.discard(_package)

# The floors, lowest first. A package may import its own floor and the ones
# below; the leaves and the floor (``ops``: logging, metrics, systemd) are for
# everyone, the API (``api``) is the roof that only the commands stand on.
FLOORS: list[tuple[str, set[str]]] = [
    ("leaves", {"model", "errors", "clock", "net", "entra"}),
    ("floor", {"ops"}),
    # The section models the targets and the configuration share.
    ("sections", {"sections"}),
    ("adapters", {"lines", "store", "nfon", "targets", "directory", "members", "schedule"}),
    ("rules", {"rules"}),
    ("configuration", {"config"}),
    ("core", {"engine", "pauses", "feed"}),
    ("api", {"api"}),
    ("commands", {"app", "cli", "tools", "demo", "sim", "__main__"}),
]
FLOOR_OF = {f"presence_sync.{p}": level for level, (_, ps) in enumerate(FLOORS) for p in ps}

# The imports that still run up a floor, (importer, imported) as packages. At
# most two; each one is a debt with its plan:
UPWARD: dict[tuple[str, str], str] = {}


def test_every_package_is_on_one_floor() -> None:
    placed = [f"presence_sync.{p}" for _, ps in FLOORS for p in ps]
    assert len(placed) == len(set(placed)), "a package on two floors"
    assert set(PACKAGES) - {"presence_sync"} == set(placed)


def test_imports_between_packages_run_down_the_floors() -> None:
    upward = {
        (package, imported)
        for package, deps in PACKAGES.items()
        if package != "presence_sync"
        for imported in deps
        if FLOOR_OF[imported] > FLOOR_OF[package]
    }
    assert upward <= set(UPWARD)
    assert len(UPWARD) <= 2


def test_the_floor_imports_only_the_leaves() -> None:
    """``ops`` is what everything may use, so it may use nothing above it:
    the API it once held made store, pauses and config import upward."""
    leaves = {f"presence_sync.{p}" for p in FLOORS[0][1]}
    assert PACKAGES["presence_sync.ops"] <= leaves


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle ``graph`` has, each once, as a path back to its start."""
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                cycles.append(cycle)
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_the_cycle_finder_finds_a_circle_through_packages() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert package_cycles(graph) == [["a", "b", "c", "a"]]
    assert package_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_ops_and_the_rest() -> None:
    """The floor and the roof were one package: ``ops`` circled with the
    engine, the configuration and the pauses."""
    assert [c for c in package_cycles(PACKAGES) if "presence_sync.ops" in c] == []
    assert [c for c in package_cycles(PACKAGES) if "presence_sync.api" in c] == []


def test_no_import_cycle_between_packages() -> None:
    """Modules collapsed into their package (``presence_sync.X.Y`` →
    ``presence_sync.X``): a circle between packages means two of them are
    one, or one reaches into the other."""
    assert package_cycles(PACKAGES) == []

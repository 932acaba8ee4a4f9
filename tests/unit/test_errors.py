"""The exception tree drawn in ``errors.py`` is the truth: every error
presence-sync raises on purpose is drawn there, under its real parent, and
nothing drawn is missing or in another place."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import presence_sync
from presence_sync import errors
from presence_sync.errors import PresenceSyncError

_DRAWN = re.compile(r"^(?P<indent>(?:[│ ]   )*)(?:[├└]── )?(?P<name>\w+)\s*(?P<rest>.*)$")


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """Each class drawn in ``errors.__doc__``: name → (parent, module mark)."""
    doc = errors.__doc__ or ""
    block = doc.split("```")[1].strip("\n").splitlines()
    tree: dict[str, tuple[str | None, str | None]] = {}
    parents: list[str] = []
    for line in block:
        match = _DRAWN.match(line)
        assert match, line
        depth = len(match["indent"]) // 4 + (1 if "──" in line else 0)
        del parents[depth:]
        mark = re.match(r"\(([\w.]+)\)", match["rest"])
        tree[match["name"]] = (parents[-1] if parents else None, mark[1] if mark else None)
        parents.append(match["name"])
    return tree


def real_tree() -> dict[str, tuple[str | None, str | None]]:
    """Each subclass of ``PresenceSyncError`` in the package: name →
    (parent, its module unless it is ``errors``)."""
    for module in pkgutil.walk_packages(presence_sync.__path__, "presence_sync."):
        if module.name != "presence_sync.__main__":
            importlib.import_module(module.name)
    tree: dict[str, tuple[str | None, str | None]] = {PresenceSyncError.__name__: (None, None)}
    todo = [PresenceSyncError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if not sub.__module__.startswith("presence_sync."):
                continue  # one a test defined
            module = sub.__module__.removeprefix("presence_sync.")
            tree[sub.__name__] = (cls.__name__, None if module == "errors" else module)
            todo.append(sub)
    return tree


def test_the_drawn_tree_is_the_class_tree() -> None:
    assert drawn_tree() == real_tree()


def test_the_drawing_is_read_as_drawn() -> None:
    tree = drawn_tree()
    assert tree["PresenceSyncError"] == (None, None)
    assert tree["TransientError"] == ("UpstreamError", None)
    assert tree["UnknownPerson"] == ("PauseError", "pauses")
    assert tree["TestCallFailed"] == ("PresenceSyncError", "tools.testcall")


def test_every_drawn_error_without_children_is_raised_somewhere() -> None:
    """A class drawn but never raised (as StreamError was) promises the
    caller something that never happens."""
    tree = drawn_tree()
    parents = {parent for parent, _ in tree.values()}
    source = _package_source()
    never = [
        name
        for name in tree
        if name not in parents
        and not re.search(rf"\b{name}(?:\.single)?\(", _without_class(source, name))
    ]
    assert never == []


def _package_source() -> str:
    root = Path(presence_sync.__file__).parent
    return "\n".join(path.read_text() for path in sorted(root.rglob("*.py")))


def _without_class(source: str, name: str) -> str:
    return re.sub(rf"class {name}\(", "", source)

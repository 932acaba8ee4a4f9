"""Step 1 of ``load()``: reading the file, and remembering where each value was.

The YAML is composed into nodes (safe loader, YAML 1.2 scalars: see
``_Loader``) and turned into plain dicts, lists and scalars, while an
``Index`` keeps the line and column of every key and value by key path, e.g.
``("people", 2, "email")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import yaml

from presence_sync.errors import ConfigError, ConfigProblem, KeyPath, key_path

__all__ = ["Index", "Position", "Reader", "read"]

Position: TypeAlias = tuple[int | None, int | None]
"""1-based line and column; ``(None, None)`` when unknown."""

_NO_POSITION: Final = (None, None)

_TAG = "tag:yaml.org,2002:"
_MAX_NODES = 100_000
"""Aliases can multiply a small file into a huge tree; no real config comes near this."""


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 core-schema scalars.

    YAML 1.1 reads ``18:00`` as 1080 (base 60), ``0100`` as 64 (octal) and
    ``no`` as false. In a file of clock times, phone numbers and names that
    is a trap, so here only ``true``/``false``, decimal (or ``0o``/``0x``)
    integers and plain floats get a type and every other plain scalar stays a
    string. pydantic still accepts ``yes``/``on`` for boolean fields.
    """


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in {_TAG + "bool", _TAG + "int", _TAG + "float", _TAG + "timestamp"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _TAG + "int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    # SafeConstructor would read a leading 0 as octal; YAML 1.2 says decimal.
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "not an integer", node.start_mark
        ) from None


_Loader.add_constructor(_TAG + "int", _construct_int)


@dataclass
class Index:
    """Line and column (1-based) of each key and each value, by key path."""

    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath, *, key: bool = False) -> Position:
        """The position of ``path`` (its key with ``key=True``, where it has
        one), else that of the nearest ancestor, else ``(None, None)``."""
        exact = (self.keys.get(path) or self.values.get(path)) if key else self.values.get(path)
        if exact is not None:
            return exact
        while path:
            path = path[:-1]
            # An ancestor is best shown by the line that names it.
            found = self.keys.get(path) or self.values.get(path)
            if found is not None:
                return found
        return _NO_POSITION

    def alias(self, new: KeyPath, old: KeyPath) -> None:
        """Make ``new`` point where ``old`` is (``password`` read from ``password_file``)."""
        if old in self.values:
            self.values[new] = self.values[old]
        if old in self.keys:
            self.keys[new] = self.keys[old]


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class Reader:
    """Turns composed YAML nodes into plain data and fills the index."""

    def __init__(self, loader: _Loader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.index = Index()
        self.problems: list[ConfigProblem] = []
        # Values replaced by None after a problem, so no follow-up is reported.
        self.failed: set[KeyPath] = set()
        self._open: set[int] = set()
        self._count = 0

    def _problem(self, node: yaml.Node, path: KeyPath, message: str, *, lost: bool = True) -> None:
        line, column = _position(node)
        self.problems.append(ConfigProblem(self.file, line, column, key_path(path), message))
        if lost:
            self.failed.add(path)

    def value(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise ConfigError.single(self.file, "", "too many values (an alias loop?)")
        self.index.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if id(node) in self._open:
            self._problem(node, path, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
                return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
                return self._mapping(node, path)
            self._problem(node, path, f"unsupported YAML tag {node.tag}")
            return None
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        first_seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _TAG + "merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            name = str(key_node.value)
            if name in first_seen:
                self._problem(
                    key_node,
                    (*path, name),
                    f"duplicate key (first given at line {first_seen[name]})",
                    lost=False,
                )
            else:
                first_seen[name] = _position(key_node)[0]
        # ``<<: *anchor`` merges: the merged pairs come first, so keys written
        # in this mapping override them below.
        self.loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "keys must be plain names, not lists or mappings")
                continue
            # Keys are names, never numbers or booleans: ``no:`` stays "no".
            name = str(key_node.value)
            self.index.keys[(*path, name)] = _position(key_node)
            result[name] = self.value(value_node, (*path, name))
        return result


def read(path: Path, file: str) -> tuple[dict[str, Any], Reader]:
    """Read and parse the file. Raises ConfigError for anything that leaves
    no mapping to validate; lesser problems (a duplicate key) are left in
    the reader, beside the index of positions."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError.single(file, "", "file not found") from None
    except OSError as exc:
        raise ConfigError.single(file, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError.single(file, "", "the file is not UTF-8 text", line=line) from None

    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError.single(file, "", "the file is empty")
        if not isinstance(root, yaml.MappingNode):
            line, column = _position(root)
            raise ConfigError.single(
                file,
                "",
                "the top level must be a mapping of sections (nfon:, people:, targets:, ...)",
                line,
                column,
            )
        reader = Reader(loader, file)
        data = reader.value(root, ())
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError.single(
            file, "", f"YAML: character {exc.character!r} is not allowed", line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single(file, "", f"YAML: {exc}") from None
    except RecursionError:
        raise ConfigError.single(file, "", "YAML: values nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):  # the root was a tagged mapping (reported)
        raise ConfigError(reader.problems)
    return data, reader


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if mark is None:
        return ConfigProblem(file, None, None, "", message)
    return ConfigProblem(file, mark.line + 1, mark.column + 1, "", message)

"""Step 1 of ``load()``: reading the file, and remembering where each value was.

The YAML is composed into nodes (safe loader, YAML 1.2 scalars: see
``_Loader``) and turned into plain dicts, lists and scalars, while an
``Index`` keeps the line and column of every key and value by key path, e.g.
``("people", 2, "email")``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import yaml

from presence_sync.errors import ConfigError, ConfigProblem, KeyPath, key_path

__all__ = ["MAX_FILE_BYTES", "Index", "NotAFile", "Position", "Reader", "read", "read_bounded"]

Position: TypeAlias = tuple[int | None, int | None]
"""1-based line and column; ``(None, None)`` when unknown."""

_NO_POSITION: Final = (None, None)

_TAG = "tag:yaml.org,2002:"
_MAX_NODES = 100_000
"""Aliases can multiply a small file into a huge tree; no real config comes near this."""
_MAX_MERGED = 100_000
"""Pairs that ``<<`` merge keys may look at, the whole file together (see
``_Loader.flatten_mapping``); a real config merges a few dozen."""

MAX_FILE_BYTES: Final = 1 << 20
"""A configuration (or secret) file larger than this is refused unread: a
config for a thousand people is some 100 KiB."""


class NotAFile(OSError):
    """The path names something that is not a regular file (a directory, a
    FIFO, a device): reading it could block forever or never end."""


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> tuple[bytes, int]:
    """The bytes of the regular file ``path``, at most ``limit`` of them,
    and the ``st_mode`` of the file actually read.

    Raises ``FileNotFoundError`` and other ``OSError``s; ``NotAFile`` for a
    directory, FIFO, socket or device (checked before opening it, and again
    on the opened file, which is opened without blocking, so a FIFO put in
    its place meanwhile cannot hang us); ``ValueError`` when the file is
    larger than ``limit``.
    """
    _regular(os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        _regular(mode)
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {_size(limit)}")
    return raw, mode


def _regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise NotAFile(errno.EISDIR, "a directory, not a file")
    kind = {
        stat.S_IFIFO: "a FIFO (named pipe)",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
    }.get(stat.S_IFMT(mode), "not a regular file")
    raise NotAFile(errno.EINVAL, f"{kind}, not a regular file")


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"


class _TooMuch(Exception):
    """Alias expansion or merging would go past a bound; ``mark`` is where."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 core-schema scalars.

    YAML 1.1 reads ``18:00`` as 1080 (base 60), ``0100`` as 64 (octal) and
    ``no`` as false. In a file of clock times, phone numbers and names that
    is a trap, so here only ``true``/``false``, decimal (or ``0o``/``0x``)
    integers and plain floats get a type and every other plain scalar stays a
    string. pydantic still accepts ``yes``/``on`` for boolean fields.

    Merge keys (``<<: *defaults``) are flattened as each mapping is
    composed, under one budget for the whole file: PyYAML before 6.0.4
    copied the pairs of a mapping merged twice twice, so a nest of
    ``<<: [*a, *a]`` grew a 520-byte file into gigabytes, and even with
    that fixed a chain of merges costs the square of its length.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.merge_budget = _MAX_MERGED
        # The keys each mapping was written with, merge keys left out (by
        # id of the node): duplicates are found among these, never between a
        # merged key and the one that overrides it.
        self.own_keys: dict[int, list[yaml.Node]] = {}

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        self.own_keys[id(node)] = [k for k, _ in node.value if k.tag != _TAG + "merge"]
        self.flatten_mapping(node)
        return node

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """SafeConstructor's merge, counting every pair it copies from a
        merged mapping: more than ``_MAX_MERGED`` in the whole file raise
        ``_TooMuch``. A mapping given twice in one merge counts once, and a
        key already merged is not copied again (the first one wins, as the
        merge-key spec says). The merged mappings were composed, and so
        flattened, before this one: nothing here recurses."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        names: set[object] = set()
        sources: set[int] = {id(node)}
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == _TAG + "value":
                key_node.tag = _TAG + "str"
            if key_node.tag != _TAG + "merge":
                index += 1
                continue
            del node.value[index]
            if isinstance(value_node, yaml.MappingNode):
                parts: list[yaml.Node] = [value_node]
            elif isinstance(value_node, yaml.SequenceNode):
                parts = list(value_node.value)
            else:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a merge key (<<) takes a mapping or a list of mappings, "
                    f"not {_kind(value_node)}",
                    value_node.start_mark,
                )
            for part in parts:
                if not isinstance(part, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"a merge key (<<) takes mappings, not {_kind(part)}",
                        part.start_mark,
                    )
                if id(part) in sources:
                    continue
                sources.add(id(part))
                self.merge_budget -= len(part.value)
                if self.merge_budget < 0:
                    raise _TooMuch(
                        f"merge keys (<<) copy more than {_MAX_MERGED} values", part.start_mark
                    )
                for pair in part.value:
                    name = pair[0].value if isinstance(pair[0], yaml.ScalarNode) else id(pair[0])
                    if name not in names:
                        names.add(name)
                        merged.append(pair)
        if merged:
            node.value = merged + node.value


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return f"the value {str(node.value)[:40]!r}"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


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
            raise _TooMuch(
                f"aliases (*name) expand to more than {_MAX_NODES} values", node.start_mark
            )
        self.index.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node)
            except (ValueError, TypeError, ArithmeticError):
                # An explicit tag its text cannot be (``!!float Anna``):
                # SafeConstructor lets Python's own error out.
                tag = node.tag.removeprefix(_TAG)
                self._problem(node, path, f"not a valid !!{tag}: {str(node.value)[:40]!r}")
                return None
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
        for key_node in self.loader.own_keys.get(id(node), ()):
            if not isinstance(key_node, yaml.ScalarNode):
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
        # ``<<: *anchor`` was merged while composing: the merged pairs come
        # first, so keys written in this mapping override them below.
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
    the reader, beside the index of positions. Nothing else escapes for
    any content of the file: each YAML error becomes a problem with the
    line and column it names."""
    try:
        raw, _ = read_bounded(path)
    except FileNotFoundError:
        raise ConfigError.single(file, "", "file not found") from None
    except NotAFile as exc:
        raise ConfigError.single(file, "", f"cannot read the file: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError.single(file, "", f"the file is {exc}: is it the configuration?") from None
    except OSError as exc:
        raise ConfigError.single(file, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError.single(file, "", "the file is not UTF-8 text", line=line) from None

    loader: _Loader | None = None
    try:
        # Built inside the ``try``: the reader refuses control characters
        # (``\x00``, ``\x08``, ``\x7f``) already in its constructor.
        loader = _Loader(text)
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
        line, column = _line_column(text, exc.position)
        raise ConfigError.single(
            file, "", f"YAML: {_character(exc.character)} is not allowed in YAML", line, column
        ) from None
    except _TooMuch as exc:
        mark = exc.mark
        raise ConfigError.single(
            file,
            "",
            f"{exc} (an alias bomb?)",
            None if mark is None else mark.line + 1,
            None if mark is None else mark.column + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single(file, "", f"YAML: {exc}") from None
    except RecursionError:
        raise ConfigError.single(file, "", "YAML: values nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):  # the root was a tagged mapping (reported)
        raise ConfigError(reader.problems)
    return data, reader


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of the character at ``position``."""
    line_start = text.rfind("\n", 0, position) + 1
    return text.count("\n", 0, position) + 1, position - line_start + 1


def _character(code: int | str) -> str:
    """``the control character U+0008`` for what the YAML reader refused."""
    value = code if isinstance(code, int) else ord(code) if len(code) == 1 else -1
    if value < 0:
        return f"the character {code!r}"
    kind = "control character" if value < 0x20 or 0x7F <= value < 0xA0 else "character"
    return f"the {kind} U+{value:04X}"


def _yaml_problem(file: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    if mark is None:
        return ConfigProblem(file, None, None, "", message)
    return ConfigProblem(file, mark.line + 1, mark.column + 1, "", message)

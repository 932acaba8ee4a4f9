"""Step 3 of ``load()``: secret files. Every secret field ``x`` of any model
(``SecretStr``, or marked ``ALSO_FROM_FILE``) also accepts ``x_file``; the
file's content becomes the value. A relative path is taken from systemd's
``$CREDENTIALS_DIRECTORY`` when set, else from the config file's directory.
A secret file that group or others may read is used, with a warning.
"""

from __future__ import annotations

import logging
import stat
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, SecretStr

from presence_sync.config.reading import read_bounded
from presence_sync.sections import warn_if_exposed

__all__ = [
    "ALSO_FROM_FILE",
    "UNREAD_SECRET",
    "file_fields",
    "leaf_types",
    "read_secret",
    "warn_if_exposed",
]

log = logging.getLogger("presence_sync.config")


class _AlsoFromFile:
    """Type of ``ALSO_FROM_FILE``."""

    def __repr__(self) -> str:
        return "ALSO_FROM_FILE"


ALSO_FROM_FILE: Final = _AlsoFromFile()
"""Marks a field that is no secret but may also be read from ``<name>_file``:
``username: Annotated[str, ALSO_FROM_FILE]``. ``SecretStr`` fields need no mark."""

UNREAD_SECRET: Final = "(not read by this command)"  # noqa: S105 (a placeholder)
"""The value of an ``x_file`` secret that ``load(..., secrets=...)`` left unread."""

_MAX_SECRET_BYTES = 1 << 20


def leaf_types(annotation: Any) -> list[Any]:
    """The alternatives of a type, with ``Annotated`` and unions unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return leaf_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in leaf_types(arg)]
    return [annotation]


def file_fields(model: type[BaseModel]) -> list[str]:
    """Fields of ``model`` that also accept ``<name>_file``."""
    return [
        name
        for name, info in model.model_fields.items()
        if SecretStr in leaf_types(info.annotation) or ALSO_FROM_FILE in info.metadata
    ]


def read_secret(path: Path, *, key: str = "") -> str:
    """The file's text without trailing newlines. Raises OSError or ValueError.

    Logs a warning (naming ``path`` and the config ``key`` that points to it,
    never the content) when group or others may read the file.
    """
    try:
        # Regular files only (a FIFO would hang us); the mode is that of the
        # file actually opened, not of a name that may change.
        raw, mode = read_bounded(path, _MAX_SECRET_BYTES)
    except ValueError:
        raise ValueError(f"{path} is larger than 1 MiB") from None
    warn_if_exposed(path, stat.S_IMODE(mode), key=key)
    try:
        text = raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text

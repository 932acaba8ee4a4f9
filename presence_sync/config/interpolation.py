"""Step 2 of ``load()``: ``${VAR}``, ``${VAR:-default}`` and ``$$`` in every string value."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["interpolate"]

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MALFORMED = "malformed ${...}: write ${NAME} or ${NAME:-default}, and $$ for a literal $"


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Expand ``${NAME}``, ``${NAME:-default}`` and ``$$`` in ``text``.

    ``${NAME:-default}`` uses the default when ``NAME`` is unset *or empty*
    (as the shell does); the default may itself contain ``${...}``. ``$$`` is
    a literal ``$``; a ``$`` before anything but ``{`` or ``$`` stays as it is.
    Raises ``ValueError`` naming the missing variable or the malformation;
    the message never quotes ``text`` (it may be a secret).
    """
    result, _ = _expand(text, 0, environ, nested=False, strict=True)
    return result


def _expand(
    text: str, pos: int, environ: Mapping[str, str], *, nested: bool, strict: bool
) -> tuple[str, int]:
    """Expand from ``pos`` to the end, or (``nested``) to the ``}`` closing a
    default. ``strict=False`` parses a default that will not be used, so a
    variable missing in it is no error."""
    out: list[str] = []
    i = pos
    while i < len(text):
        char = text[i]
        if nested and char == "}":
            return "".join(out), i + 1
        if char != "$" or text[i + 1 : i + 2] not in ("$", "{"):
            out.append(char)
            i += 1
            continue
        if text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        match = _VAR_NAME.match(text, i + 2)
        if match is None:
            raise ValueError(_MALFORMED)
        name, i = match.group(), match.end()
        value = environ.get(name)
        if text.startswith("}", i):
            if value is None and strict:
                raise ValueError(f"environment variable {name} is not set")
            out.append(value or "")
            i += 1
        elif text.startswith(":-", i):
            default, i = _expand(text, i + 2, environ, nested=True, strict=strict and not value)
            out.append(value or default)
        else:
            raise ValueError(_MALFORMED)
    if nested:
        raise ValueError(_MALFORMED)
    return "".join(out), i

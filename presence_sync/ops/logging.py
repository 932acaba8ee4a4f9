"""Logging to stdout for journald, a terminal or a log shipper.

One line per unit of work, ``key=value`` context appended (JSON: one object
per line, the context as its fields). Time stamps are local time with their
zone offset (``2026-03-02T08:25:01.250+01:00``), as every time shown to
people is, so a log line and a status page agree. Under journald
(``$JOURNAL_STREAM`` set) each line starts with a ``<N>`` syslog priority so
the journal keeps levels (and journald stamps the time).

Lines an admin or a test looks for carry an ``event`` field with a stable
name (``reload_refused``, ``nfon_call``, ...): match on that and the other
fields, never on the wording of the message. Libraries that log every request at INFO (httpx)
are turned down to WARNING: their lines would repeat ours and could carry
tokens in URLs.

Text from NFON, Graph and Slack is untrusted and reaches messages and fields
(an error text, a name in a status). Both formatters pass the whole message
and every field through ``printable``, so a record is one line whatever a
call site put in it: a newline and ``<2>`` in a Slack error cannot make
journald read a forged critical entry, and an escape sequence in an NFON name
cannot recolour a terminal. A traceback keeps its lines (the frames are our
own code), with each exception's text escaped and, under journald, each line
carrying the record's priority.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "Throttle",
    "configure",
    "kv",
    "local_time",
    "printable",
]

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_NOISY = ("httpx", "httpcore", "apscheduler", "uvicorn.access", "msal", "urllib3")
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("applied", extra=kv(target="slack"))``."""
    return {"ctx": fields}


def local_time(created: float) -> str:
    """``record.created`` as ISO 8601 local time with milliseconds and the
    zone offset: ``2026-03-02T08:25:01.250+01:00``."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _escaped(char: str) -> bool:
    # Controls (C0 with \n \r \t ESC, DEL, C1), format characters (the
    # bidi overrides and isolates among them), surrogates, private use,
    # unassigned, and the Unicode line and paragraph separators.
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


def printable(text: str) -> str:
    """``text`` safe for one log line or a terminal: every control, format
    and separator character written as its Python escape (``\\n``,
    ``\\x1b``, ``\\u2028``, ``\\u202e``); everything else, accents and
    scripts included, unchanged. A backslash stays as it is."""
    if text.isprintable():  # the common case, in C: spaces of other kinds are kept too
        return text
    return "".join(c.encode("unicode_escape").decode() if _escaped(c) else c for c in text)


def _context(record: logging.LogRecord) -> Mapping[str, Any]:
    ctx = getattr(record, "ctx", None)
    return ctx if isinstance(ctx, Mapping) else {}


def _fmt_value(value: Any) -> str:
    # A list (several problems) stays one line: "a; b" (JSON keeps the array).
    # A value with a space, quote, backslash or escaped character is quoted
    # as a Python or JSON string would be: "a\\b" is a backslash, "a\nb" a
    # newline that was in the text.
    text = "; ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _safe(value: Any) -> Any:
    """A JSON field's value with every string in it through ``printable``."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {printable(str(k)): _safe(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return printable(str(value))


_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"


def _traceback_lines(exc: BaseException) -> list[str]:
    """The traceback of ``exc`` and the exceptions it was raised from, as
    Python prints it, with each exception's own text through ``printable``:
    frames and source lines are ours, the text may be a remote answer."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    lines: list[str] = []
    for each, following in reversed(chain):
        if each.__traceback__ is not None:
            lines.append("Traceback (most recent call last):")
            frames = traceback.format_tb(each.__traceback__)
            lines.extend(part for chunk in frames for part in chunk.splitlines())
        kind = type(each)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        text = printable(str(each))
        lines.append(f"{name}: {text}" if text else name)
        if following:
            lines.extend(("", following, ""))
    return lines


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``, with a syslog priority prefix
    under journald and a timestamp otherwise (journald stamps its own)."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts = [printable(record.getMessage())]
        parts.extend(f"{printable(str(k))}={_fmt_value(v)}" for k, v in _context(record).items())
        line = " ".join(parts)
        # Under journald every line of a record (a traceback's too) starts
        # with the record's priority: the journal keeps the level of each,
        # and no text inside a line can set one.
        prio = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>" if self.journald else ""
        if self.journald:
            head = f"{prio}{record.name}: "
        else:
            head = f"{local_time(record.created)} {record.levelname:<7} {record.name}: "
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return head + line
        return "\n".join([head + line, *(prio + text for text in _traceback_lines(exc))])


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ``ts`` (ISO 8601 with the
    zone offset), ``level``, ``logger``, ``msg`` and the context's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": local_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": printable(record.getMessage()),
        }
        doc.update(_safe(dict(_context(record))))
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            doc["exc"] = "\n".join(_traceback_lines(exc))
        return json.dumps(doc, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Set up the root logger once: ``fmt`` is ``text``, ``json`` or ``auto``
    (text, with syslog priorities when journald reads our stdout)."""
    handler = logging.StreamHandler(sys.stdout)
    journald = bool(os.environ.get("JOURNAL_STREAM")) and fmt == "auto"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(journald))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


class Throttle:
    """Lets one log line per ``key`` through every ``interval`` seconds and
    counts what it held back, so a flood of bad frames costs one line a minute."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float | None = None) -> int | None:
        """``None`` to stay quiet, else how many lines were held back since
        the last one that got through."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

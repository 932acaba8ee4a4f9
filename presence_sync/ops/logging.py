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
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "Throttle", "configure", "kv", "local_time"]

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


def _context(record: logging.LogRecord) -> Mapping[str, Any]:
    ctx = getattr(record, "ctx", None)
    return ctx if isinstance(ctx, Mapping) else {}


def _fmt_value(value: Any) -> str:
    # A list (several problems) stays one line: "a; b" (JSON keeps the array).
    text = "; ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...``, with a syslog priority prefix
    under journald and a timestamp otherwise (journald stamps its own)."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts = [record.getMessage()]
        parts.extend(f"{k}={_fmt_value(v)}" for k, v in _context(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.journald:
            prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
            return f"<{prio}>{record.name}: {line}"
        return f"{local_time(record.created)} {record.levelname:<7} {record.name}: {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ``ts`` (ISO 8601 with the
    zone offset), ``level``, ``logger``, ``msg`` and the context's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": local_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


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

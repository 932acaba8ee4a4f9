"""Every error presence-sync raises on purpose, and what the caller should do.

```
PresenceSyncError
├── ConfigError            the admin's input is wrong; print it, no traceback, exit 78
├── AuthError              credentials rejected; stop hammering, alert loudly
│   └── CredentialsRejected  (nfon.auth) NFON refused the login; wait ``retry_in`` seconds
├── UpstreamError          a remote API misbehaved
│   ├── TransientError     try again later (``retry_after`` seconds when the server said)
│   └── PermanentError     this request will never succeed as it is; do not retry it
│       └── SlackRefused   (targets.slack_client) Slack said no for this person (``error``)
├── StoreError             the state database cannot be used (newer schema, damaged, full)
├── PauseError             a pause or resume cannot be done; say why (the API: 4xx)
│   ├── UnknownPerson      (pauses) nobody configured is that person: 404
│   └── BadPause           (pauses) no such target, or a duration out of range: 400
├── TargetBuildError       (app) a target cannot be built or run; refuse the start or reload
├── ReloadRefused          (app) a reload cannot be applied; keep running as before
├── DaemonDown             (tools.client) nothing answers at the daemon's address
├── ApiError               (tools.client) the daemon answered an admin's command with an error
└── TestCallFailed         (tools.testcall) a step of ``check --test-call`` did not happen
```

The classes marked with a module live there, beside what raises them; the
others live here. ``tests/unit/test_errors.py`` compares this drawing with
the classes themselves, so it stays the truth.

``ConfigError`` carries where the problem is (file, line, key path) so that the
CLI can print ``config.yaml:12:5: nfon.base_url: ...``. Every stage that checks
the file (the config loader, the rules compiler) spells key paths with
``key_path()`` and unknown names with ``unknown()``, so an admin reads one
style of message whichever stage found the mistake. Targets translate their
client library's errors into ``TransientError``/``PermanentError``/``AuthError``;
the engine knows nothing else.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "AuthError",
    "ConfigError",
    "ConfigProblem",
    "KeyPath",
    "PauseError",
    "PermanentError",
    "PresenceSyncError",
    "StoreError",
    "TransientError",
    "UpstreamError",
    "closest",
    "did_you_mean",
    "key_path",
    "unknown",
]

EX_CONFIG = 78
"""sysexits.h ``EX_CONFIG``; the systemd unit stops restarting on it."""


KeyPath: TypeAlias = tuple[str | int, ...]
"""Where a value sits in the file: ``("people", 2, "email")`` is ``people[2].email``."""

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(path: Sequence[str | int]) -> str:
    """A key path as an admin reads it: ``("people", 2, "email")`` →
    ``people[2].email``; a key that is not a plain name is quoted
    (``rules[0].set["*"]``)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word``, or None when none is close enough to
    be a likely typo of it."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean "username"?`` for the choice closest to ``word``, or
    None when none is close enough to be a likely typo."""
    close = closest(word, choices)
    return f'did you mean "{close}"?' if close is not None else None


def unknown(what: str, name: object, allowed: Iterable[str]) -> str:
    """The message for a name that is none of ``allowed``: a suggestion when
    one is close (``unknown key "usernme" (did you mean "username"?)``),
    else the allowed names."""
    choices = list(allowed)
    hint = did_you_mean(str(name), choices)
    if hint is not None:
        return f'unknown {what} "{name}" ({hint})'
    if choices:
        return f'unknown {what} "{name}" (expected one of: {", ".join(choices)})'
    return f'unknown {what} "{name}"'


class PresenceSyncError(Exception):
    """Base of every error raised on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration file."""

    file: str
    line: int | None
    column: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {key}{self.message}"


class ConfigError(PresenceSyncError):
    """The configuration is invalid. ``problems`` lists every finding, each
    with file, line and key path; ``str()`` is what the admin should read."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(
        cls,
        file: str,
        key: str,
        message: str,
        line: int | None = None,
        column: int | None = None,
    ) -> ConfigError:
        return cls([ConfigProblem(file, line, column, key, message)])


class AuthError(PresenceSyncError):
    """A remote service rejected our credentials. Retrying at once will not
    help; callers back off for minutes and log loudly."""


class UpstreamError(PresenceSyncError):
    """A remote API answered with an error or not at all."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None):
        self.status = status
        self.request_id = request_id
        super().__init__(message)


class TransientError(UpstreamError):
    """Worth retrying: timeouts, connection failures, 5xx, 429.

    ``retry_after`` is the server's own hint in seconds; when set, the whole
    target pauses (a 429 speaks for every key of that API), not just this key.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, request_id=request_id)


class PermanentError(UpstreamError):
    """Will not succeed by retrying (4xx other than 401/408/429): the key is
    parked until what we want for it changes."""


class StoreError(PresenceSyncError):
    """The store cannot be used as it is: the message says what the admin
    should do (upgrade, move a damaged file aside, free disk space)."""


class PauseError(PresenceSyncError):
    """A pause or resume that cannot be done; the message says why in words
    an admin understands (``pauses`` raises its two kinds)."""

"""The configuration: one YAML file in, validated and resolved once.

``resolve()`` returns a ``Loaded``: the frozen ``Settings``, the rules
compiled, each target's class; ``load()`` is its ``Settings`` alone.

This package owns reading the file, ``${VAR}`` interpolation, ``x_file``
secrets, the settings models, and every message an admin reads about a
mistake in the file. ``resolve()`` works in four steps, one module each:

1. **Reading and positions** (``reading``). The YAML is composed into
   nodes (safe loader, YAML 1.2 scalars) and turned into plain dicts, lists
   and scalars, while an index keeps the line and column of every key and
   value by key path, e.g. ``("people", 2, "email")``.
2. **Interpolation** (``interpolation``). ``${VAR}``, ``${VAR:-default}``
   and ``$$`` in every string value.
3. **Secret files** (``secrets``). Every secret field ``x`` of any model
   (found by looking at the model's fields, so target options get it too)
   also accepts ``x_file``; the file's content becomes the value.
4. **Models** (``models``). pydantic validates the whole file in one go;
   each target is validated in a second phase by the options model of its
   kind. ``loader`` runs the four steps and turns every pydantic error into
   a ``ConfigProblem`` with file, line, column and key path.

All problems found are raised together in one ``errors.ConfigError``. A
mistake in the file never ends in a traceback. Import from
``presence_sync.config``; the submodules are its inside.
"""

from presence_sync.config.interpolation import interpolate
from presence_sync.config.loader import Loaded, load, resolve
from presence_sync.config.models import (
    DEFAULT_NFON_URL,
    DEFAULT_STATE_PATH,
    DirectorySettings,
    Duration,
    EntraGroupSettings,
    HttpSettings,
    HttpURL,
    LoggingSettings,
    MicrosoftSettings,
    NfonSettings,
    PersonSettings,
    ResyncSettings,
    Settings,
    SlackSettings,
    StateSettings,
    TargetSpec,
    TlsSettings,
    normalise_number,
    parse_duration,
)
from presence_sync.config.secrets import ALSO_FROM_FILE
from presence_sync.errors import KeyPath

__all__ = [
    "ALSO_FROM_FILE",
    "DEFAULT_NFON_URL",
    "DEFAULT_STATE_PATH",
    "DirectorySettings",
    "Duration",
    "EntraGroupSettings",
    "HttpSettings",
    "HttpURL",
    "KeyPath",
    "Loaded",
    "LoggingSettings",
    "MicrosoftSettings",
    "NfonSettings",
    "PersonSettings",
    "ResyncSettings",
    "Settings",
    "SlackSettings",
    "StateSettings",
    "TargetSpec",
    "TlsSettings",
    "interpolate",
    "load",
    "normalise_number",
    "parse_duration",
    "resolve",
]

"""The NFON CTI API client: login and token renewal, snapshot, directory, and
the state and call event streams, translated into the domain model.

```
async with NfonClient(base_url, "K1234", username, password) as nfon:
    people = await nfon.directory()
    async for item in nfon.states():   # FullState, then StateEvent per change
        ...
```

Errors raised on purpose are those of ``presence_sync.errors`` (re-exported
here), plus ``CredentialsRejected``, the ``AuthError`` for refused credentials.
"""

from presence_sync.errors import AuthError, PermanentError, TransientError, UpstreamError
from presence_sync.model import CallEvent, ExtensionInfo, StateEvent
from presence_sync.nfon.auth import CredentialsRejected, NfonAuth
from presence_sync.nfon.client import NfonClient
from presence_sync.nfon.schema import FrameError
from presence_sync.nfon.stream import CallItem, Connected, FullState, SSEDecoder, StateItem

__all__ = [
    "AuthError",
    "CallEvent",
    "CallItem",
    "Connected",
    "CredentialsRejected",
    "ExtensionInfo",
    "FrameError",
    "FullState",
    "NfonAuth",
    "NfonClient",
    "PermanentError",
    "SSEDecoder",
    "StateEvent",
    "StateItem",
    "TransientError",
    "UpstreamError",
]

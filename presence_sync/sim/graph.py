"""Microsoft Graph simulator: Entra ID's client-credentials endpoints and
the Graph v1.0 calls presence-sync makes, over HTTPS on loopback with a CA
made at start, keeping the published contract
(``/work/shared/reference/microsoft-graph.md``; ``docs/simulators.md`` says
what is and is not simulated).

``GraphSim`` holds the state (tenant, app registrations, users, presence,
calendars, the request log, injected failures) behind one lock, so its
methods may be called from any thread, including while it serves.
``serve_in_thread``/``serve`` run it and yield a ``GraphHandle`` with the
URLs and the CA file a client needs. Modules: identity in
``graph_identity.py``, presence in ``graph_presence.py``, calendars in
``graph_events.py``, shared wire pieces in ``graph_wire.py``, routes in
``graph_http.py`` and ``graph_control.py``, certificates in ``certs.py``,
the ``presence-sync sim microsoft`` command in ``graph_cli.py``.

Time is ``clock.now()`` (default: the system clock); pass a ``SimClock`` and
move it to expire tokens, sessions and the presence budget's window.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from presence_sync.sim import serve as _serving
from presence_sync.sim.certs import LoopbackTls
from presence_sync.sim.graph_http import build_app
from presence_sync.sim.graph_identity import GRAPH_RESOURCE
from presence_sync.sim.graph_sim import ALL_ROLES, GraphSim, RecordedRequest, SimClock, User

__all__ = [
    "ALL_ROLES",
    "GraphHandle",
    "GraphSim",
    "RecordedRequest",
    "SimClock",
    "User",
    "serve",
    "serve_in_thread",
]


@dataclass(frozen=True)
class GraphHandle:
    """A simulator being served over HTTPS."""

    origin: str
    """``https://127.0.0.1:PORT``: ``microsoft.authority`` and ``microsoft.graph_url``."""
    ca_path: Path
    """The CA certificate (PEM) to trust: ``tls.ca_bundle``."""
    sim: GraphSim
    running: _serving.Running

    @property
    def graph_url(self) -> str:
        return self.origin

    @property
    def authority_host(self) -> str:
        return self.origin

    def authority(self, tenant: str | None = None) -> str:
        """``https://127.0.0.1:PORT/<tenant>``: MSAL's ``authority``."""
        return f"{self.origin}/{tenant or self.sim.tenant}"

    @property
    def scope(self) -> str:
        """The scope to ask for: the real Graph's ``.default`` (also accepted:
        ``{origin}/.default``)."""
        return f"{GRAPH_RESOURCE}/.default"


@contextlib.contextmanager
def _tls_files(directory: Path | None, host: str) -> Iterator[LoopbackTls]:
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="graph-sim-")))
        hosts = tuple(dict.fromkeys((host, "127.0.0.1", "localhost", "::1")))
        yield LoopbackTls.create(
            directory, hosts, stem="graph-sim", ca_name="presence-sync Graph simulator CA"
        )


@contextlib.contextmanager
def serve_in_thread(
    sim: GraphSim, host: str = "127.0.0.1", port: int = 0, tls_dir: Path | None = None
) -> Iterator[GraphHandle]:
    """Serve ``sim`` over HTTPS from a thread of its own for the ``with``
    block. The CA and server certificate go to ``tls_dir`` (a temporary
    directory, removed afterwards, if None)."""
    with (
        _tls_files(tls_dir, host) as tls,
        _serving.serve_in_thread(build_app(sim), host, port, **tls.serve_options()) as running,
    ):
        sim.accept_resource(running.origin)
        yield GraphHandle(running.origin, tls.ca_file, sim, running)


@contextlib.asynccontextmanager
async def serve(
    sim: GraphSim, host: str = "127.0.0.1", port: int = 0, tls_dir: Path | None = None
) -> AsyncIterator[GraphHandle]:
    """Serve ``sim`` over HTTPS on the running loop for the ``async with`` block."""
    with _tls_files(tls_dir, host) as tls:
        async with _serving.serve(build_app(sim), host, port, **tls.serve_options()) as running:
            sim.accept_resource(running.origin)
            yield GraphHandle(running.origin, tls.ca_file, sim, running)

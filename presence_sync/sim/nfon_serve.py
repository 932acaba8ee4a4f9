"""Running an NFON simulator on a loopback socket, and driving it from any
thread: ``serve_in_thread``, ``serve``, ``Server``, the ``SimHandle`` they
yield and its thread-safe ``SimProxy``. Import these from
``presence_sync.sim.nfon``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from presence_sync.sim import serve as serving
from presence_sync.sim.nfon_http import build_app
from presence_sync.sim.nfon_sim import NfonSim

__all__ = ["Server", "SimHandle", "SimProxy", "serve", "serve_in_thread"]

T = TypeVar("T")

if TYPE_CHECKING:
    # For the type checker a proxy *is* an NfonSim: every forwarded call is
    # checked against the simulator's own signature, none is restated here.
    _SimFace = NfonSim
else:
    _SimFace = object


class SimProxy(serving.LoopProxy[NfonSim], _SimFace):
    """Thread-safe face of a served ``NfonSim``.

    Every public attribute of the simulator is forwarded (see
    ``serve.LoopProxy``): reading it, or calling it if it is a method, runs on
    the simulator's loop, directly when the caller is already there, and
    returns the result or raises the exception of the real thing.
    ``run(fn)`` runs ``fn(sim)`` there in one hop, e.g. a burst of changes
    instead of one thread round trip each.

    Nothing is restated: the proxy is generated from the simulator at
    runtime, and for mypy it inherits ``NfonSim``'s signatures (a base class
    only under ``TYPE_CHECKING``). So ``isinstance(proxy, NfonSim)`` is
    false at runtime although the type checker treats it as true; pass the
    proxy where an ``NfonSim`` is read or driven, never where one is served.
    """

    def __init__(self, sim: NfonSim, running: serving.Running) -> None:
        serving.LoopProxy.__init__(self, sim, running)

    def run(self, fn: Callable[[NfonSim], T]) -> T:
        """Run ``fn(sim)`` on the simulator's loop and return its result."""
        return serving.LoopProxy.run(self, fn)


@dataclass(frozen=True)
class SimHandle:
    """A simulator being served: where to reach it and how to drive it."""

    base_url: str
    """``http://127.0.0.1:PORT/v1``: the NFON client's base URL."""
    origin: str
    """``http://127.0.0.1:PORT``: the control API lives at ``{origin}/_sim/``."""
    sim: SimProxy
    running: serving.Running


def _handle(sim: NfonSim, running: serving.Running) -> SimHandle:
    return SimHandle(
        base_url=f"{running.origin}/v1",
        origin=running.origin,
        sim=SimProxy(sim, running),
        running=running,
    )


@contextlib.contextmanager
def serve_in_thread(sim: NfonSim, host: str = "127.0.0.1", port: int = 0) -> Iterator[SimHandle]:
    """Serve ``sim`` from a thread of its own until the ``with`` block ends.
    The socket is listening when the block starts; on exit streams are
    closed and traffic stopped before the server shuts down."""
    sim.start_serving()
    with serving.serve_in_thread(build_app(sim), host, port) as running:
        try:
            yield _handle(sim, running)
        finally:
            running.call(sim.shutdown)


@contextlib.asynccontextmanager
async def serve(sim: NfonSim, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[SimHandle]:
    """Serve ``sim`` on the running event loop for the ``async with`` block."""
    sim.start_serving()
    async with serving.serve(build_app(sim), host, port) as running:
        try:
            yield _handle(sim, running)
        finally:
            sim.shutdown()


class Server:
    """``with Server(sim) as h`` serves in a thread, ``async with Server(sim)
    as h`` on the current loop; either way ``h`` is a ``SimHandle``."""

    def __init__(self, sim: NfonSim, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self._sync: contextlib.AbstractContextManager[SimHandle] | None = None
        self._async: contextlib.AbstractAsyncContextManager[SimHandle] | None = None

    def __enter__(self) -> SimHandle:
        if self._sync is not None or self._async is not None:
            raise RuntimeError("this Server is already running")
        self._sync = serve_in_thread(self.sim, self.host, self.port)
        return self._sync.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cm, self._sync = self._sync, None
        if cm is not None:
            cm.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> SimHandle:
        if self._sync is not None or self._async is not None:
            raise RuntimeError("this Server is already running")
        self._async = serve(self.sim, self.host, self.port)
        return await self._async.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cm, self._async = self._async, None
        if cm is not None:
            await cm.__aexit__(exc_type, exc, tb)

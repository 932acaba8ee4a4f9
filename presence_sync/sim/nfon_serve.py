"""Running an NFON simulator on a loopback socket, and driving it from any
thread: ``serve_in_thread``, ``serve``, ``Server``, the ``SimHandle`` they
yield and its thread-safe ``SimProxy``. Import these from
``presence_sync.sim.nfon``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from presence_sync.sim import _serve

if TYPE_CHECKING:
    from presence_sync.sim.nfon import NfonSim, NfonStats

__all__ = ["Server", "SimHandle", "SimProxy", "serve", "serve_in_thread"]

T = TypeVar("T")


class SimProxy:
    """Thread-safe face of a served ``NfonSim``: each method runs the
    simulator's method on its loop (directly when already on it) and returns
    its result or raises its exception."""

    def __init__(self, sim: NfonSim, running: _serve.Running) -> None:
        self._sim = sim
        self._running = running

    def __repr__(self) -> str:
        return f"SimProxy({self._sim!r})"

    @property
    def customer(self) -> str:
        """The simulated K-Account."""
        return self._sim.customer

    @property
    def username(self) -> str:
        """The API username the simulator accepts."""
        return self._sim.username

    @property
    def password(self) -> str:
        """The API password the simulator accepts."""
        return self._sim.password

    def run(self, fn: Callable[[NfonSim], T]) -> T:
        """Run ``fn(sim)`` on the simulator's loop, e.g. a burst of changes
        in one hop instead of one thread round trip per change."""
        return self._running.call(fn, self._sim)

    def _do(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._running.call(functools.partial(fn, *args, **kwargs))

    def set_state(
        self, extension: str, line: str | None = None, presence: str | None = None
    ) -> None:
        """See ``NfonSim.set_state``."""
        self._do(self._sim.set_state, extension, line, presence)

    def state_of(self, extension: str) -> dict[str, str]:
        """See ``NfonSim.state_of``."""
        return self._do(self._sim.state_of, extension)

    def states(self) -> list[dict[str, str]]:
        """See ``NfonSim.states``."""
        return self._do(self._sim.states)

    def extensions(self) -> list[tuple[str, str]]:
        """See ``NfonSim.extensions``."""
        return self._do(self._sim.extensions)

    def add_extension(self, number: str, name: str) -> None:
        """See ``NfonSim.add_extension``."""
        self._do(self._sim.add_extension, number, name)

    def remove_extension(self, number: str) -> None:
        """See ``NfonSim.remove_extension``."""
        self._do(self._sim.remove_extension, number)

    def ring(
        self,
        extension: str,
        *,
        direction: str = "inbound",
        party: str = "4930123456",
        external: bool = True,
    ) -> str:
        """See ``NfonSim.ring``."""
        return self._do(
            self._sim.ring, extension, direction=direction, party=party, external=external
        )

    def answer(self, uuid: str) -> None:
        """See ``NfonSim.answer``."""
        self._do(self._sim.answer, uuid)

    def hangup(self, uuid: str) -> None:
        """See ``NfonSim.hangup``."""
        self._do(self._sim.hangup, uuid)

    def call(
        self,
        extension: str,
        *,
        direction: str = "inbound",
        party: str = "4930123456",
        external: bool = True,
    ) -> str:
        """See ``NfonSim.call``."""
        return self._do(
            self._sim.call, extension, direction=direction, party=party, external=external
        )

    def active_calls(self) -> list[str]:
        """See ``NfonSim.active_calls``."""
        return self._do(self._sim.active_calls)

    def drop_streams(self) -> None:
        """See ``NfonSim.drop_streams``."""
        self._do(self._sim.drop_streams)

    def refuse_logins(self, on: bool = True) -> None:
        """See ``NfonSim.refuse_logins``."""
        self._do(self._sim.refuse_logins, on)

    def fail_next(self, path_prefix: str, status: int = 503, count: int = 1) -> None:
        """See ``NfonSim.fail_next``."""
        self._do(self._sim.fail_next, path_prefix, status, count)

    def clear_failures(self) -> None:
        """See ``NfonSim.clear_failures``."""
        self._do(self._sim.clear_failures)

    def hold_stream(self, stream: str, on: bool = True) -> None:
        """See ``NfonSim.hold_stream``."""
        self._do(self._sim.hold_stream, stream, on)

    def expire_tokens(self, *, refresh: bool = False) -> None:
        """See ``NfonSim.expire_tokens``."""
        self._do(self._sim.expire_tokens, refresh=refresh)

    def inject_raw(self, stream: str, text: str) -> int:
        """See ``NfonSim.inject_raw``."""
        return self._do(self._sim.inject_raw, stream, text)

    def start_traffic(
        self, rate: float, *, mean_call_seconds: float = 3.0, seed: int | None = None
    ) -> None:
        """See ``NfonSim.start_traffic``."""
        self._do(self._sim.start_traffic, rate, mean_call_seconds=mean_call_seconds, seed=seed)

    def stop_traffic(self) -> None:
        """See ``NfonSim.stop_traffic``."""
        self._do(self._sim.stop_traffic)

    @property
    def stats(self) -> NfonStats:
        """See ``NfonSim.stats``."""
        return self._do(lambda: self._sim.stats)


@dataclass(frozen=True)
class SimHandle:
    """A simulator being served: where to reach it and how to drive it."""

    base_url: str
    """``http://127.0.0.1:PORT/v1``: the NFON client's base URL."""
    origin: str
    """``http://127.0.0.1:PORT``: the control API lives at ``{origin}/_sim/``."""
    sim: SimProxy
    running: _serve.Running


def _handle(sim: NfonSim, running: _serve.Running) -> SimHandle:
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
    sim._start_serving()
    with _serve.serve_in_thread(sim.app, host, port) as running:
        try:
            yield _handle(sim, running)
        finally:
            running.call(sim._shutdown)


@contextlib.asynccontextmanager
async def serve(sim: NfonSim, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[SimHandle]:
    """Serve ``sim`` on the running event loop for the ``async with`` block."""
    sim._start_serving()
    async with _serve.serve(sim.app, host, port) as running:
        try:
            yield _handle(sim, running)
        finally:
            sim._shutdown()


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

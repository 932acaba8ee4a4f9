"""Run a simulator's ASGI app on a loopback socket: in this event loop, or in a
thread of its own so that synchronous tests and other processes can use it.

Both bind the socket first (port 0 picks a free port), so the URL is known
before the first request and no test races a server that is still starting.
``ssl_certfile``/``ssl_keyfile`` (passed through to uvicorn) serve HTTPS, and
``Running.origin`` then says ``https``.

A socket that cannot be bound raises ``CannotListen`` (an ``OSError``) whose
message tells an admin what to do; the ``sim`` commands show it as a usage
error.

``LoopProxy`` drives an object that lives on a server's loop from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import uvicorn

from presence_sync.net import bind

__all__ = ["CannotListen", "LoopProxy", "Running", "bind", "listen", "serve", "serve_in_thread"]

T = TypeVar("T")
S = TypeVar("S")


class CannotListen(OSError):
    """A simulator's address cannot be listened on; the message says why in
    an admin's words (port taken, not an address of this machine, ...)."""


def _why(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use (another program listens there): choose another "
            "with --port, or --port 0 for any free port"
        )
    if exc.errno == errno.EACCES:
        return f"port {port} needs administrator rights: choose one above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host!r}: unknown host name"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """``bind``, raising ``CannotListen`` with a readable reason."""
    try:
        return bind(host, port)
    except OverflowError:
        raise CannotListen(f"not a port number: {port}") from None
    except OSError as exc:
        raise CannotListen(exc.errno, _why(host, port, exc)) from exc


def _config(app: Any, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        **kwargs,
    )


def _scheme(kwargs: dict[str, Any]) -> str:
    return "https" if kwargs.get("ssl_certfile") else "http"


@dataclass
class Running:
    """A server that is accepting connections at ``host:port``."""

    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    scheme: str = "http"
    """``https`` when served with a certificate."""

    @property
    def origin(self) -> str:
        """``scheme://host:port``, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the server's loop and return its result.
        From another thread this waits for it; on the loop itself it just calls."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return fn(*args)
        done: Future[T] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller's thread
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=30)

    def run_coro(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the server's loop from another thread."""

        async def wrap() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout=60)


@contextlib.asynccontextmanager
async def serve(
    app: Any, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> AsyncIterator[Running]:
    """Serve ``app`` on this loop for the duration of the ``async with``."""
    sock = listen(host, port)
    server = uvicorn.Server(_config(app, **kwargs))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        bound = sock.getsockname()
        yield Running(bound[0], bound[1], asyncio.get_running_loop(), _scheme(kwargs))
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_start: Callable[[asyncio.AbstractEventLoop], None] | None = None,
    **kwargs: Any,
) -> Iterator[Running]:
    """Serve ``app`` from a daemon thread with its own event loop.

    ``on_start`` runs on that loop before the first request (simulators start
    their background tasks there).
    """
    sock = listen(host, port)
    server = uvicorn.Server(_config(app, **kwargs))
    ready: Future[asyncio.AbstractEventLoop] = Future()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if on_start is not None:
            on_start(loop)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        # uvicorn exposes readiness only as a flag, so it is polled briefly.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if task.done():
            ready.set_exception(task.exception() or RuntimeError("server stopped"))
            return
        ready.set_result(loop)
        await task

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="sim-server", daemon=True)
    thread.start()
    loop = ready.result(timeout=30)
    bound = sock.getsockname()
    try:
        yield Running(bound[0], bound[1], loop, _scheme(kwargs))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class LoopProxy(Generic[S]):
    """Thread-safe face of an object ``target`` that must only be used on the
    loop of ``running``.

    Reading a public attribute (a property included) happens on that loop;
    a public method comes back wrapped so that calling it runs the real one
    there and returns its result or raises its exception (directly, with no
    hop, when the caller is already on the loop). Names starting with ``_``
    are not forwarded: the proxy offers what the target publishes, nothing
    more. ``run(fn)`` runs ``fn(target)`` in one hop, e.g. a burst of
    changes.

    For a type checker a bare ``LoopProxy`` has no forwarded attributes; a
    subclass names the target's class as a second base under
    ``TYPE_CHECKING`` (see ``nfon_serve.SimProxy``), so every forwarded
    call is checked against the real signature without restating it.
    """

    def __init__(self, target: S, running: Running) -> None:
        self._target = target
        self._running = running

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"

    def run(self, fn: Callable[[S], T]) -> T:
        """Run ``fn(target)`` on the target's loop and return its result."""
        return self._running.call(fn, self._target)

    if not TYPE_CHECKING:
        # Hidden from the type checker on purpose: with it, any misspelt
        # name would type-check as Any.

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            if not inspect.isfunction(inspect.getattr_static(type(self._target), name, None)):
                # A property or plain attribute: its value is state, read on the loop.
                return self._running.call(getattr, self._target, name)
            # Binding a method reads no state, so only the call makes the hop.
            method = getattr(self._target, name)

            @functools.wraps(method)
            def on_loop(*args: Any, **kwargs: Any) -> Any:
                return self._running.call(functools.partial(method, *args, **kwargs))

            return on_loop

"""How fast the NFON state stream consumer is. Prints figures; asserts nothing.

(a) Throughput: state frames per second through ``NfonClient.states()``
    (SSE decoding, JSON, domain conversion, the reconnecting consumer), fed a
    pre-built ``text/event-stream`` body of FRAMES state frames shaped like
    NFON's. Three feeds:
      - the decoder and parser alone, no HTTP (the CPU floor);
      - ``NfonClient.states()`` over an ``httpx.MockTransport`` (in-process,
        one core: everything but the socket);
      - ``NfonClient.states()`` over a real loopback socket, the bytes served
        by a raw asyncio server in another process;
    and, for comparison, httpx-sse's ``aiter_sse()`` + the same parser over
    the same MockTransport. Goal: >= 50,000 frames/s on one core.

(b) Latency: the NFON simulator runs in another process and makes CHANGES
    state changes at RATE per second; each change carries the simulator's
    wall-clock time in ``updated`` (nanoseconds, as NFON sends it). The
    consumer subtracts it from its own wall clock when ``states()`` yields
    the event. Same machine, same clock. Goal: p99 < 5 ms.

Run: ``python benchmarks/nfon_stream.py [--frames 200000] [--changes 3000] [--rate 500]``
The httpx-sse row needs the ``bench`` extra (``pip install -e '.[bench]'``);
without it that row is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import httpx

from presence_sync.model import StateEvent
from presence_sync.nfon import FullState, NfonClient, SSEDecoder
from presence_sync.nfon.schema import FrameError, parse_state


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # an optional extra: what needs it is skipped
        return None


httpx_sse = _optional("httpx_sse")
INSTALL_BENCH = "pip install -e '.[bench]'  (or: pip install 'httpx-sse>=0.4,<1')"

CHUNK = 64 * 1024  # what one socket read hands httpx at most
EXTENSIONS = 1000


def fake_jwt(lifetime: int = 3600) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    # The client reads the claims with PyJWT, which wants a base64url signature.
    return f"{part({'alg': 'none'})}.{part({'iat': now, 'exp': now + lifetime})}.eA"


def build_stream(frames: int) -> bytes:
    lines = ("idle", "ringing", "in-use", "idle", "offline")
    presences = ("available", "away", "busy", "dnd", "null")
    out = []
    for i in range(frames):
        state = {
            "extension": str(100 + i % EXTENSIONS),
            "customer": "K1234",
            "line": lines[i % 5],
            "presence": presences[(i // 5) % 5],
            "updated": f"2025-09-23T16:51:{i % 60:02d}.{i:09d}+02:00",
        }
        out.append(b"data: " + json.dumps(state, separators=(",", ":")).encode() + b"\n\n")
    return b"".join(out)


def chunks_of(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


# --- (a) throughput -----------------------------------------------------------------------


def bench_decoder_only(chunks: list[bytes]) -> int:
    decoder = SSEDecoder()
    count = 0
    for chunk in chunks:
        for event in decoder.feed(chunk):
            try:
                parse_state(event.data)
            except FrameError:
                continue
            count += 1
    return count


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def mock_transport(chunks: list[bytes]) -> httpx.MockTransport:
    token = fake_jwt()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/login"):
            return httpx.Response(200, json={"access-token": token, "refresh-token": token})
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Body(chunks)
        )

    return httpx.MockTransport(handler)


async def consume_states(client: NfonClient, frames: int) -> int:
    """Count state frames through ``states()`` until ``frames`` were seen."""
    count = 0
    stream = client.states(expected=EXTENSIONS)
    try:
        async for item in stream:
            count += len(item.states) if isinstance(item, FullState) else 1
            if count >= frames:
                break
    finally:
        await stream.aclose()
    return count


async def bench_client(transport: httpx.AsyncBaseTransport, base_url: str, frames: int) -> int:
    async with NfonClient(base_url, "K1234", "bench", "bench", transport=transport) as client:
        return await consume_states(client, frames)


async def bench_httpx_sse(chunks: list[bytes], frames: int) -> int:
    assert httpx_sse is not None, "checked by the caller"
    count = 0
    async with (
        httpx.AsyncClient(transport=mock_transport(chunks)) as http,
        httpx_sse.aconnect_sse(
            http, "GET", "http://nfon.test/v1/extensions/phone/states"
        ) as source,
    ):
        async for sse in source.aiter_sse():
            try:
                parse_state(sse.data)
            except FrameError:
                continue
            count += 1
            if count >= frames:
                break
    return count


def raw_server(body: bytes, conn: multiprocessing.connection.Connection) -> None:
    """A bare HTTP/1.1 server: tokens for /login, ``body`` for anything else."""

    token = fake_jwt().encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if b"/login" in request_line:
                    reply = b'{"access-token":"%s","refresh-token":"%s"}' % (token, token)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)
                    )
                    await writer.drain()
                    continue
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)
                )
                for i in range(0, len(body), CHUNK):
                    writer.write(body[i : i + CHUNK])
                    await writer.drain()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def timed(label: str, frames: int, run: Callable[[], int]) -> None:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    count = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        f"  {label:<46} {count:>8,} frames  {wall:6.2f} s  "
        f"{count / wall:>9,.0f} frames/s  (consumer CPU {cpu / wall:4.0%})"
    )
    if count != frames:
        print(f"    !! expected {frames:,} frames")


def throughput(frames: int) -> None:
    body = build_stream(frames)
    chunks = chunks_of(body)
    print(
        f"(a) throughput: {frames:,} state frames, {len(body) / 1e6:.1f} MB, "
        f"{len(chunks)} chunks of {CHUNK // 1024} KiB, {EXTENSIONS} extensions"
    )
    timed("decoder + parser alone (no HTTP)", frames, lambda: bench_decoder_only(chunks))
    timed(
        "NfonClient.states() over MockTransport",
        frames,
        lambda: asyncio.run(bench_client(mock_transport(chunks), "http://nfon.test/v1", frames)),
    )
    if httpx_sse is None:
        print(f"  httpx-sse aiter_sse() + parser: skipped, httpx-sse is missing; {INSTALL_BENCH}")
    else:
        timed(
            "httpx-sse aiter_sse() + parser, MockTransport",
            frames,
            lambda: asyncio.run(bench_httpx_sse(chunks, frames)),
        )
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=raw_server, args=(body, child), daemon=True)
    server.start()
    try:
        port = parent.recv()
        timed(
            "NfonClient.states() over loopback TCP",
            frames,
            lambda: asyncio.run(
                bench_client(httpx.AsyncHTTPTransport(), f"http://127.0.0.1:{port}/v1", frames)
            ),
        )
    finally:
        server.terminate()
        server.join()


# --- (b) latency --------------------------------------------------------------------------


def sim_process(
    conn: multiprocessing.connection.Connection, extensions: int, changes: int, rate: float
) -> None:
    """Serve the simulator; on "go", make ``changes`` changes at ``rate``/s."""
    from presence_sync.sim.nfon import NfonSim, serve_in_thread

    with serve_in_thread(NfonSim(extensions=extensions, keepalive=15.0, seed=1)) as handle:
        conn.send((handle.base_url, handle.sim.customer, handle.sim.username, handle.sim.password))
        conn.recv()
        presences = ("available", "away", "busy", "dnd")
        start = time.perf_counter()
        for i in range(changes):
            # Pacing, not waiting for a result: this is the load generator.
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            handle.sim.set_state(str(100 + i % extensions), presence=presences[i % 4])
        conn.send("done")
        conn.recv()


async def latency_consumer(
    conn: multiprocessing.connection.Connection, site: tuple[str, str, str, str], changes: int
) -> list[float]:
    base_url, customer, username, password = site
    delays: list[float] = []
    async with NfonClient(base_url, customer, username, password) as client:
        stream = client.states(expected=100)
        try:
            async for item in stream:
                received = time.time()
                if isinstance(item, FullState):
                    conn.send("go")
                    continue
                assert isinstance(item, StateEvent)
                assert item.updated is not None
                delays.append(received - item.updated.timestamp())
                if len(delays) >= changes:
                    break
        finally:
            await stream.aclose()
    return delays


def latency(changes: int, rate: float) -> None:
    print(
        f"(b) latency: {changes:,} state changes at {rate:g}/s made by the simulator in another "
        "process;\n    delay = consumer wall clock when states() yields the event minus the "
        "simulator's `updated` stamp"
    )
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    sim = ctx.Process(target=sim_process, args=(child, 100, changes, rate), daemon=True)
    sim.start()
    try:
        site = parent.recv()
        delays = asyncio.run(latency_consumer(parent, site, changes))
        parent.send("stop")
    finally:
        sim.join(timeout=10)
        if sim.is_alive():
            sim.terminate()
    ms = sorted(d * 1000 for d in delays)
    p = statistics.quantiles(ms, n=100, method="inclusive")
    print(
        f"    {len(ms):,} events: p50 {p[49]:.2f} ms  p90 {p[89]:.2f} ms  "
        f"p99 {p[98]:.2f} ms  max {ms[-1]:.2f} ms  (min {ms[0]:.2f} ms)"
    )


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0)
    args: Any = parser.parse_args(list(argv) if argv is not None else None)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, httpx {httpx.__version__}")
    throughput(args.frames)
    latency(args.changes, args.rate)


if __name__ == "__main__":
    main()

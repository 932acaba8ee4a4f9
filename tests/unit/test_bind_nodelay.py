"""Connections accepted on ``net.bind`` sockets send without Nagle's
delay: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and
without it a response written in two parts waits ~40 ms for a delayed ACK."""

from __future__ import annotations

import asyncio
import socket

from presence_sync.net import bind


async def test_accepted_connections_have_nodelay() -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await loop.create_server(Probe, sock=bind())
    host, port = server.sockets[0].getsockname()[:2]
    _reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await asyncio.wait_for(seen, 5) != 0
    finally:
        writer.close()
        server.close()
        await server.wait_closed()

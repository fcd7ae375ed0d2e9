"""The local proxy's clock offset: a client machine whose clock is 10 minutes off still reaches the server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from vmess.aio_server import start_server
from vmess.config import VmessConfig
from vmess.demo import socks5_open
from vmess.inbound.server import start_local_proxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(offset: float, *, udp: bool = False) -> bool:
    user = uuid.uuid4()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    # The server's clock is 10 minutes ahead of this machine's: requests stamped with our clock are refused.
    async with await start_server([user], "127.0.0.1", 0, now=lambda: time.time() + 600, handshake_timeout=1.0) as srv:
        config = VmessConfig.new(user).with_encryption("aes-128-gcm")
        proxy = await start_local_proxy((("127.0.0.1", srv.port), config), "127.0.0.1", 0, clock_offset=offset)
        try:
            reader, writer = await socks5_open(("127.0.0.1", proxy.port), "127.0.0.1", echo_port)
            writer.write(b"what time is it")
            await writer.drain()
            try:
                got = await asyncio.wait_for(reader.read(100), 5)
            finally:
                writer.close()
            return got == b"what time is it"
        finally:
            proxy.close()
            await proxy.wait_closed()
            echo.close()
            await echo.wait_closed()


@pytest.mark.parametrize("offset,works", [(600.0, True), (0.0, False)])
def test_clock_offset_reaches_a_server_with_another_clock(offset: float, works: bool) -> None:
    assert asyncio.run(_round_trip(offset)) is works

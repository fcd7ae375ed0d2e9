"""END_LINGER: over TLS and WebSocket (no half-close under asyncio) a session whose one direction ended closes once
the other has been quiet for END_LINGER seconds, so a peer that ignores VMess's end marker (sing-box) still sees
the end. Plain TCP half-closes for real and keeps such a session open. Bounded waits only, no speed checks.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, List

import pytest

from vmess._timeouts import END_LINGER
from vmess.aio import open_connection
from vmess.config import VmessConfig
from vmess.inbound.server import start_local_proxy

from .test_transport import UID, certs, client_settings, our_server, run  # noqa: F401 - certs is a fixture

KINDS = ["tls", "ws", "ws+tls"]


@pytest.mark.parametrize("kind", KINDS + ["tcp"])
def test_server_closes_a_quiet_client_after_the_destination_ended(certs: Any, kind: str) -> None:
    """The destination sends and closes; our client reads it all and the end marker, then stays quiet: over TLS/WS
    the server closes the session about END_LINGER later; over TCP it half-closed and waits for the client."""

    async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(b"bye")
        writer.close()

    async def main() -> None:
        dest = await asyncio.start_server(greeter, "127.0.0.1", 0)
        server = await our_server(kind, certs, park_idle=None)
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs))
            reader, writer = await open_connection("127.0.0.1", dest.sockets[0].getsockname()[1], proxy=proxy)
            writer.write(b"x")
            assert await reader.read() == b"bye"  # the end marker: EOF
            if kind == "tcp":
                await asyncio.sleep(END_LINGER + 1.0)
                assert server.stats.sessions_active == 1  # still open: the client may send more
                writer.write(b"late")
                await writer.drain()
                writer.close()
            else:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + END_LINGER + 10
                while server.stats.sessions_active and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                assert server.stats.sessions_active == 0
                assert server.stats.ended == {"destination_closed": 1}
                writer.close()
        dest.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_local_proxy_closes_after_the_client_ended_and_the_server_stays_quiet(certs: Any, kind: str) -> None:
    """The SOCKS client half-closes; the destination keeps its side open and says nothing: over TLS/WS the local
    proxy ends the relay about END_LINGER later (the SOCKS client gets EOF), instead of at the idle timeout."""
    got: List[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read())  # until the EOF that our server forwards from the end marker
        await asyncio.sleep(30)  # then silent, connection open
        writer.close()

    async def main() -> None:
        dest = await asyncio.start_server(silent, "127.0.0.1", 0)
        server = await our_server(kind, certs, park_idle=None)
        async with server:
            upstream = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs))
            proxy = await start_local_proxy(upstream, port=0, park_idle=None)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
                w.write(b"\x05\x01\x00")
                assert await r.readexactly(2) == b"\x05\x00"
                port = dest.sockets[0].getsockname()[1]
                w.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
                assert (await r.readexactly(10))[1] == 0
                w.write(b"request")
                w.write_eof()
                assert await asyncio.wait_for(r.read(), END_LINGER + 10) == b""
                assert got == [b"request"]
                w.close()
            finally:
                proxy.close()
                await proxy.wait_closed()
        dest.close()

    run(main(), timeout=60)

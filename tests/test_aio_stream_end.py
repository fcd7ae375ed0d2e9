"""Our asyncio client when the connection fails after the server's stream has ended.

Regression: against Xray over ws+tls, the server sends its end marker, then a WebSocket close frame and closes the
socket; our TLS close_notify then hits a dead socket (EPIPE), the transport reports BrokenPipeError, and
``reader.read()`` raised it although every byte and the end of the stream had arrived
(tests/interop/test_xray.py::test_our_client_over_transport[ws+tls]).  An error before the end must still reach the
reader.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from vmess.aio import _ClientProtocol
from vmess.config import VmessConfig
from vmess.errors import TruncatedError
from vmess.protocol.client import ClientConnection
from vmess.protocol.server import MemoryReplayFilter, ServerConnection, UserTable

UID = uuid.UUID("3e0b9c1d-55aa-4c6e-9d7f-21b4c8e9a0f3")


class RecordingTransport(asyncio.Transport):
    """Collects what the protocol writes; never fails on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def connected(encryption: str) -> tuple[_ClientProtocol, ServerConnection, RecordingTransport]:
    """A client protocol whose request (with b"hello") the server side has accepted."""
    loop = asyncio.get_running_loop()
    conn = ClientConnection(VmessConfig.new(UID).with_encryption(encryption), "example.org", 80)
    protocol = _ClientProtocol(conn, loop)
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.send(conn.send(b"hello"))
    server = ServerConnection(UserTable([(UID, 0)]), MemoryReplayFilter())
    server.receive_data(bytes(transport.written))
    return protocol, server, transport


@pytest.mark.parametrize("encryption", ["aes-128-gcm", "chacha20-poly1305", "none"])
def test_error_after_the_end_marker_keeps_data_and_eof(encryption: str) -> None:
    async def main() -> None:
        protocol, server, _ = connected(encryption)
        protocol.data_received(server.send(b"reply") + server.send_eof())
        protocol.connection_lost(BrokenPipeError(32, "Broken pipe"))
        assert await asyncio.wait_for(protocol.reader.read(), 1) == b"reply"
        with pytest.raises(BrokenPipeError):
            await protocol.drain()  # writing is still an error

    asyncio.run(main())


def test_error_after_a_clean_fin_keeps_data_and_eof() -> None:
    async def main() -> None:
        protocol, server, _ = connected("aes-128-gcm")
        protocol.data_received(server.send(b"reply"))
        protocol.eof_received()  # FIN without an end marker is a clean end too
        protocol.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        assert await asyncio.wait_for(protocol.reader.read(), 1) == b"reply"

    asyncio.run(main())


def test_error_before_the_end_still_reaches_the_reader() -> None:
    async def main() -> None:
        protocol, server, _ = connected("aes-128-gcm")
        protocol.data_received(server.send(b"reply"))
        protocol.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        with pytest.raises(ConnectionResetError):  # like asyncio's own streams: the error comes first
            await asyncio.wait_for(protocol.reader.read(), 1)

    asyncio.run(main())


def test_clean_close_without_end_is_truncation() -> None:
    async def main() -> None:
        protocol, server, _ = connected("aes-128-gcm")
        protocol.data_received(server.send(b"reply"))
        protocol.connection_lost(None)
        with pytest.raises(TruncatedError):
            await asyncio.wait_for(protocol.reader.read(), 1)

    asyncio.run(main())

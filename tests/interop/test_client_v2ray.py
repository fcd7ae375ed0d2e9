"""Our client against a real v2ray 4.34 server (VMess inbound -> freedom), byte for byte.

Each combination moves 16 MiB each way through a local echo (the sha256 of what comes back is checked), and
through open_connection also checks end-of-stream and an upload whose sha256 is checked by the sink on arrival.
The same matrix runs through VmessProxyImpl driven by a small socket loop. Authenticated length (A) is not
implemented by v2ray 4.34, so it is tested against our own server in tests/test_protocol.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from vmess import _core
from vmess.aio import open_connection, open_udp
from vmess.config import VmessConfig
from vmess.handler import IncomingDataEvent, IncomingDirection, OutgoingDirection, SessionInfo, VmessProxyManager
from vmess.links import VmessLink

from .endpoints import TcpEcho, TcpSink, UdpEcho
from .v2ray import V2RayProcess, free_port, require_v2ray, server_config

AEAD_USER = str(uuid.UUID("5783a3e7-e373-51cd-8642-c83782b807c5"))
LEGACY_USER = str(uuid.UUID("9a7f0d8e-25d1-4c3a-8f6b-1d2e3f4a5b6c"))
BULK = 16 * 1024 * 1024

AEAD_CASES = [
    (enc, level)
    for enc in ("aes-128-gcm", "chacha20-poly1305", "none", "zero", "auto")
    for level in ("none", "standard", "auto")
]
LEGACY_CASES = ["aes-128-cfb", "aes-128-gcm", "chacha20-poly1305", "none"]


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    require_v2ray()
    port = free_port()
    with V2RayProcess(server_config(port, [(AEAD_USER, 0), (LEGACY_USER, 4)])):
        yield port


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEcho]:
    with TcpEcho() as ep:
        yield ep


@pytest.fixture(scope="module")
def uecho() -> Iterator[UdpEcho]:
    with UdpEcho() as ep:
        yield ep


def configs() -> list[tuple[str, VmessConfig]]:
    out = [
        (f"aead-{enc}-{level}", VmessConfig.new(AEAD_USER).with_encryption(enc).with_security_level(level))
        for enc, level in AEAD_CASES
    ]
    out += [(f"legacy-{enc}", VmessConfig.new(LEGACY_USER).with_encryption(enc).with_alter_id(4)) for enc in LEGACY_CASES]
    return out


CONFIGS = configs()
IDS = [name for name, _ in CONFIGS]


async def echo_round_trip(reader: asyncio.StreamReader, writer, payload: bytes) -> bytes:
    """Write ``payload`` in uneven pieces while reading the same number of bytes back."""

    async def send() -> None:
        pos = 0
        sizes = [1, 100, 4096, 65536, 300_000, 16384]
        i = 0
        while pos < len(payload):
            n = sizes[i % len(sizes)]
            writer.write(payload[pos : pos + n])
            await writer.drain()
            pos += n
            i += 1

    task = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
    await task
    return got


@pytest.mark.parametrize("name,config", CONFIGS, ids=IDS)
def test_open_connection_bulk_echo_and_eof(server: int, echo: TcpEcho, name: str, config: VmessConfig) -> None:
    payload = os.urandom(BULK)

    async def main() -> None:
        reader, writer = await open_connection("127.0.0.1", echo.port, proxy=(("127.0.0.1", server), config))
        got = await echo_round_trip(reader, writer, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        # Small ping-pong, then end our side: v2ray ends the session and we must see a clean EOF.
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize(
    "config",
    [
        VmessConfig.new(AEAD_USER).with_encryption("aes-128-gcm"),
        VmessConfig.new(AEAD_USER).with_encryption("chacha20-poly1305"),
        VmessConfig.new(AEAD_USER).with_encryption("zero"),
        VmessConfig.new(LEGACY_USER).with_encryption("aes-128-cfb").with_alter_id(4),
    ],
    ids=["aead-gcm", "aead-chacha", "aead-zero", "legacy-cfb"],
)
def test_upload_sha256_checked_at_the_destination(server: int, config: VmessConfig) -> None:
    payload = os.urandom(BULK)

    async def main(port: int) -> None:
        reader, writer = await open_connection("127.0.0.1", port, proxy=(("127.0.0.1", server), config))
        for i in range(0, len(payload), 1 << 20):
            writer.write(payload[i : i + (1 << 20)])
            await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 20)
        writer.close()
        await writer.wait_closed()

    with TcpSink() as sink:
        asyncio.run(main(sink.port))
        count, digest = sink.wait_result(timeout=20)
    assert count == len(payload)
    assert digest == hashlib.sha256(payload).hexdigest()


def test_share_link_proxy_argument(server: int, echo: TcpEcho) -> None:
    link = f"vmess://{AEAD_USER}@127.0.0.1:{server}?encryption=chacha20-poly1305#interop"

    async def main() -> bytes:
        reader, writer = await open_connection("127.0.0.1", echo.port, proxy=link)
        writer.write(b"hello through a link")
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(20), 10)
        writer.close()
        await writer.wait_closed()
        return got

    assert asyncio.run(main()) == b"hello through a link"


@pytest.mark.parametrize(
    "config",
    [
        VmessConfig.new(AEAD_USER).with_encryption(enc).with_alter_id(0)
        for enc in ("aes-128-gcm", "chacha20-poly1305", "none", "zero")
    ]
    + [VmessConfig.new(LEGACY_USER).with_encryption(enc).with_alter_id(4) for enc in ("aes-128-cfb", "aes-128-gcm")],
    ids=["aead-gcm", "aead-chacha", "aead-none", "aead-zero", "legacy-cfb", "legacy-gcm"],
)
def test_udp_datagrams(server: int, uecho: UdpEcho, config: VmessConfig) -> None:
    # v2ray's own writer drops replies whose chunk would exceed 2048 bytes: 1967 is the largest AEAD datagram
    # (2048 - 2 length - 16 tag - 63 padding) that it sends back reliably.
    grams = [os.urandom(n) for n in (1, 64, 512, 1400, 1967)]

    async def main() -> list[bytes]:
        stream = await open_udp("127.0.0.1", uecho.port, proxy=(("127.0.0.1", server), config))
        replies = []
        async with stream:
            for gram in grams:
                stream.send(gram)
                await stream.drain()
                replies.append(await asyncio.wait_for(stream.recv(), 10))
        return replies

    assert asyncio.run(main()) == grams


# --------------------------------------------------------------------------------- VmessProxyImpl over a socket


async def drive_handler(server_port: int, dst_port: int, config: VmessConfig, payload: bytes) -> bytes:
    """A minimal tun2proxy-like loop: client bytes in, handler frames them, socket to the VMess server."""
    manager = VmessProxyManager(("127.0.0.1", server_port), config)
    handler = await manager.new_proxy_handler(SessionInfo(("127.0.0.1", 1), ("127.0.0.1", dst_port)), None, False)
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", server_port))
    sock.setblocking(False)
    received = bytearray()
    sent = 0
    step = 256 * 1024
    try:
        while len(received) < len(payload):
            if sent < len(payload) and handler.data_len(OutgoingDirection.TO_SERVER) < (1 << 20):
                await handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, payload[sent : sent + step]))
                sent += step
            while handler.data_len(OutgoingDirection.TO_SERVER):
                view = handler.peek_data(OutgoingDirection.TO_SERVER).buffer
                await loop.sock_sendall(sock, view)
                handler.consume_data(OutgoingDirection.TO_SERVER, len(view))
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 18), 0.05 if sent < len(payload) else 10)
            except asyncio.TimeoutError:
                continue
            assert data, "server closed early"
            await handler.push_data(IncomingDataEvent(IncomingDirection.FROM_SERVER, data))
            while handler.data_len(OutgoingDirection.TO_CLIENT):
                view = handler.peek_data(OutgoingDirection.TO_CLIENT).buffer
                received += view
                handler.consume_data(OutgoingDirection.TO_CLIENT, len(view))
        assert handler.connection_established()
    finally:
        sock.close()
    return bytes(received)


@pytest.mark.parametrize("name,config", CONFIGS, ids=IDS)
def test_proxy_handler_bulk_echo(server: int, echo: TcpEcho, name: str, config: VmessConfig) -> None:
    payload = os.urandom(BULK)
    got = asyncio.run(drive_handler(server, echo.port, config, payload))
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_backend_reported(server: int) -> None:
    assert _core.BACKEND in ("native", "pure")
    assert isinstance(VmessLink, type)

"""The asyncio server: our client -> our server -> local endpoints, all in one event loop per test.

Covers every security x header mode x level (authenticated length included), UDP, half-close in both directions,
the handshake and idle timeouts, max_sessions, the destination policy, refused connections (drained, nothing sent,
no effect on a valid client) and bounded buffering under backpressure in both directions. Timeouts are short
server parameters; no assertion depends on speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
import uuid
from typing import Any, Awaitable, Callable, List, Optional, Tuple, TypeVar

import pytest

from vmess import _core
from vmess.aio import open_connection, open_udp
from vmess.aio_server import (
    READ_BUFFER_SIZE,
    WRITE_HIGH_WATER,
    DestinationRefusedError,
    DirectOutbound,
    Outbound,
    VmessServer,
    is_blocked_address,
    start_server,
)
from vmess.config import VmessConfig
from vmess.errors import VmessError
from vmess.protocol.client import ClientConnection
from vmess.protocol.server import RequestReceived, UserTable

UID = uuid.UUID("3b0e6a9c-8f4e-4a51-9d0b-6c1f2e7a5d44")
OTHER = uuid.UUID("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
MiB = 1 << 20
T = TypeVar("T")

SECURITIES = ["aes-128-gcm", "chacha20-poly1305", "none", "zero", "aes-128-cfb"]
LEVELS = ["none", "standard", "auto", "high"]
MATRIX = [(sec, aid, level, False) for sec, aid, level in itertools.product(SECURITIES, (0, 4), LEVELS)]
MATRIX += [(sec, aid, "auto", True) for sec, aid in itertools.product(SECURITIES, (0, 4))]


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop with an overall safety timeout."""

    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def proxy(server: VmessServer, config: VmessConfig) -> Tuple[Tuple[str, int], VmessConfig]:
    return (("127.0.0.1", server.port), config)


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` every 10 ms; fail the test if it stays false for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------- local endpoints


class Endpoint:
    """A local asyncio TCP server running ``handler``; counts connections."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.handler = handler
        self.connections = 0
        self.server: Optional[asyncio.Server] = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "Endpoint":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()


class UdpEcho(asyncio.DatagramProtocol):
    """Echoes datagrams; ``big:N`` is answered with N bytes (to exceed a chunk)."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        assert self.transport is not None
        if data.startswith(b"big:"):
            self.transport.sendto(b"B" * int(data[4:]), addr)
        else:
            self.transport.sendto(data, addr)


async def udp_echo() -> Tuple[asyncio.DatagramTransport, UdpEcho, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]  # type: ignore[return-value]


async def echo_round_trip(reader: asyncio.StreamReader, writer: Any, payload: bytes) -> bytes:
    """Write ``payload`` in uneven pieces while reading the same number of bytes back."""

    async def send() -> None:
        sizes = itertools.cycle([1, 100, 4096, 65536, 300_000, 16384])
        pos = 0
        while pos < len(payload):
            n = next(sizes)
            writer.write(payload[pos : pos + n])
            await writer.drain()
            pos += n

    task = asyncio.create_task(send())
    got = await reader.readexactly(len(payload))
    await task
    return got


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ------------------------------------------------------------------------------------------- the matrix


def bulk_size(security: str) -> int:
    # The pure twin's legacy AES-CFB + FNV runs at a few MB/s: keep that case small there.
    if security == "aes-128-cfb" and _core.BACKEND == "pure":
        return 256 * 1024
    return 2 * MiB


@pytest.mark.parametrize(
    "security,alter_id,level,test_enabled",
    MATRIX,
    ids=[f"{s}-aid{a}-{lv}{'-test' if t else ''}" for s, a, lv, t in MATRIX],
)
def test_every_security_header_and_level(security: str, alter_id: int, level: str, test_enabled: bool) -> None:
    config = (
        VmessConfig.new(UID)
        .with_encryption(security)
        .with_alter_id(alter_id)
        .with_security_level(level)
        .with_test_enabled(test_enabled)
    )
    payload = os.urandom(bulk_size(security))

    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([(UID, 4)]) as server:
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, config))
            got = await echo_round_trip(reader, writer, payload)
            assert sha(got) == sha(payload)
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.bytes_up == server.stats.bytes_down == len(payload)
            assert server.stats.ended == {"completed": 1}
            assert not server.stats.failures

    run(main())


def test_user_forms_and_tags(caplog: pytest.LogCaptureFixture) -> None:
    """users= accepts strings, UUIDs, pairs and triples; logs show the tag, never the UUID."""
    caplog.set_level(logging.INFO, logger="vmess.server")

    async def main() -> None:
        users: List[Any] = [str(OTHER), (UID, 0, "alice")]
        async with Endpoint(echo_handler) as echo, await start_server(users) as server:
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)

    run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "vmess.server"]
    assert any("user=alice" in line and "end=completed" in line and "up=2 down=2" in line for line in lines), lines
    text = "\n".join(lines)
    for uid in (UID, OTHER):
        assert str(uid) not in text and uid.hex not in text


# ------------------------------------------------------------------------------------------- UDP


@pytest.mark.parametrize(
    "config",
    [
        VmessConfig.new(UID).with_encryption("aes-128-gcm"),
        VmessConfig.new(UID).with_encryption("chacha20-poly1305").with_security_level("high"),
        VmessConfig.new(UID).with_encryption("none"),
        VmessConfig.new(UID).with_encryption("zero"),
        VmessConfig.new(UID).with_encryption("aes-128-cfb").with_alter_id(4),
        VmessConfig.new(UID).with_encryption("aes-128-gcm").with_alter_id(4),
    ],
    ids=["gcm", "chacha-high", "none", "zero", "legacy-cfb", "legacy-gcm"],
)
def test_udp_datagrams(config: VmessConfig) -> None:
    async def main() -> None:
        transport, echo, port = await udp_echo()
        try:
            async with await start_server([(UID, 4)]) as server:
                stream = await open_udp("127.0.0.1", port, proxy=proxy(server, config))
                grams = [os.urandom(n) for n in (1, 100, 1400, 8000, stream.max_datagram)]
                async with stream:
                    for gram in grams:
                        stream.send(gram)
                        await stream.drain()
                        assert await stream.recv() == gram
                await wait_until(lambda: server.stats.sessions_active == 0)
                assert server.stats.bytes_up == server.stats.bytes_down == sum(map(len, grams))
        finally:
            transport.close()

    run(main())


def test_udp_reply_larger_than_a_chunk_is_dropped() -> None:
    async def main() -> None:
        transport, echo, port = await udp_echo()
        try:
            async with await start_server([UID]) as server:
                async with await open_udp("127.0.0.1", port, proxy=proxy(server, VmessConfig.new(UID))) as stream:
                    stream.send(b"big:20000")  # the reply cannot fit one response chunk
                    stream.send(b"small")
                    assert await stream.recv() == b"small"
                    assert server.stats.datagrams_dropped == 1
        finally:
            transport.close()

    run(main())


# ------------------------------------------------------------------------------------------- half-close


def test_client_half_close_reaches_the_destination() -> None:
    """Client write_eof -> the destination sees EOF, and can still answer; then its EOF ends our reader."""
    payload = os.urandom(300_000)

    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()
        writer.write(b"got %d " % len(data) + hashlib.sha256(data).hexdigest().encode())
        await writer.drain()

    async def main() -> None:
        async with Endpoint(reply_after_eof) as dest, await start_server([UID]) as server:
            reader, writer = await open_connection("127.0.0.1", dest.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(payload)
            writer.write_eof()
            reply = await reader.read()
            assert reply == b"got %d " % len(payload) + hashlib.sha256(payload).hexdigest().encode()
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.ended == {"completed": 1}

    run(main())


def test_destination_half_close_reaches_the_client() -> None:
    """Destination EOF -> end marker to the client; the client may still send, and the destination gets it."""
    got_after: List[bytes] = []

    async def greet_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        got_after.append(await reader.read())

    async def main() -> None:
        async with Endpoint(greet_then_listen) as dest, await start_server([UID]) as server:
            reader, writer = await open_connection("127.0.0.1", dest.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"x")
            assert await reader.read() == b"hello"  # end of stream after the greeting
            writer.write(b"after the destination's EOF")
            writer.write_eof()
            await wait_until(lambda: bool(got_after))
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.ended == {"completed": 1}

    run(main())
    assert got_after == [b"xafter the destination's EOF"]


# ------------------------------------------------------------------------------------------- timeouts and limits


def test_handshake_timeout_closes_a_stalled_client() -> None:
    async def main() -> None:
        async with await start_server([UID], handshake_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(os.urandom(10))
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"handshake_timeout": 1}

    run(main())


def test_idle_timeout_ends_a_quiet_session() -> None:
    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID], idle_timeout=0.3) as server:
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            try:
                rest = await asyncio.wait_for(reader.read(), 10)  # nothing moves: the server ends the session
            except (VmessError, ConnectionError):
                rest = b""
            assert rest == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.ended["idle_timeout"] == 1

    run(main())


def test_max_sessions_refuses_extra_connections(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vmess.server")

    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID], max_sessions=2) as server:
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
            await wait_until(lambda: server.stats.sessions_active == 2)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed at once
            except ConnectionResetError:
                pass
            writer.close()
            assert server.stats.failures["max_sessions"] == 1
            assert server.stats.sessions_total == 2
            for _, held_writer in held:
                held_writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            r, w = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            w.write(b"room again")
            assert await r.readexactly(10) == b"room again"
            w.close()

    run(main())
    assert any("max_sessions=2" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- destination policy


def test_is_blocked_address() -> None:
    blocked = {
        "127.0.0.1": "loopback",
        "::1": "loopback",
        "10.1.2.3": "private",
        "192.168.0.1": "private",
        "172.16.5.5": "private",
        "fd00::1": "private",
        "169.254.1.1": "link-local",
        "fe80::1": "link-local",
        "224.0.0.1": "multicast",
        "ff02::1": "multicast",
        "0.0.0.0": "unspecified",
        "::": "unspecified",
        "::ffff:127.0.0.1": "loopback",
        "::ffff:10.0.0.1": "private",
    }
    for addr, why in blocked.items():
        assert is_blocked_address(addr) == why, addr
    for addr in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert is_blocked_address(addr) is None, addr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_block_private_refuses_loopback(host: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmess.server")

    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID], block_private=True) as server:
            reader, writer = await open_connection(host, echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"must not arrive")
            assert await asyncio.wait_for(reader.read(), 10) == b""  # a clean, empty reply
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"destination_refused": 1}
            assert echo.connections == 0
            assert server.stats.bytes_up == 0

    run(main())
    assert any("loopback" in r.getMessage() and "block_private" in r.getMessage() for r in caplog.records)


def test_block_private_is_off_by_default_and_exclusive_with_an_outbound() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await start_server([UID], outbound=DirectOutbound(), block_private=True)
        async with Endpoint(echo_handler) as echo, await start_server([UID]) as server:
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
            writer.close()

    run(main())


def test_unreachable_destination_ends_the_session_cleanly() -> None:
    async def main() -> None:
        async with Endpoint(echo_handler) as dead:
            port = dead.port
        async with await start_server([UID]) as server:
            reader, writer = await open_connection("127.0.0.1", port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"anyone?")
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"connect_failed": 1}

    run(main())


# ------------------------------------------------------------------------------------------- refused clients


async def probe(port: int, data: bytes) -> bytes:
    """Send ``data`` on a raw connection and return everything the server sends before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        got = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # we sent more than the drain consumed: the close may come as a reset
        pass
    writer.close()
    return got


def test_bad_connections_are_drained_while_a_valid_client_keeps_working(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vmess.server")
    payload = os.urandom(4 * MiB if _core.BACKEND == "native" else MiB)
    wrong_user = ClientConnection(VmessConfig.new(OTHER), "127.0.0.1", 9).send(b"x" * 100)
    skewed = ClientConnection(VmessConfig.new(UID), "127.0.0.1", 9, now=lambda: time.time() + 600).send(b"x")
    filler = os.urandom(4000)  # more than any drain (at most 16 + 38 + 3265 + 64 bytes)

    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID], handshake_timeout=10) as server:
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, VmessConfig.new(UID)))
            transfer = asyncio.create_task(echo_round_trip(reader, writer, payload))
            replies = await asyncio.gather(
                probe(server.port, filler), probe(server.port, wrong_user + filler), probe(server.port, skewed + filler)
            )
            assert replies == [b"", b"", b""]  # nothing is ever sent to a refused client
            assert sha(await transfer) == sha(payload)
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"auth": 3}
            # Each probe arrives in one read that already covers the drain size: closed right after that read.
            assert server.stats.ended["drained"] + server.stats.ended["auth"] == 3
            assert echo.connections == 1

    run(main())
    messages = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(messages) == 3
    assert all("clock" in m and "127.0.0.1:" in m for m in messages)


def test_drain_consumes_exactly_the_drain_size() -> None:
    """With fixed randomness the drain size is 54 + the table's base: one byte less keeps the connection open."""
    table = UserTable([(UID, 0)], drain_seed=b"fixed")
    total = 16 + 38 + table.drain_base  # the random part is 0 with all-zero randomness

    async def main() -> None:
        async with await start_server(table, handshake_timeout=10, urandom=lambda n: bytes(n)) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\xff" * (total - 1))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)  # still draining
            writer.write(b"\xff")
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.ended == {"drained": 1}

    run(main())


def test_drain_is_bounded_by_the_handshake_deadline() -> None:
    """A refused client that stops sending is closed when the handshake deadline passes."""

    async def main() -> None:
        async with await start_server([UID], handshake_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(os.urandom(20))  # enough to fail authentication, less than any drain size (>= 54)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"auth": 1}
            assert server.stats.ended == {"drain_timeout": 1}

    run(main())


def test_replayed_request_is_refused() -> None:
    config = VmessConfig.new(UID)

    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID]) as server:
            wire = ClientConnection(config, "127.0.0.1", echo.port).send(b"hello")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(wire)
            await wait_until(lambda: echo.connections == 1)
            writer.close()
            assert await probe(server.port, wire + os.urandom(4000)) == b""
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"replay": 1}
            assert echo.connections == 1

    run(main())


# ------------------------------------------------------------------------------------------- backpressure

BUFFER_BOUND = WRITE_HIGH_WATER + READ_BUFFER_SIZE + 8192
"""Most a session may hold in its transports' write buffers: just under high water, plus one framed read."""


async def sample_until_stalled(server: VmessServer, progress: Callable[[], int], samples: List[int]) -> None:
    """Record ``server.buffered_bytes()`` until ``progress()`` stops moving (the pipeline is full)."""
    last, still = -1, 0
    while still < 25:
        samples.append(server.buffered_bytes())
        now = progress()
        still = still + 1 if now == last else 0
        last = now
        await asyncio.sleep(0.01)


def test_backpressure_slow_client_bounds_server_buffers() -> None:
    """The destination sends a lot, the client reads nothing: the server stops reading, its buffers stay small."""
    total = 48 * MiB
    payload = os.urandom(total)
    sent = [0]

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(0, total, MiB):
            writer.write(payload[i : i + MiB])
            await writer.drain()
            sent[0] = i + MiB
        writer.write_eof()

    async def main() -> None:
        async with Endpoint(source) as src, await start_server([UID], idle_timeout=60) as server:
            reader, writer = await open_connection("127.0.0.1", src.port, proxy=proxy(server, VmessConfig.new(UID)))
            writer.write(b"go")
            samples: List[int] = []
            await sample_until_stalled(server, lambda: sent[0], samples)
            assert sent[0] < total, "nothing held the source back"
            assert max(samples) <= BUFFER_BOUND, max(samples)
            got = await reader.read()  # now read it all: the relay resumes
            assert len(got) == total and sha(got) == sha(payload)
            writer.close()

    run(main())


def test_backpressure_slow_destination_bounds_server_buffers() -> None:
    """The client sends a lot, the destination reads nothing: the server stops reading the client."""
    total = 48 * MiB
    payload = os.urandom(total)
    sent = [0]
    release = asyncio.Event()  # binds to the test's loop on first use
    received: List[bytes] = []

    async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        received.append(await reader.read())

    async def main() -> None:
        async with Endpoint(slow_sink) as sink, await start_server([UID], idle_timeout=60) as server:
            reader, writer = await open_connection("127.0.0.1", sink.port, proxy=proxy(server, VmessConfig.new(UID)))

            async def upload() -> None:
                for i in range(0, total, MiB):
                    writer.write(payload[i : i + MiB])
                    await writer.drain()
                    sent[0] = i + MiB
                writer.write_eof()

            task = asyncio.create_task(upload())
            samples: List[int] = []
            await sample_until_stalled(server, lambda: sent[0], samples)
            assert sent[0] < total, "nothing held the client back"
            assert max(samples) <= BUFFER_BOUND, max(samples)
            release.set()
            await task
            await wait_until(lambda: bool(received), 30)
            writer.close()

    run(main())
    assert len(received[0]) == total and sha(received[0]) == sha(payload)


# ------------------------------------------------------------------------------------------- plug-ins and users


class PinnedOutbound(Outbound):
    """A plug-in outbound: every TCP request goes to one fixed port (what a router or a chain would do)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: List[Tuple[str, int, str]] = []

    async def open_tcp(self, request: RequestReceived, protocol: asyncio.BaseProtocol) -> asyncio.BaseTransport:
        self.requests.append((request.host, request.port, request.user.tag))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", self.port)
        return transport

    async def open_udp(self, request: RequestReceived, protocol: asyncio.DatagramProtocol) -> asyncio.BaseTransport:
        raise DestinationRefusedError("UDP is not routed by this outbound")


def test_custom_outbound_is_used() -> None:
    async def main() -> None:
        async with Endpoint(echo_handler) as echo:
            outbound = PinnedOutbound(echo.port)
            async with await start_server([(UID, 0, "bob")], outbound=outbound) as server:
                config = VmessConfig.new(UID)
                reader, writer = await open_connection("example.invalid", 443, proxy=proxy(server, config))
                writer.write(b"routed")
                assert await reader.readexactly(6) == b"routed"
                writer.close()
                stream = await open_udp("example.invalid", 53, proxy=proxy(server, config))
                stream.send(b"q")
                with pytest.raises(EOFError):
                    await stream.recv()  # refused: a clean, empty reply
                stream.close()
                await wait_until(lambda: server.stats.sessions_active == 0)
            assert outbound.requests == [("example.invalid", 443, "bob")]
            assert server.stats.failures == {"destination_refused": 1}

    run(main())


def test_users_added_and_removed_while_serving() -> None:
    async def main() -> None:
        async with Endpoint(echo_handler) as echo, await start_server([UID], handshake_timeout=0.3) as server:
            config = VmessConfig.new(OTHER)
            server.users.add(OTHER, 0, "late")
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, config))
            writer.write(b"welcome")
            assert await reader.readexactly(7) == b"welcome"
            writer.close()
            server.users.remove(OTHER)
            reader, writer = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, config))
            writer.write(b"gone")
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""  # refused, drained, closed
            except (VmessError, ConnectionError):
                pass
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.failures == {"auth": 1}

    run(main())


# ------------------------------------------------------------------------------------------- life cycle


def test_shutdown_lets_sessions_finish_then_closes_the_rest() -> None:
    async def main() -> None:
        async with Endpoint(echo_handler) as echo:
            server = await start_server([UID])
            port = server.port
            config = VmessConfig.new(UID)
            r1, w1 = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, config))
            r2, w2 = await open_connection("127.0.0.1", echo.port, proxy=proxy(server, config))
            for r, w in ((r1, w1), (r2, w2)):
                w.write(b"one")
                assert await r.readexactly(3) == b"one"
            shutdown = asyncio.create_task(server.shutdown(1.0))
            await asyncio.sleep(0)
            assert not server.is_serving()
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)  # no longer accepting
            w1.write(b"still here")  # sessions in flight keep working and may end normally
            assert await r1.readexactly(10) == b"still here"
            w1.write_eof()
            assert await r1.read() == b""
            await shutdown  # session 2 stays idle: closed at the deadline
            assert server.stats.sessions_active == 0
            assert server.stats.ended == {"completed": 1, "server_closed": 1}
            try:
                assert await r2.read() == b""  # closed without an end marker
            except (VmessError, ConnectionError):
                pass
            for w in (w1, w2):
                w.close()
                await w.wait_closed()

    run(main())


def test_serve_forever_and_close() -> None:
    async def main() -> None:
        server = await start_server([UID], host="127.0.0.1", port=0)
        assert server.address == ("127.0.0.1", server.port) and server.sockets
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert not task.done()
        server.close()
        await task
        await server.wait_closed()
        assert server.sockets == ()

    run(main())

"""Parking quiet sessions (vmess._parking): the server's and the local proxy's sessions give up their loop transports
after ``park_idle`` seconds without traffic and wake on the next byte, EOF or error, with no byte lost or reordered.

Every test runs on asyncio's loop and on uvloop (which starts reading right after ``connection_made``, whatever the
protocol asks: the wake-up path must not depend on pausing there). Waits are bounded polls, never speed checks.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import struct
import tracemalloc
import uuid
from typing import Any, Awaitable, Callable, List, Tuple, TypeVar

import pytest

from vmess._parking import ParkingLot, can_park, parking_supported
from vmess.aio import open_connection
from vmess.aio_server import VmessServer, start_server
from vmess.config import VmessConfig
from vmess.inbound.server import LocalProxy, start_local_proxy

pytestmark = pytest.mark.skipif(not parking_supported(), reason="parking needs select.epoll (Linux)")

UID = uuid.UUID("6f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5")
PARK = 0.2  # park_idle of the servers under test (seconds)
T = TypeVar("T")

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None  # type: ignore[assignment]


def run(loop_kind: str, coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    if loop_kind == "uvloop":
        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def vmess_stream(server: VmessServer, port: int) -> Tuple[asyncio.StreamReader, Any]:
    return await open_connection("127.0.0.1", port, proxy=(("127.0.0.1", server.port), VmessConfig.new(UID)))


async def socks_stream(proxy: LocalProxy, port: int) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
    reply = await reader.readexactly(10)
    assert reply[1] == 0, reply
    return reader, writer


def lot_of(proxy: LocalProxy) -> ParkingLot:
    lot = proxy._sweeper.parking
    assert lot is not None
    return lot


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_session_parks_and_wakes_without_losing_bytes(loop_kind: str) -> None:
    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=PARK)
        try:
            reader, writer = await vmess_stream(server, dest.sockets[0].getsockname()[1])
            for cycle in range(1, 4):
                payload = os.urandom(150_000 * cycle)
                writer.write(payload)
                got = await reader.readexactly(len(payload))
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                await wait_until(lambda: server.stats.parks == cycle)  # noqa: B023 - read at once
                assert server._parking is not None and len(server._parking) == 2  # two bare sockets, no transports
                session = next(iter(server._sessions))
                assert session.transport is None and session.upstream is None
            writer.write_eof()
            assert await reader.read() == b""  # the echo's EOF came back through a woken session
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.ended == {"completed": 1}
            assert server.stats.wakes == 3
            assert len(server._parking) == 0
        finally:
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_destination_speaking_first_wakes_a_parked_session(loop_kind: str) -> None:
    """The destination side's socket wakes the session too (data after a pause longer than park_idle)."""
    released = asyncio.Event()
    late = os.urandom(70_000)

    async def late_talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(2) == b"hi"
        writer.write(b"ok")
        await released.wait()
        writer.write(late)
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def main() -> None:
        dest = await asyncio.start_server(late_talker, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=PARK)
        try:
            reader, writer = await vmess_stream(server, dest.sockets[0].getsockname()[1])
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"ok"
            await wait_until(lambda: server.stats.parks == 1)
            released.set()
            assert await reader.read() == late
            writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert server.stats.wakes == 1
            assert server.stats.ended["destination_closed"] + server.stats.ended["completed"] == 1
        finally:
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_parked_sessions_end_cleanly_on_idle_timeout_and_close(loop_kind: str) -> None:
    """A parked session still times out, and server.close() ends parked ones: their descriptors are closed."""

    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = dest.sockets[0].getsockname()[1]
        fds_before = open_fds()
        server = await start_server([UID], park_idle=PARK, idle_timeout=1.0)
        try:
            reader, writer = await vmess_stream(server, port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            await wait_until(lambda: server.stats.parks == 1)
            await wait_until(lambda: server.stats.sessions_active == 0)  # the idle timeout ends it while parked
            assert server.stats.ended == {"idle_timeout": 1}
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

            streams = [await vmess_stream(server, port) for _ in range(3)]
            for r, w in streams:
                w.write(b"y")
                assert await r.readexactly(1) == b"y"
            await wait_until(lambda: server.stats.parks == 4)
        finally:
            server.close()
            await server.wait_closed()
            dest.close()
        assert server.stats.ended["server_closed"] == 3
        for r, w in streams:
            w.close()
        await wait_until(lambda: open_fds() <= fds_before + 1)  # +1: the dest listener closes asynchronously

    run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_local_proxy_and_server_both_park_and_wake(loop_kind: str) -> None:
    """SOCKS5 client -> local proxy -> server -> echo: both sides park, wake on each write, and end cleanly."""

    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=PARK)
        proxy = await start_local_proxy((("127.0.0.1", server.port), VmessConfig.new(UID)), port=0, park_idle=PARK)
        try:
            reader, writer = await socks_stream(proxy, dest.sockets[0].getsockname()[1])
            lot = lot_of(proxy)
            for cycle in range(1, 4):
                payload = os.urandom(200_000)
                writer.write(payload)
                assert await reader.readexactly(len(payload)) == payload
                await wait_until(lambda: lot.parked_total == cycle and server.stats.parks == cycle)  # noqa: B023
                assert len(lot) == 2
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await wait_until(lambda: proxy.stats.active == 0 and server.stats.sessions_active == 0)
            assert proxy.stats.connections == 1 and proxy.stats.failed == 0
            assert proxy.stats.bytes_up == proxy.stats.bytes_down == 600_000
            assert lot.woken_total == 3 and len(lot) == 0
        finally:
            proxy.close()
            await proxy.wait_closed()
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_local_proxy_client_gone_while_parked(loop_kind: str) -> None:
    """The local client resets while its session is parked: the proxy wakes, ends it, and counts it once."""

    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=PARK)
        proxy = await start_local_proxy((("127.0.0.1", server.port), VmessConfig.new(UID)), port=0, park_idle=PARK)
        try:
            reader, writer = await socks_stream(proxy, dest.sockets[0].getsockname()[1])
            writer.write(b"z")
            assert await reader.readexactly(1) == b"z"
            lot = lot_of(proxy)
            await wait_until(lambda: lot.parked_total == 1 and server.stats.parks == 1)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()  # RST
            await wait_until(lambda: proxy.stats.active == 0)
            await wait_until(lambda: server.stats.sessions_active == 0)
            assert proxy.stats.connections == 1 and len(proxy._live) == 0 and len(lot) == 0
        finally:
            proxy.close()
            await proxy.wait_closed()
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())


def test_parking_off_keeps_transports() -> None:
    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=None)
        try:
            reader, writer = await vmess_stream(server, dest.sockets[0].getsockname()[1])
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            await asyncio.sleep(0.5)
            assert server._parking is None and server.stats.parks == 0
            assert next(iter(server._sessions)).transport is not None
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
            dest.close()

    run("asyncio", main())


def test_can_park_only_plain_tcp_transports() -> None:
    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", dest.sockets[0].getsockname()[1])
            assert can_park(writer.transport)
            writer.transport.pause_reading()
            assert not can_park(writer.transport)  # paused: flow control is in progress
            writer.transport.resume_reading()
            loop = asyncio.get_running_loop()
            udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            assert not can_park(udp)
            udp.close()
            assert not can_park(None)
            writer.close()
        finally:
            dest.close()

    run("asyncio", main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_parked_sessions_hold_less_memory(loop_kind: str) -> None:
    """tracemalloc over 50 idle sessions (local proxy + server in one process): parking frees 4 loop transports."""

    async def main() -> Tuple[float, float]:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        # parked explicitly below (the sweeper's call), so that nothing parks while the sessions open
        server = await start_server([UID], park_idle=3600)
        proxy = await start_local_proxy((("127.0.0.1", server.port), VmessConfig.new(UID)), port=0, park_idle=3600)
        streams: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        tracemalloc.start()  # before the sessions open: frees of untraced blocks would not count
        try:
            for _ in range(50):
                r, w = await socks_stream(proxy, dest.sockets[0].getsockname()[1])
                w.write(b"m")
                assert await r.readexactly(1) == b"m"
                streams.append((r, w))
            await asyncio.sleep(0.1)
            gc.collect()
            awake = tracemalloc.get_traced_memory()[0]
            assert all(s.park() for s in list(server._sessions)) and all(i.park() for i in list(proxy._live))
            for _ in range(5):
                await asyncio.sleep(0)  # connection_lost of the transports given up
            gc.collect()
            freed = awake - tracemalloc.get_traced_memory()[0]
            # and they still work
            for r, w in streams:
                w.write(b"n")
                assert await r.readexactly(1) == b"n"
            return freed, float(server.stats.parks)
        finally:
            tracemalloc.stop()
            for _, w in streams:
                w.close()
            proxy.close()
            await proxy.wait_closed()
            server.close()
            await server.wait_closed()
            dest.close()

    freed, parks = run(loop_kind, main())
    assert parks == 50
    # each of the 4 transports (local proxy: 2, server: 2) costs about 1.2 KB with its socket objects
    assert freed / 50 > 3000, freed / 50


def test_cli_park_idle_option_reaches_the_server_settings(tmp_path: Any) -> None:
    from vmess.cli import _server_settings, build_parser

    user = str(UID)
    args = build_parser().parse_args(["server", "--user", user, "--park-idle", "0"])
    assert _server_settings(args)["park_idle"] == 0.0
    config = tmp_path / "server.json"
    config.write_text('{"users": [{"id": "%s"}], "timeouts": {"park": 2.5}}' % user)
    args = build_parser().parse_args(["server", "--config", str(config)])
    assert _server_settings(args)["park_idle"] == 2.5
    args = build_parser().parse_args(["server", "--user", user])
    assert "park_idle" not in _server_settings(args)  # start_server's default (PARK_AFTER)
    args = build_parser().parse_args(["client", "vmess://%s@127.0.0.1:1?encryption=none" % user, "--park-idle", "3"])
    assert args.park_idle == 3.0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_local_proxy_close_ends_parked_sessions(loop_kind: str) -> None:
    """Closing the local proxy ends parked relays at once: accounted, forgotten, descriptors closed."""

    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=PARK)
        fds_before = open_fds()
        proxy = await start_local_proxy((("127.0.0.1", server.port), VmessConfig.new(UID)), port=0, park_idle=PARK)
        streams = []
        try:
            for _ in range(3):
                reader, writer = await socks_stream(proxy, dest.sockets[0].getsockname()[1])
                writer.write(b"q")
                assert await reader.readexactly(1) == b"q"
                streams.append((reader, writer))
            lot = lot_of(proxy)
            await wait_until(lambda: lot.parked_total == 3)
            proxy.close()
            await asyncio.wait_for(proxy.wait_closed(), 10)
            assert proxy.stats.active == 0 and not proxy._live and len(lot) == 0
            for reader, writer in streams:
                assert await asyncio.wait_for(reader.read(), 10) == b""  # the local client sees the close
                writer.close()
            await wait_until(lambda: server.stats.sessions_active == 0)  # and the server's sessions end too
            await wait_until(lambda: open_fds() <= fds_before + 1)  # +1: the server's epoll set, made at its first park
        finally:
            proxy.close()
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_many_sessions_parking_and_waking_at_random_lose_nothing(loop_kind: str) -> None:
    """20 sessions through the local proxy and the server, with pauses that let them rest and park between uneven
    writes (some mid-transfer while others park and wake): every echoed byte comes back, in order."""
    import random

    async def session(proxy: LocalProxy, port: int, seed: int) -> int:
        rnd = random.Random(seed)
        reader, writer = await socks_stream(proxy, port)
        total = 0
        try:
            for _ in range(6):
                payload = rnd.randbytes(rnd.choice([1, 700, 20_000, 150_000]))
                writer.write(payload)
                got = await reader.readexactly(len(payload))
                assert got == payload
                total += len(payload)
                await asyncio.sleep(rnd.choice([0.0, 0.03, 0.3, 0.45]))  # rest after 0.25 s, then park
            writer.write_eof()
            assert await reader.read() == b""
        finally:
            writer.close()
        return total

    async def main() -> None:
        dest = await asyncio.start_server(echo, "127.0.0.1", 0)
        server = await start_server([UID], park_idle=0.05)
        proxy = await start_local_proxy((("127.0.0.1", server.port), VmessConfig.new(UID)), port=0, park_idle=0.05)
        try:
            port = dest.sockets[0].getsockname()[1]
            totals = await asyncio.gather(*(session(proxy, port, seed) for seed in range(20)))
            await wait_until(lambda: proxy.stats.active == 0 and server.stats.sessions_active == 0)
            assert proxy.stats.failed == 0 and proxy.stats.bytes_down == sum(totals)
            assert server.stats.ended == {"completed": 20}
            assert server.stats.parks > 0 and lot_of(proxy).parked_total > 0  # the pauses did park sessions
        finally:
            proxy.close()
            await proxy.wait_closed()
            server.close()
            await server.wait_closed()
            dest.close()

    run(loop_kind, main())

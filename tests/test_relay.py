"""The local proxy's protocol-level relay (vmess.relay) against our own server, on asyncio and on uvloop.

SOCKS5 client -> start_local_proxy -> start_server -> local endpoints, all in one event loop: bulk both ways with
several sessions at once (the read buffers are shared), half-close in both directions, bounded buffering when the
client does not read, the idle timeout, sessions that rest (cipher contexts freed) and then carry on, and the
pieces underneath: the sweeper, ChunkWriter/ChunkReader.release() on both backends, literal addresses that skip the
resolver. No assertion depends on speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import random
import socket
import struct
import time
import uuid
from typing import Any, Awaitable, Callable, Tuple, TypeVar

import pytest

from vmess import _core, _core_py
from vmess._sweep import Sweeper
from vmess.aio_server import DirectOutbound, _literal_addrinfo, start_server
from vmess.config import VmessConfig
from vmess.inbound import start_local_proxy

UID = uuid.UUID("5d2c7e3a-1b4f-4c6d-8e9a-0f1b2c3d4e5f")
MiB = 1 << 20
T = TypeVar("T")

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def run(coro_factory: Callable[[], Awaitable[T]], loop: str, timeout: float = 60.0) -> T:
    """Run a fresh coroutine on a new event loop of the given kind, with an overall safety timeout."""

    async def main() -> T:
        return await asyncio.wait_for(coro_factory(), timeout)

    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Stack:
    """Our server and a local proxy in front of it (``async with``), plus a SOCKS5 CONNECT helper."""

    def __init__(self, *, encryption: str = "aes-128-gcm", **proxy_kwargs: Any) -> None:
        self.encryption = encryption
        self.proxy_kwargs = proxy_kwargs

    async def __aenter__(self) -> "Stack":
        self.server = await start_server([UID], max_sessions=None)
        config = VmessConfig.new(UID).with_encryption(self.encryption)
        self.proxy = await start_local_proxy((("127.0.0.1", self.server.port), config), "127.0.0.1", 0,
                                             **self.proxy_kwargs)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.proxy.close()
        await self.proxy.wait_closed()
        self.server.close()
        await self.server.wait_closed()

    async def connect(self, port: int) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
        reply = await reader.readexactly(10)
        assert reply[1] == 0, reply
        return reader, writer

    def buffered(self) -> int:
        """Bytes waiting in the proxy's and the server's write buffers."""
        total = self.server.buffered_bytes()
        for inbound in self.proxy._live:
            for transport in (inbound.transport, inbound.upstream.transport if inbound.upstream else None):
                if transport is not None and not transport.is_closing():
                    total += transport.get_write_buffer_size()
        return total


async def endpoint(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Any:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(guarded, "127.0.0.1", 0)


def port_of(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()


async def echo_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client half-closes, then answers with the sha256 of it all and closes."""
    data = await reader.read()
    writer.write(sha(data))
    await writer.drain()


# ------------------------------------------------------------------------------------------- through the relay


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("encryption", ["aes-128-gcm", "chacha20-poly1305", "none"])
def test_concurrent_sessions_bulk_both_ways(loop: str, encryption: str) -> None:
    async def main() -> None:
        echo = await endpoint(echo_handler)
        async with Stack(encryption=encryption) as stack:

            async def one(i: int) -> None:
                data = payload(3 * MiB + i * 1001, seed=i)
                reader, writer = await stack.connect(port_of(echo))

                async def send() -> None:
                    pos = 0
                    for size in [1, 70_000, 300_000, 4096] * 100:
                        if pos >= len(data):
                            break
                        writer.write(data[pos : pos + size])
                        await writer.drain()
                        pos += size
                    writer.write(data[pos:])
                    writer.write_eof()

                task = asyncio.create_task(send())
                got = await reader.read(-1)  # until the EOF passed back from the echo server
                await task
                writer.close()
                assert len(got) == len(data) and sha(got) == sha(data)

            await asyncio.gather(*(one(i) for i in range(4)))
            await wait_until(lambda: stack.proxy.stats.active == 0)
            assert stack.proxy.stats.failed == 0
            assert stack.proxy.stats.bytes_up >= 12 * MiB and stack.proxy.stats.bytes_down >= 12 * MiB
        echo.close()

    run(main, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_half_close_goes_through_and_the_answer_comes_back(loop: str) -> None:
    async def main() -> None:
        ender = await endpoint(echo_after_eof)
        async with Stack() as stack:
            reader, writer = await stack.connect(port_of(ender))
            data = payload(1 * MiB, seed=7)
            writer.write(data)
            writer.write_eof()  # client FIN -> VMess end marker -> FIN at the destination
            answer = await reader.read(-1)  # destination's answer, then its FIN back to us
            assert answer == sha(data)
            writer.close()
            await wait_until(lambda: stack.proxy.stats.active == 0)
            assert stack.proxy.stats.failed == 0
        ender.close()

    run(main, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_client_that_does_not_read_bounds_the_buffers(loop: str) -> None:
    size = 48 * MiB

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        chunk = payload(1 * MiB, seed=3)
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    async def main() -> None:
        src = await endpoint(source)
        async with Stack() as stack:
            reader, writer = await stack.connect(port_of(src))
            writer.write(b"go")
            await asyncio.sleep(1.0)  # the source writes as fast as it may while nobody reads
            held = stack.buffered()
            assert held < 4 * MiB, held  # a few high-water marks and reads, not the whole transfer
            got = 0
            digest = hashlib.sha256()
            while data := await reader.read(1 << 18):
                got += len(data)
                digest.update(data)
            assert got == size
            expect = hashlib.sha256()
            chunk = payload(1 * MiB, seed=3)
            for _ in range(size // len(chunk)):
                expect.update(chunk)
            assert digest.digest() == expect.digest()
            writer.close()
        src.close()

    run(main, loop, timeout=120)


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_timeout_ends_a_quiet_session_and_an_active_one_lives_on(loop: str) -> None:
    async def main() -> None:
        echo = await endpoint(echo_handler)
        async with Stack(idle_timeout=0.4) as stack:
            quiet_r, quiet_w = await stack.connect(port_of(echo))
            busy_r, busy_w = await stack.connect(port_of(echo))
            for r, w in ((quiet_r, quiet_w), (busy_r, busy_w)):
                w.write(b"ping")
                assert await r.readexactly(4) == b"ping"
            started = time.monotonic()
            while time.monotonic() - started < 1.2:  # the busy one keeps talking past the timeout
                busy_w.write(b"x")
                assert await busy_r.readexactly(1) == b"x"
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(quiet_r.read(), 5) == b""  # closed by the proxy
            busy_w.write(b"still")
            assert await busy_r.readexactly(5) == b"still"
            quiet_w.close()
            busy_w.close()
            await wait_until(lambda: stack.proxy.stats.active == 0)
            assert stack.proxy.stats.failed == 0
        echo.close()

    run(main, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_sessions_rest_between_bursts_and_carry_on(loop: str) -> None:
    """After a quiet moment the sessions free their cipher contexts (both ends); the next bytes rebuild them."""

    async def main() -> None:
        echo = await endpoint(echo_handler)
        async with Stack() as stack:
            reader, writer = await stack.connect(port_of(echo))
            for burst in range(4):
                data = payload(200_000 + burst, seed=burst)
                writer.write(data)
                assert await reader.readexactly(len(data)) == data
                await asyncio.sleep(0.7)  # longer than the rest delay: both ends rest
                assert not stack.proxy._sweeper.awake and not stack.server._sweeper.awake
            writer.close()
            await wait_until(lambda: stack.proxy.stats.active == 0)
            assert stack.proxy.stats.failed == 0
        echo.close()

    run(main, loop)


# ------------------------------------------------------------------------------------------- the pieces


def test_sweeper_expires_idle_sessions_and_rests_quiet_ones() -> None:
    class S:
        def __init__(self, t: float) -> None:
            self._last_activity = t
            self.expired = 0
            self.rested = 0

        def idle_expired(self) -> None:
            self.expired += 1

        def rest(self) -> None:
            self.rested += 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sweeper = Sweeper(loop, 0.4, rest_after=0.1)
        quiet, busy = S(loop.time()), S(loop.time())
        sweeper.watch(quiet)
        sweeper.watch(busy)
        end = loop.time() + 1.0
        while loop.time() < end:
            busy._last_activity = loop.time()
            await asyncio.sleep(0.02)
        assert quiet.rested == 1 and quiet.expired == 1 and quiet not in sweeper.sessions
        assert busy.rested == 0 and busy.expired == 0 and busy in sweeper.sessions
        sweeper.forget(busy)
        await asyncio.sleep(0.5)
        assert busy.expired == 0
        sweeper.close()

    asyncio.run(main())


@pytest.mark.parametrize("mod", [_core_py, _core], ids=["pure", "active"])
@pytest.mark.parametrize("security,options", [(3, 0x0D), (4, 0x0D), (3, 0x1D), (4, 0x15), (5, 0x05), (1, 0x01)])
def test_release_changes_nothing_on_the_wire(mod: Any, security: int, options: int) -> None:
    key, iv = bytes(range(16)), bytes(range(16, 32))
    rand = random.Random(5)
    writers = [mod.ChunkWriter(security, options, key, iv, key, iv, random.Random(9).randbytes) for _ in range(2)]
    reader = mod.ChunkReader(security, options, key, iv, key, iv)
    for i in range(40):
        data = rand.randbytes(rand.choice([1, 100, 5000, 40_000]))
        if i % 3 == 0:
            writers[1].release()
        wire = writers[0].write(data)
        assert writers[1].write(data) == wire
        if i % 4 == 1:
            reader.release()
        assert b"".join(reader.feed(wire)) == data
    writers[1].release()
    reader.release()
    end = writers[1].write_end()
    assert end == writers[0].write_end()
    assert reader.feed(end) == [] and reader.ended


def test_literal_destinations_skip_the_resolver() -> None:
    assert _literal_addrinfo("10.1.2.3", 80) == [(socket.AF_INET, 0, 0, "", ("10.1.2.3", 80))]
    assert _literal_addrinfo("::1", 443) == [(socket.AF_INET6, 0, 0, "", ("::1", 443, 0, 0))]
    for name in ("example.com", "fe80::1%eth0", "1.2.3", "", "1.2.3.4\x00"):
        assert _literal_addrinfo(name, 1) is None

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def no_resolver(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("getaddrinfo called for a literal")

        loop.getaddrinfo = no_resolver  # type: ignore[method-assign]
        addrs = await DirectOutbound()._resolve("127.0.0.1", 9, socket.SOCK_STREAM)
        assert addrs == [(socket.AF_INET, ("127.0.0.1", 9))]
        with pytest.raises(Exception, match="refused"):
            await DirectOutbound(block_private=True)._resolve("127.0.0.1", 9, socket.SOCK_STREAM)

    asyncio.run(main())

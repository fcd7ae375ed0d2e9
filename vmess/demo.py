"""``vmess demo``: the main job with an embedded default, needing no outside server.

It starts, in one process and on loopback ports chosen by the OS: a VMess server (direct outbound), the local
SOCKS5/HTTP proxy in front of a VMess client, a sink that hashes what arrives, and an echo endpoint. It then
pushes a transfer through the SOCKS5 port to the sink, has the sink send back the sha256 of what it received
(through the tunnel), and compares it with the sender's. It also measures handshake latency (SOCKS5 + VMess
connect and a 1-byte echo). The verdict is only "ok" when the digests match.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import statistics
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, TextIO, Tuple

from . import _core
from .config import VmessConfig

__all__ = ["DemoResult", "run_demo", "socks5_open"]

_BLOCK = 1 << 20


@dataclass
class DemoResult:
    """What the demo measured."""

    backend: str
    encryption: str
    size: int
    seconds: float
    ok: bool
    handshake_ms_median: float
    handshake_ms_p90: float

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0


async def socks5_open(proxy: Tuple[str, int], host: str, port: int) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP stream through a SOCKS5 proxy (no authentication, CONNECT)."""
    reader, writer = await asyncio.open_connection(*proxy)
    try:
        writer.write(b"\x05\x01\x00")
        if await reader.readexactly(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 proxy refused the no-auth method")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raw = host.encode("idna")
            addr = b"\x03" + bytes((len(raw),)) + raw
        else:
            addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        writer.write(b"\x05\x01\x00" + addr + struct.pack(">H", port))
        head = await reader.readexactly(4)
        if head[1] != 0:
            raise ConnectionError(f"SOCKS5 CONNECT failed with reply code {head[1]}")
        skip = {1: 4, 4: 16}.get(head[3])
        if skip is None:
            skip = (await reader.readexactly(1))[0]
        await reader.readexactly(skip + 2)
    except BaseException:
        writer.close()
        raise
    return reader, writer


class _Sink:
    """Hashes everything a connection sends; at EOF replies with the count (8 bytes) and sha256 (32 bytes)."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        self.progress = progress

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        count = 0
        try:
            while True:
                data = await reader.read(1 << 18)
                if not data:
                    break
                digest.update(data)
                count += len(data)
                self.progress(count)
            writer.write(struct.pack(">Q", count) + digest.digest())
            await writer.drain()
        finally:
            writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class _Progress:
    """A one-line progress bar on a terminal; nothing otherwise (the summary lines are printed anyway)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0
        self.start = time.perf_counter()

    def __call__(self, done: int) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / max(now - self.start, 1e-9) / 1e6
        self.out.write(f"\r  [{bar:<30}] {frac * 100:5.1f}%  {rate:8.1f} MB/s")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


async def run_demo(
    size: int = 256 << 20,
    *,
    encryption: str = "auto",
    level: str = "auto",
    handshakes: int = 20,
    out: TextIO = sys.stdout,
) -> DemoResult:
    """Run the demo and print its figures to ``out``; returns them."""
    from .aio_server import start_server
    from .inbound.server import start_local_proxy

    user = uuid.uuid4()
    config = VmessConfig.new(user).with_encryption(encryption).with_security_level(level)
    progress = _Progress(size, out)
    sink = _Sink(progress)
    sink_server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    echo_server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    vmess_server = await start_server([user], "127.0.0.1", 0)
    local = await start_local_proxy((("127.0.0.1", vmess_server.port), config), "127.0.0.1", 0)
    sink_port = sink_server.sockets[0].getsockname()[1]
    echo_port = echo_server.sockets[0].getsockname()[1]
    socks = ("127.0.0.1", local.port)
    cipher = config.encryption.resolve().name_on_link
    print(
        f"vmess demo: backend {_core.BACKEND}, encryption {cipher}, options 0x{config.options:02x}, "
        f"{size / (1 << 20):g} MiB via SOCKS5 127.0.0.1:{local.port} -> VMess 127.0.0.1:{vmess_server.port}",
        file=out,
        flush=True,
    )
    try:
        latencies = []
        for _ in range(handshakes):
            t0 = time.perf_counter()
            reader, writer = await socks5_open(socks, "127.0.0.1", echo_port)
            writer.write(b"x")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 10)
            latencies.append((time.perf_counter() - t0) * 1000)
            writer.close()
            await writer.wait_closed()

        block = os.urandom(_BLOCK)
        sent_digest = hashlib.sha256()
        reader, writer = await socks5_open(socks, "127.0.0.1", sink_port)
        t0 = time.perf_counter()
        remaining = size
        while remaining > 0:
            piece = block if remaining >= _BLOCK else block[:remaining]
            writer.write(piece)
            sent_digest.update(piece)
            remaining -= len(piece)
            await writer.drain()
        writer.write_eof()
        reply = await asyncio.wait_for(reader.readexactly(40), 120)
        seconds = time.perf_counter() - t0
        writer.close()
        progress.finish()
        count = struct.unpack(">Q", reply[:8])[0]
        ok = count == size and reply[8:] == sent_digest.digest()
    finally:
        local.close()
        vmess_server.close()
        sink_server.close()
        echo_server.close()
        await local.wait_closed()
        await vmess_server.wait_closed()
    latencies.sort()
    result = DemoResult(
        backend=_core.BACKEND,
        encryption=cipher,
        size=size,
        seconds=seconds,
        ok=ok,
        handshake_ms_median=statistics.median(latencies) if latencies else 0.0,
        handshake_ms_p90=latencies[int(len(latencies) * 0.9) - 1] if latencies else 0.0,
    )
    print(f"  sha256 at the sink: {'match' if ok else 'MISMATCH'} ({count} of {size} bytes arrived)", file=out)
    print(f"  throughput: {result.mb_per_s:.1f} MB/s ({seconds:.2f} s, one process, one core)", file=out)
    print(
        f"  handshake latency (SOCKS5 + VMess connect + 1-byte echo): median {result.handshake_ms_median:.2f} ms, "
        f"p90 {result.handshake_ms_p90:.2f} ms over {len(latencies)}",
        file=out,
    )
    print(f"  backend: {result.backend}", file=out, flush=True)
    return result

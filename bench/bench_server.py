"""Server-side benchmarks: AEAD request authentication + decode with 1/100/1000 users, and handshakes per second.

Usage: python bench/bench_server.py [--quick] [--backend native|pure|both]

- "auth+decode": ServerConnection.receive_data on a complete AEAD request (header + a small first chunk),
  with the matching user last in the table (the AuthID scan is linear, so this is the worst case).
- "handshakes/s": sequential connections through our client and server on loopback: connect, send 1 byte to
  an echo destination, read it back, close. Client, server and echo share one event loop (one core).
With --backend both (the default) the pure backend is measured in a subprocess, so both appear in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmess import _core  # noqa: E402
from vmess.config import VmessConfig  # noqa: E402
from vmess.protocol.client import ClientConnection  # noqa: E402
from vmess.protocol.server import ReplayFilter, ServerConnection, UserTable  # noqa: E402


class _NoReplayCheck(ReplayFilter):
    """Accepts everything: the benchmark replays pre-built requests and measures only auth + decode."""

    def check_auth_id(self, auth_id: bytes, now: float) -> bool:
        return True

    def check_session(self, user_id: bytes, req_key: bytes, req_iv: bytes, now: float) -> bool:
        return True


def bench_auth(n_users: int, requests: int) -> float:
    """Microseconds per authenticated + decoded AEAD request."""
    target = uuid.uuid4()
    users = UserTable([(uuid.uuid4(), 0) for _ in range(n_users - 1)])
    users.add(target)
    config = VmessConfig.new(target).with_encryption("aes-128-gcm")
    now = time.time()
    wires = [ClientConnection(config, "example.com", 443, now=lambda: now).send(b"GET / HTTP/1.1\r\n\r\n") for _ in range(requests)]
    replay = _NoReplayCheck()
    t0 = time.perf_counter()
    for wire in wires:
        events = ServerConnection(users, replay, now=lambda: now).receive_data(wire)
        assert events
    return (time.perf_counter() - t0) / requests * 1e6


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def bench_handshakes(count: int) -> float:
    from vmess.aio import open_connection
    from vmess.aio_server import start_server

    user = uuid.uuid4()
    config = VmessConfig.new(user).with_encryption("aes-128-gcm")
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    async with await start_server([user], "127.0.0.1", 0) as server:
        proxy = (("127.0.0.1", server.port), config)
        t0 = time.perf_counter()
        for _ in range(count):
            reader, writer = await open_connection("127.0.0.1", echo_port, proxy=proxy)
            writer.write(b"x")
            await writer.drain()
            await reader.readexactly(1)
            writer.close()
            await writer.wait_closed()
        elapsed = time.perf_counter() - t0
    echo.close()
    await echo.wait_closed()
    return count / elapsed


def run(quick: bool) -> None:
    requests = 300 if quick else 2000
    print(f"backend {_core.BACKEND}")
    for n in (1, 100, 1000):
        reqs = requests if n < 1000 else max(50, requests // 10)
        print(f"  auth+decode AEAD request, {n:>4} users: {bench_auth(n, reqs):8.1f} us", flush=True)
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.run
        loop_name = "asyncio"
    rate = runner(bench_handshakes(150 if quick else 1000))
    print(f"  handshakes/s (client+server+echo in one loop, {loop_name}): {rate:8.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=("native", "pure", "both"), default="both")
    args = parser.parse_args()
    if args.backend != "both" and _core.BACKEND != args.backend:
        sys.exit(f"the {args.backend} backend is not the live one ({_core.BACKEND}); set VMESS_NO_EXTENSIONS accordingly")
    run(args.quick)
    if args.backend == "both" and _core.BACKEND == "native":
        cmd = [sys.executable, __file__, "--backend", "pure"] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, env={**os.environ, "VMESS_NO_EXTENSIONS": "1"}, check=True)

if __name__ == "__main__":
    main()

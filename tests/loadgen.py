"""Load generator: many concurrent sessions through our client and our server to a local echo.

Used by ``tests/test_reliability.py`` (200 sessions in CI, more with ``VMESS_LOAD_SESSIONS``) and by
``bench/bench_load.py``. The server runs in its own process (``python -m tests.loadgen serve``) so that its memory
can be measured alone: it traces Python allocations with :mod:`tracemalloc` and reads ``VmRSS``/``VmHWM`` from
``/proc/self/status``, and answers ``stats`` / ``reset_peak`` / ``quit`` lines on stdin with JSON lines.

Each session sends a payload of random size in writes of random sizes, generated from its own seed (so every
session's bytes differ) and hashed as they go (nothing is kept); the echo returns them in writes of random sizes;
the client reads with random read sizes and checks the sha256 and the length of what came back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from vmess import _core
from vmess.aio import open_connection
from vmess.aio_server import READ_BUFFER_SIZE, WRITE_HIGH_WATER, start_server
from vmess.config import VmessConfig

__all__ = [
    "LOAD_UID",
    "PER_SESSION_BOUND",
    "ServerProcess",
    "EchoServer",
    "SessionResult",
    "run_sessions",
    "payload_size",
    "raise_fd_limit",
]

LOAD_UID = uuid.UUID("c0ffee00-1d2e-4f3a-8b4c-5d6e7f8091a2")

LOAD_CONFIGS = [
    VmessConfig.new(LOAD_UID).with_encryption("aes-128-gcm"),
    VmessConfig.new(LOAD_UID).with_encryption("chacha20-poly1305").with_security_level("high"),
    VmessConfig.new(LOAD_UID).with_encryption("none"),
    VmessConfig.new(LOAD_UID).with_encryption("zero"),
]
"""Session i uses LOAD_CONFIGS[i % 4]: both AEAD ciphers (one with authenticated length), masked and raw streams."""

PER_SESSION_BOUND = 2 * READ_BUFFER_SIZE + 2 * (WRITE_HIGH_WATER + READ_BUFFER_SIZE + 8192) + READ_BUFFER_SIZE + 32768
"""Python heap a relaying session may hold in the server: its two preallocated read buffers, both transports'
write buffers (each just under high water plus one framed read), a partial chunk in its reader, and its objects."""


def raise_fd_limit(need: int) -> None:
    """Raise this process's open-file limit to ``need`` (up to the hard limit); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


def payload_size(rng: random.Random, max_payload: int) -> int:
    """Mostly small to medium (log-uniform), sometimes large (uniform), sometimes empty."""
    r = rng.random()
    if r < 0.03:
        return 0
    if r < 0.7:
        return int(2 ** rng.uniform(0, max(1.0, (max_payload // 2).bit_length() - 1)))
    return rng.randrange(max_payload + 1)


def _write_size(rng: random.Random) -> int:
    return rng.choice((1, 7, 100, 1400, 4096, 16384, 16385, 65536, 200_000, rng.randrange(1, 70_000)))


# ------------------------------------------------------------------------------------------------ the echo


class EchoServer:
    """Echoes every byte back in writes of random sizes, then half-closes after the client's EOF."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.connections = 0
        self.server: Optional[asyncio.Server] = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        rng = random.Random(self.seed * 7919 + self.connections)
        try:
            while data := await reader.read(rng.choice((100, 4096, 65536))):
                pos = 0
                while pos < len(data):
                    n = _write_size(rng)
                    writer.write(data[pos : pos + n])
                    pos += n
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self, backlog: int = 1024) -> "EchoServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=backlog)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# ------------------------------------------------------------------------------------------------ sessions


@dataclass
class SessionResult:
    """What one session sent and got back."""

    index: int
    sent: int = 0
    received: int = 0
    sent_digest: str = ""
    received_digest: str = ""
    error: str = ""

    @property
    def intact(self) -> bool:
        return not self.error and self.sent == self.received and self.sent_digest == self.received_digest


async def _session(
    index: int, seed: int, proxy: Any, echo_port: int, max_payload: int, barrier: Optional["_Barrier"],
    timeout: float,
) -> SessionResult:
    rng = random.Random(seed * 1_000_003 + index)
    result = SessionResult(index)
    size = payload_size(rng, max_payload)
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    try:
        reader, writer = await asyncio.wait_for(open_connection("127.0.0.1", echo_port, proxy=proxy), timeout)
        prefix = index.to_bytes(4, "big")  # every session's bytes differ, even two empty payloads' prefixes
        writer.write(prefix)
        sent_hash.update(prefix)
        result.sent = len(prefix)
        if barrier is not None:
            await barrier.wait()

        async def send() -> None:
            remaining = size
            while remaining > 0:
                n = min(_write_size(rng), remaining)
                chunk = rng.randbytes(n)
                sent_hash.update(chunk)
                writer.write(chunk)
                await writer.drain()
                remaining -= n
                result.sent += n
            writer.write_eof()

        async def receive() -> None:
            read_rng = random.Random(seed * 31 + index)
            while True:
                chunk = await reader.read(read_rng.choice((1, 100, 4096, 65536, 1 << 20)))
                if not chunk:
                    return
                received_hash.update(chunk)
                result.received += len(chunk)

        await asyncio.wait_for(asyncio.gather(send(), receive()), timeout)
        writer.close()
        await writer.wait_closed()
    except Exception as exc:  # noqa: BLE001 - reported per session, the test asserts on it
        result.error = f"{type(exc).__name__}: {exc}"
    result.sent_digest = sent_hash.hexdigest()
    result.received_digest = received_hash.hexdigest()
    return result


class _Barrier:
    """Holds every session after its first write until the coordinator releases them all at once."""

    def __init__(self) -> None:
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        await self.event.wait()


async def run_sessions(
    n: int,
    server_port: int,
    echo_port: int,
    *,
    seed: int = 1,
    max_payload: int = 256 * 1024,
    config: Optional[VmessConfig] = None,
    all_at_once: bool = True,
    timeout: float = 120.0,
    on_connected: Optional[Any] = None,
) -> List[SessionResult]:
    """Run ``n`` sessions concurrently (``config``, or the mix in LOAD_CONFIGS).

    With ``all_at_once`` every session connects (and has sent its first bytes) before any payload moves, so the
    server holds ``n`` sessions at the same time; ``on_connected`` (an async callable) runs at that moment.
    ``timeout`` guards each session against a hang (it is not a speed threshold).
    """
    configs = [config] if config is not None else LOAD_CONFIGS
    barrier = _Barrier() if all_at_once else None
    tasks = [
        asyncio.create_task(
            _session(i, seed, (("127.0.0.1", server_port), configs[i % len(configs)]), echo_port, max_payload, barrier,
                     timeout)
        )
        for i in range(n)
    ]
    if barrier is not None:
        while barrier.arrived + sum(t.done() for t in tasks) < n:  # a session that failed early never arrives
            await asyncio.sleep(0.01)
        if on_connected is not None:
            await on_connected()
        barrier.event.set()
    return list(await asyncio.gather(*tasks))


# ------------------------------------------------------------------------------------------------ server process


def _memory() -> Dict[str, int]:
    out: Dict[str, int] = {}
    if tracemalloc.is_tracing():
        out["traced_current"], out["traced_peak"] = tracemalloc.get_traced_memory()
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key.lower()] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


async def _serve(args: argparse.Namespace) -> None:
    if args.tracemalloc:
        tracemalloc.start(args.frames)
    server = await start_server(
        [(LOAD_UID, args.alter_id)], "127.0.0.1", 0, max_sessions=args.max_sessions, backlog=args.backlog,
        idle_timeout=args.idle_timeout,
    )
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    snapshots: List[Any] = []

    def command(line: str) -> None:
        word = line.strip()
        if word == "stats":
            stats = server.stats
            reply = {
                **_memory(),
                "sessions_active": stats.sessions_active,
                "sessions_total": stats.sessions_total,
                "bytes_up": stats.bytes_up,
                "bytes_down": stats.bytes_down,
                "buffered": server.buffered_bytes(),
                "failures": dict(stats.failures),
                "ended": dict(stats.ended),
                "replay_entries": len(server.replay_filter),  # type: ignore[arg-type]
            }
            print(json.dumps(reply), flush=True)
        elif word == "snapshot":
            snapshots[:] = [tracemalloc.take_snapshot()] if tracemalloc.is_tracing() else []
            print("{}", flush=True)
        elif word == "growth":  # where traced memory grew since "snapshot" (for diagnosing a leak)
            lines: List[str] = []
            if snapshots:
                diff = tracemalloc.take_snapshot().compare_to(snapshots[0], "lineno")
                lines = [str(stat) for stat in diff[:12]]
            print(json.dumps({"growth": lines}), flush=True)
        elif word == "collect":  # finished sessions leave reference cycles (transport <-> socket objects)
            gc.collect()
            print("{}", flush=True)
        elif word == "reset_peak":
            if tracemalloc.is_tracing():
                tracemalloc.reset_peak()
            print("{}", flush=True)
        elif word in ("quit", ""):
            if not done.done():
                done.set_result(None)

    def stdin_reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(command, line)
        loop.call_soon_threadsafe(command, "")

    print(f"listening on 127.0.0.1:{server.port} backend={_core.BACKEND}", flush=True)
    threading.Thread(target=stdin_reader, daemon=True).start()
    await done
    server.close()
    await server.wait_closed()


class ServerProcess:
    """Our server in a child process (``python -m tests.loadgen serve``), queried over its stdin/stdout."""

    def __init__(self, *, max_sessions: int = 4096, tracemalloc: bool = True, env: Optional[Dict[str, str]] = None,
                 alter_id: int = 0) -> None:
        argv = [sys.executable, "-m", "tests.loadgen", "serve", "--max-sessions", str(max_sessions),
                "--backlog", str(max(128, max_sessions)), "--alter-id", str(alter_id)]
        if tracemalloc:
            argv.append("--tracemalloc")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"load server did not start: {line!r}")
        hostport, _, backend = line[len("listening on "):].strip().partition(" backend=")
        self.port = int(hostport.rpartition(":")[2])
        self.backend = backend
        self._lock = threading.Lock()

    def _ask(self, word: str) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stats(self) -> Dict[str, Any]:
        return self._ask("stats")

    async def astats(self) -> Dict[str, Any]:
        """``stats()`` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.stats)

    def reset_peak(self) -> None:
        self._ask("reset_peak")

    def collect(self) -> None:
        """Run the server's garbage collector (what is left after it is what the server really holds)."""
        self._ask("collect")

    def snapshot(self) -> None:
        """Remember the server's allocations now (``growth()`` compares against this)."""
        self._ask("snapshot")

    def growth(self) -> List[str]:
        """The top allocation sites that grew since ``snapshot()``."""
        return list(self._ask("growth")["growth"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LoadReport:
    """Figures of one load run (for the bench script and test messages)."""

    sessions: int
    intact: int
    bytes_each_way: int
    seconds: float
    baseline: Dict[str, Any] = field(default_factory=dict)
    during_max_active: int = 0
    after: Dict[str, Any] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)
    results: List[SessionResult] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        text = (
            f"{self.sessions} sessions ({self.during_max_active} at once), {self.intact} intact, "
            f"{self.bytes_each_way / 1e6:.1f} MB each way in {self.seconds:.1f} s "
            f"({2 * self.bytes_each_way / 1e6 / max(self.seconds, 1e-9):.0f} MB/s both ways); server: "
        )
        if "traced_peak" in self.after:
            peak = self.after["traced_peak"] - self.baseline.get("traced_current", 0)
            text += (
                f"traced peak +{peak / 1e6:.1f} MB over baseline, traced after "
                f"{self.after.get('traced_current', 0) / 1e6:.1f} MB "
                f"(baseline {self.baseline.get('traced_current', 0) / 1e6:.1f} MB), "
            )
        return text + (
            f"RSS {self.baseline.get('vmrss', 0) / 1e6:.0f} -> {self.after.get('vmrss', 0) / 1e6:.0f} MB, "
            f"peak RSS {self.after.get('vmhwm', 0) / 1e6:.0f} MB"
        )


async def load_run(server: ServerProcess, echo_port: int, n: int, *, seed: int, max_payload: int) -> LoadReport:
    """One wave of ``n`` sessions against ``server``; memory is sampled when all of them are connected."""
    server.reset_peak()
    baseline = await server.astats()
    seen: Dict[str, Any] = {}

    async def connected() -> None:
        deadline = time.monotonic() + 30  # the last connections may still sit in the listen backlog
        seen.update(await server.astats())
        while seen["sessions_active"] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            seen.update(await server.astats())

    t0 = time.perf_counter()
    results = await run_sessions(n, server.port, echo_port, seed=seed, max_payload=max_payload, on_connected=connected)
    seconds = time.perf_counter() - t0
    # Let the server notice the last closes before measuring what it still holds.
    deadline = time.monotonic() + 30
    after = await server.astats()
    while after["sessions_active"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        after = await server.astats()
    await asyncio.get_running_loop().run_in_executor(None, server.collect)
    after = await server.astats()
    return LoadReport(
        sessions=n,
        intact=sum(r.intact for r in results),
        bytes_each_way=sum(r.sent for r in results),
        seconds=seconds,
        baseline=baseline,
        during_max_active=int(seen.get("sessions_active", 0)),
        after=after,
        errors=[f"session {r.index}: {r.error or 'payload mismatch'}" for r in results if not r.intact][:10],
        results=results,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run a load-test server and answer stats on stdin")
    p.add_argument("--max-sessions", type=int, default=4096)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--alter-id", type=int, default=0)
    p.add_argument("--idle-timeout", type=float, default=300.0)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--frames", type=int, default=1, help="traceback frames tracemalloc keeps")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())


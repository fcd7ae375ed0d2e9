#!/usr/bin/env python3
"""The seed's benchmark table ("Performance Characteristics"), reproduced: native and pure side by side.

    python bench/bench_seed.py [--quick] [--json FILE]

Rows (the seed's Rust figures are printed beside ours for reference; they are not the same machine):
  proxy creation       ``VmessProxyManager.new_proxy_handler`` (the coroutine stepped without an event loop,
                       so no loop overhead is counted) and ``VmessProxyImpl(...)`` directly
  data processing      one 1 KiB packet through an ESTABLISHED handler (aes-128-gcm, level auto = S|M|P):
                       client->server: push_data(FROM_CLIENT) + peek_data(TO_SERVER) + consume_data (framing);
                       server->client: push_data(FROM_SERVER) of a chunk framed by a sans-IO ServerConnection +
                       peek_data(TO_CLIENT) + consume_data (decoding). push_data is driven through its synchronous
                       form ``push_data_nowait`` (the async ``push_data`` only wraps it)
  config parsing       ``VmessConfig.from_url_params(uuid, {encryption, alterId, security})``
  memory allocation    time to create 100 handlers (the seed's row is a time), and their memory (tracemalloc:
                       Python-heap bytes still held by the 100 handlers; memory allocated inside OpenSSL is not seen)
  concurrency          N handlers created and handshaken concurrently (asyncio.gather of N tasks on one loop):
                       handler produces the request, an in-process sans-IO ServerConnection authenticates it and
                       answers, the handler is ESTABLISHED. Time for the whole batch
  encryption           the data-processing rows for none, chacha20-poly1305, aes-128-cfb, aes-128-gcm; relative
                       performance = time(none) / time(method), as in the seed's table

Timing: perf_counter, a batch size calibrated to the time budget, median of 5 batches. The pure column is measured
by the same code in a subprocess with VMESS_NO_EXTENSIONS=1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmess import _core  # noqa: E402
from vmess.config import VmessConfig  # noqa: E402
from vmess.handler import (  # noqa: E402
    IncomingDataEvent,
    IncomingDirection,
    OutgoingDirection,
    SessionInfo,
    VmessProxyImpl,
    VmessProxyManager,
)
from vmess.protocol.events import DataReceived  # noqa: E402
from vmess.protocol.server import MemoryReplayFilter, ServerConnection, UserTable  # noqa: E402

FROM_CLIENT, FROM_SERVER = IncomingDirection.FROM_CLIENT, IncomingDirection.FROM_SERVER
TO_SERVER, TO_CLIENT = OutgoingDirection.TO_SERVER, OutgoingDirection.TO_CLIENT
SERVER_ADDR = ("127.0.0.1", 10086)
INFO = SessionInfo(("127.0.0.1", 40000), ("93.184.216.34", 443), "tcp")
DOMAIN = "example.com"
PACKET = 1024
CONCURRENCY = (1, 10, 50, 100)
METHODS = ("none", "chacha20-poly1305", "aes-128-cfb", "aes-128-gcm")

# The seed's figures (Rust, release mode), in seconds.
SEED: Dict[str, Any] = {
    "create": 770e-9,
    "data": 700e-9,
    "config": 48e-9,
    "alloc100": 78e-6,
    "concurrent": {1: 2.8e-6, 10: 10.2e-6, 50: 36.2e-6, 100: 59.2e-6},
    "encryption": {"none": 600e-9, "chacha20-poly1305": 607e-9, "aes-128-cfb": 776e-9, "aes-128-gcm": 781e-9},
}


# ============================================================================================ timing


def time_batch(make: Callable[[int], Callable[[], Any]], budget: float, repeats: int = 5) -> float:
    """Seconds per op: ``make(n)`` prepares n ops (untimed) and returns the callable that runs them (timed)."""
    n = 1
    while True:
        run = make(n)
        t = time.perf_counter()
        run()
        dt = time.perf_counter() - t
        if dt >= budget / repeats or n >= 1 << 22:
            break
        n *= 2 if dt > budget / (repeats * 20) else 8
    samples = [dt / n]
    for _ in range(repeats - 1):
        run = make(n)
        gc.collect()
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def time_call(fn: Callable[[], Any], budget: float) -> float:
    """Seconds per call of a stateless ``fn``."""

    def make(n: int) -> Callable[[], None]:
        rng = range(n)

        def run() -> None:
            for _ in rng:
                fn()

        return run

    return time_batch(make, budget)


def step(coro: Any) -> Any:
    """Run a coroutine that never suspends (``new_proxy_handler``) to completion without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended")


# ============================================================================================ fixtures

USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
_USERS: Optional[UserTable] = None


def users() -> UserTable:
    global _USERS
    if _USERS is None:
        _USERS = UserTable([(USER, 4)])  # alterId 4: the same table also serves the legacy-header case
    return _USERS


def config_for(method: str) -> VmessConfig:
    return VmessConfig.new(USER).with_encryption(method)


def established(method: str) -> Tuple[VmessProxyImpl, ServerConnection]:
    """A handler in state Established and the sans-IO server on the other end of its session."""
    handler = VmessProxyImpl(SERVER_ADDR, config_for(method), INFO, DOMAIN)
    request = bytes(handler.peek_data(TO_SERVER).buffer)
    handler.consume_data(TO_SERVER, len(request))
    server = ServerConnection(users(), MemoryReplayFilter())
    events = server.receive_data(request)
    assert events and server.request is not None and server.request.host == DOMAIN
    handler.push_data_nowait(IncomingDataEvent(FROM_SERVER, server.send(b"")))
    assert handler.connection_established(), handler.state
    return handler, server


def check_roundtrip(method: str) -> None:
    """Untimed sanity check: what the benchmarked calls produce is what the other side expects."""
    handler, server = established(method)
    payload = os.urandom(PACKET)
    handler.push_data_nowait(IncomingDataEvent(FROM_CLIENT, payload))
    view = handler.peek_data(TO_SERVER).buffer
    wire = bytes(view)
    handler.consume_data(TO_SERVER, len(wire))
    got = b"".join(e.data for e in server.receive_data(wire) if isinstance(e, DataReceived))
    assert got == payload, f"{method}: client->server payload differs"
    handler.push_data_nowait(IncomingDataEvent(FROM_SERVER, server.send(payload)))
    back = bytes(handler.peek_data(TO_CLIENT).buffer)
    assert back == payload, f"{method}: server->client payload differs"


# ============================================================================================ benchmarks


def bench_create_manager(budget: float) -> float:
    manager = VmessProxyManager(SERVER_ADDR, config_for("aes-128-gcm"))
    return time_call(lambda: step(manager.new_proxy_handler(INFO, DOMAIN, False)), budget)


def bench_create_impl(budget: float) -> float:
    config = config_for("aes-128-gcm")
    return time_call(lambda: VmessProxyImpl(SERVER_ADDR, config, INFO, DOMAIN), budget)


def bench_client_to_server(method: str, budget: float) -> float:
    payload = os.urandom(PACKET)

    def make(n: int) -> Callable[[], None]:
        handler, _ = established(method)
        event = IncomingDataEvent(FROM_CLIENT, payload)
        push, peek, consume = handler.push_data_nowait, handler.peek_data, handler.consume_data
        rng = range(n)

        def run() -> None:
            for _ in rng:
                push(event)
                consume(TO_SERVER, len(peek(TO_SERVER).buffer))

        return run

    return time_batch(make, budget)


def bench_server_to_client(method: str, budget: float) -> float:
    payload = os.urandom(PACKET)

    def make(n: int) -> Callable[[], None]:
        handler, server = established(method)
        events = [IncomingDataEvent(FROM_SERVER, server.send(payload)) for _ in range(n)]
        push, peek, consume = handler.push_data_nowait, handler.peek_data, handler.consume_data

        def run() -> None:
            for event in events:
                push(event)
                consume(TO_CLIENT, len(peek(TO_CLIENT).buffer))

        return run

    return time_batch(make, budget)


def bench_config(budget: float) -> float:
    params = {"encryption": "aes-128-gcm", "alterId": "0", "security": "auto"}
    return time_call(lambda: VmessConfig.from_url_params(USER, params), budget)


def bench_alloc100(budget: float) -> float:
    config = config_for("aes-128-gcm")

    def hundred() -> List[VmessProxyImpl]:
        return [VmessProxyImpl(SERVER_ADDR, config, INFO, DOMAIN) for _ in range(100)]

    return time_call(hundred, budget)


def memory100(state: str) -> int:
    """Bytes of Python heap held by 100 handlers: fresh, or established with a 1 KiB packet done each way.

    For "established" the handshakes run under tracemalloc with their sans-IO servers, which are then dropped:
    what is still traced is what the 100 handlers hold.
    """
    config = config_for("aes-128-gcm")
    established("aes-128-gcm")  # warm caches (user table, enum lookups, cipher classes) before tracing
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if state == "fresh":
            keep: List[Any] = [VmessProxyImpl(SERVER_ADDR, config, INFO, DOMAIN) for _ in range(100)]
        else:
            keep = []
            servers = []
            payload = os.urandom(PACKET)
            for _ in range(100):
                handler, server = established("aes-128-gcm")
                handler.push_data_nowait(IncomingDataEvent(FROM_CLIENT, payload))
                handler.consume_data(TO_SERVER, len(handler.peek_data(TO_SERVER).buffer))
                handler.push_data_nowait(IncomingDataEvent(FROM_SERVER, server.send(payload)))
                handler.consume_data(TO_CLIENT, len(handler.peek_data(TO_CLIENT).buffer))
                keep.append(handler)
                servers.append(server)
            del servers, server
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


async def _handshake(manager: VmessProxyManager, table: UserTable, replay: MemoryReplayFilter) -> None:
    handler = await manager.new_proxy_handler(INFO, DOMAIN, False)
    request = bytes(handler.peek_data(TO_SERVER).buffer)
    handler.consume_data(TO_SERVER, len(request))
    server = ServerConnection(table, replay)
    server.receive_data(request)
    await handler.push_data(IncomingDataEvent(FROM_SERVER, server.send(b"")))
    if not handler.connection_established():
        raise AssertionError("handshake did not complete")


def bench_concurrent(n: int, budget: float) -> float:
    """Seconds for a batch of n concurrent create + handshake."""
    manager = VmessProxyManager(SERVER_ADDR, config_for("aes-128-gcm"))
    table = users()

    async def main() -> float:
        replay = MemoryReplayFilter()

        async def batch() -> None:
            await asyncio.gather(*(_handshake(manager, table, replay) for _ in range(n)))

        await batch()  # warm-up
        samples: List[float] = []
        deadline = time.perf_counter() + budget
        while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 2000):
            t = time.perf_counter()
            await batch()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    return asyncio.run(main())


def measure(quick: bool) -> Dict[str, Any]:
    budget = 0.05 if quick else 0.4
    for method in METHODS:
        check_roundtrip(method)
    out: Dict[str, Any] = {"backend": _core.BACKEND}
    out["create_manager"] = bench_create_manager(budget)
    out["create_impl"] = bench_create_impl(budget)
    out["data_c2s"] = {m: bench_client_to_server(m, budget) for m in METHODS}
    out["data_s2c"] = {m: bench_server_to_client(m, budget) for m in METHODS}
    out["config"] = bench_config(budget)
    out["alloc100"] = bench_alloc100(budget)
    out["mem100_fresh"] = memory100("fresh")
    out["mem100_established"] = memory100("established")
    out["concurrent"] = {str(n): bench_concurrent(n, budget * 2) for n in CONCURRENCY}
    return out


# ============================================================================================ report


def fmt_t(sec: Optional[float]) -> str:
    if sec is None:
        return "-"
    if sec < 1e-6:
        return f"{sec * 1e9:.0f} ns"
    if sec < 1e-3:
        return f"{sec * 1e6:.1f} µs"
    return f"{sec * 1e3:.2f} ms"


def fmt_b(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def report(native: Optional[Dict[str, Any]], pure: Optional[Dict[str, Any]]) -> None:
    cols = [("native", native), ("pure", pure)]

    def get(d: Optional[Dict[str, Any]], *path: str) -> Any:
        for p in path:
            if d is None:
                return None
            d = d.get(p)
        return d

    def row(name: str, seed: str, path: Tuple[str, ...], note: str, fmt: Callable[[Any], str] = fmt_t) -> None:
        vals = [fmt(get(d, *path)) for _, d in cols]
        print(f"{name:<34} {seed:>10} {vals[0]:>11} {vals[1]:>11}   {note}")

    print(f"\nBenchmarks (seed: Rust, release mode; ours: Python {platform.python_version()}, "
          f"per op, median of 5 batches)")
    print(f"{'Operation':<34} {'seed':>10} {'native':>11} {'pure':>11}   notes")
    row("Proxy creation (manager)", "~770 ns", ("create_manager",), "VmessProxyManager.new_proxy_handler")
    row("Proxy creation (VmessProxyImpl)", "~770 ns", ("create_impl",), "VmessProxyImpl(...) directly")
    row("Data processing, client->server", "~700 ns", ("data_c2s", "aes-128-gcm"), "1 KiB, aes-128-gcm, framing")
    row("Data processing, server->client", "~700 ns", ("data_s2c", "aes-128-gcm"), "1 KiB, aes-128-gcm, decoding")
    row("Config parsing", "~48 ns", ("config",), "VmessConfig.from_url_params")
    row("Memory allocation (time)", "~78 µs", ("alloc100",), "create 100 handlers")
    row("Memory, 100 fresh handlers", "-", ("mem100_fresh",), "tracemalloc, Python heap", fmt_b)
    row("Memory, 100 established handlers", "-", ("mem100_established",),
        "tracemalloc, after 1 KiB each way", fmt_b)

    print("\nConcurrency (create + handshake with an in-process sans-IO server, asyncio.gather on one loop)")
    print(f"{'Concurrent proxies':<20} {'seed':>9} {'native':>10} {'pure':>10} {'native/proxy':>13} {'pure/proxy':>11}")
    for n in CONCURRENCY:
        nv, pv = get(native, "concurrent", str(n)), get(pure, "concurrent", str(n))
        print(f"{n:<20} {fmt_t(SEED['concurrent'][n]):>9} {fmt_t(nv):>10} {fmt_t(pv):>10} "
              f"{fmt_t(nv / n if nv else None):>13} {fmt_t(pv / n if pv else None):>11}")

    print("\nEncryption (1 KiB through an established handler; relative = time(none) / time(method))")
    print(f"{'Method':<18} {'seed':>7} {'rel':>5} | {'native c->s':>11} {'rel':>5} {'native s->c':>11} {'rel':>5} | "
          f"{'pure c->s':>10} {'rel':>5} {'pure s->c':>10} {'rel':>5}")

    def rel(d: Optional[Dict[str, Any]], key: str, method: str) -> str:
        t, base = get(d, key, method), get(d, key, "none")
        return f"{100 * base / t:.0f}%" if t and base else "-"

    for m in METHODS:
        s = SEED["encryption"][m]
        print(f"{m:<18} {fmt_t(s):>7} {100 * SEED['encryption']['none'] / s:4.0f}% | "
              f"{fmt_t(get(native, 'data_c2s', m)):>11} {rel(native, 'data_c2s', m):>5} "
              f"{fmt_t(get(native, 'data_s2c', m)):>11} {rel(native, 'data_s2c', m):>5} | "
              f"{fmt_t(get(pure, 'data_c2s', m)):>10} {rel(pure, 'data_c2s', m):>5} "
              f"{fmt_t(get(pure, 'data_s2c', m)):>10} {rel(pure, 'data_s2c', m):>5}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="small time budget (a smoke run, figures are rough)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)  # child mode: JSON on stdout
    args = parser.parse_args(argv)
    if args.emit_json:
        print(json.dumps(measure(args.quick)))
        return 0
    import cryptography

    print(f"bench_seed {time.strftime('%Y-%m-%d %H:%M:%S %z')}  {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, cryptography {cryptography.__version__}, live backend {_core.BACKEND}")
    native = measure(args.quick) if _core.BACKEND == "native" else None
    if native is None:
        print("note: the native core is not built (or VMESS_NO_EXTENSIONS is set): native column empty")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--emit-json"] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, env={**os.environ, "VMESS_NO_EXTENSIONS": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"pure backend run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return 1
    pure = json.loads(proc.stdout.strip().splitlines()[-1])
    if pure.get("backend") != "pure":
        print("the subprocess did not run on the pure backend", file=sys.stderr)
        return 1
    report(native, pure)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": SEED, "native": native, "pure": pure}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

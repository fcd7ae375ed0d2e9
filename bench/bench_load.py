"""Load benchmark: N concurrent sessions through our client and our server (in its own process) to a local echo.

Usage: python bench/bench_load.py [--sessions 1000] [--waves 2] [--max-payload 131072] [--backend native|pure]
                                  [--no-tracemalloc]

Every session connects first (all N are open on the server at once), then sends a payload of random size in
writes of random sizes, both ways through the echo; each payload is checked (sha256 and length) on its way back.
Per wave it prints sessions, bytes, wall time and the server's memory: traced Python heap (peak over the wave
and after it, against the baseline before it) and RSS. ``--no-tracemalloc`` measures speed without the tracing
overhead (RSS only). The test suite runs the same code with 200 sessions (``VMESS_LOAD_SESSIONS`` raises it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.loadgen import PER_SESSION_BOUND, EchoServer, ServerProcess, load_run, raise_fd_limit  # noqa: E402
from vmess import _core  # noqa: E402


async def bench(args: argparse.Namespace) -> int:
    raise_fd_limit(4 * args.sessions + 256)
    echo = await EchoServer(seed=args.seed).start(backlog=args.sessions + 64)
    failed = 0
    try:
        with ServerProcess(max_sessions=args.sessions + 64, tracemalloc=not args.no_tracemalloc) as server:
            print(f"backend {_core.BACKEND} (server process: {server.backend}), {args.sessions} sessions per wave, "
                  f"payloads up to {args.max_payload} bytes, tracemalloc {'off' if args.no_tracemalloc else 'on'}")
            await load_run(server, echo.port, 8, seed=0, max_payload=64 * 1024)  # warm-up
            for wave in range(1, args.waves + 1):
                report = await load_run(server, echo.port, args.sessions, seed=args.seed + wave,
                                        max_payload=args.max_payload)
                print(f"wave {wave}: {report.summary()}")
                if report.intact != args.sessions:
                    failed += 1
                    print("  failures:", *report.errors, sep="\n    ")
            totals = server.stats()
            print(f"server totals: {totals['sessions_total']} sessions, {totals['bytes_up']} bytes up, "
                  f"{totals['bytes_down']} down, failures {totals['failures'] or 'none'}, "
                  f"replay filter entries {totals['replay_entries']}")
            print(f"bound used by the test: {PER_SESSION_BOUND} bytes of traced heap per concurrent session "
                  f"({args.sessions * PER_SESSION_BOUND / 1e6:.0f} MB for {args.sessions})")
    finally:
        echo.close()
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--max-payload", type=int, default=128 * 1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", choices=["native", "pure"], help="default: whatever vmess._core picked")
    parser.add_argument("--no-tracemalloc", action="store_true", help="RSS only, no tracing overhead")
    args = parser.parse_args()
    if args.backend == "pure" and _core.BACKEND != "pure":
        env = {**os.environ, "VMESS_NO_EXTENSIONS": "1"}
        return subprocess.call([sys.executable, *sys.argv], env=env, cwd=ROOT)
    if args.backend == "native" and _core.BACKEND != "native":
        print("the native backend is not available (run: python setup.py build_ext --inplace)", file=sys.stderr)
        return 2
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())

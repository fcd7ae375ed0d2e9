#!/usr/bin/env python3
"""Micro-benchmarks of the VMess core: compiled (vmess._speedups) vs pure twin (vmess._core_py).

    python bench/bench_core.py [--quick] [--only SUBSTRING]

One core, wall clock (time.perf_counter), best of 3 timed runs per row. "1 KiB" chunks carry a 1024-byte payload;
"16 KiB" chunks are whole chunks of 16384 bytes (payload = max_payload: 16302 with P, 16378 legacy S). MB/s
counts payload bytes. Padding uses os.urandom as in production. The "floor" rows time the bare
``cryptography`` call that a chunk cannot avoid (one AEAD encrypt_into / decrypt_into, or one CFB update_into),
so the distance between a row and its floor is the framing cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from vmess import _core_py as PURE  # noqa: E402

try:
    from vmess import _speedups as NATIVE
except ImportError as exc:  # pragma: no cover
    NATIVE = None
    NATIVE_ERR = str(exc)
else:
    NATIVE_ERR = ""

KEY, IV, REQ_KEY, REQ_IV = (bytes([i]) * 16 for i in (1, 2, 3, 4))
GCM, CHACHA, LEGACY = 3, 4, 1
OPT_AEAD, OPT_LEGACY = 0x0D, 0x01


def timeit(fn: Callable[[], Any], budget: float) -> float:
    """Seconds per call of fn: calibrate a loop count to ~budget, then best of 3 runs."""
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t
        if dt >= budget / 4 or n >= 1 << 24:
            break
        n *= 4 if dt < budget / 40 else 2
    best = dt / n
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


class Row:
    def __init__(self, name: str, unit_bytes: int, per_call: int = 1, note: str = "") -> None:
        self.name = name
        self.unit_bytes = unit_bytes  # payload bytes per op (0: not a throughput row)
        self.per_call = per_call  # ops per timed call
        self.note = note
        self.t: Dict[str, Optional[float]] = {"native": None, "pure": None}


def fmt_rate(ops: float) -> str:
    if ops >= 1e6:
        return f"{ops / 1e6:7.2f}M"
    if ops >= 1e3:
        return f"{ops / 1e3:7.1f}k"
    return f"{ops:8.1f}"


def print_table(rows: List[Row]) -> None:
    head = f"{'benchmark':<44} {'native/s':>9} {'nat MB/s':>9} {'nat us':>8} {'pure/s':>9} {'pure MB/s':>9} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [f"{r.name:<44}"]
        for side in ("native", "pure"):
            t = r.t[side]
            if t is None:
                cells += [f"{'-':>9}", f"{'-':>9}"] + ([f"{'-':>8}"] if side == "native" else [])
                continue
            ops = r.per_call / t
            cells.append(f"{fmt_rate(ops):>9}")
            cells.append(f"{ops * r.unit_bytes / 1e6:9.0f}" if r.unit_bytes else f"{'':>9}")
            if side == "native":
                cells.append(f"{t / r.per_call * 1e6:8.3f}")
        tn, tp = r.t["native"], r.t["pure"]
        cells.append(f"{tp / tn:6.1f}x" if tn and tp else f"{'':>7}")
        print(" ".join(cells) + (f"  {r.note}" if r.note else ""))


# --------------------------------------------------------------------------------------------- cases


def writer_case(mod: Any, sec: int, opt: int, size: str, chunk_size: int = 16384) -> Tuple[Callable[[], Any], int]:
    w = mod.ChunkWriter(sec, opt, KEY, IV, REQ_KEY, REQ_IV, os.urandom, chunk_size=chunk_size)
    n = 1024 if size == "1k" else w.max_payload
    data = os.urandom(n)
    out = bytearray(w.max_output(n))
    wi = w.write_into
    return (lambda: wi(data, out)), n


def reader_case(mod: Any, sec: int, opt: int, size: str) -> Tuple[Callable[[], Any], int, int]:
    """Feed a prepared stream of K chunks in 64 KiB reads to a fresh reader; returns (fn, payload, K)."""
    w = PURE.ChunkWriter(sec, opt, KEY, IV, REQ_KEY, REQ_IV, os.urandom)
    n = 1024 if size == "1k" else w.max_payload
    k = 256 if size == "1k" else 32
    payload = os.urandom(n)
    wire = b"".join(w.write(payload) for _ in range(k))
    pieces = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]

    def run() -> None:
        r = mod.ChunkReader(sec, opt, KEY, IV, REQ_KEY, REQ_IV)
        feed = r.feed
        for p in pieces:
            feed(p)

    return run, n, k


def floor_write(sec: int, n: int) -> Callable[[], Any]:
    if sec == LEGACY:
        enc = PURE.cfb_encryptor(KEY, IV)
        data, out = os.urandom(n + 6), bytearray(n + 6)
        return lambda: enc.update_into(data, out)
    aead = AESGCM(KEY) if sec == GCM else ChaCha20Poly1305(KEY * 2)
    nonce, data, out = b"n" * 12, os.urandom(n), bytearray(n + 16)
    ei = aead.encrypt_into
    return lambda: ei(nonce, data, None, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (the whole table in well under a minute)")
    ap.add_argument("--only", default="", help="run only rows whose name contains this")
    args = ap.parse_args()
    budget = 0.06 if args.quick else 0.4

    print(f"python {platform.python_version()}  cryptography {cryptography.__version__}  "
          f"{platform.machine()}  {platform.processor() or ''}".rstrip())
    if NATIVE is None:
        print(f"native core not built ({NATIVE_ERR}); pure twin only")
    print(f"budget {budget:.2f} s per timed run, best of 3{'  (--quick)' if args.quick else ''}\n")

    mods = [("native", NATIVE), ("pure", PURE)] if NATIVE is not None else [("pure", PURE)]
    rows: List[Row] = []
    t0 = time.perf_counter()

    def add(row: Row, make: Callable[[Any], Callable[[], Any]], pure_too: bool = True) -> None:
        if args.only and args.only not in row.name:
            return
        for side, mod in mods:
            if side == "pure" and not pure_too:
                continue
            row.t[side] = timeit(make(mod), budget)
        rows.append(row)

    # primitives
    d16 = os.urandom(16384)
    add(Row("fnv1a32 16 KiB", 16384), lambda m: (lambda: m.fnv1a32(d16)))

    def draws(m: Any) -> Callable[[], Any]:
        s = m.ShakeStream(IV)
        dr = s.draw
        return lambda: (dr(), dr(), dr(), dr(), dr(), dr(), dr(), dr(), dr(), dr())

    add(Row("ShakeStream.draw (mask/pad draw)", 0, per_call=10), draws)
    add(Row("kdf 3-element path", 0), lambda m: (lambda: m.kdf(KEY, b"VMess Header AEAD Key", b"a" * 16, b"n" * 8)))

    section = os.urandom(60)

    def header(m: Any) -> Callable[[], Any]:
        u = m.UserKeys(REQ_KEY)
        return lambda: m.seal_aead_header(u, m.create_auth_id(u, 1_700_000_000, b"rand"), b"conn-non", section)

    add(Row("AEAD request header (auth id + seal, 60 B)", 0), header)

    cases = [("gcm", GCM, OPT_AEAD), ("chacha", CHACHA, OPT_AEAD), ("legacy cfb+fnv", LEGACY, OPT_LEGACY)]
    for label, sec, opt in cases:
        for size in ("1k", "16k"):
            _, n = writer_case(PURE, sec, opt, size)
            add(Row(f"write_into {label} opt {opt:#04x} {'1 KiB' if size == '1k' else '16 KiB'}", n),
                lambda m, sec=sec, opt=opt, size=size: writer_case(m, sec, opt, size)[0])
            if NATIVE is not None:
                add(Row(f"  floor: bare {'update_into' if sec == LEGACY else 'encrypt_into'} {n} B", n),
                    lambda m, sec=sec, n=n: floor_write(sec, n), pure_too=False)
    for label, sec, opt in cases:
        for size in ("1k", "16k"):
            _, n, k = reader_case(PURE, sec, opt, size)
            add(Row(f"feed {label} opt {opt:#04x} {'1 KiB' if size == '1k' else '16 KiB'} chunks", n, per_call=k),
                lambda m, sec=sec, opt=opt, size=size: reader_case(m, sec, opt, size)[0])

    # chunk-size sweep: 64 KiB per write_into call, split into chunks no larger than chunk_size
    blob = os.urandom(65536)
    for cs in (2048, 4096, 8192, 16384):
        def sweep(m: Any, cs: int = cs) -> Callable[[], Any]:
            w = m.ChunkWriter(GCM, OPT_AEAD, KEY, IV, REQ_KEY, REQ_IV, os.urandom, chunk_size=cs)
            out = bytearray(w.max_output(len(blob)))
            wi = w.write_into
            return lambda: wi(blob, out)

        add(Row(f"sweep gcm 0x0d chunk_size {cs:5d} (64 KiB writes)", 65536), sweep)

    print_table(rows)
    print(f"\n(ratio = pure time / native time; total {time.perf_counter() - t0:.1f} s)")

    if NATIVE is not None and not args.only:
        by = {r.name: r for r in rows}

        def rate(name: str) -> float:
            t = by[name].t["native"]
            return by[name].per_call / t if t else 0.0

        print("\ntargets (native, one core):")
        checks = [
            ("write_into gcm 0x0D 16 KiB >= 0.70M chunks/s", rate("write_into gcm opt 0x0d 16 KiB"), 0.7e6),
            ("write_into gcm 0x0D 1 KiB  >= 1.50M chunks/s", rate("write_into gcm opt 0x0d 1 KiB"), 1.5e6),
        ]
        for text, got, want in checks:
            print(f"  {text:<46} {got / 1e6:5.2f}M  {'met' if got >= want else 'MISSED'}")
        th = by["AEAD request header (auth id + seal, 60 B)"].t["native"] or 0
        print(f"  {'AEAD request header <= 10 us':<46} {th * 1e6:5.2f}us {'met' if th <= 10e-6 else 'MISSED'}")
        for size in ("1 KiB", "16 KiB"):
            r = by[f"write_into legacy cfb+fnv opt 0x01 {size}"]
            ratio = (r.t["pure"] or 0) / (r.t["native"] or 1)
            print(f"  {'legacy cfb+fnv write ' + size + ' >= 30x pure':<46} {ratio:5.1f}x  "
                  f"{'met' if ratio >= 30 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

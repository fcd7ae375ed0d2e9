"""``vmess bench``: a quick native-vs-pure table of the core's hot paths (seconds, not minutes).

The full suite, with chunk-size sweeps and readers, is ``bench/bench_core.py``; end-to-end figures are in
``bench/``. Each row runs its operation for a fixed time budget and reports operations per second.
"""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any, Callable, List, Optional, TextIO, Tuple

__all__ = ["run_core_bench"]


def _rate(fn: Callable[[], object], budget: float) -> float:
    """Calls per second of ``fn`` over about ``budget`` seconds (batches grow until a batch takes >= 10 ms)."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= 0.01:
            break
        n *= 4
    calls, spent = n, dt
    while spent < budget:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        spent += time.perf_counter() - t0
        calls += n
    return calls / spent


def _cases(core: ModuleType) -> List[Tuple[str, int, Callable[[], object]]]:
    """(name, bytes per call, callable) for one backend."""
    k, iv = os.urandom(16), os.urandom(16)
    user = core.UserKeys(os.urandom(16))
    section = os.urandom(60)
    chunk16 = os.urandom(16384 - 2 - 16 - 64)
    chunk1 = os.urandom(1024)
    fnv_data = os.urandom(16384)
    shake = core.ShakeStream(iv)

    def writer(security: int, options: int) -> Tuple[Any, bytearray]:
        w = core.ChunkWriter(security, options, k, iv, k, iv, os.urandom)
        return w, bytearray(w.max_output(len(chunk16)))

    gcm, gcm_out = writer(3, 0x0D)
    chacha, chacha_out = writer(4, 0x0D)
    cfb, cfb_out = writer(1, 0x01)

    def header() -> bytes:
        auth = core.create_auth_id(user, 1_700_000_000, b"\0\1\2\3")
        return core.seal_aead_header(user, auth, b"\0" * 8, section)

    return [
        ("fnv1a32 16 KiB", len(fnv_data), lambda: core.fnv1a32(fnv_data)),
        ("mask draw (2 bytes)", 0, shake.draw),
        ("kdf, 3-element path", 0, lambda: core.kdf(k, b"VMess Header AEAD Key", iv, b"12345678")),
        ("AEAD request header", 0, header),
        ("seal GCM S|M|P 1 KiB", 1024, lambda: gcm.write_into(chunk1, gcm_out)),
        ("seal GCM S|M|P 16 KiB", len(chunk16), lambda: gcm.write_into(chunk16, gcm_out)),
        ("seal ChaCha S|M|P 16 KiB", len(chunk16), lambda: chacha.write_into(chunk16, chacha_out)),
        ("seal legacy CFB+FNV 16 KiB", len(chunk16), lambda: cfb.write_into(chunk16, cfb_out)),
    ]


def run_core_bench(out: TextIO, budget: float = 0.25) -> int:
    """Print the table; returns 0, or 1 when the native backend is not built (pure figures still printed)."""
    from . import _core_py

    native: Optional[ModuleType]
    try:
        from . import _speedups as native
    except ImportError:
        native = None
    pure_cases = _cases(_core_py)
    native_cases = _cases(native) if native is not None else None
    print(f"{'operation':<28} {'native':>14} {'pure':>14} {'ratio':>7}", file=out)
    for i, (name, size, fn) in enumerate(pure_cases):
        pure_rate = _rate(fn, budget)
        native_rate = _rate(native_cases[i][2], budget) if native_cases else 0.0

        def fmt(rate: float) -> str:
            if not rate:
                return "-"
            if size:
                return f"{rate * size / 1e6:,.0f} MB/s"
            return f"{rate / 1e3:,.1f} k/s" if rate < 1e6 else f"{rate / 1e6:,.2f} M/s"

        ratio = f"{native_rate / pure_rate:.1f}x" if native_rate else "-"
        print(f"{name:<28} {fmt(native_rate):>14} {fmt(pure_rate):>14} {ratio:>7}", file=out, flush=True)
    if native is None:
        print("native backend not built: reinstall with a C compiler and without VMESS_NO_EXTENSIONS", file=out)
        return 1
    return 0

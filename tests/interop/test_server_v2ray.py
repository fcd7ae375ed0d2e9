"""Real v2ray 4.34 as the CLIENT (socks inbound -> VMess outbound) against OUR server (vmess.aio_server).

Our server runs in a background thread with its own event loop (the tests drive v2ray with blocking sockets).
For every client configuration: 16 MiB uploaded to a TcpSink whose sha256 is checked on arrival, an echo round
trip through a TcpEcho, and UDP datagrams through SOCKS5 UDP ASSOCIATE to a UdpEcho. Then a replay: a recording
relay in front of our server captures what a real v2ray client sends, and the capture is sent again.

v2ray 4.34 client behaviour that shapes these tests (see also v2ray.py):

* 4.34's JSON loader does not know ``"security": "zero"`` (later v2fly versions do): an unknown name falls back
  to ``auto``, so the "zero" client really sends AES-128-GCM (code 3) with S|M|P. test_request_as_sent_by_v2ray
  pins down what each configuration puts on the wire, so a newer v2ray that does send zero gets noticed.
* v2ray sends its end marker when the SOCKS client half-closes, so the sink sees EOF at once (the 1 s delay in
  v2ray.py is v2ray's *server* side, which does not half-close its destination).
* UDP replies: v2ray's reader accepts chunks up to 2048 bytes; datagrams here stay at or below 1967 bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest


from .server_thread import ServerThread
from .endpoints import Socks5UdpAssociation, TcpEcho, TcpSink, UdpEcho, exchange, recv_exactly, socks5_connect
from .v2ray import V2RayProcess, client_config, free_port

AEAD_USER = str(uuid.UUID("d7c4f0a1-2b3e-4c5d-8e6f-7a8b9c0d1e2f"))
LEGACY_USER = str(uuid.UUID("6e5d4c3b-2a19-4807-b6f5-e4d3c2b1a098"))
MiB = 1 << 20
BULK = 16 * MiB
UDP_MAX = 1967

# (security, alter_id): alterId 0 makes v2ray send the AEAD header, 4 the legacy (MD5) one.
CASES = [
    ("aes-128-gcm", 0),
    ("chacha20-poly1305", 0),
    ("none", 0),
    ("zero", 0),
    ("auto", 0),
    ("aes-128-gcm", 4),
    ("chacha20-poly1305", 4),
    ("none", 4),
]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerThread]:
    server = ServerThread([(AEAD_USER, 0, "aead"), (LEGACY_USER, 4, "legacy")], idle_timeout=30).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Client:
    socks_port: int
    security: str
    alter_id: int
    processes: list[V2RayProcess] = field(default_factory=list)  # logs attached on failure


@pytest.fixture(scope="module", params=CASES, ids=[f"{'legacy' if a else 'aead'}-{s}" for s, a in CASES])
def client(request: pytest.FixtureRequest, ours: ServerThread, v2ray_bin: str) -> Iterator[Client]:
    security, alter_id = request.param
    socks_port = free_port()
    cfg = client_config(socks_port, ours.port, LEGACY_USER if alter_id else AEAD_USER, alter_id=alter_id,
                        security=security)
    with V2RayProcess(cfg, binary=v2ray_bin, name=f"client-{security}-aid{alter_id}") as proc:
        yield Client(socks_port, security, alter_id, [proc])
        assert proc.running, proc.log_tail()
        assert "panic" not in proc.log_text, proc.log_tail()


def test_upload_16mib_checked_at_the_sink(client: Client, ours: ServerThread, tcp_sink: TcpSink) -> None:
    payload = os.urandom(BULK)
    before = ours.stats.bytes_up
    with socks5_connect(client.socks_port, tcp_sink.port, timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # v2ray sends its end marker; we half-close the sink
        count, digest = tcp_sink.wait_result(timeout=30)
        assert s.recv(1) == b""
    assert (count, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert tcp_sink.results[-1].error is None
    assert ours.stats.bytes_up - before >= len(payload)


def test_echo_round_trip(client: Client, tcp_echo: TcpEcho) -> None:
    with socks5_connect(client.socks_port, tcp_echo.port, timeout=30) as s:
        for msg in (b"hello", b"x" * 3000, os.urandom(70000)):
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
        bulk = os.urandom(2 * MiB)
        got = exchange(s, bulk, expect=len(bulk), half_close=False, timeout=30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(bulk).digest()


def test_udp_associate_round_trip(client: Client, ours: ServerThread, udp_echo: UdpEcho) -> None:
    datagrams = [b"ping", os.urandom(1200), os.urandom(UDP_MAX), b"\x00" * 32, b"last"]
    with Socks5UdpAssociation(client.socks_port, timeout=5) as assoc:
        for d in datagrams:
            assoc.sendto(d, ("127.0.0.1", udp_echo.port))
            data, src = assoc.recvfrom()
            assert data == d
            assert src == ("127.0.0.1", udp_echo.port)
    # UdpEcho counts after replying, so the last reply can arrive before the count moves.
    wait_for(lambda: udp_echo.datagrams == len(datagrams))


# (security code, option bits) v2ray 4.34 sends for each configured security; S=0x01 M=0x04 P=0x08.
WIRE = {
    "aes-128-gcm": (3, 0x0D),
    "chacha20-poly1305": (4, 0x0D),
    "none": (5, 0x05),
    "zero": (3, 0x0D),  # unknown to 4.34's config loader: treated as auto
    "auto": (3, 0x0D),  # auto resolves to AES-128-GCM on amd64 (chacha20-poly1305 elsewhere)
}


def test_request_as_sent_by_v2ray(client: Client, tcp_echo: TcpEcho, caplog: pytest.LogCaptureFixture) -> None:
    """Our server's DEBUG line shows the header mode, security and options of each v2ray request."""
    caplog.set_level(logging.DEBUG, logger="vmess.server")
    with socks5_connect(client.socks_port, tcp_echo.port, timeout=10) as s:
        s.sendall(b"probe")
        assert recv_exactly(s, 5) == b"probe"
    lines = [r.getMessage() for r in caplog.records if f"tcp:127.0.0.1:{tcp_echo.port}:" in r.getMessage()]
    assert len(lines) == 1, lines
    match = re.search(r"user=(\w+) .*: (\w+) header, security (\d), options 0x([0-9a-f]{2})$", lines[0])
    assert match, lines[0]
    user, header, security, options = match[1], match[2], int(match[3]), int(match[4], 16)
    assert (user, header) == (("legacy", "legacy") if client.alter_id else ("aead", "AEAD"))
    expected = WIRE[client.security]
    if client.security in ("auto", "zero") and platform.machine().lower() not in ("x86_64", "amd64"):
        expected = (security, expected[1]) if security in (3, 4) else expected  # v2ray picks the AEAD per CPU
    assert (security, options) == expected, lines[0]


# ------------------------------------------------------------------------------------------- replay


class RecordingRelay:
    """A TCP relay in front of our server that records what its first client sends."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.recorded = bytearray()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepted = 0

    def __enter__(self) -> "RecordingRelay":
        t = threading.Thread(target=self._accept_loop, name="recording-relay", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)
        for c in conns:
            c.close()
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            record = self._accepted == 0
            self._accepted += 1
            with self._lock:
                self._conns += [conn, upstream]
            for src, dst, rec in ((conn, upstream, record), (upstream, conn, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, rec), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    with self._lock:
                        self.recorded += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.mark.parametrize("alter_id", [0, 4], ids=["aead", "legacy"])
def test_replayed_v2ray_request_is_refused(
    alter_id: int, ours: ServerThread, v2ray_factory: Any, tcp_echo: TcpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vmess.server")
    socks_port = free_port()
    user = LEGACY_USER if alter_id else AEAD_USER
    with RecordingRelay(ours.port) as relay:
        v2ray_factory(client_config(socks_port, relay.port, user, alter_id=alter_id, security="aes-128-gcm"))
        with socks5_connect(socks_port, tcp_echo.port, timeout=10) as s:
            s.sendall(b"hello")
            assert recv_exactly(s, 5) == b"hello"
        with relay._lock:
            captured = bytes(relay.recorded)
    assert len(captured) > 16 + 5
    assert tcp_echo.connections == 1

    replays = ours.stats.failures["replay"]
    finished = ours.stats.ended["drained"] + ours.stats.ended["replay"]
    with socket.create_connection(("127.0.0.1", ours.port), timeout=10) as raw:
        raw.sendall(captured)
        wait_for(lambda: ours.stats.failures["replay"] == replays + 1)
        try:
            raw.sendall(os.urandom(4000))  # more than any drain: the server reads its share, then closes
            got = raw.recv(65536)
        except ConnectionResetError:  # it closed with our surplus unread
            got = b""
        assert got == b""  # nothing was ever sent back
    wait_for(lambda: ours.stats.ended["drained"] + ours.stats.ended["replay"] == finished + 1)
    assert tcp_echo.connections == 1 and tcp_echo.bytes_echoed == 5  # nothing forwarded
    assert any("replayed request refused" in r.getMessage() for r in caplog.records)

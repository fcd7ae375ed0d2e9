"""Self-test of the interop harness: real v2ray client -> real v2ray VMess
server -> local endpoints, driven through the client's SOCKS5 port.

If these fail, the harness (or the v2ray install) is broken, not the library.
v2ray 4.34 behaviours the tests work around (see v2ray.py for details):

* a half-close is not forwarded: the far side sees EOF only when v2ray's
  1 s inactivity timer (policy uplinkOnly/downlinkOnly) fires, so each
  test that needs EOF at the target costs ~1 s;
* a client that half-closes before sending any byte gets nothing: the vmess
  outbound fails with "failed to write first payload > EOF";
* UDP payloads above 1967 bytes (AEAD ciphers) can kill the UDP session.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .endpoints import (
    Socks5UdpAssociation,
    TcpEcho,
    TcpSink,
    TcpSource,
    UdpEcho,
    exchange,
    recv_exactly,
    socks5_connect,
)
from .v2ray import V2RayProcess, client_config, free_port, server_config

pytestmark = pytest.mark.interop

UUID_AEAD = str(uuid.uuid4())  # server user with alterId 0
UUID_LEGACY = str(uuid.uuid4())  # server user with alterId 4

# (security, alter_id): alter_id 0 -> AEAD header, 4 -> legacy header
CASES = [
    ("aes-128-gcm", 0),
    ("chacha20-poly1305", 0),
    ("none", 0),
    ("aes-128-gcm", 4),
]

MiB = 1 << 20
UDP_MAX = 1967  # largest UDP payload v2ray 4.34 always relays over VMess/AEAD ciphers


@dataclass
class Proxy:
    socks_port: int
    security: str
    alter_id: int
    processes: list[V2RayProcess] = field(default_factory=list)  # logs shown on failure


@pytest.fixture(scope="module")
def vmess_server(v2ray_bin: str) -> Iterator[V2RayProcess]:
    port = free_port()
    cfg = server_config(port, [(UUID_AEAD, 0), (UUID_LEGACY, 4)])
    with V2RayProcess(cfg, binary=v2ray_bin, name="server") as server:
        yield server
        assert server.running, server.log_tail()
        assert "panic" not in server.log_text, server.log_tail()


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-aid{a}" for s, a in CASES])
def proxy(request: pytest.FixtureRequest, vmess_server: V2RayProcess, v2ray_bin: str) -> Iterator[Proxy]:
    security, alter_id = request.param
    user = UUID_LEGACY if alter_id else UUID_AEAD
    socks_port = free_port()
    cfg = client_config(socks_port, vmess_server.port, user, alter_id=alter_id, security=security)
    with V2RayProcess(cfg, binary=v2ray_bin, name=f"client-{security}-aid{alter_id}") as client:
        yield Proxy(socks_port, security, alter_id, [vmess_server, client])
        assert client.running, client.log_tail()
        assert "panic" not in client.log_text, client.log_tail()


def test_upload_to_sink(proxy: Proxy, tcp_sink: TcpSink) -> None:
    payload = os.urandom(4 * MiB)
    with socks5_connect(proxy.socks_port, tcp_sink.port) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        # EOF reaches the sink only via v2ray's 1 s inactivity timer
        count, digest = tcp_sink.wait_result(timeout=20)
        assert s.recv(1) == b""
    assert (count, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert tcp_sink.results[-1].error is None


def test_download_from_source(proxy: Proxy) -> None:
    payload = os.urandom(4 * MiB)
    with TcpSource(payload) as source, socks5_connect(proxy.socks_port, source.port) as s:
        # send a byte first: v2ray drops a connection half-closed before any data
        got = exchange(s, b"GET", timeout=20)
        assert source.completed == 1
    assert len(got) == len(payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_echo_round_trip(proxy: Proxy, tcp_echo: TcpEcho) -> None:
    with socks5_connect(proxy.socks_port, tcp_echo.port) as s:
        # interactive ping-pong: the first message carries the VMess header
        for msg in (b"hello", b"x" * 3000, os.urandom(70000)):
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
        # full-duplex bulk (no half-close, so no 1 s v2ray timer)
        bulk = os.urandom(2 * MiB)
        assert exchange(s, bulk, expect=len(bulk), half_close=False, timeout=20) == bulk
    assert tcp_echo.bytes_echoed == 5 + 3000 + 70000 + len(bulk)


def test_udp_associate_round_trip(proxy: Proxy, udp_echo: UdpEcho) -> None:
    datagrams = [b"ping", os.urandom(1200), os.urandom(UDP_MAX), b"\x00" * 32, b"last"]
    with Socks5UdpAssociation(proxy.socks_port, timeout=5) as assoc:
        for d in datagrams:
            assoc.sendto(d, ("127.0.0.1", udp_echo.port))
            data, src = assoc.recvfrom()
            assert data == d
            assert src == ("127.0.0.1", udp_echo.port)
    assert udp_echo.datagrams == len(datagrams)


def test_wrong_uuid_is_rejected(vmess_server: V2RayProcess, v2ray_factory, tcp_sink: TcpSink) -> None:
    """The server really authenticates: an unknown user's data never arrives.

    v2ray 4.34 does not close a rejected connection: it keeps reading, and logs
    "invalid user" only when the connection ends.  Closing our SOCKS side makes
    the client drop its tunnel after its 1 s inactivity timer."""
    socks_port = free_port()
    cfg = client_config(socks_port, vmess_server.port, str(uuid.uuid4()))
    client = v2ray_factory(cfg, name="client-bad-uuid")
    with socks5_connect(socks_port, tcp_sink.port, timeout=5) as s:
        s.sendall(b"must not arrive")
    deadline = time.monotonic() + 10
    while "invalid user" not in vmess_server.log_text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "invalid user" in vmess_server.log_text, vmess_server.log_tail()
    assert client.running
    assert tcp_sink.results == []
    with pytest.raises(TimeoutError):
        tcp_sink.wait_result(timeout=0.2)

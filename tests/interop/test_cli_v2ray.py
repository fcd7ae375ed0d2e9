"""The CLI as a subprocess against real v2ray 4.34: v2ray client -> `vmess server`; `vmess client` -> v2ray server."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from ..cli_process import CliProcess
from .endpoints import Socks5UdpAssociation, TcpEcho, TcpSink, UdpEcho, exchange, recv_exactly, socks5_connect
from .v2ray import V2RayProcess, client_config, free_port, require_v2ray, server_config

PAYLOAD = 4 * 1024 * 1024


@pytest.fixture
def echo() -> Iterator[TcpEcho]:
    with TcpEcho() as ep:
        yield ep


@pytest.fixture
def uecho() -> Iterator[UdpEcho]:
    with UdpEcho() as ep:
        yield ep


@pytest.mark.parametrize(
    "security,alter_id", [("aes-128-gcm", 0), ("chacha20-poly1305", 0), ("none", 0), ("aes-128-gcm", 4)]
)
def test_v2ray_client_through_vmess_server_cli(echo: TcpEcho, uecho: UdpEcho, security: str, alter_id: int) -> None:
    require_v2ray()
    user = str(uuid.uuid4())
    with CliProcess(["server", "--listen", "127.0.0.1:0", "--user", user, "--alter-id", str(alter_id)]) as server:
        socks_port = free_port()
        config = client_config(socks_port, server.port, user, alter_id=alter_id, security=security)
        with V2RayProcess(config), TcpSink() as sink:
            payload = os.urandom(PAYLOAD)
            with socks5_connect(socks_port, echo.port) as sock:
                got = exchange(sock, payload, expect=len(payload), half_close=False)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            with socks5_connect(socks_port, sink.port) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                count, digest = sink.wait_result(timeout=20)
            assert (count, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
            with Socks5UdpAssociation(socks_port) as assoc:
                for gram in (b"x", os.urandom(1200), os.urandom(1967)):
                    assoc.sendto(gram, ("127.0.0.1", uecho.port))
                    data, _ = assoc.recvfrom(timeout=10)
                    assert data == gram
        assert server.stop() == 0
    assert any("sessions" in line for line in server.stdout_lines)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = os.urandom(300_000)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("X-Path", self.path)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _read_http_response(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, body + recv_exactly(sock, length - len(body))


@pytest.mark.parametrize("encryption", ["aes-128-gcm", "chacha20-poly1305"])
def test_vmess_client_cli_against_v2ray_server(
    echo: TcpEcho, uecho: UdpEcho, http_origin: int, encryption: str
) -> None:
    require_v2ray()
    user = str(uuid.uuid4())
    port = free_port()
    with V2RayProcess(server_config(port, [(user, 0)])):
        link = f"vmess://{user}@127.0.0.1:{port}?encryption={encryption}#cli-test"
        with CliProcess(["client", link, "--listen", "127.0.0.1:0"]) as client:
            assert user not in client.output()
            # SOCKS5 CONNECT
            payload = os.urandom(PAYLOAD)
            with socks5_connect(client.port, echo.port) as sock:
                got = exchange(sock, payload, expect=len(payload), half_close=False)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            # SOCKS5 UDP ASSOCIATE
            with Socks5UdpAssociation(client.port) as assoc:
                for gram in (b"dns?", os.urandom(1500)):
                    assoc.sendto(gram, ("127.0.0.1", uecho.port))
                    data, source = assoc.recvfrom(timeout=10)
                    assert data == gram and source[1] == uecho.port
            # HTTP CONNECT
            with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n\r\n".encode())
                reply = b""
                while b"\r\n\r\n" not in reply:
                    reply += sock.recv(4096)
                assert reply.startswith(b"HTTP/1.1 200")
                sock.sendall(b"through http connect")
                assert recv_exactly(sock, 20) == b"through http connect"
            # HTTP absolute-URI GET
            with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
                sock.sendall(
                    f"GET http://127.0.0.1:{http_origin}/some/path?q=1 HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{http_origin}\r\nProxy-Connection: keep-alive\r\n\r\n".encode()
                )
                head, body = _read_http_response(sock)
            assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
            assert b"X-Path: /some/path?q=1" in head
            assert body == _Handler.body
            assert client.stop() == 0
        assert any(line.startswith("stopped:") for line in client.stdout_lines)

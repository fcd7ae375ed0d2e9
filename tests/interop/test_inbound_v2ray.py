"""The local proxy inbound (start_local_proxy) in front of a real v2ray 4.34 VMess server, driven like a user would.

SOCKS5 CONNECT (no auth, RFC 1929 accepted and refused), SOCKS5 UDP ASSOCIATE, HTTP CONNECT and absolute-URI
requests against a small local HTTP server, and curl when it is installed. The proxy runs on its own event loop in
a thread so the clients here can be ordinary blocking sockets, urllib and curl. v2ray does not pass a half-close on
(it closes about 1 s after one direction ends), so echo checks read an exact length instead of waiting for EOF.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from vmess.errors import UnsupportedError
from vmess.inbound import LocalProxy, start_local_proxy
from vmess.inbound import socks5 as S

from .endpoints import (
    Socks5Error,
    Socks5UdpAssociation,
    TcpEcho,
    TcpSink,
    TcpSource,
    UdpEcho,
    exchange,
    recv_exactly,
    socks5_connect,
)
from .v2ray import V2RayProcess, free_port, require_v2ray, server_config

USER = str(uuid.UUID("0f6c3b52-3a8e-4d3b-9d0e-6c1f2a7b8e91"))
MIB = 1024 * 1024
AUTH = ("user", "pass")


def link_for(port: int) -> str:
    return f"vmess://{USER}@127.0.0.1:{port}?encryption=aes-128-gcm"


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ fixtures


class ProxyThread:
    """start_local_proxy on its own event loop in a background thread."""

    def __init__(self, link: str, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="local-proxy", daemon=True)
        self.thread.start()
        try:
            self.proxy: LocalProxy = self.call(start_local_proxy(link, "127.0.0.1", 0, **kwargs))
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.proxy.port

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no session is active (the proxy has logged and counted every finished session)."""
        deadline = time.monotonic() + timeout
        while self.proxy.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.proxy.stats.active == 0, self.proxy.stats

    def stop(self) -> None:
        async def close() -> None:
            self.proxy.close()
            await self.proxy.wait_closed()

        try:
            self.call(close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    """GET /bytes/N -> N deterministic bytes; POST -> the sha256 of the body; requests are recorded."""

    protocol_version = "HTTP/1.1"
    server: "Origin"

    def do_GET(self) -> None:
        self.server.seen.append((self.requestline, list(self.headers.items())))
        path = self.path.partition("?")[0]
        if not path.startswith("/bytes/"):
            self.send_error(404)
            return
        body = payload(int(path.rsplit("/", 1)[1]))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.seen.append((self.requestline, list(self.headers.items())))
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        reply = f"{len(body)} {sha(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []


@pytest.fixture(scope="module")
def vmess_port() -> Iterator[int]:
    require_v2ray()
    port = free_port()
    with V2RayProcess(server_config(port, [(USER, 0)])):
        yield port


@pytest.fixture(scope="module")
def proxy(vmess_port: int) -> Iterator[ProxyThread]:
    p = ProxyThread(link_for(vmess_port))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def auth_proxy(vmess_port: int) -> Iterator[ProxyThread]:
    p = ProxyThread(link_for(vmess_port), auth=AUTH)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEcho]:
    with TcpEcho() as ep:
        yield ep


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment without *_proxy variables (they would make urllib and curl bypass or re-route)."""
    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    return dict(os.environ)


# ------------------------------------------------------------------------------------------------ SOCKS5 helpers


def socks5_handshake(
    port: int,
    command: int,
    host: str,
    dport: int,
    *,
    methods: tuple[int, ...] = (S.Method.NO_AUTH,),
    creds: tuple[str, str] | None = None,
) -> tuple[socket.socket, int, tuple[str, int] | None]:
    """Run a SOCKS5 handshake with our codec: (socket, reply code, bound address or None if refused earlier)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(S.build_greeting(methods))
    ver, method = recv_exactly(sock, 2)
    assert ver == 5
    if method == S.Method.NO_ACCEPTABLE:
        return sock, -1, None
    if method == S.Method.USERNAME_PASSWORD:
        assert creds is not None
        sock.sendall(S.build_auth_request(*creds))
        aver, status = recv_exactly(sock, 2)
        assert aver == 1
        if status != 0:
            return sock, -2, None
    sock.sendall(S.build_request(command, host, dport))
    buf = bytearray(recv_exactly(sock, 5))
    atyp, n = buf[3], buf[4]
    rest = {1: 5, 4: 17, 3: n + 2}[atyp]
    buf += recv_exactly(sock, rest)
    reply = S.parse_udp_datagram(b"\x00\x00\x00" + bytes(buf[3:]))  # same address layout
    return sock, buf[1], (reply.host, reply.port)


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ------------------------------------------------------------------------------------------------ SOCKS5 CONNECT


def test_socks5_connect_echo(proxy: ProxyThread, echo: TcpEcho, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmess.inbound")
    data = payload(4 * MIB)
    before = proxy.proxy.stats.bytes_up
    with socks5_connect(proxy.port, echo.port) as sock:
        got = exchange(sock, data, expect=len(data), half_close=False)
    assert sha(got) == sha(data)
    assert proxy.proxy.stats.bytes_up - before >= len(data)
    proxy.wait_idle()
    lines = [r.getMessage() for r in caplog.records if r.name == "vmess.inbound"]
    assert any(f"socks5-connect 127.0.0.1:{echo.port} up={len(data)} down={len(data)}" in line for line in lines), lines
    assert all(USER not in line and USER.replace("-", "") not in line for line in lines)


def test_socks5_connect_upload_to_sink(proxy: ProxyThread) -> None:
    data = payload(3 * MIB, seed=1)
    with TcpSink(idle_timeout=10) as sink, socks5_connect(proxy.port, sink.port) as sock:
        rest = exchange(sock, data, half_close=True, timeout=15)  # our FIN -> VMess EOF; v2ray closes the sink
        assert sink.wait_result(15) == (len(data), sha(data))
    assert rest == b""


def test_socks5_connect_download_from_source(proxy: ProxyThread) -> None:
    data = payload(3 * MIB, seed=2)
    with TcpSource(data, idle_timeout=10) as source, socks5_connect(proxy.port, source.port) as sock:
        got = exchange(sock, b"", half_close=False, timeout=15)  # read until the EOF passed on from the source
    assert sha(got) == sha(data)


def test_socks5_domain_target(proxy: ProxyThread, echo: TcpEcho) -> None:
    """ATYP 3 (a name resolved by the VMess server, like curl --socks5-hostname)."""
    sock, rep, _ = socks5_handshake(proxy.port, S.Command.CONNECT, "localhost", echo.port)
    with sock:
        assert rep == S.Reply.SUCCEEDED
        data = payload(100_000, seed=3)
        assert exchange(sock, data, expect=len(data), half_close=False) == data


def test_socks5_auth_accepted(auth_proxy: ProxyThread, echo: TcpEcho) -> None:
    sock, rep, bound = socks5_handshake(
        auth_proxy.port, S.Command.CONNECT, "127.0.0.1", echo.port, methods=(0, 2), creds=AUTH
    )
    with sock:
        assert rep == S.Reply.SUCCEEDED and bound is not None
        data = payload(2 * MIB, seed=4)
        got = exchange(sock, data, expect=len(data), half_close=False)
    assert sha(got) == sha(data)


@pytest.mark.parametrize("creds", [("user", "wrong"), ("nobody", "pass"), ("", "")])
def test_socks5_auth_refused(auth_proxy: ProxyThread, echo: TcpEcho, creds: tuple[str, str]) -> None:
    sessions = auth_proxy.proxy.stats.sessions
    sock, rep, _ = socks5_handshake(auth_proxy.port, S.Command.CONNECT, "127.0.0.1", echo.port, methods=(2,), creds=creds)
    with sock:
        assert rep == -2  # RFC 1929 status != 0
        assert closed_by_peer(sock)
    assert auth_proxy.proxy.stats.sessions == sessions


def test_socks5_auth_required_but_not_offered(auth_proxy: ProxyThread, echo: TcpEcho) -> None:
    sock, rep, _ = socks5_handshake(auth_proxy.port, S.Command.CONNECT, "127.0.0.1", echo.port)
    with sock:
        assert rep == -1  # 0xFF: no acceptable method
        assert closed_by_peer(sock)


def test_socks5_bind_not_supported(proxy: ProxyThread) -> None:
    sock, rep, _ = socks5_handshake(proxy.port, S.Command.BIND, "127.0.0.1", 9)
    with sock:
        assert rep == S.Reply.COMMAND_NOT_SUPPORTED
        assert closed_by_peer(sock)


def test_socks5_vmess_server_refused() -> None:
    """The VMess server does not answer: the SOCKS5 reply says 'connection refused'."""
    dead = ProxyThread(link_for(free_port()))
    try:
        with pytest.raises(Socks5Error, match="connection refused"):
            socks5_connect(dead.port, 9)
        dead.wait_idle()
        assert dead.proxy.stats.failed == 1 and dead.proxy.stats.sessions == 0
    finally:
        dead.stop()


def test_idle_timeout_closes_session(vmess_port: int, echo: TcpEcho) -> None:
    p = ProxyThread(link_for(vmess_port), idle_timeout=0.3)
    try:
        with socks5_connect(p.port, echo.port) as sock:
            assert exchange(sock, b"ping", expect=4, half_close=False) == b"ping"
            started = time.monotonic()
            assert closed_by_peer(sock)
            assert time.monotonic() - started < 3
        p.wait_idle()
        assert p.proxy.stats.failed == 0  # an idle timeout is an ending, not a failure
    finally:
        p.stop()


def test_handshake_timeout(vmess_port: int) -> None:
    p = ProxyThread(link_for(vmess_port), handshake_timeout=0.2)
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as sock:
            sock.sendall(b"\x05\x01")  # half a greeting, then nothing
            assert closed_by_peer(sock)
        p.wait_idle()
        assert p.proxy.stats.failed == 1
    finally:
        p.stop()


def test_close_ends_active_sessions(vmess_port: int, echo: TcpEcho) -> None:
    p = ProxyThread(link_for(vmess_port))
    stopped = False
    try:
        with socks5_connect(p.port, echo.port) as sock, Socks5UdpAssociation(p.port) as assoc:
            assert exchange(sock, b"ping", expect=4, half_close=False) == b"ping"
            assert p.proxy.stats.active == 2
            started = time.monotonic()
            p.stop()
            stopped = True
            assert time.monotonic() - started < 3
            assert closed_by_peer(sock)
            assert assoc.control is not None and closed_by_peer(assoc.control)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
    finally:
        if not stopped:
            p.stop()


# ------------------------------------------------------------------------------------------------ SOCKS5 UDP


def test_socks5_udp_associate(proxy: ProxyThread) -> None:
    stats = proxy.proxy.stats
    opened = stats.udp_sessions
    grams = [payload(n, seed=5) for n in (1, 64, 512, 1400, 1967)]  # 1967: v2ray 4.34's largest UDP reply
    with UdpEcho() as ue1, UdpEcho() as ue2, Socks5UdpAssociation(proxy.port) as assoc:
        for gram in grams:
            for ue in (ue1, ue2):
                assoc.sendto(gram, ("127.0.0.1", ue.port))
                data, source = assoc.recvfrom(timeout=10)
                assert data == gram and source == ("127.0.0.1", ue.port)
        assert stats.udp_sessions - opened == 2  # one VMess UDP session per destination
        assert proxy.proxy.stats.active >= 1
    proxy.wait_idle()  # closing the control connection ends the association


def test_socks5_udp_idle_sessions_are_closed(vmess_port: int) -> None:
    p = ProxyThread(link_for(vmess_port), udp_timeout=0.3)
    try:
        with UdpEcho() as ue, Socks5UdpAssociation(p.port) as assoc:
            assoc.sendto(b"one", ("127.0.0.1", ue.port))
            assert assoc.recvfrom(timeout=10) == (b"one", ("127.0.0.1", ue.port))
            time.sleep(0.8)
            assoc.sendto(b"two", ("127.0.0.1", ue.port))
            assert assoc.recvfrom(timeout=10) == (b"two", ("127.0.0.1", ue.port))
        assert p.proxy.stats.udp_sessions == 2  # the idle one was closed, a new one opened
    finally:
        p.stop()


def test_socks5_udp_sessions_are_bounded(vmess_port: int) -> None:
    """With room for one VMess UDP session, a new destination evicts the least recently used one."""
    p = ProxyThread(link_for(vmess_port), max_udp_sessions=1)
    try:
        with UdpEcho() as a, UdpEcho() as b, Socks5UdpAssociation(p.port) as assoc:
            for ue in (a, b, a):
                assoc.sendto(b"x", ("127.0.0.1", ue.port))
                assert assoc.recvfrom(timeout=10) == (b"x", ("127.0.0.1", ue.port))
        assert p.proxy.stats.udp_sessions == 3
    finally:
        p.stop()


def test_socks5_udp_foreign_sender_and_fragments_dropped(proxy: ProxyThread) -> None:
    with UdpEcho() as ue, Socks5UdpAssociation(proxy.port) as assoc:
        assert assoc.udp is not None and assoc.relay is not None
        frag = b"\x00\x00\x01" + S.encode_address("127.0.0.1", ue.port) + b"fragment"
        assoc.udp.sendto(frag, assoc.relay)
        assoc.sendto(b"first", ("127.0.0.1", ue.port))  # fixes the client's UDP address
        assert assoc.recvfrom(timeout=10)[0] == b"first"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            other.sendto(S.build_udp_datagram("127.0.0.1", ue.port, b"intruder"), assoc.relay)
            other.settimeout(0.3)
            with pytest.raises(socket.timeout):
                other.recvfrom(100)
        with pytest.raises(socket.timeout):
            assoc.recvfrom(timeout=0.3)  # neither the fragment nor the intruder's datagram was relayed


# ------------------------------------------------------------------------------------------------ HTTP proxy


def read_response_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, bytes already read after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF in response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def test_http_connect(proxy: ProxyThread, echo: TcpEcho) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n\r\n".encode())
        head, rest = read_response_head(sock)
        assert head == b"HTTP/1.1 200 Connection established" and rest == b""
        data = payload(2 * MIB, seed=6)
        got = exchange(sock, data, expect=len(data), half_close=False)
    assert sha(got) == sha(data)


def test_http_absolute_get_raw(proxy: ProxyThread, origin: Origin) -> None:
    port = origin.server_address[1]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{port}/bytes/300000?q=1 HTTP/1.1\r\nHost: elsewhere\r\n"
            f"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nX-Keep: yes\r\n\r\n".encode()
        )
        response = exchange(sock, b"", half_close=False, timeout=10)  # the proxy closes after the response
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == payload(300_000)
    requestline, headers = origin.seen[-1]
    names = {k.lower(): v for k, v in headers}
    assert requestline == "GET /bytes/300000?q=1 HTTP/1.1"
    assert names["host"] == f"127.0.0.1:{port}" and names["connection"] == "close" and names["x-keep"] == "yes"
    assert "proxy-connection" not in names and "proxy-authorization" not in names


def test_http_head_in_pieces(proxy: ProxyThread, origin: Origin) -> None:
    port = origin.server_address[1]
    pieces = [f"GET http://127.0.0.1:{port}/bytes/5000 ", "HTTP/1.1\r\nHo", "st: x\r\n", "\r", "\n"]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece.encode())
            time.sleep(0.02)
        response = exchange(sock, b"", half_close=False, timeout=10)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(payload(5000))


def urllib_opener(proxy_port: int, auth: tuple[str, str] | None = None) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"}))
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        opener.addheaders.append(("Proxy-Authorization", f"Basic {token}"))
    return opener


def test_http_absolute_get_and_post_urllib(proxy: ProxyThread, origin: Origin, no_proxy_env: dict[str, str]) -> None:
    port = origin.server_address[1]
    sessions = proxy.proxy.stats.sessions
    opener = urllib_opener(proxy.port)
    with opener.open(f"http://127.0.0.1:{port}/bytes/{MIB}", timeout=15) as resp:
        assert resp.status == 200 and resp.read() == payload(MIB)
    body = payload(2 * MIB, seed=7)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/upload", data=body, method="POST")
    with opener.open(req, timeout=15) as resp:
        assert resp.read().decode() == f"{len(body)} {sha(body)}"
    assert proxy.proxy.stats.sessions - sessions == 2


def test_http_proxy_auth(auth_proxy: ProxyThread, origin: Origin, no_proxy_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{origin.server_address[1]}/bytes/1000"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib_opener(auth_proxy.port).open(url, timeout=10)
    assert info.value.code == 407
    assert info.value.headers["Proxy-Authenticate"] == 'Basic realm="vmess"'
    info.value.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib_opener(auth_proxy.port, ("user", "nope")).open(url, timeout=10)
    assert info.value.code == 407
    info.value.close()
    with urllib_opener(auth_proxy.port, AUTH).open(url, timeout=10) as resp:
        assert resp.read() == payload(1000)


def test_http_malformed_and_oversized(proxy: ProxyThread) -> None:
    for request, status in (
        (b"GET /not-a-proxy-request HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        (b"GET http://h/ HTTP/1.1\r\nX: " + b"a" * (70 * 1024), b"431"),
        (b"GET https://h/ HTTP/1.1\r\n\r\n", b"501"),
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            try:
                sock.sendall(request)
            except ConnectionError:
                pass
            head, _ = read_response_head(sock)
            assert head.split(b" ")[1] == status, head


# ------------------------------------------------------------------------------------------------ curl


@pytest.mark.parametrize(
    ("mode", "with_auth"),
    [("socks5h", False), ("http", False), ("http-tunnel", False), ("socks5h", True), ("http", True)],
)
def test_curl(
    proxy: ProxyThread, auth_proxy: ProxyThread, origin: Origin, no_proxy_env: dict[str, str], mode: str,
    with_auth: bool,
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    port = (auth_proxy if with_auth else proxy).port
    user = f"{AUTH[0]}:{AUTH[1]}@" if with_auth else ""
    url = f"http://127.0.0.1:{origin.server_address[1]}/bytes/200000"
    if mode == "socks5h":
        args = ["--proxy", f"socks5h://{user}127.0.0.1:{port}"]
    else:
        args = ["--proxy", f"http://{user}127.0.0.1:{port}"] + (["--proxytunnel"] if mode == "http-tunnel" else [])
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--fail", "--max-time", "20", *args, url],
        capture_output=True, timeout=30, env=no_proxy_env,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == payload(200_000)


# ------------------------------------------------------------------------------------------------ start-up checks


def test_unimplemented_transport_is_refused_at_start() -> None:
    link = f"vmess://{USER}@127.0.0.1:1?encryption=aes-128-gcm&type=grpc&serviceName=svc"
    with pytest.raises(UnsupportedError, match="grpc"):
        asyncio.run(start_local_proxy(link, port=0))

"""Transports against a real v2ray 4.34: TLS, WebSocket and WebSocket over TLS, both ways.

* our client (vmess.aio) -> v2ray server (vmess inbound with streamSettings -> freedom): 16 MiB echoed back and
  checked by sha256, 16 MiB uploaded and checked by the sink, UDP datagrams, a v2rayN share link, early data;
* v2ray client (socks inbound -> vmess outbound with streamSettings) -> our server (vmess.aio_server with ssl= /
  websocket=): 16 MiB upload checked at the sink, an echo round trip, UDP through SOCKS5 UDP ASSOCIATE.

The certificate is self-signed and made here (SAN localhost and 127.0.0.1). Our client trusts it through
``TlsSettings(ca_file=...)`` (so v2ray's certificate and SNI handling are really verified) or ``allowInsecure=1``
in a link; the v2ray client trusts it with a ``"usage": "verify"`` certificate entry.

v2ray 4.34 and early data (measured, and visible in its binary: its WebSocket package has no early-data dialer or
handler): ``maxEarlyData`` / ``earlyDataHeaderName`` arrived later (v4.39 in v2fly). A 4.34 server ignores the
``Sec-WebSocket-Protocol`` header and does not echo it, so our client sends the early bytes as the first message;
test_early_data_against_v2ray_434 pins that down. A 4.34 client never sends early data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from vmess.aio import open_connection, open_udp
from vmess.config import VmessConfig
from vmess.errors import TransportError
from vmess.transport import TlsSettings, TransportSettings, WebSocketServerSettings, WebSocketSettings, server_context

from ..tls_certs import CertFiles, make_cert
from .server_thread import ServerThread
from .endpoints import Socks5UdpAssociation, TcpEcho, TcpSink, UdpEcho, exchange, recv_exactly, socks5_connect
from .v2ray import V2RayProcess, client_config, free_port, server_config, stream_settings

USER = str(uuid.UUID("c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"))
MiB = 1 << 20
BULK = 16 * MiB
WS_PATH = "/vmess-ws"
KINDS = ["tls", "ws", "ws+tls"]
UDP_SIZES = (1, 64, 512, 1400, 1967)  # v2ray's UDP writer drops AEAD replies above 1967 bytes (see v2ray.py)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(str(tmp_path_factory.mktemp("interop-certs")), ("localhost", "127.0.0.1"))


def v2ray_stream(kind: str, certs: CertFiles, *, server: bool) -> dict[str, Any]:
    """v2ray streamSettings for ``kind`` on the server (certificate + key) or the client (verify our certificate)."""
    tls: Optional[dict[str, Any]] = None
    if kind.endswith("tls"):
        if server:
            tls = {"certificates": [{"certificateFile": certs.cert, "keyFile": certs.key}]}
        else:
            tls = {"serverName": "localhost", "certificates": [{"usage": "verify", "certificateFile": certs.cert}]}
    network = "ws" if kind.startswith("ws") else "tcp"
    return stream_settings(network, tls=tls, ws_path=WS_PATH if network == "ws" else None)


def our_settings(kind: str, certs: CertFiles, *, ed: int = 0) -> TransportSettings:
    ws = kind.startswith("ws")
    return TransportSettings(
        network="ws" if ws else "tcp",
        tls=TlsSettings(server_name="localhost", ca_file=certs.cert) if kind.endswith("tls") else None,
        websocket=WebSocketSettings(path=WS_PATH, max_early_data=ed) if ws else None,
    )


# ------------------------------------------------------------------------------------ our client -> v2ray server


@pytest.fixture(scope="module", params=KINDS)
def v2ray_server(request: pytest.FixtureRequest, certs: CertFiles, v2ray_bin: str) -> Iterator[tuple[str, int, V2RayProcess]]:
    kind = request.param
    port = free_port()
    cfg = server_config(port, [(USER, 0)], stream_settings=v2ray_stream(kind, certs, server=True))
    with V2RayProcess(cfg, binary=v2ray_bin, name=f"server-{kind}") as proc:
        yield kind, port, proc
        assert proc.running, proc.log_tail()


async def echo_round_trip(reader: asyncio.StreamReader, writer: Any, payload: bytes) -> bytes:
    async def send() -> None:
        for i in range(0, len(payload), 300_000):
            writer.write(payload[i : i + 300_000])
            await writer.drain()

    task = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
    await task
    return got


@pytest.fixture(scope="module", params=["ws", "ws+tls"])
def v2ray_ws_server(request: pytest.FixtureRequest, certs: CertFiles, v2ray_bin: str) -> Iterator[tuple[str, int, V2RayProcess]]:
    kind = request.param
    port = free_port()
    cfg = server_config(port, [(USER, 0)], stream_settings=v2ray_stream(kind, certs, server=True))
    with V2RayProcess(cfg, binary=v2ray_bin, name=f"ws-server-{kind}") as proc:
        yield kind, port, proc
        assert proc.running, proc.log_tail()


def test_our_client_bulk_echo_and_eof(v2ray_server: tuple[str, int, V2RayProcess], certs: CertFiles,
                                      tcp_echo: TcpEcho) -> None:
    kind, port, _ = v2ray_server
    payload = os.urandom(BULK)

    async def main() -> None:
        proxy = (("127.0.0.1", port), VmessConfig.new(USER).with_encryption("aes-128-gcm"), our_settings(kind, certs))
        reader, writer = await open_connection("127.0.0.1", tcp_echo.port, proxy=proxy)
        assert writer.get_extra_info("vmess_transport") == kind
        got = await echo_round_trip(reader, writer, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_our_client_upload_checked_at_the_sink(v2ray_server: tuple[str, int, V2RayProcess],
                                               certs: CertFiles) -> None:
    kind, port, _ = v2ray_server
    payload = os.urandom(BULK)

    async def main(sink_port: int) -> None:
        proxy = (("127.0.0.1", port), VmessConfig.new(USER).with_encryption("chacha20-poly1305"),
                 our_settings(kind, certs))
        reader, writer = await open_connection("127.0.0.1", sink_port, proxy=proxy)
        for i in range(0, len(payload), MiB):
            writer.write(payload[i : i + MiB])
            await writer.drain()
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 20)
        writer.close()
        await writer.wait_closed()

    with TcpSink() as sink:
        asyncio.run(main(sink.port))
        count, digest = sink.wait_result(timeout=20)
    assert (count, digest) == (len(payload), hashlib.sha256(payload).hexdigest())


def test_our_client_udp(v2ray_server: tuple[str, int, V2RayProcess], certs: CertFiles, udp_echo: UdpEcho) -> None:
    kind, port, _ = v2ray_server
    grams = [os.urandom(n) for n in UDP_SIZES]

    async def main() -> list[bytes]:
        proxy = (("127.0.0.1", port), VmessConfig.new(USER).with_encryption("aes-128-gcm"), our_settings(kind, certs))
        stream = await open_udp("127.0.0.1", udp_echo.port, proxy=proxy)
        replies = []
        async with stream:
            for gram in grams:
                stream.send(gram)
                await stream.drain()
                replies.append(await asyncio.wait_for(stream.recv(), 10))
        return replies

    assert asyncio.run(main()) == grams


def test_our_client_from_a_share_link(v2ray_server: tuple[str, int, V2RayProcess], tcp_echo: TcpEcho) -> None:
    """The v2rayN form of the link a user would paste: net/tls/path/sni, allowInsecure for the self-signed cert."""
    kind, port, _ = v2ray_server
    obj = {"v": "2", "ps": kind, "add": "127.0.0.1", "port": str(port), "id": USER, "aid": "0", "scy": "auto",
           "net": "ws" if kind.startswith("ws") else "tcp", "type": "none", "host": "", "path": WS_PATH,
           "tls": "tls" if kind.endswith("tls") else "", "sni": "localhost", "allowInsecure": "1"}
    link = "vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()

    async def main() -> bytes:
        reader, writer = await open_connection("127.0.0.1", tcp_echo.port, proxy=link)
        writer.write(b"hello through a link")
        got = await asyncio.wait_for(reader.readexactly(20), 10)
        writer.close()
        await writer.wait_closed()
        return got

    assert asyncio.run(main()) == b"hello through a link"


def test_early_data_against_v2ray_434(v2ray_ws_server: tuple[str, int, V2RayProcess], certs: CertFiles,
                                      tcp_echo: TcpEcho) -> None:
    """ed=2048: v2ray 4.34 has no early-data support and does not echo the header; the bytes follow as the first
    message, so the session works all the same (ws_early_data == 0 records that the server did not take them)."""
    kind, port, _ = v2ray_ws_server
    payload = os.urandom(MiB)

    async def main() -> int:
        proxy = (("127.0.0.1", port), VmessConfig.new(USER), our_settings(kind, certs, ed=2048))
        reader, writer = await open_connection("127.0.0.1", tcp_echo.port, proxy=proxy)
        got = await echo_round_trip(reader, writer, payload)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        early = writer.get_extra_info("ws_early_data")
        writer.close()
        await writer.wait_closed()
        return int(early)

    assert asyncio.run(main()) == 0


def test_wrong_path_is_refused_by_v2ray(v2ray_ws_server: tuple[str, int, V2RayProcess], certs: CertFiles) -> None:
    kind, port, _ = v2ray_ws_server
    settings = TransportSettings(network="ws", tls=our_settings(kind, certs).tls, websocket=WebSocketSettings("/nope"))

    async def main() -> None:
        await open_connection("127.0.0.1", 9, proxy=(("127.0.0.1", port), VmessConfig.new(USER), settings))

    with pytest.raises(TransportError, match="HTTP 404"):
        asyncio.run(main())


# ------------------------------------------------------------------------------------ v2ray client -> our server


class V2RayClient:
    def __init__(self, kind: str, socks_port: int, ours: ServerThread, proc: V2RayProcess) -> None:
        self.kind = kind
        self.socks_port = socks_port
        self.ours = ours
        self.processes = [proc]  # logs attached to failure reports


@pytest.fixture(scope="module", params=KINDS)
def v2ray_client(request: pytest.FixtureRequest, certs: CertFiles, v2ray_bin: str) -> Iterator[V2RayClient]:
    kind = request.param
    kwargs: dict[str, Any] = {}
    if kind.endswith("tls"):
        kwargs["ssl"] = server_context(certs.cert, certs.key)
    if kind.startswith("ws"):
        kwargs["websocket"] = WebSocketServerSettings(path=WS_PATH)
    ours = ServerThread([(USER, 0, "v2ray-client")], idle_timeout=30, **kwargs).start()
    try:
        socks_port = free_port()
        cfg = client_config(socks_port, ours.port, USER, security="aes-128-gcm",
                            stream_settings=v2ray_stream(kind, certs, server=False))
        with V2RayProcess(cfg, binary=v2ray_bin, name=f"client-{kind}") as proc:
            yield V2RayClient(kind, socks_port, ours, proc)
            assert proc.running, proc.log_tail()
            assert "panic" not in proc.log_text, proc.log_tail()
    finally:
        ours.stop()


def test_v2ray_client_upload_checked_at_the_sink(v2ray_client: V2RayClient, tcp_sink: TcpSink) -> None:
    payload = os.urandom(BULK)
    server = v2ray_client.ours.server
    assert server is not None
    before = server.stats.bytes_up
    with socks5_connect(v2ray_client.socks_port, tcp_sink.port, timeout=30) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # v2ray sends its end marker; our server half-closes the sink
        count, digest = tcp_sink.wait_result(timeout=30)
    assert (count, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert server.stats.bytes_up - before >= len(payload)


def test_v2ray_client_echo_round_trip(v2ray_client: V2RayClient, tcp_echo: TcpEcho) -> None:
    with socks5_connect(v2ray_client.socks_port, tcp_echo.port, timeout=30) as s:
        for msg in (b"hello", b"x" * 3000, os.urandom(70000)):
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
        bulk = os.urandom(BULK)
        got = exchange(s, bulk, expect=len(bulk), half_close=False, timeout=60)
        assert hashlib.sha256(got).digest() == hashlib.sha256(bulk).digest()


def test_v2ray_client_udp(v2ray_client: V2RayClient, udp_echo: UdpEcho) -> None:
    grams = [os.urandom(n) for n in UDP_SIZES]
    with Socks5UdpAssociation(v2ray_client.socks_port, timeout=5) as assoc:
        for gram in grams:
            assoc.sendto(gram, ("127.0.0.1", udp_echo.port))
            data, src = assoc.recvfrom()
            assert data == gram
            assert src == ("127.0.0.1", udp_echo.port)


def test_v2ray_client_sessions_were_clean(v2ray_client: V2RayClient, tcp_echo: TcpEcho) -> None:
    """After a short exchange our server has no failures for this transport (no protocol or handshake errors)."""
    with socks5_connect(v2ray_client.socks_port, tcp_echo.port, timeout=10) as s:
        s.sendall(b"probe")
        assert recv_exactly(s, 5) == b"probe"
    server = v2ray_client.ours.server
    assert server is not None
    assert sum(server.stats.failures.values()) == 0, dict(server.stats.failures)

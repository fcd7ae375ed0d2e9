"""Transports (vmess.transport): settings from share links, TLS verification and errors, and our client against our
server over tls, ws and ws+tls (with and without early data): bulk data checked by sha256, UDP, EOF, the local proxy
and the CLI. Certificates are self-signed, made by the test (tests/tls_certs.py); everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import ssl
import uuid
from typing import Any, Awaitable, Optional, Tuple, TypeVar

import pytest

from vmess import _core
from vmess.aio import open_connection, open_udp, resolve_proxy
from vmess.aio_server import VmessServer, start_server
from vmess.config import VmessConfig
from vmess.errors import ConfigError, TransportError, UnsupportedError
from vmess.links import parse_link
from vmess.transport import (
    TlsSettings,
    TransportSettings,
    WebSocketServerSettings,
    WebSocketSettings,
    is_supported,
    server_context,
    transport_for,
)
from vmess.transport.options import describe_server_transport, server_transport_options
from vmess.transport.websocket import decode_early_data, encode_early_data, split_early_data

from .cli_process import CliProcess
from .tls_certs import CertFiles, make_cert

UID = uuid.UUID("7d3c1b2a-5e6f-4a8b-9c0d-1e2f3a4b5c6d")
MiB = 1 << 20
T = TypeVar("T")


def v2rayn(obj: dict[str, Any]) -> str:
    return "vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()


def run(coro: Awaitable[T], timeout: float = 60.0, loop: str = "asyncio") -> T:
    """Run ``coro`` on a fresh asyncio (or uvloop) event loop with an overall safety timeout."""

    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(str(tmp_path_factory.mktemp("certs")), ("localhost", "127.0.0.1"))


# ----------------------------------------------------------------------------------------- settings from links


def base(**extra: Any) -> dict[str, Any]:
    obj = {"v": "2", "ps": "t", "add": "203.0.113.7", "port": "443", "id": str(UID), "aid": "0", "scy": "auto"}
    obj.update(extra)
    return obj


def test_v2rayn_plain_tcp_needs_no_transport() -> None:
    link = parse_link(v2rayn(base(net="tcp", type="none", tls="")))
    settings = TransportSettings.from_link(link)
    assert settings.is_plain and settings.name == "tcp"
    assert transport_for(link) is None and is_supported(link)


def test_v2rayn_tcp_tls() -> None:
    link = parse_link(v2rayn(base(net="tcp", tls="tls", sni="edge.example.net", alpn="h2,http/1.1", fp="chrome")))
    s = TransportSettings.from_link(link)
    assert s.name == "tls" and s.websocket is None
    assert s.tls == TlsSettings(server_name="edge.example.net", alpn=("h2", "http/1.1"), insecure=False,
                                fingerprint="chrome")
    assert transport_for(link) == s


def test_v2rayn_ws_with_xray_early_data_in_path() -> None:
    link = parse_link(v2rayn(base(net="ws", host="cdn.example.net", path="/ray?ed=2048", tls="")))
    s = TransportSettings.from_link(link)
    assert s.name == "ws" and s.tls is None
    assert s.websocket == WebSocketSettings(path="/ray", host="cdn.example.net", max_early_data=2048)


def test_v2rayn_ws_tls_sni_falls_back_to_host_then_address() -> None:
    link = parse_link(v2rayn(base(net="ws", host="a.example.net,b.example.net", path="ray", tls="tls")))
    s = TransportSettings.from_link(link)
    assert s.name == "ws+tls"
    assert s.tls is not None and s.tls.server_name == "a.example.net"
    assert s.websocket is not None and s.websocket.path == "/ray" and s.websocket.host == "a.example.net"
    bare = TransportSettings.from_link(parse_link(v2rayn(base(net="ws", tls="tls"))))
    assert bare.tls is not None and bare.tls.server_name == ""
    assert bare.tls.server_name_for("203.0.113.7") == "203.0.113.7"
    assert bare.websocket is not None and bare.websocket.path == "/"


@pytest.mark.parametrize("key,value,insecure", [
    ("allowInsecure", "1", True), ("allowInsecure", True, True), ("insecure", "1", True), ("insecure", "0", False),
    ("allowInsecure", "false", False),
])
def test_v2rayn_insecure_switch(key: str, value: Any, insecure: bool) -> None:
    s = TransportSettings.from_link(parse_link(v2rayn(base(net="tcp", tls="tls", **{key: value}))))
    assert s.tls is not None and s.tls.insecure is insecure


def test_url_form_each_combination() -> None:
    head = f"vmess://{UID}@198.51.100.9:8443?encryption=aes-128-gcm"
    tcp = TransportSettings.from_link(parse_link(f"{head}&type=tcp&security=none"))
    assert tcp.is_plain
    tls = TransportSettings.from_link(parse_link(f"{head}&type=tcp&security=tls&sni=x.example&alpn=h2&insecure=1"))
    assert tls.name == "tls" and tls.tls == TlsSettings(server_name="x.example", alpn=("h2",), insecure=True)
    ws = TransportSettings.from_link(parse_link(f"{head}&type=ws&host=h.example&path=%2Fws%3Fed%3D1024"))
    assert ws.name == "ws" and ws.websocket == WebSocketSettings(path="/ws", host="h.example", max_early_data=1024)
    wss = TransportSettings.from_link(parse_link(
        f"{head}&type=ws&security=tls&host=h.example&path=%2Fws&sni=s.example&allowInsecure=1&fp=chrome"
    ))
    assert wss.name == "ws+tls"
    assert wss.tls == TlsSettings(server_name="s.example", insecure=True, fingerprint="chrome")
    assert wss.websocket == WebSocketSettings(path="/ws", host="h.example")


def test_explicit_ed_and_other_early_data_headers() -> None:
    s = TransportSettings.from_link(parse_link(v2rayn(base(net="ws", path="/p", ed="4096"))))
    assert s.websocket is not None and s.websocket.max_early_data == 4096
    s = TransportSettings.from_link(parse_link(v2rayn(base(net="ws", path="/p?ed=2048", eh="X-Early"))))
    assert s.websocket is not None and s.websocket.max_early_data == 0  # only Sec-WebSocket-Protocol is spoken
    with pytest.raises(ConfigError, match="ed"):
        TransportSettings.from_link(parse_link(v2rayn(base(net="ws", ed="lots"))))


@pytest.mark.parametrize("obj,match", [
    (base(net="grpc", path="svc", tls="tls"), "transport 'grpc' is not implemented"),
    (base(net="kcp"), "transport 'kcp' is not implemented"),
    (base(net="h2", tls="tls"), "transport 'h2' is not implemented"),
    (base(net="tcp", tls="reality"), "transport security 'reality' is not implemented"),
    (base(net="tcp", type="http", host="x"), "header type 'http' is not implemented"),
])
def test_unimplemented_transports_are_refused(obj: dict[str, Any], match: str) -> None:
    link = parse_link(v2rayn(obj))
    with pytest.raises(UnsupportedError, match=match):
        TransportSettings.from_link(link)
    with pytest.raises(UnsupportedError, match="refusing to connect"):
        resolve_proxy(link)
    assert not is_supported(link)


def test_resolve_proxy_accepts_the_three_item_form() -> None:
    settings = TransportSettings(network="ws")
    spec = (("127.0.0.1", 1), VmessConfig.new(UID), settings)
    assert resolve_proxy(spec) == ("127.0.0.1", 1, VmessConfig.new(UID))
    assert transport_for(spec) is settings
    assert transport_for((("127.0.0.1", 1), VmessConfig.new(UID), TransportSettings())) is None


def test_early_data_helpers() -> None:
    assert split_early_data("/ws?ed=2048") == ("/ws", 2048)
    assert split_early_data("/ws?a=1&ed=512&b=2") == ("/ws?a=1&b=2", 512)
    assert split_early_data("/ws?ed=x") == ("/ws", 0)
    assert split_early_data("/ws") == ("/ws", None)
    data = bytes(range(256)) * 3
    text = encode_early_data(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert decode_early_data(text) == data
    assert decode_early_data(base64.b64encode(data).decode()) == data  # standard alphabet with padding, like Xray
    assert decode_early_data("not base64!") is None


def test_host_header() -> None:
    ws = WebSocketSettings()
    assert ws.host_header("198.51.100.1", 80, tls=False) == "198.51.100.1"
    assert ws.host_header("198.51.100.1", 8080, tls=False) == "198.51.100.1:8080"
    assert ws.host_header("2001:db8::1", 443, tls=True) == "[2001:db8::1]"
    assert ws.host_header("198.51.100.1", 8443, tls=True, server_name="sni.example") == "sni.example"
    assert WebSocketSettings(host="h.example").host_header("198.51.100.1", 1, tls=True, server_name="s") == "h.example"
    with pytest.raises(ConfigError):
        WebSocketSettings(headers=(("Host", "x"),))


def test_server_options_from_cli_and_config(certs: CertFiles, tmp_path: Any) -> None:
    opts = server_transport_options(cert=certs.cert, key=certs.key, ws_path="/x")
    assert isinstance(opts["ssl"], ssl.SSLContext)
    assert opts["websocket"] == WebSocketServerSettings(path="/x")
    assert describe_server_transport(opts) == "ws+tls path=/x"
    cfg_dir = os.path.dirname(certs.cert)
    cfg = {"tls": {"certificateFile": os.path.basename(certs.cert), "keyFile": os.path.basename(certs.key)},
           "ws": {"path": "/y", "host": "h.example", "maxEarlyData": 0}}
    opts = server_transport_options(config=cfg, base_dir=cfg_dir)
    assert opts["websocket"] == WebSocketServerSettings(path="/y", host="h.example", max_early_data=0)
    assert describe_server_transport(server_transport_options()) == "tcp"
    with pytest.raises(ConfigError, match="file not found"):
        server_transport_options(cert=str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load"):
        server_transport_options(cert=str(bad))
    with pytest.raises(ConfigError, match="needs a certificate"):
        server_transport_options(key=certs.key)


# ----------------------------------------------------------------------------------------- end to end helpers


async def echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


def client_settings(kind: str, certs: CertFiles, *, ed: int = 0, path: str = "/vmess", **tls: Any) -> TransportSettings:
    ws = kind.startswith("ws")
    tls_settings = None
    if kind.endswith("tls"):
        tls.setdefault("ca_file", certs.cert)
        tls_settings = TlsSettings(**tls)
    return TransportSettings(
        network="ws" if ws else "tcp",
        tls=tls_settings,
        websocket=WebSocketSettings(path=path, max_early_data=ed) if ws else None,
    )


async def our_server(kind: str, certs: CertFiles, **kwargs: Any) -> VmessServer:
    if kind.endswith("tls"):
        kwargs.setdefault("ssl", server_context(certs.cert, certs.key))
    if kind.startswith("ws"):
        kwargs.setdefault("websocket", WebSocketServerSettings(path="/vmess"))
    return await start_server([UID], **kwargs)


async def bulk_echo(proxy: Any, port: int, size: int) -> Tuple[bool, Any]:
    payload = os.urandom(size)
    reader, writer = await open_connection("127.0.0.1", port, proxy=proxy)

    async def send() -> None:
        for i in range(0, size, 300_000):
            writer.write(payload[i : i + 300_000])
            await writer.drain()

    task = asyncio.create_task(send())
    got = await reader.readexactly(size)
    await task
    writer.write_eof()  # VMess end marker; the transport cannot half-close, the echo's EOF still comes back
    assert await asyncio.wait_for(reader.read(), 10) == b""
    info = writer.get_extra_info("vmess_transport"), writer.get_extra_info("ws_early_data")
    writer.close()
    await writer.wait_closed()
    return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), info


KINDS = ["tls", "ws", "ws+tls"]
EDS = [("tls", 0), ("ws", 0), ("ws+tls", 0), ("ws", 2048), ("ws+tls", 2048)]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind,ed", EDS, ids=[f"{k}-ed{e}" for k, e in EDS])
def test_bulk_echo_and_eof(certs: CertFiles, kind: str, ed: int, loop: str) -> None:
    async def main() -> None:
        echo = await echo_server()
        server = await our_server(kind, certs)
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs, ed=ed))
            ok, (name, early) = await bulk_echo(proxy, echo.sockets[0].getsockname()[1], 8 * MiB)
            assert ok
            assert name == kind
            if kind.startswith("ws"):
                assert early == ed  # our server takes early data and echoes the header
            await asyncio.sleep(0.05)
            assert server.stats.ended["completed"] == 1, server.stats
            assert sum(server.stats.failures.values()) == 0
        echo.close()

    run(main(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("kind", KINDS)
def test_udp(certs: CertFiles, kind: str, loop: str) -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
        port = udp.get_extra_info("sockname")[1]
        server = await our_server(kind, certs)
        replies = []
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs, ed=512))
            stream = await open_udp("127.0.0.1", port, proxy=proxy)
            async with stream:
                for n in (1, 100, 1400, 8000, stream.max_datagram):
                    gram = os.urandom(n)
                    stream.send(gram)
                    await stream.drain()
                    replies.append(await asyncio.wait_for(stream.recv(), 10) == gram)
        udp.close()
        return replies

    assert run(main(), loop=loop) == [True] * 5


def test_share_link_with_allow_insecure_end_to_end(certs: CertFiles) -> None:
    """A v2rayN ws+tls link (self-signed server, allowInsecure=1, ed in the path) through open_connection."""

    async def main() -> bytes:
        echo = await echo_server()
        server = await our_server("ws+tls", certs)
        async with server:
            link = v2rayn(base(add="127.0.0.1", port=str(server.port), net="ws", path="/vmess?ed=2048",
                               host="cdn.example.net", tls="tls", sni="localhost", allowInsecure="1"))
            reader, writer = await open_connection("127.0.0.1", echo.sockets[0].getsockname()[1], proxy=link)
            writer.write(b"through a share link")
            got = await reader.readexactly(20)
            assert writer.get_extra_info("ws_early_data") > 0
            writer.close()
            await writer.wait_closed()
        echo.close()
        return got

    assert run(main()) == b"through a share link"


# ----------------------------------------------------------------------------------------- TLS verification


@pytest.mark.parametrize("kind", ["tls", "ws+tls"])
def test_self_signed_certificate_is_refused_with_a_clear_error(certs: CertFiles, kind: str) -> None:
    async def main() -> None:
        server = await our_server(kind, certs)
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs, ca_file=None))
            with pytest.raises(TransportError) as info:
                await open_connection("127.0.0.1", 9, proxy=proxy)
            message = str(info.value)
            assert "could not be verified" in message and "allowInsecure=1" in message
            assert "'127.0.0.1'" in message
            assert isinstance(info.value, ConnectionError)  # an OSError too, like the ssl error it replaces

    run(main())


def test_wrong_server_name_is_refused(certs: CertFiles) -> None:
    async def main() -> None:
        server = await our_server("tls", certs)
        async with server:
            settings = client_settings("tls", certs, server_name="other.example")
            with pytest.raises(TransportError, match="could not be verified.*other.example|other.example.*could not"):
                await open_connection("127.0.0.1", 9, proxy=(("127.0.0.1", server.port), VmessConfig.new(UID), settings))

    run(main())


@pytest.mark.parametrize("kind", ["tls", "ws+tls"])
def test_insecure_switch_skips_verification(certs: CertFiles, kind: str) -> None:
    async def main() -> None:
        echo = await echo_server()
        server = await our_server(kind, certs)
        async with server:
            settings = client_settings(kind, certs, ca_file=None, insecure=True, server_name="anything.example")
            ok, _ = await bulk_echo((("127.0.0.1", server.port), VmessConfig.new(UID), settings),
                                    echo.sockets[0].getsockname()[1], 256 * 1024)
            assert ok
        echo.close()

    run(main())


def test_sni_and_alpn_reach_the_server(certs: CertFiles) -> None:
    seen: list[Optional[str]] = []
    ctx = server_context(certs.cert, certs.key)
    ctx.sni_callback = lambda sock, name, _ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]

    async def main() -> list[Optional[str]]:
        echo = await echo_server()
        server = await our_server("ws+tls", certs, ssl=ctx)
        alpns = []
        async with server:
            for name in ("localhost", ""):
                settings = client_settings("ws+tls", certs, server_name=name)
                reader, writer = await open_connection(
                    "127.0.0.1", echo.sockets[0].getsockname()[1],
                    proxy=(("127.0.0.1", server.port), VmessConfig.new(UID), settings),
                )
                writer.write(b"x")
                assert await reader.readexactly(1) == b"x"
                alpns.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
                writer.close()
                await writer.wait_closed()
        echo.close()
        return alpns

    assert run(main()) == ["http/1.1", "http/1.1"]  # WebSocket offers http/1.1 when the link names no ALPN
    assert seen == ["localhost", None]  # an IP address is verified against the SAN but never sent as SNI


# ----------------------------------------------------------------------------------------- WebSocket specifics


def test_wrong_path_is_refused_with_the_status(certs: CertFiles) -> None:
    async def main() -> None:
        server = await our_server("ws", certs)
        async with server:
            settings = client_settings("ws", certs, path="/elsewhere")
            with pytest.raises(TransportError, match="refused: HTTP 404"):
                await open_connection("127.0.0.1", 9, proxy=(("127.0.0.1", server.port), VmessConfig.new(UID), settings))
            assert server.stats.sessions_total == 0

    run(main())


def test_required_host_header(certs: CertFiles) -> None:
    async def main() -> None:
        echo = await echo_server()
        server = await our_server("ws", certs, websocket=WebSocketServerSettings(path="/vmess", host="h.example"))
        async with server:
            port = echo.sockets[0].getsockname()[1]
            bad = client_settings("ws", certs)
            with pytest.raises(TransportError, match="404"):
                await open_connection("127.0.0.1", port, proxy=(("127.0.0.1", server.port), VmessConfig.new(UID), bad))
            good = TransportSettings(network="ws", websocket=WebSocketSettings(path="/vmess", host="h.example"))
            ok, _ = await bulk_echo((("127.0.0.1", server.port), VmessConfig.new(UID), good), port, 4096)
            assert ok
        echo.close()

    run(main())


def test_early_data_ignored_by_the_server_is_resent(certs: CertFiles) -> None:
    """A server that does not read early data (V2Ray without maxEarlyData) does not echo the header: the client
    sends those bytes as the first message instead, so nothing is lost."""

    async def main() -> None:
        echo = await echo_server()
        server = await our_server("ws", certs, websocket=WebSocketServerSettings(path="/vmess", max_early_data=0))
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings("ws", certs, ed=2048))
            ok, (_, early) = await bulk_echo(proxy, echo.sockets[0].getsockname()[1], MiB)
            assert ok and early == 0
        echo.close()

    run(main())


@pytest.mark.parametrize("kind,ed", [("ws", 2048), ("ws+tls", 2048), ("ws", 0), ("tls", 0)])
def test_close_right_after_writing_still_delivers(certs: CertFiles, kind: str, ed: int) -> None:
    """write(); write_eof(); close() without waiting: like a socket, the bytes still reach the destination, also
    when the WebSocket upgrade (early data) is still in flight at close()."""
    payload = os.urandom(300_000)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.read())
        writer.close()

    async def main() -> bytes:
        dest = await asyncio.start_server(sink, "127.0.0.1", 0)
        server = await our_server(kind, certs)
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings(kind, certs, ed=ed))
            _, writer = await open_connection("127.0.0.1", dest.sockets[0].getsockname()[1], proxy=proxy)
            writer.write(payload)
            writer.write_eof()
            writer.close()
            got = await asyncio.wait_for(received.get(), 10)
        dest.close()
        return got

    assert run(main()) == payload


def test_early_data_larger_than_the_server_accepts_is_refused(certs: CertFiles) -> None:
    async def main() -> None:
        server = await our_server("ws", certs, websocket=WebSocketServerSettings(path="/vmess", max_early_data=16))
        async with server:
            proxy = (("127.0.0.1", server.port), VmessConfig.new(UID), client_settings("ws", certs, ed=2048))
            reader, writer = await open_connection("127.0.0.1", 9, proxy=proxy)
            writer.write(b"x" * 100)
            with pytest.raises(TransportError, match="HTTP 400"):
                await asyncio.wait_for(reader.read(), 10)
            writer.close()

    run(main())


def test_plain_http_probe_gets_an_http_answer(certs: CertFiles) -> None:
    async def main() -> Tuple[bytes, bytes]:
        server = await our_server("ws", certs)
        async with server:
            answers = []
            for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /vmess HTTP/1.1\r\nHost: x\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                answers.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            assert server.stats.sessions_total == 0
        return answers[0], answers[1]

    for answer in run(main()):  # not an upgrade request: refused by HTTP before any path check
        assert answer.startswith(b"HTTP/1.1 400 ")


def test_upgrade_timeout_closes_silent_clients(certs: CertFiles) -> None:
    async def main() -> bytes:
        server = await our_server("ws", certs, websocket=WebSocketServerSettings(path="/vmess", handshake_timeout=0.2))
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            got = await asyncio.wait_for(reader.read(), 5)
            writer.close()
        return got

    assert run(main()) == b""


def test_local_proxy_with_a_ws_tls_link(certs: CertFiles) -> None:
    """The local SOCKS5/HTTP inbound keeps the link's transport (vmess client LINK)."""
    from vmess.inbound.server import start_local_proxy

    async def main() -> bytes:
        echo = await echo_server()
        server = await our_server("ws+tls", certs)
        async with server:
            link = v2rayn(base(add="127.0.0.1", port=str(server.port), net="ws", path="/vmess", tls="tls",
                               sni="localhost", allowInsecure="1"))
            proxy = await start_local_proxy(link, "127.0.0.1", 0)
            async with proxy:
                reader, writer = await asyncio.open_connection(*proxy.address)
                eport = echo.sockets[0].getsockname()[1]
                writer.write(b"\x05\x01\x00")
                assert await reader.readexactly(2) == b"\x05\x00"
                writer.write(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + eport.to_bytes(2, "big"))
                reply = await reader.readexactly(10)
                assert reply[1] == 0
                writer.write(b"socks over ws+tls")
                got = await reader.readexactly(17)
                writer.close()
        echo.close()
        return got

    assert run(main()) == b"socks over ws+tls"


def test_cli_server_ws_tls(certs: CertFiles, tmp_path: Any) -> None:
    """`vmess server --ws-path --cert --key` serves ws+tls; the config file keys do the same."""
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"users": [{"id": str(UID)}], "tls": {"cert": certs.cert, "key": certs.key},
                                  "ws": {"path": "/conf"}}))
    runs = [
        (["server", "--listen", "127.0.0.1:0", "--user", str(UID), "--ws-path", "/cli", "--cert", certs.cert,
          "--key", certs.key], "/cli"),
        (["server", "--listen", "127.0.0.1:0", "--config", str(config)], "/conf"),
    ]
    for args, path in runs:
        with CliProcess(args) as proc:
            async def main() -> bytes:
                echo = await echo_server()
                settings = client_settings("ws+tls", certs, path=path)
                reader, writer = await open_connection(
                    "127.0.0.1", echo.sockets[0].getsockname()[1],
                    proxy=(("127.0.0.1", proc.port), VmessConfig.new(UID), settings),
                )
                writer.write(b"cli")
                got = await reader.readexactly(3)
                writer.close()
                echo.close()
                return got

            assert run(main()) == b"cli"


def test_cli_server_bad_certificate_is_a_usage_error(tmp_path: Any) -> None:
    from .cli_process import run_cli

    result = run_cli(["server", "--user", str(UID), "--cert", str(tmp_path / "nope.pem")])
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_backend_reported() -> None:
    assert _core.BACKEND in ("native", "pure")

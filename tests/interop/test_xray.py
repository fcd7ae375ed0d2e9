"""Interop with a real Xray (PyPI Xray-core, Xray 26.x inside) in both roles, byte for byte (sha256 at the receiving
end).

* our client (vmess.aio, and once the ``vmess client`` CLI) -> Xray VMess server -> local endpoints:
  aes-128-gcm, chacha20-poly1305 and auto, with and without authenticated length (A), several option presets;
  echo, upload checked at the sink, download, UDP; and what Xray refuses (none, zero, the legacy header);
* Xray client (socks inbound -> vmess outbound) -> our server: every security name, with and without the
  "AuthenticatedLength" experiment; upload checked at the sink, echo, UDP (plain command 2), and the
  security/options our server decoded; Xray's default UDP (XUDP over Mux), which our server refuses;
* TCP, TLS and WebSocket (with Xray-style early data) in both directions, with a download to EOF.

Xray's quirks (measured; see xray.py): its server ends a request on our end marker but closes the connection
1-2 s later, and its client passes the end of our server's stream on to its SOCKS client about 1 s late, so each
upload (our client) or download (Xray client) that waits for EOF costs a second or two; UDP datagrams above ~8 KiB
do not get through in either direction, so datagrams here stay at or below 8000 bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from vmess.aio import open_connection
from vmess.config import VmessConfig
from vmess.transport import TlsSettings, TransportSettings, WebSocketServerSettings, WebSocketSettings, server_context

from ..cli_process import CliProcess
from ..tls_certs import CertFiles, make_cert
from .checks import (
    MiB,
    our_download,
    our_echo,
    our_udp,
    our_upload,
    request_as_seen,
    socks_download,
    socks_echo,
    socks_udp,
    socks_upload,
)
from .endpoints import Socks5UdpAssociation, TcpEcho, TcpSink, TcpSource, UdpEcho
from .peer_process import RunningPeer
from .server_thread import ServerThread
from .xray import CONE_DISABLED, XrayProcess, client_config, free_port, server_config, stream_settings

USER = str(uuid.UUID("7c6b5a49-3827-4165-9f4e-3d2c1b0a9f8e"))
BULK = 2 * MiB
UDP_SIZES = (1, 64, 1400, 1967, 8000)
WS_PATH = "/xr-ws"
S, M, P, A = 0x01, 0x04, 0x08, 0x10


def grams() -> list[bytes]:
    return [os.urandom(n) for n in UDP_SIZES]


# ----------------------------------------------------------------------------------------- our client -> Xray server


@pytest.fixture(scope="module")
def xr_server(xray_python: str) -> Iterator[RunningPeer]:
    port = free_port()
    with XrayProcess(server_config(port, [USER]), name="xr-server") as proc:
        yield RunningPeer(port, [proc])
        assert proc.running, proc.log_tail()
        assert "panic" not in proc.log_text, proc.log_tail()


def config(enc: str, *, authenticated_length: bool = False, level: str = "auto") -> VmessConfig:
    return VmessConfig.new(USER).with_encryption(enc).with_security_level(level).with_test_enabled(
        authenticated_length
    )


OUR_CLIENT_CASES = {
    "gcm": config("aes-128-gcm"),
    "gcm-A": config("aes-128-gcm", authenticated_length=True),
    "gcm-level-none": config("aes-128-gcm", level="none"),  # S only
    "chacha": config("chacha20-poly1305", level="standard"),  # S|M
    "chacha-A": config("chacha20-poly1305", authenticated_length=True),
    "auto-high": config("auto", level="high"),  # S|M|P|A
}


@pytest.mark.parametrize("case", list(OUR_CLIENT_CASES))
def test_our_client_echo_upload_download(
    xr_server: RunningPeer, echo: TcpEcho, download: TcpSource, tcp_sink: TcpSink, case: str
) -> None:
    proxy = (("127.0.0.1", xr_server.port), OUR_CLIENT_CASES[case])

    async def main() -> None:
        await our_echo(proxy, echo.port, os.urandom(BULK), eof=False)  # EOF: checked by the upload
        await our_upload(proxy, tcp_sink, os.urandom(BULK))
        await our_download(proxy, download.port, download.payload)

    asyncio.run(main())


@pytest.mark.parametrize("case", ["gcm", "chacha-A"])
def test_our_client_udp(xr_server: RunningPeer, uecho: UdpEcho, case: str) -> None:
    asyncio.run(our_udp((("127.0.0.1", xr_server.port), OUR_CLIENT_CASES[case]), uecho.port, grams()))


@pytest.mark.parametrize(
    "refused",
    [config("none"), config("zero"), VmessConfig.new(USER).with_encryption("aes-128-gcm").with_alter_id(4)],
    ids=["none", "zero", "legacy-header"],
)
def test_xray_refuses_what_it_dropped(xr_server: RunningPeer, echo: TcpEcho, refused: VmessConfig) -> None:
    """Xray 26 accepts only security 3 and 4 and the AEAD header: it closes the connection, nothing reaches the
    destination and nothing comes back."""
    connections = echo.connections

    async def main() -> bytes:
        reader, writer = await open_connection("127.0.0.1", echo.port, proxy=(("127.0.0.1", xr_server.port), refused))
        got = b""
        try:
            writer.write(os.urandom(64 * 1024))  # enough for Xray's drain after an unknown user
            await writer.drain()
            got = await asyncio.wait_for(reader.read(), 10)
        except (ConnectionError, OSError):
            pass
        writer.close()
        return got

    assert asyncio.run(main()) == b""
    assert echo.connections == connections


def test_cli_client_against_xray(xr_server: RunningPeer, echo: TcpEcho, uecho: UdpEcho) -> None:
    """``vmess client`` with a share link asking for aes-128-gcm + authenticated length (test=1)."""
    link = f"vmess://{USER}@127.0.0.1:{xr_server.port}?encryption=aes-128-gcm&test=1#xray"
    with CliProcess(["client", link, "--listen", "127.0.0.1:0"]) as client:
        assert USER not in client.output()
        socks_echo(client.port, echo.port, os.urandom(BULK))
        socks_udp(client.port, uecho.port, grams())
        assert client.stop() == 0


# ----------------------------------------------------------------------------------------- Xray client -> our server


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerThread]:
    server = ServerThread([(USER, 0, "xray")], idle_timeout=30).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class ClientCase:
    security: str
    authenticated_length: bool
    wire: tuple[int, int]  # (security code, option bits) our server must see

    @property
    def id(self) -> str:
        return self.security + ("-A" if self.authenticated_length else "")


CLIENT_CASES = [
    ClientCase("aes-128-gcm", False, (3, S | M | P)),
    ClientCase("aes-128-gcm", True, (3, S | M | P | A)),
    ClientCase("chacha20-poly1305", False, (4, S | M | P)),
    ClientCase("chacha20-poly1305", True, (4, S | M | P | A)),
    ClientCase("auto", True, (3, S | M | P | A)),  # GCM on x86_64/aarch64, the only builds Xray-core ships here
    # Xray 26's config loader no longer knows "none"/"zero": unknown names fall back to auto.
    ClientCase("none", False, (3, S | M | P)),
    ClientCase("zero", False, (3, S | M | P)),
]


@dataclass
class Client:
    case: ClientCase
    socks_port: int
    processes: list[XrayProcess] = field(default_factory=list)  # logs attached to failure reports


@pytest.fixture(scope="module", params=CLIENT_CASES, ids=[c.id for c in CLIENT_CASES])
def xr_client(request: pytest.FixtureRequest, ours: ServerThread, xray_python: str) -> Iterator[Client]:
    case: ClientCase = request.param
    socks_port = free_port()
    cfg = client_config(socks_port, ours.port, USER, security=case.security,
                        authenticated_length=case.authenticated_length)
    with XrayProcess(cfg, env=CONE_DISABLED, name=f"xr-client-{case.id}") as proc:
        yield Client(case, socks_port, [proc])
        assert proc.running, proc.log_tail()
        assert "panic" not in proc.log_text, proc.log_tail()


def test_xray_client_upload_and_echo(
    xr_client: Client, ours: ServerThread, tcp_sink: TcpSink, echo: TcpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    """Upload checked at the sink, echo, and the request as our server decoded it.  (A download to EOF costs a
    second with Xray, see xray.py: test_xray_client_over_transport does it once per transport.)"""
    caplog.set_level(logging.DEBUG, logger="vmess.server")
    failures = sum(ours.stats.failures.values())
    socks_upload(xr_client.socks_port, tcp_sink, os.urandom(BULK))
    socks_echo(xr_client.socks_port, echo.port, os.urandom(BULK))
    seen = request_as_seen(caplog, f"tcp:127.0.0.1:{tcp_sink.port}")
    assert len(seen) == 1, seen
    assert (seen[0].user, seen[0].header, seen[0].security, seen[0].options) == ("xray", "AEAD", *xr_client.case.wire)
    assert sum(ours.stats.failures.values()) == failures, dict(ours.stats.failures)


def test_xray_client_udp(xr_client: Client, uecho: UdpEcho, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vmess.server")
    socks_udp(xr_client.socks_port, uecho.port, grams())
    seen = request_as_seen(caplog, f"udp:127.0.0.1:{uecho.port}")
    assert len(seen) == 1, seen  # plain command 2, one VMess connection for the association
    assert (seen[0].security, seen[0].options) == xr_client.case.wire


def test_xray_default_udp_is_xudp_and_refused(ours: ServerThread, uecho: UdpEcho, xray_python: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Without CONE_DISABLED an Xray client sends UDP as XUDP (command 3, Mux), which our server does not
    implement: it refuses the request (counted as "unsupported") and nothing reaches the destination."""
    caplog.set_level(logging.INFO, logger="vmess.server")
    before = ours.stats.failures["unsupported"]
    datagrams = uecho.datagrams
    socks_port = free_port()
    with XrayProcess(client_config(socks_port, ours.port, USER), name="xr-client-xudp"):
        with Socks5UdpAssociation(socks_port, timeout=1) as assoc:
            assoc.sendto(b"xudp?", ("127.0.0.1", uecho.port))
            with pytest.raises(socket.timeout):
                assoc.recvfrom()
    assert ours.stats.failures["unsupported"] == before + 1
    assert uecho.datagrams == datagrams
    assert any("Mux (command 3) is not implemented" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------- TLS and WebSocket


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(str(tmp_path_factory.mktemp("xr-certs")), ("localhost", "127.0.0.1"))


def xr_stream(kind: str, certs: CertFiles, *, server: bool, ed: int = 0) -> dict[str, Any]:
    """Xray streamSettings for ``kind``: the server serves ``certs``, the client trusts it; ``ed`` bytes of early
    data in the client's path (``?ed=N``, Xray's way)."""
    tls: dict[str, Any] | None = None
    if kind.endswith("tls"):
        if server:
            tls = {"certificates": [{"certificateFile": certs.cert, "keyFile": certs.key}]}
        else:
            tls = {"serverName": "localhost", "certificates": [{"usage": "verify", "certificateFile": certs.cert}]}
    network = "ws" if kind.startswith("ws") else "tcp"
    path = WS_PATH + (f"?ed={ed}" if ed else "")
    return stream_settings(network, tls=tls, ws_path=path if network == "ws" else None)


@pytest.mark.parametrize("kind", ["tls", "ws", "ws+tls"])
def test_our_client_over_transport(xray_python: str, certs: CertFiles, echo: TcpEcho, tcp_sink: TcpSink,
                                   uecho: UdpEcho, kind: str) -> None:
    """Echo, upload checked at the sink and UDP; over WebSocket with 2048 bytes of early data, which Xray takes
    (it echoes Sec-WebSocket-Protocol)."""
    ws = kind.startswith("ws")
    port = free_port()
    transport = TransportSettings(
        network="ws" if ws else "tcp",
        tls=TlsSettings(server_name="localhost", ca_file=certs.cert) if kind.endswith("tls") else None,
        websocket=WebSocketSettings(path=WS_PATH, max_early_data=2048) if ws else None,
    )
    proxy = (("127.0.0.1", port), config("chacha20-poly1305", authenticated_length=True), transport)

    async def main() -> None:
        early = await our_echo(proxy, echo.port, os.urandom(BULK), eof=False)
        assert early == (2048 if ws else None)
        await our_upload(proxy, tcp_sink, os.urandom(BULK))
        await our_udp(proxy, uecho.port, grams())

    with XrayProcess(server_config(port, [USER], stream_settings=xr_stream(kind, certs, server=True)),
                     name=f"xr-server-{kind}"):
        asyncio.run(main())


@pytest.mark.parametrize("kind", ["tcp", "tls", "ws", "ws+tls"])
def test_xray_client_over_transport(xray_python: str, certs: CertFiles, tcp_sink: TcpSink, echo: TcpEcho,
                                    download: TcpSource, uecho: UdpEcho, kind: str) -> None:
    """Upload checked at the sink, echo, download to EOF and UDP, over each transport (WebSocket with ``?ed=2048``
    early data)."""
    kwargs: dict[str, Any] = {}
    if kind.endswith("tls"):
        kwargs["ssl"] = server_context(certs.cert, certs.key)
    if kind.startswith("ws"):
        kwargs["websocket"] = WebSocketServerSettings(path=WS_PATH)
    ours = ServerThread([(USER, 0, "xr-transport")], idle_timeout=30, **kwargs).start()
    try:
        socks_port = free_port()
        cfg = client_config(socks_port, ours.port, USER, security="aes-128-gcm", authenticated_length=True,
                            stream_settings=xr_stream(kind, certs, server=False, ed=2048))
        with XrayProcess(cfg, env=CONE_DISABLED, name=f"xr-client-{kind}"):
            socks_upload(socks_port, tcp_sink, os.urandom(BULK))
            socks_echo(socks_port, echo.port, os.urandom(BULK))
            socks_download(socks_port, download.port, download.payload)
            socks_udp(socks_port, uecho.port, grams())
        assert sum(ours.stats.failures.values()) == 0, dict(ours.stats.failures)
    finally:
        ours.stop()

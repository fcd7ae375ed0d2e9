"""Run a real V2Ray (Debian's v2ray 4.34 package) on 127.0.0.1 for interop tests.

Public API::

    V2RAY_BIN                      path of the binary ($VMESS_V2RAY_BIN overrides)
    v2ray_available() -> bool
    require_v2ray() -> str         skip (or fail with VMESS_REQUIRE_V2RAY=1) when absent
    free_port(kind="tcp") -> int
    server_config(port, users, *, log_level="warning", stream_settings=None) -> dict
    client_config(socks_port, server_port, uuid, *, alter_id=0,
                  security="aes-128-gcm", log_level="warning",
                  stream_settings=None) -> dict
    stream_settings(network="tcp", *, tls=None, ws_path=None, ws_host=None) -> dict
    V2RayProcess(config, *, binary=None, startup_timeout=10.0, env=None)
    V2RayError

The configs use the v2ray 4.x JSON format (``inbounds`` / ``outbounds``).

v2ray 4.34 behaviour worth knowing when writing interop tests (measured):

* Legacy clients (alterId > 0) are accepted by default; the process env
  still gets ``V2RAY_VMESS_AEAD_FORCED=false``.  A server user with
  alterId 0 accepts only the AEAD header.
* Half-close is not forwarded to the target.  After one direction ends,
  the connection is torn down after 1 s without traffic (default policy
  uplinkOnly/downlinkOnly = 1 s), so the far side sees EOF ~1 s late.
* A SOCKS client that half-closes before sending any byte gets nothing:
  the vmess outbound fails with "failed to write first payload > EOF".
* A rejected VMess client (unknown user) is not disconnected; the server
  keeps reading and logs "invalid user" only when the connection ends.
* UDP: the SOCKS inbound reads datagrams into 2048-byte buffers (payload
  max 2038 bytes), and the vmess writer refuses chunks larger than 2048
  bytes (2 length + payload + 16 tag + 0..63 padding): with AEAD ciphers
  payloads above 1967 bytes fail at random and kill the UDP session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from .peer_process import LOOPBACK, PeerError, PeerProcess, free_port, port_accepts, require_peer

__all__ = [
    "V2RAY_BIN",
    "V2RayError",
    "V2RayProcess",
    "client_config",
    "free_port",
    "require_v2ray",
    "server_config",
    "stream_settings",
    "v2ray_available",
]

V2RAY_BIN: str = os.environ.get("VMESS_V2RAY_BIN") or shutil.which("v2ray") or "/usr/bin/v2ray"

#: Environment added to every v2ray process.  v2ray reads
#: ``v2ray.vmess.aead.forced`` from the environment (dotted name or its
#: upper-case/underscore form); "false" keeps legacy (alterId > 0) clients
#: accepted.  4.34 already defaults to accepting them; this is a safety net.
V2RAY_ENV: dict[str, str] = {"V2RAY_VMESS_AEAD_FORCED": "false"}


def v2ray_available() -> bool:
    """True if :data:`V2RAY_BIN` is an executable file."""
    return os.path.isfile(V2RAY_BIN) and os.access(V2RAY_BIN, os.X_OK)


def require_v2ray() -> str:
    """Return :data:`V2RAY_BIN`, or skip the test (fail it with VMESS_REQUIRE_V2RAY=1)."""
    require_peer(
        v2ray_available(),
        f"v2ray binary not found at {V2RAY_BIN}; install Debian's v2ray package",
        env_vars=("VMESS_REQUIRE_V2RAY",),
    )
    return V2RAY_BIN


# --------------------------------------------------------------------------
# config builders (v2ray 4.x JSON format)


def _log(log_level: str) -> dict[str, Any]:
    # No "access"/"error" paths: both go to stdout, which V2RayProcess
    # redirects to its log file.
    return {"loglevel": log_level}


def server_config(
    port: int,
    users: Iterable[tuple[str, int]],
    *,
    log_level: str = "warning",
    stream_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess server: ``vmess`` inbound on 127.0.0.1:port -> ``freedom`` outbound.

    ``stream_settings`` replaces the inbound's ``{"network": "tcp"}`` (TLS, WebSocket: see :func:`stream_settings`).

    ``users`` is a list of ``(uuid, alter_id)``.  Users with alter_id > 0 also
    accept the legacy (MD5/alter ID) header; every user accepts the AEAD header.
    ``disableInsecureEncryption`` is false so clients may use ``none``.
    """
    clients = [
        {"id": str(uuid), "alterId": int(alter_id), "level": 0}
        for uuid, alter_id in users
    ]
    if not clients:
        raise ValueError("server_config needs at least one user")
    return {
        "log": _log(log_level),
        "inbounds": [
            {
                "tag": "vmess-in",
                "listen": LOOPBACK,
                "port": int(port),
                "protocol": "vmess",
                "settings": {"clients": clients, "disableInsecureEncryption": False},
                "streamSettings": dict(stream_settings or {"network": "tcp"}),
            }
        ],
        "outbounds": [
            {
                "tag": "direct",
                "protocol": "freedom",
                # freedom relays UDP as well as TCP; AsIs = no DNS games.
                "settings": {"domainStrategy": "AsIs"},
            }
        ],
    }


def client_config(
    socks_port: int,
    server_port: int,
    uuid: str,
    *,
    alter_id: int = 0,
    security: str = "aes-128-gcm",
    log_level: str = "warning",
    stream_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess client: ``socks`` inbound on 127.0.0.1:socks_port (no auth, UDP
    enabled, UDP relay announced as 127.0.0.1) -> ``vmess`` outbound to
    127.0.0.1:server_port.

    alter_id == 0 makes v2ray send the AEAD header, alter_id > 0 the legacy one.
    """
    return {
        "log": _log(log_level),
        "inbounds": [
            {
                "tag": "socks-in",
                "listen": LOOPBACK,
                "port": int(socks_port),
                "protocol": "socks",
                "settings": {"auth": "noauth", "udp": True, "ip": LOOPBACK},
            }
        ],
        "outbounds": [
            {
                "tag": "vmess-out",
                "protocol": "vmess",
                "settings": {
                    "vnext": [
                        {
                            "address": LOOPBACK,
                            "port": int(server_port),
                            "users": [
                                {
                                    "id": str(uuid),
                                    "alterId": int(alter_id),
                                    "security": security,
                                    "level": 0,
                                }
                            ],
                        }
                    ]
                },
                "streamSettings": dict(stream_settings or {"network": "tcp"}),
            }
        ],
    }


def stream_settings(
    network: str = "tcp",
    *,
    tls: Mapping[str, Any] | None = None,
    ws_path: str | None = None,
    ws_host: str | None = None,
) -> dict[str, Any]:
    """v2ray 4.x ``streamSettings``: ``network`` "tcp" or "ws" (``wsSettings`` path and Host header), and
    ``security: "tls"`` with ``tlsSettings`` = ``tls`` when given (e.g. ``{"certificates": [{"certificateFile": F,
    "keyFile": K}]}`` on a server, ``{"serverName": N, "allowInsecure": True}`` on a client)."""
    out: dict[str, Any] = {"network": network}
    if network == "ws":
        ws: dict[str, Any] = {"path": ws_path or "/"}
        if ws_host:
            ws["headers"] = {"Host": ws_host}
        out["wsSettings"] = ws
    if tls is not None:
        out["security"] = "tls"
        out["tlsSettings"] = dict(tls)
    return out


def _tcp_inbound_ports(config: Mapping[str, Any]) -> list[int]:
    """Ports of the inbounds that listen on TCP (all but UDP-only dokodemo-door)."""
    ports: list[int] = []
    for inbound in config.get("inbounds") or []:
        port = inbound.get("port")
        if not isinstance(port, int):
            continue  # port ranges / env placeholders: nothing to wait on
        settings = inbound.get("settings") or {}
        network = str(settings.get("network", "tcp"))
        if inbound.get("protocol") == "dokodemo-door" and "tcp" not in network:
            continue
        ports.append(port)
    return ports


# --------------------------------------------------------------------------
# process management (the shared part lives in peer_process.py)


class V2RayError(PeerError):
    """v2ray failed to start (exited, or its ports never opened)."""


class V2RayProcess(PeerProcess):
    """One v2ray process running ``config``.

    Use as a context manager (``with V2RayProcess(cfg) as v: ...``) or call
    :meth:`start` / :meth:`stop`.  :meth:`start` returns once every TCP
    inbound port accepts connections, or raises :class:`V2RayError` with the
    log tail.  :meth:`stop` is idempotent, always reaps the process and
    removes the temp directory (config + log); the log stays readable via
    :meth:`log_tail` / :attr:`log_text` afterwards.
    """

    error_class = V2RayError
    log_name = "v2ray.log"

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        name: str = "v2ray",
    ) -> None:
        self.binary = binary or V2RAY_BIN
        super().__init__(config, startup_timeout=startup_timeout, env=env, name=name)

    def command(self, config_path: str) -> list[str]:
        return [self.binary, "-config", config_path]

    def listen_ports(self, config: Mapping[str, Any]) -> list[int]:
        return _tcp_inbound_ports(config)

    def base_env(self) -> dict[str, str]:
        return dict(V2RAY_ENV)

    def start(self) -> "V2RayProcess":
        super().start()
        return self

    def __enter__(self) -> "V2RayProcess":
        return self.start()

    @property
    def port(self) -> int:
        """The first inbound's port."""
        return int(self.config["inbounds"][0]["port"])


def _accepts(port: int) -> bool:
    return port_accepts(port)

"""Run a real Xray (PyPI ``Xray-core``: Python bindings with Xray-core embedded) on 127.0.0.1.

The package has no executable: ``xray.startFromJSON(text)`` runs Xray inside the calling interpreter.  So each
:class:`XrayProcess` is a small Python bootstrap in its own process (``python -c``, see :data:`BOOTSTRAP`): it
starts Xray from the config file in a thread and lives as long as its stdin stays open, so it also goes away if
the test run dies.  Xray's log goes to that process's stdout, i.e. the log file.

Public API::

    xray_available() -> bool       the ``xray`` module imports in a child interpreter
    require_xray() -> str          sys.executable; skip (or fail with VMESS_REQUIRE_PEERS=1) when absent
    xray_version() -> str          e.g. "Xray 26.10.10 (Python package Xray-core 1.8.26.13)"
    free_port(kind="tcp") -> int
    server_config(port, users, *, log_level="warning", stream_settings=None) -> dict
    client_config(socks_port, server_port, uuid, *, security="aes-128-gcm",
                  authenticated_length=False, log_level="warning", stream_settings=None) -> dict
    stream_settings(network="tcp", *, tls=None, ws_path=None, ws_host=None) -> dict
    CONE_DISABLED                  env for XrayProcess: UDP as plain VMess command 2 instead of XUDP
    XrayProcess(config, *, startup_timeout=15.0, env=None, name="xray")
    XrayError

The configs use Xray's JSON format (v2ray-4 style ``inbounds``/``outbounds``; users named by ``email``).

Xray-core 1.8.26.13 from PyPI embeds Xray 26.10.10 (its log says so at startup); measured against our client and
server:

* Its ``freedom`` outbound blocks private destinations (127.0.0.1 included) for traffic from a vmess inbound and
  blackholes the connection for 30-90 s; :func:`server_config` allows everything with ``finalRules``.
* Server: accepts security 3 (aes-128-gcm) and 4 (chacha20-poly1305) only: 5 (none, zero) is "unknown security
  type" and the connection is closed; a legacy (MD5) header is "invalid user" and drained.  Any option preset
  (S, S|M, S|M|P, with or without A) works.
* Server: ends a request on our end marker, but passes no EOF to the destination until it closes the connection
  1-2 s later (about 2 s over plain TLS): each upload checked at the sink costs that.
* Client: no alterId, and "none"/"zero" are no longer known: like any unknown name they become "auto" (GCM on
  x86_64/aarch64).  It always sends S|M|P, plus A with ``"experiments": "AuthenticatedLength"``, and sends the
  end marker when its SOCKS client half-closes.  The end of the server's stream reaches its SOCKS client only
  about 1 s later (its downlink-only timeout).
* Client UDP: turned into XUDP over command 3 (Mux) for every port but 53 and 443, which our server does not
  implement; with :data:`CONE_DISABLED` (``XRAY_CONE_DISABLED=true``) it sends plain command 2.
* UDP datagrams above about 8 KiB fail in both roles (8 KiB buffers): the client's SOCKS inbound reads 8182 bytes
  of a larger datagram and never completes the chunk; the server's session dies after such a datagram.
* WebSocket: the server takes early data from Sec-WebSocket-Protocol and echoes the header; the client sends it
  with ``?ed=N`` in the path.  A TLS client trusts a test certificate with ``"usage": "verify"``.
* ``startFromJSON`` blocks until SIGINT/SIGTERM (Go handles them); a config error ends the process with status 23
  and nothing in the log.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .peer_process import LOOPBACK, PeerError, PeerProcess, free_port, require_peer

__all__ = [
    "BOOTSTRAP",
    "CONE_DISABLED",
    "XrayError",
    "XrayProcess",
    "client_config",
    "free_port",
    "require_xray",
    "server_config",
    "stream_settings",
    "xray_available",
    "xray_version",
]

#: Environment variable that turns a missing sing-box or Xray into a test failure (CI sets it).
REQUIRE_ENV = "VMESS_REQUIRE_PEERS"

#: Xray reads ``xray.cone.disabled`` from the environment; "true" keeps UDP as plain VMess command 2.
CONE_DISABLED: dict[str, str] = {"XRAY_CONE_DISABLED": "true"}

#: The child's program (argv[1] = config path).  startFromJSON blocks until Xray stops (it handles SIGTERM
#: itself) or ends the process on a config error; the main thread waits for EOF on stdin, which
#: PeerProcess.stop() closes, and then exits at once.
BOOTSTRAP = """\
import os, sys, threading
import xray
config = open(sys.argv[1], encoding="utf-8").read()
def run():
    xray.startFromJSON(config)
    print("bootstrap: startFromJSON returned", flush=True)
threading.Thread(target=run, name="xray", daemon=True).start()
sys.stdin.buffer.read()
sys.stdout.flush()
os._exit(0)
"""


@functools.lru_cache(maxsize=1)
def _package_version() -> str | None:
    """The ``xray`` package's version as a child interpreter sees it, or None if it does not import."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", "import xray; print(xray.__version__)"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def xray_available() -> bool:
    """True if the ``xray`` module (PyPI Xray-core) imports in a child interpreter."""
    return _package_version() is not None


def require_xray() -> str:
    """Return the interpreter that runs Xray, or skip the test (fail it with VMESS_REQUIRE_PEERS=1)."""
    require_peer(
        xray_available(),
        "Xray not found: pip install 'Xray-core>=1.8.26' (Linux x86_64/aarch64; import name xray)",
        env_vars=(REQUIRE_ENV,),
    )
    return sys.executable


def xray_version(timeout: float = 15.0) -> str:
    """Start Xray with an empty config and read its version from the startup line."""
    require_xray()
    proc = XrayProcess({"log": {"loglevel": "warning"}}, name="xray-version")
    proc.start()
    try:
        deadline = time.monotonic() + timeout
        while (m := re.search(r"Xray (\S+) started", proc.log_text)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.stop()
    core = f"Xray {m[1]}" if m else "Xray (version not logged)"
    return f"{core} (Python package Xray-core {_package_version()})"


# --------------------------------------------------------------------------
# config builders (Xray JSON format)


def _log(log_level: str) -> dict[str, Any]:
    # Errors go to stdout (the log file); no access log (one line per connection).
    return {"loglevel": log_level, "access": "none"}


def stream_settings(
    network: str = "tcp",
    *,
    tls: Mapping[str, Any] | None = None,
    ws_path: str | None = None,
    ws_host: str | None = None,
) -> dict[str, Any]:
    """Xray ``streamSettings``: ``network`` "tcp" or "ws" (``wsSettings`` path and host), and ``security: "tls"``
    with ``tlsSettings`` = ``tls`` when given (``{"certificates": [{"certificateFile": F, "keyFile": K}]}`` on a
    server, ``{"serverName": N, "certificates": [{"usage": "verify", "certificateFile": F}]}`` on a client)."""
    out: dict[str, Any] = {"network": network}
    if network == "ws":
        ws: dict[str, Any] = {"path": ws_path or "/"}
        if ws_host:
            ws["host"] = ws_host
        out["wsSettings"] = ws
    if tls is not None:
        out["security"] = "tls"
        out["tlsSettings"] = dict(tls)
    return out


def server_config(
    port: int,
    users: Iterable[str],
    *,
    log_level: str = "warning",
    stream_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess server: ``vmess`` inbound on 127.0.0.1:port -> ``freedom`` outbound.

    ``users`` are UUIDs (Xray has no alterId: every user takes the AEAD header only).
    """
    entries = [{"id": str(uuid), "email": f"u{i}", "level": 0} for i, uuid in enumerate(users)]
    if not entries:
        raise ValueError("server_config needs at least one user")
    return {
        "log": _log(log_level),
        "inbounds": [
            {
                "tag": "vmess-in",
                "listen": LOOPBACK,
                "port": int(port),
                "protocol": "vmess",
                "settings": {"users": entries},
                "streamSettings": dict(stream_settings or {"network": "tcp"}),
            }
        ],
        "outbounds": [
            {
                "tag": "direct",
                "protocol": "freedom",
                # Recent Xray blocks private destinations (127.0.0.1 included) for traffic from a vmess inbound
                # and blackholes it for 30-90 s; the tests' endpoints are all on loopback.
                "settings": {"domainStrategy": "AsIs", "finalRules": [{"action": "allow"}]},
            }
        ],
    }


def client_config(
    socks_port: int,
    server_port: int,
    uuid: str,
    *,
    security: str = "aes-128-gcm",
    authenticated_length: bool = False,
    log_level: str = "warning",
    stream_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A VMess client: ``socks`` inbound on 127.0.0.1:socks_port (no auth, UDP, relay announced as 127.0.0.1)
    -> ``vmess`` outbound to 127.0.0.1:server_port.  ``authenticated_length`` switches on Xray's
    "AuthenticatedLength" experiment (option A)."""
    user: dict[str, Any] = {"id": str(uuid), "security": security, "level": 0}
    if authenticated_length:
        user["experiments"] = "AuthenticatedLength"
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
                "settings": {"vnext": [{"address": LOOPBACK, "port": int(server_port), "users": [user]}]},
                "streamSettings": dict(stream_settings or {"network": "tcp"}),
            }
        ],
    }


def _listen_ports(config: Mapping[str, Any]) -> list[int]:
    return [int(i["port"]) for i in config.get("inbounds") or [] if isinstance(i.get("port"), int)]


# --------------------------------------------------------------------------
# process management


class XrayError(PeerError):
    """Xray failed to start (exited, e.g. status 23 on a config error, or its ports never opened)."""


class XrayProcess(PeerProcess):
    """One Xray instance in its own bootstrap interpreter (see :data:`BOOTSTRAP` and
    :class:`peer_process.PeerProcess`)."""

    error_class = XrayError
    log_name = "xray.log"
    stdin_pipe = True  # the bootstrap lives until its stdin closes

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        startup_timeout: float = 15.0,
        env: Mapping[str, str] | None = None,
        name: str = "xray",
    ) -> None:
        self.python = require_xray()
        super().__init__(config, startup_timeout=startup_timeout, env=env, name=name)

    def command(self, config_path: str) -> list[str]:
        return [self.python, "-c", BOOTSTRAP, config_path]

    def listen_ports(self, config: Mapping[str, Any]) -> list[int]:
        return _listen_ports(config)

    def base_env(self) -> dict[str, str]:
        # Unbuffered Python output keeps the bootstrap's own lines in order with Xray's in the shared log.
        return {"PYTHONUNBUFFERED": "1"}

    def start(self) -> "XrayProcess":
        super().start()
        return self

    def __enter__(self) -> "XrayProcess":
        return self.start()

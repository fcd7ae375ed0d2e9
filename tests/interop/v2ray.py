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

import atexit
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

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

LOOPBACK = "127.0.0.1"


def v2ray_available() -> bool:
    """True if :data:`V2RAY_BIN` is an executable file."""
    return os.path.isfile(V2RAY_BIN) and os.access(V2RAY_BIN, os.X_OK)


def require_v2ray() -> str:
    """Return :data:`V2RAY_BIN`, or skip the test (fail it with VMESS_REQUIRE_V2RAY=1)."""
    if v2ray_available():
        return V2RAY_BIN
    import pytest

    msg = f"v2ray binary not found at {V2RAY_BIN}; install Debian's v2ray package"
    if os.environ.get("VMESS_REQUIRE_V2RAY") == "1":
        pytest.fail(msg + " (VMESS_REQUIRE_V2RAY=1)", pytrace=False)
    pytest.skip(msg)
    raise AssertionError("unreachable")  # pragma: no cover


def free_port(kind: str = "tcp") -> int:
    """An OS-chosen free port on 127.0.0.1 (bind to port 0, then close)."""
    if kind == "tcp":
        stype = socket.SOCK_STREAM
    elif kind == "udp":
        stype = socket.SOCK_DGRAM
    else:
        raise ValueError(f"kind must be 'tcp' or 'udp', not {kind!r}")
    with socket.socket(socket.AF_INET, stype) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


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
# process management


class V2RayError(RuntimeError):
    """v2ray failed to start (exited, or its ports never opened)."""


_live: set["V2RayProcess"] = set()
_live_lock = threading.Lock()


def _stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        try:
            proc.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_all)


class V2RayProcess:
    """One v2ray process running ``config``.

    Use as a context manager (``with V2RayProcess(cfg) as v: ...``) or call
    :meth:`start` / :meth:`stop`.  :meth:`start` returns once every TCP
    inbound port accepts connections, or raises :class:`V2RayError` with the
    log tail.  :meth:`stop` is idempotent, always reaps the process and
    removes the temp directory (config + log); the log stays readable via
    :meth:`log_tail` / :attr:`log_text` afterwards.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        name: str = "v2ray",
    ) -> None:
        self.config: dict[str, Any] = json.loads(json.dumps(config))  # deep copy
        self.binary = binary or V2RAY_BIN
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.name = name
        self.tcp_ports: list[int] = _tcp_inbound_ports(self.config)
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._log_path: str | None = None
        self._log_file: Any = None
        self._final_log: str | None = None
        self.returncode: int | None = None  # set by stop()

    # -- lifecycle -----------------------------------------------------

    def start(self) -> "V2RayProcess":
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        # Readiness is "the port accepts": a port someone else already
        # listens on would look ready at once, so refuse it up front.
        busy = [p for p in self.tcp_ports if _accepts(p)]
        if busy:
            raise V2RayError(f"{self.name}: TCP port(s) {busy} on {LOOPBACK} already in use")
        self._final_log = None
        self._tmpdir = tempfile.mkdtemp(prefix=f"vmess-{self.name}-")
        config_path = os.path.join(self._tmpdir, "config.json")
        self._log_path = os.path.join(self._tmpdir, "v2ray.log")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(self.config, f, indent=2)
        self._log_file = open(self._log_path, "wb")
        env = dict(os.environ)
        env.update(V2RAY_ENV)
        env.update(self.extra_env)
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-config", config_path],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmpdir,
                start_new_session=True,  # no terminal signals from the test run
            )
        except BaseException:
            self._cleanup_files()
            raise
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.tcp_ports)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise V2RayError(
                    f"{self.name} exited with status {rc} during startup "
                    f"(config ports {self.tcp_ports});\n--- log tail ---\n{self.log_tail()}"
                )
            pending = [p for p in pending if not _accepts(p)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise V2RayError(
                    f"{self.name} did not open TCP port(s) {pending} within "
                    f"{self.startup_timeout:.1f}s;\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                proc.wait()  # always reap
            finally:
                self.returncode = proc.returncode
                with _live_lock:
                    _live.discard(self)
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._log_file is not None:
            try:
                self._log_file.close()
            finally:
                self._log_file = None
        if self._log_path is not None:
            self._final_log = self._read_log()
            self._log_path = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "V2RayProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; the atexit hook covers the rest
        try:
            if self.proc is not None:
                self.stop()
        except Exception:
            pass

    # -- inspection ------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def port(self) -> int:
        """The first inbound's port."""
        return int(self.config["inbounds"][0]["port"])

    def _read_log(self) -> str:
        if self._log_path is None:
            return self._final_log or ""
        if self._log_file is not None:
            try:
                self._log_file.flush()
            except (OSError, ValueError):
                pass
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def log_text(self) -> str:
        """The whole log (stdout + stderr) so far."""
        return self._read_log()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self._read_log().splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<V2RayProcess {self.name} pid={self.pid} ports={self.tcp_ports} {state}>"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False

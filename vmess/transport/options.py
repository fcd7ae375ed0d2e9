"""Server transport options from the command line and the config file: ``--cert``/``--key``, ``--ws-path``/``--ws-host``.

Config file keys (JSON), next to ``listen`` and ``users``::

    "tls": {"cert": "server.crt", "key": "server.key"}            (V2Ray's certificateFile/keyFile also accepted)
    "ws":  {"path": "/ray", "host": "cdn.example.net", "maxEarlyData": 8192}

Command-line options win over the file. Relative file names in the config file are relative to the file itself.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError
from .tls import server_context
from .websocket import DEFAULT_SERVER_EARLY_DATA, WebSocketServerSettings

__all__ = ["server_transport_options", "describe_server_transport"]


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(name, type(value).__name__, "expected an object")
    return value


def _text(section: Mapping[str, Any], *keys: str, where: str) -> Optional[str]:
    for key in keys:
        value = section.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}", value, "expected a string")
        return value
    return None


def server_transport_options(
    *,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    ws_path: Optional[str] = None,
    ws_host: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    base_dir: str = ".",
) -> Dict[str, Any]:
    """Keyword arguments for ``start_server`` (``ssl=``, ``websocket=``) from options and the config mapping.

    A certificate without a key (or the reverse) is an error unless the certificate file also holds the key.
    """
    config = config or {}
    tls_cfg = _section(config, "tls")
    ws_cfg = _section(config, "ws")
    out: Dict[str, Any] = {}

    def from_file(path: Optional[str]) -> Optional[str]:
        return os.path.join(base_dir, path) if path and not os.path.isabs(path) else path

    cert_file = cert or from_file(_text(tls_cfg, "cert", "certificateFile", where="tls"))
    key_file = key or from_file(_text(tls_cfg, "key", "keyFile", where="tls"))
    if key_file and not cert_file:
        raise ConfigError("key", key_file, "a key needs a certificate (--cert)")
    if cert_file:
        out["ssl"] = server_context(cert_file, key_file)

    path = ws_path or _text(ws_cfg, "path", where="ws")
    host = ws_host or _text(ws_cfg, "host", where="ws")
    if ws_cfg and not path:
        path = "/"
    if host and not path:
        raise ConfigError("ws-host", host, "needs a WebSocket path (--ws-path)")
    if path:
        early = ws_cfg.get("maxEarlyData", DEFAULT_SERVER_EARLY_DATA)
        if isinstance(early, bool) or not isinstance(early, int):
            raise ConfigError("ws.maxEarlyData", early, "expected a number of bytes")
        out["websocket"] = WebSocketServerSettings(path=path, host=host or "", max_early_data=early)
    return out


def describe_server_transport(options: Mapping[str, Any]) -> str:
    """``tcp``, ``tls``, ``ws path=/x`` or ``ws+tls path=/x`` for a log line."""
    ws = options.get("websocket")
    tls = options.get("ssl") is not None
    if ws is None:
        return "tls" if tls else "tcp"
    return f"{'ws+tls' if tls else 'ws'} path={ws.path}"

"""vmess: V2Ray's VMess proxy protocol for Python (a Cython core with a pure-Python twin).

The names most users need are re-exported here; the layers live in their own modules:
``vmess.protocol`` (sans-IO), ``vmess.handler`` (the ProxyHandler surface), ``vmess.aio`` (asyncio streams).
"""

from __future__ import annotations

from ._core import BACKEND
from .aio import open_connection, open_udp
from .aio_server import VmessServer, start_server
from .config import VmessConfig, VmessEncryption, VmessSecurityLevel
from .errors import (
    AddressError,
    AuthenticationError,
    ConfigError,
    ProtocolError,
    ReplayError,
    UnsupportedError,
    VmessError,
)
from .handler import VmessProxyImpl, VmessProxyManager
from .links import VmessLink, parse_link, parse_subscription

__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "AddressError",
    "AuthenticationError",
    "ConfigError",
    "ProtocolError",
    "ReplayError",
    "UnsupportedError",
    "VmessConfig",
    "VmessEncryption",
    "VmessError",
    "VmessLink",
    "VmessProxyImpl",
    "VmessProxyManager",
    "VmessSecurityLevel",
    "VmessServer",
    "open_connection",
    "open_udp",
    "parse_link",
    "parse_subscription",
    "start_server",
]

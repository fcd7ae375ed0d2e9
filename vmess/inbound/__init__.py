"""Local proxy inbound: one port that speaks SOCKS5 (CONNECT, UDP ASSOCIATE) and HTTP proxy, carried over VMess.

``start_local_proxy(link)`` is what ``vmess client LINK --listen HOST:PORT`` runs; the codecs in
:mod:`vmess.inbound.socks5` and :mod:`vmess.inbound.http` are sans-IO and usable on their own.
"""

from __future__ import annotations

from .errors import (
    HttpHeaderTooLargeError,
    HttpMalformedError,
    HttpProxyError,
    HttpUnsupportedError,
    InboundError,
    Socks5AddressTypeError,
    Socks5CommandError,
    Socks5Error,
    Socks5FormatError,
    Socks5VersionError,
)
from .server import LocalProxy, ProxyStats, start_local_proxy

__all__ = [
    "LocalProxy",
    "ProxyStats",
    "start_local_proxy",
    "InboundError",
    "Socks5Error",
    "Socks5VersionError",
    "Socks5FormatError",
    "Socks5CommandError",
    "Socks5AddressTypeError",
    "HttpProxyError",
    "HttpHeaderTooLargeError",
    "HttpMalformedError",
    "HttpUnsupportedError",
]

"""Errors of the local proxy inbound: malformed or refused SOCKS5 and HTTP proxy requests from local clients.

They carry what the server needs to answer the client (a SOCKS5 reply code, an HTTP status) so the codecs stay
free of I/O while the server still sends the right refusal.
"""

from __future__ import annotations

from ..errors import VmessError

__all__ = [
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


class InboundError(VmessError):
    """A local client sent a request the inbound cannot serve."""


class Socks5Error(InboundError):
    """A SOCKS5 message is malformed or cannot be served; ``reply`` is the RFC 1928 code to answer with, if any."""

    reply: int | None = 0x01


class Socks5VersionError(Socks5Error):
    """The version byte is not 5 (or not 1 in an RFC 1929 sub-negotiation); no reply can be sent."""

    reply = None


class Socks5FormatError(Socks5Error):
    """A field is out of range (no methods, empty or non-UTF-8 domain name, non-zero reserved byte ...)."""


class Socks5CommandError(Socks5Error):
    """The command is BIND or unknown: answered with 0x07 (command not supported)."""

    reply = 0x07

    def __init__(self, command: int) -> None:
        self.command = command
        super().__init__(f"SOCKS5 command {command} is not supported")


class Socks5AddressTypeError(Socks5Error):
    """The ATYP byte is not 1, 3 or 4: answered with 0x08 (address type not supported)."""

    reply = 0x08

    def __init__(self, atyp: int) -> None:
        self.atyp = atyp
        super().__init__(f"SOCKS5 address type {atyp} is not supported")


class HttpProxyError(InboundError):
    """An HTTP proxy request is refused; ``status`` is the response status to send."""

    status = 400


class HttpHeaderTooLargeError(HttpProxyError):
    """The request head (request line and headers) exceeds the size limit."""

    status = 431


class HttpMalformedError(HttpProxyError):
    """The request line, a header or the target does not parse."""

    status = 400


class HttpUnsupportedError(HttpProxyError):
    """A well-formed request this proxy does not serve (https:// absolute-URI, HTTP/2 preface ...)."""

    status = 501

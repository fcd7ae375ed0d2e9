"""A small sans-IO SOCKS5 codec: RFC 1928 (greeting, requests, replies, UDP header) and RFC 1929 (user/password).

Written here rather than taken from ``socksio``: the server side needs only five message shapes, each a few lines
of slicing, and doing it ourselves keeps the inbound dependency-free, lets the parsers work on the caller's buffer
without copies or per-message state objects, and returns typed errors that carry the reply code to send. The
parsers take the bytes received so far and return ``(message, bytes consumed)``, or ``None`` while the message is
incomplete, so bytes a client pipelines after its request are left for the relay. The builders return ``bytes``.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Union

from .errors import (
    Socks5AddressTypeError,
    Socks5CommandError,
    Socks5Error,
    Socks5FormatError,
    Socks5VersionError,
)

__all__ = [
    "VERSION",
    "AUTH_VERSION",
    "Method",
    "Command",
    "Reply",
    "AddressType",
    "Greeting",
    "AuthRequest",
    "Request",
    "UdpDatagram",
    "Socks5Error",
    "Socks5VersionError",
    "Socks5FormatError",
    "Socks5CommandError",
    "Socks5AddressTypeError",
    "parse_greeting",
    "parse_auth_request",
    "parse_request",
    "parse_udp_datagram",
    "select_method",
    "build_greeting",
    "build_method_selection",
    "build_auth_request",
    "build_auth_reply",
    "build_request",
    "build_reply",
    "build_udp_datagram",
    "encode_address",
]

VERSION = 5
AUTH_VERSION = 1
"""Version byte of the RFC 1929 sub-negotiation."""

Buffer = Union[bytes, bytearray, memoryview]
_PORT = struct.Struct("!H")


class Method(enum.IntEnum):
    """Authentication methods offered in the greeting (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    """Request commands (RFC 1928 section 4)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class Reply(enum.IntEnum):
    """Reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AddressType(enum.IntEnum):
    """ATYP values (note: IPv6 is 4 here, 3 in VMess)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@dataclass(frozen=True, slots=True)
class Greeting:
    """The client's version identifier / method selection message."""

    methods: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An RFC 1929 username/password request (raw bytes: RFC 1929 does not name an encoding)."""

    username: bytes
    password: bytes

    def __repr__(self) -> str:
        """Never show the password."""
        return f"AuthRequest(username={self.username!r}, password=<{len(self.password)} bytes>)"


@dataclass(frozen=True, slots=True)
class Request:
    """A CONNECT or UDP ASSOCIATE request; ``host`` is an IP literal or a domain name."""

    command: Command
    host: str
    port: int
    atyp: AddressType


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One UDP relay packet: fragment number, the far end's address, and the payload."""

    frag: int
    host: str
    port: int
    atyp: AddressType
    data: bytes


# ---------------------------------------------------------------------------------------------------- addresses


def _parse_address(buf: Buffer, pos: int) -> tuple[str, int, AddressType, int] | None:
    """Parse ATYP, address and port at ``pos``: (host, port, atyp, end) or None if incomplete."""
    if len(buf) <= pos:
        return None
    atyp = buf[pos]
    pos += 1
    if atyp == AddressType.IPV4:
        end = pos + 4
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[pos:end])))
    elif atyp == AddressType.IPV6:
        end = pos + 16
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[pos:end])))
    elif atyp == AddressType.DOMAIN:
        if len(buf) <= pos:
            return None
        n = buf[pos]
        end = pos + 1 + n
        if len(buf) < end + 2:
            return None
        if n == 0:
            raise Socks5FormatError("empty domain name")
        raw = bytes(buf[pos + 1 : end])
        if b"\0" in raw:
            raise Socks5FormatError("domain name contains a NUL byte")
        try:
            host = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Socks5FormatError("domain name is not valid UTF-8") from None
    else:
        raise Socks5AddressTypeError(atyp)
    (port,) = _PORT.unpack_from(buf, end)
    return host, port, AddressType(atyp), end + 2


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port for ``host`` (IPv4/IPv6 literal, brackets allowed, else a domain name)."""
    if not 0 <= port <= 0xFFFF:
        raise Socks5FormatError(f"port {port} is out of range")
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        raw = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 0 < len(raw) <= 255:
            raise Socks5FormatError("domain name must be 1..255 bytes") from None
        return bytes((AddressType.DOMAIN, len(raw))) + raw + _PORT.pack(port)
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes((atyp,)) + ip.packed + _PORT.pack(port)


# ---------------------------------------------------------------------------------------------------- parsers


def parse_greeting(buf: Buffer) -> tuple[Greeting, int] | None:
    """Parse ``VER NMETHODS METHODS...``."""
    if not buf:
        return None
    if buf[0] != VERSION:
        raise Socks5VersionError(f"SOCKS version {buf[0]} is not 5")
    if len(buf) < 2:
        return None
    n = buf[1]
    if n == 0:
        raise Socks5FormatError("greeting offers no authentication methods")
    if len(buf) < 2 + n:
        return None
    return Greeting(tuple(buf[2 : 2 + n])), 2 + n


def parse_auth_request(buf: Buffer) -> tuple[AuthRequest, int] | None:
    """Parse the RFC 1929 ``VER ULEN UNAME PLEN PASSWD`` (VER must be 1)."""
    if not buf:
        return None
    if buf[0] != AUTH_VERSION:
        raise Socks5VersionError(f"username/password sub-negotiation version {buf[0]} is not 1")
    if len(buf) < 2:
        return None
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return AuthRequest(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])), end


def parse_request(buf: Buffer) -> tuple[Request, int] | None:
    """Parse ``VER CMD RSV ATYP DST.ADDR DST.PORT``; BIND and unknown commands raise Socks5CommandError."""
    if not buf:
        return None
    if buf[0] != VERSION:
        raise Socks5VersionError(f"SOCKS version {buf[0]} is not 5")
    if len(buf) < 4:
        return None
    cmd = buf[1]
    if cmd not in (Command.CONNECT, Command.UDP_ASSOCIATE):
        raise Socks5CommandError(cmd)
    if buf[2] != 0:
        raise Socks5FormatError("reserved byte of the request is not zero")
    parsed = _parse_address(buf, 3)
    if parsed is None:
        return None
    host, port, atyp, end = parsed
    return Request(Command(cmd), host, port, atyp), end


def parse_udp_datagram(packet: Buffer) -> UdpDatagram:
    """Parse one whole UDP relay packet ``RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA``.

    The caller drops packets with ``frag != 0`` (fragmentation is optional in RFC 1928 and we do not reassemble).
    """
    if len(packet) < 4:
        raise Socks5FormatError("UDP packet shorter than its header")
    if packet[0] != 0 or packet[1] != 0:
        raise Socks5FormatError("reserved bytes of the UDP header are not zero")
    parsed = _parse_address(packet, 3)
    if parsed is None:
        raise Socks5FormatError("UDP packet ends inside its address")
    host, port, atyp, end = parsed
    return UdpDatagram(packet[2], host, port, atyp, bytes(packet[end:]))


# ---------------------------------------------------------------------------------------------------- server side


def select_method(greeting: Greeting, *, auth_required: bool) -> Method:
    """Choose the method to answer with: user/password when required, else no-auth (user/password if only that)."""
    offered = greeting.methods
    if auth_required:
        return Method.USERNAME_PASSWORD if Method.USERNAME_PASSWORD in offered else Method.NO_ACCEPTABLE
    if Method.NO_AUTH in offered:
        return Method.NO_AUTH
    if Method.USERNAME_PASSWORD in offered:
        return Method.USERNAME_PASSWORD  # any credentials will do
    return Method.NO_ACCEPTABLE


def build_method_selection(method: int) -> bytes:
    """``VER METHOD``."""
    return bytes((VERSION, method))


def build_auth_reply(success: bool) -> bytes:
    """RFC 1929 ``VER STATUS`` (0 = success)."""
    return bytes((AUTH_VERSION, 0 if success else 1))


def build_reply(reply: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """``VER REP RSV ATYP BND.ADDR BND.PORT``."""
    return bytes((VERSION, reply, 0)) + encode_address(host, port)


def build_udp_datagram(host: str, port: int, data: Buffer) -> bytes:
    """A UDP relay packet (FRAG 0) carrying ``data`` from or to ``host:port``."""
    return b"\x00\x00\x00" + encode_address(host, port) + bytes(data)


# ---------------------------------------------------------------------------------------------------- client side


def build_greeting(methods: tuple[int, ...] = (Method.NO_AUTH,)) -> bytes:
    """``VER NMETHODS METHODS...``."""
    if not 0 < len(methods) <= 255:
        raise Socks5FormatError("a greeting offers 1..255 methods")
    return bytes((VERSION, len(methods), *methods))


def build_auth_request(username: bytes | str, password: bytes | str) -> bytes:
    """RFC 1929 ``VER ULEN UNAME PLEN PASSWD``; str is encoded as UTF-8."""
    user = username.encode("utf-8") if isinstance(username, str) else username
    pw = password.encode("utf-8") if isinstance(password, str) else password
    if len(user) > 255 or len(pw) > 255:
        raise Socks5FormatError("username and password are at most 255 bytes each")
    return bytes((AUTH_VERSION, len(user))) + user + bytes((len(pw),)) + pw


def build_request(command: int, host: str, port: int) -> bytes:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT``."""
    return bytes((VERSION, command, 0)) + encode_address(host, port)

"""Destination addresses in VMess order: BE16 port, then ATYP (1 IPv4, 2 domain, 3 IPv6) and the address."""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import Tuple

from ..constants import AddressType
from ..errors import AddressError, ProtocolError

__all__ = ["encode_address", "decode_address", "normalize_host"]

_PORT = struct.Struct(">H")


def normalize_host(host: str) -> Tuple[AddressType, bytes]:
    """Classify ``host`` as IPv4, IPv6 or domain and return its ATYP and wire bytes (without length prefix)."""
    if not isinstance(host, str) or not host:
        raise AddressError(f"host must be a non-empty string, got {host!r}")
    return _normalize(host)


@functools.lru_cache(maxsize=1024)
def _normalize(host: str) -> Tuple[AddressType, bytes]:
    """normalize_host for a non-empty string, cached: a proxy asks for the same few hosts again and again, and
    parsing an IP literal costs microseconds per connection. Errors are raised (and so not cached)."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        if ip.version == 4:
            return AddressType.IPV4, ip.packed
        return AddressType.IPV6, ip.packed
    try:
        raw = host.encode("idna") if not host.isascii() else host.encode("ascii")
    except UnicodeError as exc:
        raise AddressError(f"host {host!r} is not a valid domain name: {exc}") from None
    if b"\0" in raw:
        raise AddressError("host contains a NUL byte")
    if len(raw) > 255:
        raise AddressError(f"domain name is {len(raw)} bytes long; at most 255 are allowed")
    return AddressType.DOMAIN, raw


def encode_address(host: str, port: int) -> bytes:
    """Port and address as they appear in the command section (spec 2.3)."""
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise AddressError(f"port must be an integer in 0..65535, got {port!r}")
    atyp, raw = normalize_host(host)
    if atyp == AddressType.DOMAIN:
        return _PORT.pack(port) + bytes((atyp, len(raw))) + raw
    return _PORT.pack(port) + bytes((atyp,)) + raw


def decode_address(data: bytes, offset: int) -> Tuple[str, int, int]:
    """Parse port + address at ``offset``; return (host, port, offset after the address).

    Raises ProtocolError for an unknown ATYP or a truncated address.
    """
    if len(data) < offset + 3:
        raise ProtocolError("truncated address")
    port = _PORT.unpack_from(data, offset)[0]
    atyp = data[offset + 2]
    pos = offset + 3
    if atyp == AddressType.IPV4:
        end = pos + 4
        if len(data) < end:
            raise ProtocolError("truncated IPv4 address")
        return socket.inet_ntoa(bytes(data[pos:end])), port, end  # = str(IPv4Address(...)), a few times faster
    if atyp == AddressType.IPV6:
        end = pos + 16
        if len(data) < end:
            raise ProtocolError("truncated IPv6 address")
        return str(ipaddress.IPv6Address(bytes(data[pos:end]))), port, end
    if atyp == AddressType.DOMAIN:
        if len(data) < pos + 1:
            raise ProtocolError("truncated domain length")
        n = data[pos]
        end = pos + 1 + n
        if n == 0 or len(data) < end:
            raise ProtocolError("empty or truncated domain name")
        raw = bytes(data[pos + 1 : end])
        if b"\0" in raw:
            raise ProtocolError("domain name contains a NUL byte")
        try:
            return raw.decode("ascii"), port, end
        except UnicodeDecodeError:
            raise ProtocolError("domain name is not ASCII") from None
    raise ProtocolError(f"unknown address type {atyp}")

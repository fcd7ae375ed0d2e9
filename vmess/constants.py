"""VMess wire constants (spec sections 2.3, 4.1, 5.1): security codes, option bits, commands, address types."""

from __future__ import annotations

import enum

__all__ = ["Security", "Option", "Command", "AddressType", "MAX_WRITE_CHUNK", "MAX_READ_SIZE"]


class Security(enum.IntEnum):
    """The security code in the low nibble of command-section byte 35 (V2Ray's ``SecurityType``)."""

    UNKNOWN = 0
    LEGACY = 1  # AES-128-CFB body with FNV-1a per chunk
    AUTO = 2  # never on the wire: resolved by the client
    AES128_GCM = 3
    CHACHA20_POLY1305 = 4
    NONE = 5
    ZERO = 6  # never on the wire: sent as NONE with no option bits


class Option(enum.IntFlag):
    """Option bits of command-section byte 34."""

    CHUNK_STREAM = 0x01  # S
    CONNECTION_REUSE = 0x02  # R, obsolete
    CHUNK_MASKING = 0x04  # M
    GLOBAL_PADDING = 0x08  # P
    AUTHENTICATED_LENGTH = 0x10  # A


class Command(enum.IntEnum):
    """The request command (byte 37)."""

    TCP = 1
    UDP = 2
    MUX = 3


class AddressType(enum.IntEnum):
    """VMess address types (note: IPv6 is 3, not SOCKS's 4)."""

    IPV4 = 1
    DOMAIN = 2
    IPV6 = 3


MAX_WRITE_CHUNK = 16384
"""Largest whole chunk (length field + sealed payload + padding) that our writers emit."""

MAX_READ_SIZE = 65535
"""Largest 16-bit size field a reader accepts (the whole chunk is then 2 + 65535 bytes)."""

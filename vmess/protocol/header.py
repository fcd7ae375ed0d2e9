"""Plaintext request and response headers (spec 2.3 and 6) and their sealed forms for both header formats.

The command section is the same plaintext for legacy and AEAD headers; only its envelope differs. Sealing and
opening use the core (``vmess._core``), so the compiled backend does the cryptography-heavy part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional, Union

from .. import _core
from ..constants import Command, Security
from ..errors import ProtocolError
from .address import decode_address, encode_address

__all__ = [
    "RequestHeader",
    "ResponseHeader",
    "SECTION_FIXED_LEN",
    "seal_request",
]

SECTION_FIXED_LEN = 38
"""Bytes of the command section before the port (version, IV, key, V, options, P|Sec, reserved, command)."""

_BE32 = struct.Struct(">I")
_KNOWN_SECURITY = frozenset((Security.LEGACY, Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.NONE))


@dataclass(frozen=True)
class RequestHeader:
    """The decoded command section of a request (spec 2.3). ``host``/``port`` are empty/0 for Mux.

    ``req_iv`` and ``req_key`` are the session's body keys: they are left out of the repr (and so out of logs).
    """

    req_iv: bytes = field(repr=False)
    req_key: bytes = field(repr=False)
    resp_v: int
    options: int
    security: int
    command: int
    host: str
    port: int
    padding: bytes = b""

    def encode(self) -> bytes:
        """The plaintext command section, FNV-1a checksum included."""
        if len(self.req_iv) != 16 or len(self.req_key) != 16:
            raise ValueError("req_iv and req_key must be 16 bytes")
        if len(self.padding) > 15:
            raise ValueError("padding is at most 15 bytes")
        head = bytearray(b"\x01")
        head += self.req_iv
        head += self.req_key
        head += bytes((self.resp_v & 0xFF, self.options & 0xFF, (len(self.padding) << 4) | (self.security & 0x0F), 0))
        head.append(self.command & 0xFF)
        if self.command != Command.MUX:
            head += encode_address(self.host, self.port)
        head += self.padding
        head += _BE32.pack(_core.fnv1a32(head))
        return bytes(head)

    @classmethod
    def decode(cls, section: bytes) -> "RequestHeader":
        """Parse and verify a complete plaintext command section; ProtocolError if it is malformed."""
        need = cls.section_length(section)
        if need is None or len(section) < need:
            raise ProtocolError("truncated command section")
        if len(section) != need:
            raise ProtocolError(f"command section is {len(section)} bytes, expected {need}")
        body = section[:-4]
        if _core.fnv1a32(body) != _BE32.unpack_from(section, need - 4)[0]:
            raise ProtocolError("command section checksum (FNV-1a) mismatch")
        security = section[35] & 0x0F
        if security not in _KNOWN_SECURITY:
            raise ProtocolError(f"unsupported security code {security}")
        command = section[37]
        if command == Command.MUX:
            host, port = "", 0
        elif command in (Command.TCP, Command.UDP):
            host, port, _ = decode_address(section, SECTION_FIXED_LEN)
        else:
            raise ProtocolError(f"unsupported command {command}")
        plen = section[35] >> 4
        return cls(
            req_iv=bytes(section[1:17]),
            req_key=bytes(section[17:33]),
            resp_v=section[33],
            options=section[34],
            security=security,
            command=command,
            host=host,
            port=port,
            padding=bytes(section[need - 4 - plen : need - 4]),
        )

    @staticmethod
    def section_length(prefix: Union[bytes, bytearray]) -> Optional[int]:
        """Total section length implied by ``prefix``, or None if more bytes are needed to know it.

        Used by a legacy-header reader, whose section has no length field.
        """
        if len(prefix) < SECTION_FIXED_LEN:
            return None
        plen = prefix[35] >> 4
        command = prefix[37]
        if command == Command.MUX:
            return SECTION_FIXED_LEN + plen + 4
        if len(prefix) < SECTION_FIXED_LEN + 3:
            return None
        atyp = prefix[SECTION_FIXED_LEN + 2]
        base = SECTION_FIXED_LEN + 3
        if atyp == 1:
            alen = 4
        elif atyp == 3:
            alen = 16
        elif atyp == 2:
            if len(prefix) < base + 1:
                return None
            alen = 1 + prefix[base]
        else:
            raise ProtocolError(f"unknown address type {atyp}")
        return base + alen + plen + 4


@dataclass(frozen=True)
class ResponseHeader:
    """The response header plaintext (spec 6): V echo, options (ignored by clients), command and its data."""

    resp_v: int
    options: int = 0
    command: int = 0
    command_data: bytes = b""

    def encode(self) -> bytes:
        if len(self.command_data) > 255:
            raise ValueError("response command data is at most 255 bytes")
        return bytes((self.resp_v & 0xFF, self.options & 0xFF, self.command & 0xFF, len(self.command_data))) + bytes(
            self.command_data
        )

    @classmethod
    def decode(cls, data: bytes) -> "ResponseHeader":
        if len(data) < 4 or len(data) != 4 + data[3]:
            raise ProtocolError("malformed response header")
        return cls(resp_v=data[0], options=data[1], command=data[2], command_data=bytes(data[4:]))


def seal_request(
    header: RequestHeader,
    user: "_core.UserKeys",
    *,
    ts: int,
    legacy_id: Optional[bytes] = None,
    rand4: bytes = b"",
    conn_nonce: bytes = b"",
) -> bytes:
    """Seal a request header: AEAD (spec 3.3) unless ``legacy_id`` (an alter ID's bytes) selects the MD5 form."""
    section = header.encode()
    if legacy_id is not None:
        return _core.seal_legacy_header(user, legacy_id, ts, section)
    auth_id = _core.create_auth_id(user, ts, rand4)
    return _core.seal_aead_header(user, auth_id, conn_nonce, section)

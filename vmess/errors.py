"""Exception family of the vmess package.

Every failure that the library raises on purpose is a subclass of :class:`VmessError`, so callers can
catch one type. The messages name what was wrong but never contain secrets (user IDs, keys).
"""

from __future__ import annotations

__all__ = [
    "VmessError",
    "ConfigError",
    "ProtocolError",
    "AuthenticationError",
    "ReplayError",
    "IntegrityError",
    "ChunkTooLargeError",
    "TruncatedError",
    "UnsupportedError",
    "ConnectionStateError",
    "AddressError",
    "TransportError",
]


class VmessError(Exception):
    """Base class of every error raised by this package."""


class ConfigError(VmessError, ValueError):
    """A configuration value or share link is invalid; the message names the field and the value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {value!r})")


class ProtocolError(VmessError):
    """The peer sent bytes that do not follow the VMess wire format."""


class AuthenticationError(ProtocolError):
    """An authentication check failed: unknown user, bad AuthID, bad header tag, or clock skew."""


class ReplayError(AuthenticationError):
    """A request reused an AuthID or a (key, IV) pair that was seen recently."""


class IntegrityError(ProtocolError):
    """A body chunk failed its integrity check (AEAD tag or FNV-1a checksum)."""


class ChunkTooLargeError(ProtocolError):
    """A chunk or datagram is larger than the framing allows."""


class TruncatedError(ProtocolError):
    """Input ended in the middle of a header or chunk."""


class UnsupportedError(VmessError):
    """A valid feature that this library does not implement (a transport, a command, a security code)."""


class ConnectionStateError(VmessError):
    """An operation was attempted in a connection state that does not allow it."""


class AddressError(VmessError, ValueError):
    """A destination address cannot be encoded (bad port, domain too long, NUL byte ...)."""


class TransportError(VmessError, ConnectionError):
    """The transport under VMess failed: TLS verification or handshake, or the WebSocket upgrade.

    Also a ``ConnectionError`` (an ``OSError``), like the ``ssl`` errors it replaces, so connection-level handlers
    catch it; the message says what failed and, for certificates, how to allow an insecure connection explicitly.
    """

"""TLS for VMess transports (stdlib :mod:`ssl`): client and server contexts, and clear errors.

The client verifies the server certificate by default (system trust store, or ``ca_file``) against the SNI name;
only an explicit ``insecure=True`` (``allowInsecure=1`` / ``insecure=1`` in a share link) turns that off. A failed
verification becomes a :class:`~vmess.errors.TransportError` whose message says so and names the switch, never a
bare ``ssl`` traceback. The server side loads a certificate chain and key (``--cert`` / ``--key``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

from ..errors import ConfigError, TransportError

__all__ = [
    "TlsSettings",
    "client_context",
    "server_context",
    "translate_ssl_error",
    "WEBSOCKET_ALPN",
]

WEBSOCKET_ALPN: Tuple[str, ...] = ("http/1.1",)
"""ALPN offered for WebSocket over TLS when the link names none (V2Ray and Xray do the same: WS needs HTTP/1.1)."""

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def is_true(value: Optional[str]) -> bool:
    """Whether a share-link flag (``"1"``, ``"true"`` ...) is set."""
    return value is not None and value.strip().lower() in _TRUE_WORDS


def split_list(value: Optional[str]) -> Tuple[str, ...]:
    """A comma-separated share-link value as a tuple of non-empty, stripped items."""
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True)
class TlsSettings:
    """Client-side TLS: SNI name, ALPN list, verification switch and optional extra trust anchors.

    ``server_name`` empty means "use the address we connect to" (see :meth:`server_name_for`). ``fingerprint`` is
    the link's uTLS name (``fp``): kept for display, but the stdlib cannot imitate a browser's ClientHello, so it is
    not applied. ``ca_file`` / ``ca_data`` add trust anchors (PEM) on top of the system store.
    """

    server_name: str = ""
    alpn: Tuple[str, ...] = ()
    insecure: bool = False
    fingerprint: str = ""
    ca_file: Optional[str] = None
    ca_data: Optional[str] = field(default=None, repr=False)

    def server_name_for(self, address: str) -> str:
        """The name sent as SNI and checked against the certificate: ``server_name``, else the address."""
        return self.server_name or address.strip("[]")


def client_context(settings: TlsSettings, *, websocket: bool = False) -> ssl.SSLContext:
    """An ``SSLContext`` for a client connection: verification on unless ``settings.insecure``.

    ALPN is the link's list; without one, WebSocket offers ``http/1.1`` (an ``h2`` answer would break the upgrade)
    and plain TLS offers nothing.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file, cadata=settings.ca_data)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("ca_file", settings.ca_file, f"cannot load trust anchors: {exc}") from None
    if settings.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    alpn = settings.alpn or (WEBSOCKET_ALPN if websocket else ())
    if alpn:
        try:
            ctx.set_alpn_protocols(list(alpn))
        except (ValueError, TypeError) as exc:
            raise ConfigError("alpn", ",".join(alpn), f"invalid ALPN list: {exc}") from None
    return ctx


def server_context(cert_file: str, key_file: Optional[str] = None, *, alpn: Sequence[str] = WEBSOCKET_ALPN) -> ssl.SSLContext:
    """An ``SSLContext`` for the server from a PEM certificate chain and key (ConfigError naming the bad file).

    ALPN: ``http/1.1`` is selected when a client offers it (V2Ray clients offer ``h2, http/1.1`` by default);
    clients that offer nothing are accepted too.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError("cert" if exc.filename in (None, cert_file) else "key", exc.filename, "file not found") from None
    except OSError as exc:  # ssl.SSLError is an OSError too: a bad PEM, or a key that does not match
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError("cert", cert_file, f"cannot load certificate/key: {reason}") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def translate_ssl_error(exc: BaseException, server_name: str) -> Optional[TransportError]:
    """The :class:`TransportError` for an ``ssl`` failure while connecting to ``server_name`` (None if not TLS)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return TransportError(
            f"TLS: the certificate of {server_name!r} could not be verified ({reason}); "
            "if you trust this server, allow an insecure connection explicitly "
            "(allowInsecure=1 in the share link, or TlsSettings(insecure=True))"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return TransportError(f"TLS handshake with {server_name!r} failed: {reason}")
    return None

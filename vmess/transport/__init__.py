"""Transports under VMess: plain TCP, TLS, WebSocket and WebSocket over TLS, for the client and the server.

:class:`TransportSettings` says which one a connection uses; it is built from a share link
(:meth:`TransportSettings.from_link`: v2rayN ``net``/``tls``/``host``/``path``/``sni``/``alpn``/``allowInsecure``,
or the URL form's ``type``/``security``/...) or directly. :func:`open_transport` connects like
``loop.create_connection`` and returns ``(transport, protocol)``; the protocol sees a TCP-like transport whatever
is underneath (:mod:`vmess.transport.stream`). On the server, :func:`wrap_server_factory` wraps the protocol factory
of ``loop.create_server`` the same way.

Transports that are valid but not implemented here (gRPC, mKCP, QUIC, HTTP/2, HTTP camouflage on TCP, REALITY ...)
raise :class:`~vmess.errors.UnsupportedError`, so a link's TLS or WebSocket is never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

from ..errors import ConfigError, TransportError, UnsupportedError
from .stream import PassthroughRelay, ProtocolFactory, RelayProtocol, StreamAdapter
from .tls import TlsSettings, client_context, is_true, server_context, split_list, translate_ssl_error
from .websocket import (
    EARLY_DATA_HEADER,
    WebSocketClientRelay,
    WebSocketServerRelay,
    WebSocketServerSettings,
    WebSocketSettings,
    split_early_data,
)

__all__ = [
    "TransportSettings",
    "TlsSettings",
    "WebSocketSettings",
    "WebSocketServerSettings",
    "StreamAdapter",
    "open_transport",
    "transport_for",
    "wrap_server_factory",
    "client_context",
    "server_context",
    "is_supported",
]

log = logging.getLogger("vmess.transport")

_PLAIN_NETS = frozenset({"", "tcp", "raw"})
_WS_NETS = frozenset({"ws", "websocket"})
_NO_WORDS = frozenset({"", "none"})


@dataclass(frozen=True)
class TransportSettings:
    """How to reach a VMess server: ``network`` ``"tcp"`` or ``"ws"``, optionally with ``tls``.

    ``websocket`` holds the WebSocket settings (required, and only allowed, for ``"ws"``; a default one is made
    when omitted).
    """

    network: str = "tcp"
    tls: Optional[TlsSettings] = None
    websocket: Optional[WebSocketSettings] = None

    def __post_init__(self) -> None:
        if self.network not in ("tcp", "ws"):
            raise ConfigError("network", self.network, "expected 'tcp' or 'ws'")
        if self.network == "ws" and self.websocket is None:
            object.__setattr__(self, "websocket", WebSocketSettings())
        if self.network == "tcp" and self.websocket is not None:
            raise ConfigError("websocket", "…", "WebSocket settings need network='ws'")

    @property
    def is_plain(self) -> bool:
        """Plain TCP: no TLS, no WebSocket (``loop.create_connection`` is enough)."""
        return self.network == "tcp" and self.tls is None

    @property
    def name(self) -> str:
        """``tcp``, ``tls``, ``ws`` or ``ws+tls``."""
        if self.network == "ws":
            return "ws+tls" if self.tls is not None else "ws"
        return "tls" if self.tls is not None else "tcp"

    @classmethod
    def from_link(cls, link: Any) -> "TransportSettings":
        """Settings from a parsed :class:`~vmess.links.VmessLink` (``UnsupportedError`` for what we lack).

        * network: ``net`` (``tcp``/``raw``/empty, or ``ws``); a TCP ``type`` (header) other than ``none`` is refused.
        * WebSocket: ``path`` (default ``/``; Xray's ``?ed=N`` is taken out of it as the early-data size),
          ``host`` (first of a comma list) as the ``Host`` header, ``ed`` as an explicit early-data size. An
          ``eh`` naming a header other than ``Sec-WebSocket-Protocol`` turns early data off (only that one is spoken).
        * TLS (``tls``/``security`` = ``tls``): SNI from ``sni``, else ``host``, else the server address (v2rayN's
          order); ALPN from ``alpn``; ``allowInsecure``/``insecure`` = 1/true turns verification off; ``fp`` is
          kept but has no effect.
        """
        opts = link.transport
        net = opts.get("net", "tcp").strip().lower()
        security = link.transport_security.strip().lower()
        if security and security != "tls":
            raise UnsupportedError(
                f"transport security '{security}' is not implemented (tls is); refusing to connect without it"
            )
        hosts = split_list(opts.get("host"))
        websocket: Optional[WebSocketSettings] = None
        if net in _PLAIN_NETS:
            header = opts.get("type", "").strip().lower()
            if header not in _NO_WORDS:
                raise UnsupportedError(
                    f"transport 'tcp' with header type '{header}' is not implemented; refusing to connect without it"
                )
            network = "tcp"
        elif net in _WS_NETS:
            network = "ws"
            path, ed = split_early_data(opts.get("path", "") or "/")
            if opts.get("ed", "").strip():
                try:
                    ed = int(opts["ed"].strip())
                except ValueError:
                    raise ConfigError("ed", opts["ed"], "early data size must be a number of bytes") from None
            header_name = opts.get("eh", "").strip()
            if ed and header_name and header_name.lower() != EARLY_DATA_HEADER.lower():
                log.debug("early data in header %r is not supported; sending without early data", header_name)
                ed = 0
            websocket = WebSocketSettings(path=path, host=hosts[0] if hosts else "", max_early_data=max(0, ed or 0))
        else:
            raise UnsupportedError(
                f"transport '{net}' is not implemented (tcp and ws are, with or without tls); "
                "refusing to connect without it"
            )
        tls: Optional[TlsSettings] = None
        if security == "tls":
            tls = TlsSettings(
                server_name=opts.get("sni", "").strip() or (hosts[0] if hosts else ""),
                alpn=split_list(opts.get("alpn")),
                insecure=is_true(opts.get("allowInsecure")) or is_true(opts.get("insecure")),
                fingerprint=opts.get("fp", "").strip(),
            )
        return cls(network=network, tls=tls, websocket=websocket)


def is_supported(link: Any) -> bool:
    """Whether this library can connect with the link's transport."""
    try:
        TransportSettings.from_link(link)
    except (UnsupportedError, ConfigError):
        return False
    return True


def transport_for(proxy: Any) -> Optional[TransportSettings]:
    """The non-plain transport a proxy spec asks for, or None for plain TCP.

    ``proxy`` is a share link, a ``VmessLink``, or ``((host, port), config[, TransportSettings])``.
    """
    from ..links import VmessLink, parse_link

    if isinstance(proxy, str):
        proxy = parse_link(proxy)
    settings: Optional[TransportSettings] = None
    if isinstance(proxy, VmessLink):
        settings = TransportSettings.from_link(proxy)
    elif isinstance(proxy, tuple) and len(proxy) == 3:
        if proxy[2] is not None and not isinstance(proxy[2], TransportSettings):
            raise ConfigError("proxy", type(proxy[2]).__name__, "the third item must be TransportSettings")
        settings = proxy[2]
    if settings is None or settings.is_plain:
        return None
    return settings


async def open_transport(
    settings: TransportSettings,
    host: str,
    port: int,
    protocol_factory: ProtocolFactory,
    loop: Optional[asyncio.AbstractEventLoop] = None,
) -> Tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Connect to ``host:port`` over ``settings`` and return ``(transport, protocol)`` like ``create_connection``.

    Returns once TLS is verified and the WebSocket upgrade is accepted (with early data: once TCP/TLS is up; the
    upgrade goes out with the first write). TLS verification failures, TLS handshake failures and refused upgrades
    raise :class:`~vmess.errors.TransportError`; plain socket errors stay ``OSError``.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if settings.is_plain:
        return await loop.create_connection(protocol_factory, host, port)  # type: ignore[return-value]
    ssl_ctx: Optional[ssl.SSLContext] = None
    server_name = ""
    if settings.tls is not None:
        ssl_ctx = client_context(settings.tls, websocket=settings.websocket is not None)
        server_name = settings.tls.server_name_for(host)
        if settings.tls.fingerprint:
            log.debug("TLS fingerprint %r is not imitated (stdlib TLS): sending Python's own ClientHello",
                      settings.tls.fingerprint)
    relay: RelayProtocol
    if settings.websocket is not None:
        host_header = settings.websocket.host_header(
            host, port, tls=settings.tls is not None, server_name=settings.tls.server_name if settings.tls else ""
        )
        relay = WebSocketClientRelay(protocol_factory, loop, settings.websocket, host_header)
    else:
        relay = PassthroughRelay(protocol_factory, loop)
    try:
        if ssl_ctx is not None:
            await loop.create_connection(lambda: relay, host, port, ssl=ssl_ctx, server_hostname=server_name)
        else:
            await loop.create_connection(lambda: relay, host, port)
    except ssl.SSLError as exc:
        error = translate_ssl_error(exc, server_name)
        assert error is not None
        raise error from exc
    try:
        if settings.websocket is not None and settings.tls is not None:
            selected = relay.get_extra_info("ssl_object")
            if selected is not None and selected.selected_alpn_protocol() == "h2":
                raise TransportError("the TLS server chose HTTP/2 (ALPN h2); WebSocket needs http/1.1: drop h2 from alpn")
        await relay.opened
    except BaseException:
        relay.abort()
        raise
    assert relay.adapter is not None and relay.inner is not None
    return relay.adapter, relay.inner


def wrap_server_factory(
    protocol_factory: ProtocolFactory,
    *,
    websocket: Union[WebSocketServerSettings, str, None] = None,
    tls: bool = False,
) -> ProtocolFactory:
    """The ``create_server`` factory for a server transport: WebSocket relays, or a pass-through under TLS.

    Pass ``tls=True`` when the server listens with ``ssl=`` (the TLS itself is the event loop's), so that EOF and
    ``write_eof`` behave as documented in :mod:`vmess.transport.stream`.
    """
    if websocket is None and not tls:
        return protocol_factory
    loop = asyncio.get_running_loop()
    if isinstance(websocket, str):
        websocket = WebSocketServerSettings(path=websocket)
    if websocket is not None:
        if not isinstance(websocket, WebSocketServerSettings):
            raise ConfigError("websocket", type(websocket).__name__, "expected WebSocketServerSettings or a path")
        ws = websocket
        return lambda: WebSocketServerRelay(protocol_factory, loop, ws)
    return lambda: PassthroughRelay(protocol_factory, loop)

"""WebSocket (RFC 6455) transport for VMess, client and server, as V2Ray and Xray speak it.

The VMess byte stream travels in binary messages; each write of the inner protocol becomes one message, and the
payload of every received data frame is handed on as soon as it arrives (messages are not reassembled first).

Framing and the HTTP/1.1 upgrade come from ``wsproto`` (python-hyper): a well-kept sans-IO codec fits our design
(``vmess.protocol`` is sans-IO too), so this module only moves bytes between the socket, ``wsproto`` and the inner
protocol (see :mod:`vmess.transport.stream`), and no hand-written frame parser has to be maintained.

Early data (``ed`` in share links, ``maxEarlyData`` in V2Ray, ``?ed=N`` in the path for Xray): the client does
not send its upgrade request until the inner protocol's first write (or :data:`EARLY_DATA_DELAY`), and puts up to
``max_early_data`` bytes of it, base64url without padding, in the ``Sec-WebSocket-Protocol`` request header; the
rest follows as a normal message. A server that took the early data echoes the header (Xray; V2Ray with
``earlyDataHeaderName: Sec-WebSocket-Protocol``). A server that did not echo it did not read it, so the client then
sends those bytes as the first message: early data never gets lost, it only saves a round trip where it is
understood. The server here accepts early data (standard or url-safe base64, padding optional, like Xray) up to its
``max_early_data`` and echoes the header.

Closing: WebSocket has no half-close, so ``write_eof`` only records the VMess end marker was sent (see
``stream``); ``close`` sends a close frame and closes the socket. A close frame from the peer is an EOF for the
inner protocol, then the socket is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple
from urllib.parse import unquote

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..errors import ConfigError, TransportError
from .stream import ProtocolFactory, RelayProtocol

__all__ = [
    "WebSocketSettings",
    "WebSocketServerSettings",
    "WebSocketClientRelay",
    "WebSocketServerRelay",
    "EARLY_DATA_HEADER",
    "EARLY_DATA_DELAY",
    "split_early_data",
    "encode_early_data",
    "decode_early_data",
]

log = logging.getLogger("vmess.transport")

EARLY_DATA_HEADER = "Sec-WebSocket-Protocol"
"""The only early-data header used: V2Ray's recommended ``earlyDataHeaderName`` and the one Xray hard-codes."""

EARLY_DATA_DELAY = 0.2
"""Seconds the client waits for the first write before upgrading without early data (VMess writes within 0.1 s)."""

DEFAULT_SERVER_EARLY_DATA = 8192
"""Largest early data (decoded bytes) our server accepts by default; Xray caps the whole request header at 8 KiB."""

DEFAULT_UPGRADE_TIMEOUT = 4.0
"""Seconds a client has to complete the HTTP upgrade on our server (V2Ray's ReadHeaderTimeout is 4 s too)."""


def split_early_data(path: str) -> Tuple[str, Optional[int]]:
    """Take Xray's ``ed=N`` parameter out of a path: ``"/ws?ed=2048"`` -> ``("/ws", 2048)``.

    Other query parameters stay in the path; an unparsable value is removed and read as 0, as Xray does.
    """
    base, sep, query = path.partition("?")
    if not sep:
        return path, None
    kept: List[str] = []
    ed: Optional[int] = None
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if unquote(key) == "ed":
            try:
                ed = max(0, int(unquote(value)))
            except ValueError:
                ed = 0
            continue
        if item:
            kept.append(item)
    rest = "&".join(kept)
    return (f"{base}?{rest}" if rest else base), ed


def normalize_path(path: str) -> str:
    """A request target: ``/`` when empty, a leading ``/`` added (as V2Ray's GetNormalizedPath does)."""
    path = path.strip() or "/"
    if not path.startswith("/"):
        path = "/" + path
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        raise ConfigError("path", path, "WebSocket path must be printable ASCII without spaces (percent-encode it)")
    return path


def encode_early_data(data: bytes) -> str:
    """Early data as sent in the header: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_early_data(text: str) -> Optional[bytes]:
    """Decode a ``Sec-WebSocket-Protocol`` value as early data (either base64 alphabet, padding optional).

    None when it is not base64: then it is an ordinary subprotocol offer and is ignored.
    """
    compact = text.strip().rstrip("=").replace("+", "-").replace("/", "_")
    if not compact or len(compact) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class WebSocketSettings:
    """Client-side WebSocket: request path, ``Host`` header, extra headers and early data.

    ``host`` empty means: the TLS server name if there is one, else the server address (with its port unless it
    is the scheme's default), the order Xray uses. ``max_early_data`` 0 disables early data.
    """

    path: str = "/"
    host: str = ""
    headers: Tuple[Tuple[str, str], ...] = ()
    max_early_data: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_path(self.path))
        if self.max_early_data < 0:
            raise ConfigError("ed", self.max_early_data, "early data size must be 0 or more")
        for name, _value in self.headers:
            if name.lower() in ("host", "sec-websocket-protocol", "sec-websocket-key", "upgrade", "connection"):
                raise ConfigError("headers", name, "this header is set by the WebSocket transport itself")

    def host_header(self, address: str, port: int, *, tls: bool, server_name: str = "") -> str:
        """The ``Host`` header for a connection to ``address:port``."""
        if self.host:
            return self.host
        if server_name:
            return server_name
        host = f"[{address}]" if ":" in address and not address.startswith("[") else address
        default = 443 if tls else 80
        return host if port == default else f"{host}:{port}"


@dataclass(frozen=True)
class WebSocketServerSettings:
    """Server-side WebSocket: the path clients must request (query ignored), an optional required ``Host``,
    the largest early data accepted (0: ignore early data), and the time allowed for the HTTP upgrade."""

    path: str = "/"
    host: str = ""
    max_early_data: int = DEFAULT_SERVER_EARLY_DATA
    handshake_timeout: float = DEFAULT_UPGRADE_TIMEOUT
    response_headers: Tuple[Tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_path(self.path))
        if self.max_early_data < 0:
            raise ConfigError("max_early_data", self.max_early_data, "must be 0 or more")
        if not self.handshake_timeout > 0:
            raise ConfigError("handshake_timeout", self.handshake_timeout, "must be positive")


def _headers(pairs: Tuple[Tuple[str, str], ...]) -> List[Tuple[bytes, bytes]]:
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in pairs]


class _WebSocketRelay(RelayProtocol):
    """What client and server share: wsproto plumbing, data frames out, events in."""

    def __init__(self, inner_factory: ProtocolFactory, loop: asyncio.AbstractEventLoop, side: ConnectionType) -> None:
        super().__init__(inner_factory, loop)
        self.ws = WSConnection(side)
        self.ws_open = False
        self.early_data_bytes = 0  # early data that went through the handshake (client: accepted by the server)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.kind = "ws+tls" if self._is_ssl else "ws"

    def encode_and_send(self, data: bytes) -> None:
        assert self.raw is not None
        try:
            frame = self.ws.send(BytesMessage(data=data))
        except LocalProtocolError:
            return  # the WebSocket is closing: like a closed socket, drop the bytes
        self.raw.write(frame)

    def send_close(self) -> None:
        if self.ws_open and self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            assert self.raw is not None
            try:
                self.raw.write(self.ws.send(CloseConnection(code=1000)))
            except LocalProtocolError:
                pass

    def extra_info(self, name: str) -> Any:
        if name == "ws_early_data":
            return self.early_data_bytes
        return super().extra_info(name)

    def _receive(self, data: bytes) -> None:
        if self.ws.state is ConnectionState.CLOSED:
            return  # both close frames seen: whatever still trickles in is not ours to read
        try:
            self.ws.receive_data(data)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._protocol_error(exc)
            return
        try:
            for event in self.ws.events():
                self.on_event(event)
                if self._lost or self._error is not None:
                    return
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self._protocol_error(exc)

    def _protocol_error(self, exc: Exception) -> None:
        self.fail(TransportError(f"WebSocket protocol error: {exc}"))

    def on_event(self, event: Any) -> None:
        """Events common to both sides once the connection is open."""
        if isinstance(event, BytesMessage):
            self.deliver(bytes(event.data))
        elif isinstance(event, TextMessage):  # V2Ray only sends binary; be lenient like its reader
            self.deliver(event.data.encode("utf-8"))
        elif isinstance(event, Ping):
            if self.raw is not None and not self.raw.is_closing():
                self.raw.write(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            raw = self.raw
            if self.ws.state is ConnectionState.REMOTE_CLOSING and raw is not None and not raw.is_closing():
                raw.write(self.ws.send(event.response()))
            self.remote_eof(final=True)


class WebSocketClientRelay(_WebSocketRelay):
    """Client side: sends the upgrade request (with early data if configured), then relays binary messages.

    Without early data the inner protocol is connected once the server accepted the upgrade. With early data it is
    connected at once, its writes are held (and count toward its write flow control) until the upgrade is done.
    """

    def __init__(
        self,
        inner_factory: ProtocolFactory,
        loop: asyncio.AbstractEventLoop,
        settings: WebSocketSettings,
        host_header: str,
    ) -> None:
        super().__init__(inner_factory, loop, ConnectionType.CLIENT)
        self.settings = settings
        self.host_header = host_header
        self._early = settings.max_early_data > 0
        self._requested = False
        self._early_sent = b""
        self._held: List[bytes] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._close_pending = False  # close() came while the upgrade was in flight: close once it is done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._early:
            self.connect_inner()
            if not self._requested and not self._lost:
                self._timer = self.loop.call_later(EARLY_DATA_DELAY, self._request, b"")
        else:
            self._request(b"")

    def _request(self, early: bytes) -> None:
        self._timer = None
        if self._requested or self.raw is None or self.raw.is_closing():
            return
        self._requested = True
        self._early_sent = early
        subprotocols = [encode_early_data(early)] if early else []
        request = Request(
            host=self.host_header,
            target=self.settings.path,
            subprotocols=subprotocols,
            extra_headers=_headers(self.settings.headers),
        )
        self.raw.write(self.ws.send(request))

    def encode_and_send(self, data: bytes) -> None:
        if self.ws_open:
            super().encode_and_send(data)
            return
        if not self._requested:
            if self._timer is not None:
                self._timer.cancel()
            limit = self.settings.max_early_data
            early, data = data[:limit], data[limit:]
            self._request(early)
            if not data:
                return
        self._held.append(data)
        self.queued(len(data))

    def on_raw_data(self, data: bytes) -> None:
        self._receive(data)

    def on_event(self, event: Any) -> None:
        if isinstance(event, AcceptConnection):
            self._accepted(event)
        elif isinstance(event, RejectConnection):
            hint = " (check the path and Host)" if event.status_code in (400, 403, 404) else ""
            self.fail(TransportError(
                f"WebSocket upgrade to {self.settings.path!r} refused: HTTP {event.status_code}{hint}"
            ))
        elif isinstance(event, RejectData):
            pass
        else:
            super().on_event(event)

    def _accepted(self, event: AcceptConnection) -> None:
        self.ws_open = True
        held, self._held = self._held, []
        held_size = sum(len(b) for b in held)
        early = self._early_sent
        if early:
            if event.subprotocol is not None:
                self.early_data_bytes = len(early)
            else:
                held.insert(0, early)  # the server did not read it: send it as the first message
                log.debug("WebSocket server ignored %d bytes of early data; sent as the first message", len(early))
        if self.inner is None:
            self.connect_inner()
        for data in held:
            if self._lost:
                break
            super().encode_and_send(data)
        if held_size:
            self.queued(-held_size)
        if self._close_pending and self.raw is not None and not self.raw.is_closing():
            self._close_pending = False
            self.send_close()
            self.raw.close()

    def close(self) -> None:
        """Like a socket: bytes written before close() still go out, so an upgrade in flight finishes first."""
        raw = self.raw
        if self._requested and not self.ws_open and not self._closing and raw is not None and not raw.is_closing():
            self._closing = True
            self._close_pending = True
            return
        super().close()

    def on_lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class WebSocketServerRelay(_WebSocketRelay):
    """Server side: answers the upgrade (404 for a wrong path or Host, 400 for a bad request), takes early data
    from ``Sec-WebSocket-Protocol`` (echoing it), then connects the inner protocol and relays binary messages."""

    def __init__(
        self, inner_factory: ProtocolFactory, loop: asyncio.AbstractEventLoop, settings: WebSocketServerSettings
    ) -> None:
        super().__init__(inner_factory, loop, ConnectionType.SERVER)
        self.settings = settings
        self._timer: Optional[asyncio.TimerHandle] = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self._timer = self.loop.call_later(self.settings.handshake_timeout, self._upgrade_timeout)

    def _upgrade_timeout(self) -> None:
        self._timer = None
        if not self.ws_open:
            log.debug("WebSocket upgrade from %s timed out", self.peer)
            self.fail(TransportError("WebSocket upgrade timed out"))

    def on_raw_data(self, data: bytes) -> None:
        if self.ws_open:
            self._receive(data)
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self._upgrade(event)
                    return
        except RemoteProtocolError as exc:
            self._reject(exc.event_hint if isinstance(exc.event_hint, RejectConnection) else RejectConnection(),
                         f"bad upgrade request: {exc}")

    def _reject(self, response: RejectConnection, why: str) -> None:
        log.debug("WebSocket upgrade from %s refused (%d): %s", self.peer, response.status_code, why)
        raw = self.raw
        if raw is None or raw.is_closing():
            return
        try:
            raw.write(self.ws.send(response))
        except LocalProtocolError:
            pass
        self._closing = True
        raw.close()

    def _upgrade(self, request: Request) -> None:
        settings = self.settings
        target = unquote(request.target.partition("?")[0])
        if target != unquote(settings.path):
            self._reject(RejectConnection(status_code=404), f"path {target!r}")
            return
        if settings.host and request.host.lower() != settings.host.lower():
            self._reject(RejectConnection(status_code=404), f"Host {request.host!r}")
            return
        early: Optional[bytes] = None
        subprotocol: Optional[str] = None
        if settings.max_early_data > 0 and len(request.subprotocols) == 1:
            early = decode_early_data(request.subprotocols[0])
            if early is not None and len(early) > settings.max_early_data:
                self._reject(RejectConnection(status_code=400), f"{len(early)} bytes of early data")
                return
            if early:
                subprotocol = request.subprotocols[0]
        raw = self.raw
        assert raw is not None
        raw.write(self.ws.send(AcceptConnection(subprotocol=subprotocol,
                                                extra_headers=_headers(settings.response_headers))))
        self.ws_open = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.connect_inner()
        if early:
            self.early_data_bytes = len(early)
            self.deliver(early)

    def on_lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


"""An asyncio transport adapter: an inner protocol talks to a :class:`StreamAdapter`, a relay talks to the socket.

The VMess protocols (``vmess.aio``'s client, ``vmess.aio_server``'s sessions) are plain ``asyncio.Protocol`` /
``BufferedProtocol`` objects that expect a TCP-like transport. A :class:`RelayProtocol` sits on the real transport
(TCP or TLS), owns the inner protocol and hands it a :class:`StreamAdapter`, so framing (WebSocket) or TLS quirks
stay out of the VMess code. Subclasses implement the codec: :class:`PassthroughRelay` forwards bytes as they are
(used for plain TLS), ``websocket.WebSocketClientRelay`` / ``WebSocketServerRelay`` frame them.

What the adapter promises the inner protocol:

* ``data_received`` (or ``get_buffer``/``buffer_updated`` for a ``BufferedProtocol``) with decoded bytes, in order;
  nothing while the inner protocol has paused reading (decoded bytes wait in a small queue, the socket is paused);
* ``eof_received`` once, after every byte before it; ``connection_lost`` once, when the socket is gone;
* ``pause_writing`` / ``resume_writing`` from the socket's flow control (plus bytes queued before a handshake);
* ``write_eof`` is a no-op that reports success: neither TLS under asyncio nor WebSocket can half-close. VMess ends a
  direction with its own end-of-stream chunk, which every peer honours, so nothing is lost; the connection closes
  when the session ends (V2Ray behaves the same over TLS and WebSocket).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Deque, Optional

from ..errors import TransportError

__all__ = ["StreamAdapter", "RelayProtocol", "PassthroughRelay", "ProtocolFactory"]

log = logging.getLogger("vmess.transport")

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

DEFAULT_HIGH_WATER = 1 << 16
"""Bytes queued before a handshake completes above which the inner protocol is told to pause writing."""


class StreamAdapter(asyncio.Transport):
    """The transport an inner protocol sees; every call goes to its :class:`RelayProtocol`."""

    def __init__(self, relay: "RelayProtocol") -> None:
        super().__init__()
        self._relay = relay

    def write(self, data: Any) -> None:
        """Send ``data`` (framed by the relay's codec)."""
        if data:
            self._relay.send_data(bytes(data) if not isinstance(data, bytes) else data)

    def writelines(self, list_of_data: Any) -> None:
        """Send several buffers as one write (one frame for WebSocket)."""
        self.write(b"".join(list_of_data))

    half_closes = False
    """TLS under asyncio and WebSocket cannot half-close: a direction ends with VMess's end marker only, which some
    peers ignore (sing-box waits for a FIN or close_notify). Sessions over such transports close the connection once
    the other direction is quiet for ``END_LINGER`` seconds after one direction ended (as V2Ray's policy does)."""

    def write_eof(self) -> None:
        """No-op: TLS under asyncio and WebSocket cannot half-close; VMess's end-of-stream chunk ends the direction."""
        self._relay.eof_written = True

    def can_write_eof(self) -> bool:
        """True, so callers send their VMess end marker and carry on (see :meth:`write_eof`)."""
        return True

    def close(self) -> None:
        """Close gracefully: queued bytes are flushed (a WebSocket close frame is sent first)."""
        self._relay.close()

    def abort(self) -> None:
        """Close at once, dropping queued bytes."""
        self._relay.abort()

    def is_closing(self) -> bool:
        return self._relay.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The relay's own keys (``vmess_transport``, ``ws_early_data`` ...), else the socket transport's."""
        return self._relay.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._relay.pause_reading()

    def resume_reading(self) -> None:
        self._relay.resume_reading()

    def is_reading(self) -> bool:
        return not self._relay.reading_paused and not self._relay.is_closing()

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        self._relay.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._relay.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        raw = self._relay.raw
        if raw is None:
            return (0, 0)
        return raw.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._relay.set_inner(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._relay.inner is not None
        return self._relay.inner

    def __repr__(self) -> str:
        return f"<StreamAdapter {self._relay.kind} closing={self.is_closing()}>"


class RelayProtocol(asyncio.Protocol):
    """Base relay: the protocol on the real transport that drives an inner protocol through a StreamAdapter.

    Subclasses call :meth:`connect_inner` once their handshake is done (``opened`` then resolves), feed decoded
    bytes to :meth:`deliver`, report the peer's end with :meth:`remote_eof`, and implement :meth:`encode_and_send`
    (and optionally :meth:`on_raw_data`, :meth:`send_close`).
    """

    kind = "stream"

    def __init__(self, inner_factory: ProtocolFactory, loop: asyncio.AbstractEventLoop) -> None:
        self._inner_factory = inner_factory
        self.loop = loop
        self.raw: Optional[asyncio.Transport] = None
        self.inner: Optional[asyncio.BaseProtocol] = None
        self.adapter: Optional[StreamAdapter] = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.opened.add_done_callback(_retrieve)  # servers never await it: no "exception never retrieved" noise
        self.eof_written = False
        self.reading_paused = False  # by the inner protocol
        self._buffered = False
        self._incoming: Deque[bytes] = collections.deque()
        self._pumping = False
        self._pump_scheduled = False
        self._eof_pending = False
        self._eof_done = False
        self._close_after_eof = False  # the peer closed for good (WebSocket close frame): close after the EOF
        self._keep_open = False
        self._is_ssl = False
        self._raw_write_paused = False
        self._inner_write_paused = False
        self._queued_out = 0  # bytes a subclass holds before its handshake completes
        self._high_water = DEFAULT_HIGH_WATER
        self._closing = False
        self._lost = False
        self._error: Optional[BaseException] = None  # reported to the inner protocol's connection_lost

    # ------------------------------------------------------------------ raw transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]  # duck-typed: uvloop's TLS transport is no asyncio.Transport
        self._is_ssl = transport.get_extra_info("sslcontext") is not None

    def data_received(self, data: bytes) -> None:
        try:
            self.on_raw_data(data)
        except TransportError as exc:
            self.fail(exc)

    def eof_received(self) -> Optional[bool]:
        if self.inner is None:
            self.fail(TransportError(f"{self.kind}: connection closed by the peer during the handshake"))
            return False
        self.remote_eof()
        if self._is_ssl:
            return False  # asyncio's TLS transport cannot stay half-open (and warns if asked to)
        if self._eof_done:
            return self._keep_open and not self._close_after_eof
        return True  # keep the socket until the inner protocol has read what is still queued

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._lost = True
        self.on_lost()
        inner = self.inner
        if inner is None:
            if not self.opened.done():
                self.opened.set_exception(
                    self._error or exc or TransportError(f"{self.kind}: connection closed during the handshake")
                )
            return
        error = self._error or exc
        if error is None and not self._closing:
            # The peer closed cleanly: hand over what is still queued, even to a paused protocol, then the EOF.
            self.reading_paused = False
            self._eof_pending = True
            self._pump()
        inner.connection_lost(error if isinstance(error, Exception) else None)

    def pause_writing(self) -> None:
        self._raw_write_paused = True
        self._update_write_pause()

    def resume_writing(self) -> None:
        self._raw_write_paused = False
        self._update_write_pause()

    # ------------------------------------------------------------------ subclass hooks

    def on_raw_data(self, data: bytes) -> None:
        """Bytes from the socket: decode them and call :meth:`deliver` (default: pass through)."""
        self.deliver(data)

    def encode_and_send(self, data: bytes) -> None:
        """Frame ``data`` and write it to the socket (default: as is)."""
        assert self.raw is not None
        self.raw.write(data)

    def send_close(self) -> None:
        """Say goodbye at the codec level before the socket closes (default: nothing)."""

    def on_lost(self) -> None:
        """The socket is gone: cancel timers (default: nothing)."""

    def extra_info(self, name: str) -> Any:
        """Relay-specific ``get_extra_info`` keys; return ``_MISSING`` for others."""
        if name == "vmess_transport":
            return self.kind
        return _MISSING

    # ------------------------------------------------------------------ helpers for subclasses

    def connect_inner(self) -> None:
        """Create the inner protocol and give it the adapter; resolves :attr:`opened`."""
        inner = self._inner_factory()
        self.set_inner(inner)
        self.adapter = StreamAdapter(self)
        inner.connection_made(self.adapter)
        if not self.opened.done():
            self.opened.set_result(None)
        self._update_write_pause()

    def set_inner(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def deliver(self, data: bytes) -> None:
        """Hand decoded bytes to the inner protocol (queued while it has paused reading)."""
        if data:
            self._incoming.append(data)
            self._pump()

    def remote_eof(self, *, final: bool = False) -> None:
        """The peer ended its stream; ``final`` (a WebSocket close frame) also closes the socket after the EOF."""
        if final:
            self._close_after_eof = True
        self._eof_pending = True
        self._pump()

    def fail(self, exc: BaseException) -> None:
        """Abort the connection; the inner protocol (or ``opened``) gets ``exc``."""
        if self._error is None:
            self._error = exc
        if self.inner is None and not self.opened.done():
            self.opened.set_exception(exc)
        self._closing = True
        if self.raw is not None:
            self.raw.abort()

    def queued(self, delta: int) -> None:
        """Account bytes a subclass holds back before its handshake (negative when flushed)."""
        self._queued_out += delta
        self._update_write_pause()

    # ------------------------------------------------------------------ adapter side

    def send_data(self, data: bytes) -> None:
        if self._closing or self.raw is None or self._lost:
            return
        self.encode_and_send(data)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        raw = self.raw
        if raw is None or raw.is_closing():
            return
        try:
            self.send_close()
        finally:
            raw.close()

    def abort(self) -> None:
        self._closing = True
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self.raw is None or self.raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        value = self.extra_info(name)
        if value is not _MISSING:
            return value
        if self.raw is None:
            return default
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self.reading_paused:
            return
        self.reading_paused = True
        raw = self.raw
        if raw is not None and not raw.is_closing():
            raw.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading_paused:
            return
        self.reading_paused = False
        if self._incoming or (self._eof_pending and not self._eof_done):
            # Never deliver from inside resume_reading (asyncio transports do not either): StreamReader resumes
            # before it installs its waiter, so bytes fed now would wake nobody.
            if not self._pump_scheduled:
                self._pump_scheduled = True
                self.loop.call_soon(self._scheduled_pump)
            return
        self._resume_raw()

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        if self.reading_paused:
            return
        self._pump()
        if not self.reading_paused:
            self._resume_raw()

    def _resume_raw(self) -> None:
        raw = self.raw
        if raw is not None and not raw.is_closing() and not self._lost:
            raw.resume_reading()

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        if high is not None:
            self._high_water = high
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        size = self._queued_out
        if self.raw is not None and not self._lost:
            size += self.raw.get_write_buffer_size()
        return size

    # ------------------------------------------------------------------ internals

    def _update_write_pause(self) -> None:
        inner = self.inner
        if inner is None or self._lost:
            return
        want = self._raw_write_paused or self._queued_out > self._high_water
        if want == self._inner_write_paused:
            return
        self._inner_write_paused = want
        if want:
            inner.pause_writing()
        else:
            inner.resume_writing()

    def _pump(self) -> None:
        """Deliver queued bytes (and then a pending EOF) while the inner protocol reads; never re-entered."""
        if self._pumping or self.inner is None:
            return
        self._pumping = True
        try:
            while self._incoming and not self.reading_paused:
                self._feed(self._incoming.popleft())
            if self._eof_pending and not self._incoming and not self._eof_done:
                self._deliver_eof()
        finally:
            self._pumping = False

    def _feed(self, data: bytes) -> None:
        inner = self.inner
        if not self._buffered:
            inner.data_received(data)  # type: ignore[union-attr]
            return
        assert isinstance(inner, asyncio.BufferedProtocol)
        view = memoryview(data)
        while view:
            buf = memoryview(inner.get_buffer(len(view)))
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            inner.buffer_updated(n)
            view = view[n:]
            if view and self.reading_paused:
                self._incoming.appendleft(bytes(view))
                return

    def _deliver_eof(self) -> None:
        self._eof_done = True
        keep = bool(self.inner.eof_received())  # type: ignore[union-attr]
        self._keep_open = keep
        raw = self.raw
        if self._lost or raw is None or raw.is_closing():
            return
        if self._close_after_eof or not keep:
            self._closing = True
            raw.close()


def _retrieve(future: "asyncio.Future[None]") -> None:
    if not future.cancelled():
        future.exception()


class _Missing:
    __slots__ = ()


_MISSING: Any = _Missing()


class PassthroughRelay(RelayProtocol):
    """No framing: used for TLS without WebSocket so that ``write_eof`` and EOF behave the same as over WebSocket."""

    kind = "tls"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connect_inner()

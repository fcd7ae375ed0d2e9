"""asyncio client streams over VMess: ``open_connection`` (TCP) and ``open_udp`` (UDP, command 2).

A small ``asyncio.Protocol`` drives a sans-IO :class:`~vmess.protocol.ClientConnection`. Reading goes through an
``asyncio.StreamReader`` (its buffer limit pauses the socket: backpressure); writing through
:class:`VmessStreamWriter`, whose ``drain`` honours the transport's flow control. Errors and EOF propagate both ways.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any, Callable, Deque, Optional, Tuple, Union, cast

from .config import VmessConfig
from .constants import Command
from .errors import ConfigError, TruncatedError, VmessError
from .protocol.client import DEFAULT_CHUNK_SIZE, ClientConnection
from .protocol.events import DataReceived, StreamEnded

__all__ = ["open_connection", "open_udp", "VmessStreamWriter", "VmessDatagramStream", "ProxySpec", "resolve_proxy"]

log = logging.getLogger("vmess.client")

ProxySpec = Union[str, Any, Tuple[Tuple[str, int], VmessConfig], Tuple[Tuple[str, int], VmessConfig, Any]]
"""A share link string, a parsed ``VmessLink``, or ``((server_host, server_port), VmessConfig[, TransportSettings])``."""

_READ_LIMIT = 1 << 20
HEADER_DELAY = 0.1
"""Seconds to wait for the first write before sending the request header alone (V2Ray waits 100 ms too)."""


def resolve_proxy(proxy: ProxySpec) -> Tuple[str, int, VmessConfig]:
    """Turn any accepted ``proxy`` form into (server host, server port, config); ConfigError if it is unusable."""
    from .links import VmessLink, parse_link

    if isinstance(proxy, str):
        proxy = parse_link(proxy)
    if isinstance(proxy, VmessLink):
        from .transport import TransportSettings

        TransportSettings.from_link(proxy)  # UnsupportedError for transports not implemented (grpc, kcp, reality ...)
        return proxy.server_host, proxy.server_port, proxy.config
    if isinstance(proxy, tuple) and len(proxy) in (2, 3) and isinstance(proxy[1], VmessConfig):
        server, config = proxy[0], proxy[1]
        if not (isinstance(server, tuple) and len(server) == 2):
            raise ConfigError("proxy", server, "server address must be a (host, port) pair")
        return str(server[0]), int(server[1]), config
    raise ConfigError("proxy", type(proxy).__name__, "expected a vmess:// link, a VmessLink or ((host, port), VmessConfig)")


class _ClientProtocol(asyncio.Protocol):
    """Feeds a ClientConnection from the socket and hands payloads to a StreamReader (or datagram queue)."""

    def __init__(self, conn: ClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.transport: Optional[asyncio.Transport] = None
        self.reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
        self.datagrams: Deque[bytes] = collections.deque()
        self.datagram_waiter: Optional[asyncio.Future[None]] = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.exception: Optional[Exception] = None
        self._paused = False
        self._drain_waiters: Deque[asyncio.Future[None]] = collections.deque()
        self._header_timer: Optional[asyncio.TimerHandle] = None
        self._ended = False  # the server's stream ended cleanly (end marker or FIN): the reader has all of it

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # duck-typed: uvloop's transports are no asyncio.Transport
        self.transport = transport
        self.reader.set_transport(transport)
        self._header_timer = self.loop.call_later(HEADER_DELAY, self.flush_header)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except VmessError as exc:
            self._fail(exc)
            return
        for event in events:
            if isinstance(event, DataReceived):
                if self.conn.command == Command.UDP:
                    self.datagrams.append(event.data)
                    self._wake_datagrams()
                else:
                    self.reader.feed_data(event.data)
            elif isinstance(event, StreamEnded):
                self._ended = True
                self.reader.feed_eof()
                self._wake_datagrams()

    def eof_received(self) -> bool:
        try:
            self.conn.receive_eof()
        except VmessError as exc:
            self._fail(exc)
            return False
        self._ended = True
        self.reader.feed_eof()
        self._wake_datagrams()
        return True  # keep our sending side open: a half-closed TCP connection may still carry requests

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        if exc is not None and self.exception is None:
            self.exception = exc
        if not self.conn.received_eof and self.exception is None:
            self.exception = TruncatedError("connection lost before the server ended its stream")
        if self.exception is not None and not self._ended:
            self.reader.set_exception(self.exception)
        else:
            # After a clean end of the server's stream, a later transport error (typically EPIPE/ECONNRESET from
            # our own closing handshake once the peer has gone, e.g. Xray over ws+tls) loses no data: the reader
            # keeps its bytes and EOF. Writes and drain() still raise it.
            self.reader.feed_eof()
        self.conn.close()
        self._wake_datagrams()
        self._wake_drain()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    # --- helpers
    def _fail(self, exc: Exception) -> None:
        log.warning("vmess connection failed: %s", exc)
        self.exception = exc
        self.reader.set_exception(exc)
        self._wake_datagrams()
        if self.transport is not None:
            self.transport.abort()

    def _wake_datagrams(self) -> None:
        waiter = self.datagram_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def send(self, wire: bytes) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if wire and self.transport is not None:
            self.transport.write(wire)

    def flush_header(self) -> None:
        """Send the request header alone if the application has not written anything yet."""
        self._header_timer = None
        if not self.conn.request_sent and self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(self.conn.send(b""))
            except VmessError as exc:
                self._fail(exc)

    async def drain(self) -> None:
        if self.exception is not None:
            raise self.exception
        if self.transport is None or self.transport.is_closing():
            await asyncio.sleep(0)
            if self.exception is not None:
                raise self.exception
            if self.transport is not None and self.transport.is_closing():
                raise ConnectionResetError("connection closed")
            return
        if not self._paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self.exception is not None:
            raise self.exception


class VmessStreamWriter:
    """Writer half of a VMess stream, shaped like ``asyncio.StreamWriter``."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._conn = protocol.conn

    @property
    def transport(self) -> asyncio.Transport:
        assert self._protocol.transport is not None
        return self._protocol.transport

    def write(self, data: bytes) -> None:
        """Frame and send ``data`` (buffered by the transport; call :meth:`drain`)."""
        if self._protocol.exception is not None:
            raise self._protocol.exception
        self._protocol.send(self._conn.send(data))

    def writelines(self, data: Any) -> None:
        for item in data:
            self.write(item)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send the end-of-stream chunk, then half-close TCP (all peers accept that; some need the FIN)."""
        if self._protocol.exception is not None:
            raise self._protocol.exception
        self._protocol.send(self._conn.send_eof())
        if not self.transport.is_closing():
            self.transport.write_eof()

    async def drain(self) -> None:
        await self._protocol.drain()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()

    def is_closing(self) -> bool:
        return self._protocol.transport is None or self._protocol.transport.is_closing()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._protocol.closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "vmess_connection":
            return self._conn
        return self.transport.get_extra_info(name, default)


def _offset_clock(now: Callable[[], float], offset: float) -> Callable[[], float]:
    """``now`` shifted by ``offset`` seconds: the clock a request header is stamped with."""

    def shifted() -> float:
        return now() + offset

    return shifted


async def _connect(
    host: str,
    port: int,
    proxy: ProxySpec,
    command: Command,
    *,
    connect_timeout: float,
    now: Callable[[], float],
    urandom: Callable[[int], bytes],
    chunk_size: int,
    clock_offset: float = 0.0,
) -> _ClientProtocol:
    server_host, server_port, config = resolve_proxy(proxy)
    if clock_offset:
        now = _offset_clock(now, clock_offset)
    conn = ClientConnection(config, host, port, command=command, now=now, urandom=urandom, chunk_size=chunk_size)
    loop = asyncio.get_running_loop()
    from .transport import open_transport, transport_for

    settings = transport_for(proxy)  # None: plain TCP; else TLS and/or WebSocket (vmess.transport)
    connecting: Any
    if settings is None:
        connecting = loop.create_connection(lambda: _ClientProtocol(conn, loop), server_host, server_port)
    else:
        connecting = open_transport(settings, server_host, server_port, lambda: _ClientProtocol(conn, loop), loop)
    _, protocol = await asyncio.wait_for(connecting, connect_timeout)
    log.debug("vmess %s to %s:%d via %s:%d", command.name, host, port, server_host, server_port)
    return protocol


async def open_connection(
    host: str,
    port: int,
    *,
    proxy: ProxySpec,
    connect_timeout: float = 10.0,
    now: Callable[[], float] = time.time,
    urandom: Callable[[int], bytes] = os.urandom,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    clock_offset: float = 0.0,
) -> Tuple[asyncio.StreamReader, VmessStreamWriter]:
    """Open a TCP stream to ``host:port`` through the VMess server in ``proxy``; like ``asyncio.open_connection``.

    The request header goes out with the first write (or alone after 100 ms without one). Servers refuse a
    request whose timestamp is more than 120 s from their clock: on a machine whose clock is wrong, pass
    ``clock_offset`` (seconds added to ``now()``, e.g. ``+600`` if this clock is 10 minutes slow), or a ``now``
    that reads a better clock.
    """
    protocol = await _connect(
        host, port, proxy, Command.TCP, connect_timeout=connect_timeout, now=now, urandom=urandom,
        chunk_size=chunk_size, clock_offset=clock_offset,
    )
    return protocol.reader, VmessStreamWriter(protocol)


class VmessDatagramStream:
    """UDP over VMess (command 2): one destination, each datagram one chunk, replies taken as from it."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._conn = protocol.conn

    @property
    def max_datagram(self) -> int:
        """Largest datagram that can be sent."""
        return self._conn.max_datagram

    def send(self, datagram: bytes) -> None:
        """Send one datagram (ChunkTooLargeError if it exceeds :attr:`max_datagram`)."""
        if self._protocol.exception is not None:
            raise self._protocol.exception
        self._protocol.send(self._conn.send(datagram))

    async def recv(self) -> bytes:
        """The next datagram from the destination; EOFError when the stream ended."""
        p = self._protocol
        while not p.datagrams:
            if p.exception is not None:
                raise p.exception
            if self._conn.received_eof or p.closed.done():
                raise EOFError("VMess UDP stream ended")
            p.datagram_waiter = p.loop.create_future()
            await p.datagram_waiter
        return p.datagrams.popleft()

    async def drain(self) -> None:
        await self._protocol.drain()

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._protocol.closed)

    async def __aenter__(self) -> "VmessDatagramStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def open_udp(
    host: str,
    port: int,
    *,
    proxy: ProxySpec,
    connect_timeout: float = 10.0,
    now: Callable[[], float] = time.time,
    urandom: Callable[[int], bytes] = os.urandom,
    clock_offset: float = 0.0,
) -> VmessDatagramStream:
    """Open a VMess UDP session (command 2) to ``host:port`` through ``proxy`` (``clock_offset``: as for
    :func:`open_connection`)."""
    protocol = await _connect(
        host, port, proxy, Command.UDP, connect_timeout=connect_timeout, now=now, urandom=urandom,
        chunk_size=DEFAULT_CHUNK_SIZE, clock_offset=clock_offset,
    )
    return VmessDatagramStream(protocol)

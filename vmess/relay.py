"""Protocol-level relaying between a local stream and a VMess connection: the local proxy's hot path.

Once a local handshake (SOCKS5, HTTP CONNECT ...) is done, bytes move by protocol callbacks alone: no StreamReader,
no task per direction, no per-read allocation beyond the sealed or opened bytes themselves.

* :class:`LocalRelay` is the local connection's ``BufferedProtocol``. It reads into a buffer shared by every
  session of its owner and seals each read straight into the VMess connection (one read, one write).
* :class:`VmessUpstream` is the VMess connection's ``BufferedProtocol``. It reads into another shared buffer,
  opens the chunks and hands every payload of one read to the local transport in one write (``writelines``:
  vectored on uvloop).

The shared buffers are safe because everything read is consumed inside ``buffer_updated``: sealing and opening
make new bytes, and a transport copies what it cannot send at once. Backpressure: when one transport's write
buffer passes its high-water mark, reading from the other side pauses until it drains. Half-closes are passed on
(client EOF -> VMess end-of-stream chunk and FIN; the VMess stream's end -> FIN to the client), and a session
without a byte either way for ``idle_timeout`` seconds is aborted. A session quiet for a moment frees its cipher
contexts until its next byte (:mod:`vmess._sweep`). Works with asyncio's and uvloop's transports (duck-typed) and
with the TLS / WebSocket adapters of :mod:`vmess.transport`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from ._parking import drop_parked, reattach
from ._sweep import Sweeper
from ._timeouts import END_LINGER, timed
from .aio import HEADER_DELAY
from .config import VmessConfig
from .errors import TruncatedError, VmessError
from .protocol.client import DEFAULT_CHUNK_SIZE, ClientConnection
from .protocol.events import DataReceived, StreamEnded

__all__ = ["LocalRelay", "VmessUpstream", "open_upstream", "describe", "READ_SIZE", "GRACEFUL_CLOSE"]

log = logging.getLogger("vmess.client")

READ_SIZE = 256 * 1024
"""Bytes per read on either side of a relay (the size of each shared read buffer)."""

GRACEFUL_CLOSE = 5.0
"""Seconds a gracefully closed local connection may take to flush before it is aborted."""


def describe(exc: BaseException) -> str:
    """A short, secret-free description of an exception for a log line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class VmessUpstream(asyncio.BufferedProtocol):
    """The VMess side of a relay: drives a :class:`ClientConnection` over its transport.

    What it decodes goes to its peer (a :class:`LocalRelay`) through ``vmess_data(payloads)``, ``vmess_touch()``
    (bytes that completed no chunk yet), ``vmess_eof()``, ``vmess_failed(exc)``, ``vmess_lost(exc)`` and
    ``vmess_full(bool)``. Until :meth:`attach` names the peer, those
    calls are recorded and replayed then. The request header leaves with the first :meth:`send`, or alone
    :data:`HEADER_DELAY` seconds after :meth:`attach` (for protocols where the server speaks first).
    """

    __slots__ = ("conn", "loop", "transport", "peer", "_view", "_early", "_header_timer", "_failed", "_stale_losses")

    def __init__(self, conn: ClientConnection, loop: asyncio.AbstractEventLoop, view: memoryview) -> None:
        self.conn = conn
        self.loop = loop
        self.transport: Any = None
        self.peer: Any = None
        self._view = view
        self._early: Optional[List[Tuple[str, Any]]] = None
        self._header_timer: Optional[asyncio.TimerHandle] = None
        self._failed = False
        self._stale_losses = 0  # connection_lost calls still due from transports given up when parking

    # --- the peer
    def attach(self, peer: Any) -> None:
        """Deliver to ``peer`` from now on (replaying what came before) and arm the lone-header timer."""
        self.peer = peer
        early, self._early = self._early, None
        transport = self.transport
        if not self.conn.request_sent and transport is not None and not transport.is_closing():
            self._header_timer = self.loop.call_later(HEADER_DELAY, self._flush_header)
        for name, arg in early or ():
            getattr(peer, name)(arg)

    def _emit(self, name: str, arg: Any) -> None:
        peer = self.peer
        if peer is None:
            if self._early is None:
                self._early = []
            self._early.append((name, arg))
        else:
            getattr(peer, name)(arg)

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._failed:
            return
        try:
            events = self.conn.receive_data(self._view[:nbytes])  # type: ignore[arg-type]  # copied, not kept
        except VmessError as exc:
            self._fail(exc)
            return
        payloads: List[bytes] = []
        for event in events:
            if type(event) is DataReceived:
                payloads.append(event.data)
            elif type(event) is StreamEnded:
                if payloads:
                    self._emit("vmess_data", payloads)
                    payloads = []
                self._emit("vmess_eof", None)
        if payloads:
            self._emit("vmess_data", payloads)
        elif not events:
            self._emit("vmess_touch", None)  # part of a chunk: no payload yet, but traffic all the same

    def eof_received(self) -> bool:
        if self._failed:
            return False
        try:
            events = self.conn.receive_eof()
        except VmessError as exc:
            self._fail(exc)
            return False
        if events:
            self._emit("vmess_eof", None)
        return True  # keep our sending side open: the client may still have bytes for the destination

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._stale_losses:  # a transport given up when the relay parked: the connection lives on
            self._stale_losses -= 1
            return
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if exc is None and not self.conn.received_eof:
            exc = TruncatedError("connection lost before the server ended its stream")
        self.conn.close()
        self._emit("vmess_lost", exc)

    def pause_writing(self) -> None:
        self._emit("vmess_full", True)

    def resume_writing(self) -> None:
        self._emit("vmess_full", False)

    def _fail(self, exc: VmessError) -> None:
        log.warning("vmess connection failed: %s", exc)
        self._failed = True
        if self.transport is not None:
            self.transport.abort()
        self._emit("vmess_failed", exc)

    # --- sending
    def send(self, data: Any) -> None:
        """Seal ``data`` (any bytes-like object, consumed at once) and write it; the header leads the first call."""
        timer = self._header_timer
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        wire = self.conn.send(data)
        transport = self.transport
        if wire and not transport.is_closing():
            transport.write(wire)

    def send_eof(self) -> None:
        """End our direction: the end-of-stream chunk (with the header if unsent), then a TCP half-close."""
        timer = self._header_timer
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        wire = self.conn.send_eof()
        transport = self.transport
        if not transport.is_closing():
            if wire:
                transport.write(wire)
            if transport.can_write_eof():
                transport.write_eof()

    def _flush_header(self) -> None:
        self._header_timer = None
        transport = self.transport
        if not self.conn.request_sent and transport is not None and not transport.is_closing():
            try:
                transport.write(self.conn.send(b""))
            except VmessError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Close gracefully (what is buffered is still sent)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once."""
        if self.transport is not None:
            self.transport.abort()


async def open_upstream(
    server: Tuple[str, int],
    config: VmessConfig,
    settings: Any,
    host: str,
    port: int,
    view: memoryview,
    *,
    connect_timeout: float,
    now: Callable[[], float] = time.time,
    urandom: Callable[[int], bytes] = os.urandom,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> VmessUpstream:
    """Connect to the VMess server ``server`` (over ``settings``, a ``TransportSettings`` or None for plain TCP)
    for a TCP stream to ``host:port``; the returned protocol reads into ``view`` (shared: see the module doc)."""
    conn = ClientConnection(config, host, port, now=now, urandom=urandom, chunk_size=chunk_size)
    loop = asyncio.get_running_loop()
    upstream = VmessUpstream(conn, loop, view)
    connecting: Awaitable[Any]
    if settings is None:
        connecting = loop.create_connection(lambda: upstream, server[0], server[1])
    else:
        from .transport import open_transport

        connecting = open_transport(settings, server[0], server[1], lambda: upstream, loop)
    await timed(connecting, connect_timeout)
    return upstream


class LocalRelay(asyncio.BufferedProtocol):
    """The local side of a relayed session; subclasses run their handshake first, then call :meth:`start_relay`.

    Before the relay starts, reads go to :meth:`handshake_data` (a view of the shared buffer, valid during the
    call only), EOF to :meth:`handshake_eof`, loss to :meth:`handshake_lost` and flow control to
    :meth:`handshake_full`. Afterwards the relay runs on its own and reports through :meth:`relay_count` (payload
    bytes, ``up`` = local client -> VMess) and, once, :meth:`relay_finished`.
    """

    __slots__ = (
        "loop", "transport", "upstream", "_view", "_relaying", "_done", "_up_left", "_http", "_client_eof",
        "_down_eof", "_up_lost", "_up_full", "_local_paused", "_last_activity", "_resting", "_sweeper", "_closer",
        "_parked", "_stale_losses", "_unpark_task", "_linger",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, view: memoryview) -> None:
        self.loop = loop
        self.transport: Any = None
        self.upstream: Optional[VmessUpstream] = None
        self._view = view
        self._relaying = False
        self._done = False
        self._up_left: Optional[int] = None
        self._http = False
        self._client_eof = False
        self._down_eof = False
        self._up_lost = False
        self._up_full = False
        self._local_paused = False
        self._last_activity = 0.0
        self._resting = False
        self._sweeper: Optional[Sweeper] = None
        self._closer: Optional[asyncio.TimerHandle] = None
        self._parked: Optional[List[int]] = None  # parked descriptors not yet reattached: [VMess, local]
        self._stale_losses = 0  # connection_lost calls still due from local transports given up when parking
        self._unpark_task: Optional[asyncio.Task[None]] = None
        self._linger: Optional[asyncio.TimerHandle] = None  # see _end_linger

    # --- hooks for subclasses
    def handshake_data(self, data: memoryview) -> None:
        """Bytes read before the relay started (copy what you keep)."""

    def handshake_eof(self) -> None:
        """The client half-closed before the relay started."""

    def handshake_lost(self, exc: Optional[Exception]) -> None:
        """The local connection is gone before the relay started."""

    def handshake_full(self, full: bool) -> None:
        """The local transport's write buffer passed (True) or fell below (False) its high-water mark."""

    def relay_count(self, up: bool, n: int) -> None:
        """``n`` payload bytes relayed (``up``: from the local client toward VMess)."""

    def relay_finished(self, graceful: bool, outcome: Optional[str], failure: Optional[str]) -> None:
        """The relay ended (once): ``outcome`` names a normal ending, ``failure`` an error (both may be None)."""

    def relay_gone(self) -> None:
        """The local connection is closed (after :meth:`relay_finished`, or after a handshake)."""

    # --- starting
    @property
    def relaying(self) -> bool:
        """True once :meth:`start_relay` was called."""
        return self._relaying

    def start_relay(
        self,
        upstream: VmessUpstream,
        first: bytes = b"",
        *,
        sweeper: Sweeper,
        head: bytes = b"",
        up_limit: Optional[int] = None,
        http: bool = False,
        client_eof: bool = False,
    ) -> None:
        """Relay from now on: ``head`` then ``first`` (bytes the handshake read past its messages) go upstream first.

        ``up_limit`` caps the bytes taken from the client after ``head`` (an HTTP request body). In ``http`` mode
        the client's EOF is not passed on and the session ends with the VMess stream. ``client_eof``: the client
        already half-closed during the handshake. ``sweeper`` applies the idle timeout (and rest, see
        :mod:`vmess._sweep`).
        """
        self.upstream = upstream
        self._relaying = True
        self._http = http
        self._sweeper = sweeper
        self._last_activity = self.loop.time()
        sweeper.watch(self)
        if up_limit is not None:
            first = first[:up_limit]
            up_limit -= len(first)
        self._up_left = up_limit
        data = head + first if head else first
        if data:
            try:
                upstream.send(data)
            except (VmessError, OSError, RuntimeError) as exc:
                self._finish(False, failure=f"upstream: {describe(exc)}")
                return
            self.relay_count(True, len(data))
        upstream.attach(self)  # may replay an early end of the VMess connection, which finishes the relay
        if self._done:
            return
        if client_eof:
            self._on_client_eof()
        self._update_reading()

    # --- asyncio callbacks (local transport)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if not self._relaying:
            self.handshake_data(self._view[:nbytes])
            return
        if self._done:
            return
        left = self._up_left
        if left is not None:
            if nbytes > left:
                nbytes = left
            self._up_left = left - nbytes
            if nbytes <= 0:
                self._update_reading()
                return
        self._touch()
        upstream = self.upstream
        assert upstream is not None
        try:
            upstream.send(self._view[:nbytes])
        except (VmessError, OSError, RuntimeError) as exc:
            self._finish(False, failure=f"upstream: {describe(exc)}")
            return
        self.relay_count(True, nbytes)
        if self._up_left == 0:
            self._update_reading()

    def eof_received(self) -> bool:
        if not self._relaying:
            self.handshake_eof()
            return True
        if not self._done:
            self._on_client_eof()
        return True  # keep our sending side open: the VMess side may still have bytes for the client

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._stale_losses:  # a transport given up when the relay parked: the connection lives on
            self._stale_losses -= 1
            return
        closer = self._closer
        if closer is not None:
            closer.cancel()
            self._closer = None
        if not self._relaying:
            self.handshake_lost(exc)
        elif not self._done:
            self._finish(False, outcome=f"client: {describe(exc)}" if exc is not None else "client closed")
        self.relay_gone()

    def pause_writing(self) -> None:
        if not self._relaying:
            self.handshake_full(True)
            return
        self._set_upstream_reading(False)

    def resume_writing(self) -> None:
        if not self._relaying:
            self.handshake_full(False)
            return
        self._set_upstream_reading(True)

    # --- VMess side (called by VmessUpstream)
    def vmess_data(self, payloads: List[bytes]) -> None:
        if self._done:
            return
        transport = self.transport
        if transport.is_closing():
            return
        if len(payloads) == 1:
            n = len(payloads[0])
            transport.write(payloads[0])
        else:
            n = 0
            for p in payloads:
                n += len(p)
            transport.writelines(payloads)
        self._touch()
        self.relay_count(False, n)

    def vmess_touch(self, _: Any = None) -> None:
        if not self._done:
            self._touch()

    def vmess_eof(self, _: Any = None) -> None:
        if self._done or self._down_eof:
            return
        self._down_eof = True
        transport = self.transport
        try:
            if not transport.is_closing() and transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            pass
        self._maybe_end()

    def vmess_failed(self, exc: BaseException) -> None:
        self._finish(False, failure=f"upstream: {describe(exc)}")

    def vmess_lost(self, exc: Optional[BaseException]) -> None:
        self._up_lost = True
        if self._done:
            return
        if exc is not None and not self._down_eof:
            self._finish(False, failure=f"upstream: {describe(exc)}")
        else:
            self._maybe_end()

    def vmess_full(self, full: bool) -> None:
        self._up_full = full
        self._update_reading()

    # --- internals
    def _on_client_eof(self) -> None:
        if self._client_eof:
            return
        self._client_eof = True
        if not self._http and self._up_left is None:
            upstream = self.upstream
            assert upstream is not None
            try:
                upstream.send_eof()
            except (VmessError, OSError, RuntimeError):
                pass  # the VMess side is already gone: its own callbacks end the relay
            else:
                transport = upstream.transport
                if transport is not None and not getattr(transport, "half_closes", True) and self._linger is None:
                    self._linger = self.loop.call_later(END_LINGER, self._end_linger)
        self._maybe_end()

    def _end_linger(self) -> None:
        """TLS / WebSocket upstream: our client ended its direction, the server has not; close once it is quiet."""
        self._linger = None
        if self._done:
            return
        quiet = self.loop.time() - self._last_activity
        if quiet >= END_LINGER:
            self._finish(True, outcome="closed after the client's end (transport cannot half-close)")
        else:
            self._linger = self.loop.call_later(END_LINGER - quiet, self._end_linger)

    def _maybe_end(self) -> None:
        if self._down_eof and (self._http or self._client_eof or self._up_lost):
            self._finish(True)

    def _update_reading(self) -> None:
        """Pause reading the client while the VMess side is full (or an HTTP body is complete), else resume."""
        transport = self.transport
        if transport is None or self._done or transport.is_closing():
            return
        pause = self._up_full or self._up_left == 0
        if pause and not self._local_paused:
            self._local_paused = True
            transport.pause_reading()
        elif not pause and self._local_paused:
            self._local_paused = False
            transport.resume_reading()

    def _set_upstream_reading(self, on: bool) -> None:
        upstream = self.upstream
        if upstream is None or self._done:
            return
        transport = upstream.transport
        if transport is None or transport.is_closing():
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _touch(self) -> None:
        self._last_activity = self.loop.time()
        if self._resting:
            self._resting = False
            assert self._sweeper is not None
            self._sweeper.woke(self)

    def idle_expired(self) -> None:
        """The sweeper's call: no byte either way for the idle timeout."""
        self._finish(False, outcome="idle timeout")

    def rest(self) -> None:
        """The sweeper's call: quiet for a moment; free the VMess connection's cipher contexts until the next byte."""
        self._resting = True
        if self.upstream is not None:
            self.upstream.conn.release()

    # --- parking (see vmess._parking)
    def park(self) -> bool:
        """The sweeper's call: quiet for longer; give up both transports, keep the connections (True if parked)."""
        upstream = self.upstream
        sweeper = self._sweeper
        lot = sweeper.parking if sweeper is not None else None
        if (
            lot is None or upstream is None or self._done or self._parked is not None or self._client_eof
            or self._down_eof or self._up_lost or self._up_full or self._local_paused or self._up_left is not None
            or upstream.peer is not self or upstream._failed or upstream._header_timer is not None
            or not upstream.conn.request_sent
        ):
            return False
        fds = lot.park(self, (upstream.transport, self.transport))
        if fds is None:
            return False
        self._parked = list(fds)
        self._stale_losses += 1
        upstream._stale_losses += 1
        self.transport = None
        upstream.transport = None
        return True

    def wake(self) -> None:
        """The parking lot's call: a parked socket turned readable; reattach both connections."""
        fds = self._parked
        sweeper = self._sweeper
        if fds is None or self._unpark_task is not None or self._done or sweeper is None or sweeper.parking is None:
            return
        sweeper.parking.release(fds)
        self._unpark_task = self.loop.create_task(self._unpark())

    async def _unpark(self) -> None:
        # The VMess side first, detached from us: what it decodes meanwhile is recorded and replayed by attach()
        # once the local side is back (uvloop starts reading right after connection_made, whatever we ask).
        fds = self._parked
        upstream = self.upstream
        assert fds is not None and upstream is not None
        upstream.peer = None
        try:
            await reattach(self.loop, fds.pop(0), upstream)
            await reattach(self.loop, fds.pop(0), self)
        except asyncio.CancelledError:
            return  # _finish cancelled us and closed what was attached; _finish_parked closed the rest
        except OSError as exc:
            self._unpark_task = None
            upstream.peer = self
            self._finish(False, failure=f"cannot resume a parked session: {describe(exc)}")
            return
        finally:
            if self._unpark_task is asyncio.current_task():
                self._unpark_task = None
        self._parked = None
        upstream.attach(self)  # replays what the VMess side said meanwhile (data, EOF, loss)
        if not self._done:
            self._touch()
            self._update_reading()

    def _finish_parked(self) -> None:
        """Close a parked relay's connections that are still bare descriptors (not reattached)."""
        fds, self._parked = self._parked, None
        if fds is None:
            return
        if drop_parked(self._sweeper.parking if self._sweeper is not None else None, fds, self._unpark_task):
            self._unpark_task = None

    def abort_relay(self, outcome: str) -> None:
        """End the relay at once (proxy shutdown)."""
        self._finish(False, outcome=outcome)

    def _finish(self, graceful: bool, *, outcome: Optional[str] = None, failure: Optional[str] = None) -> None:
        if self._done:
            return
        self._done = True
        if self._sweeper is not None:
            self._sweeper.forget(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        parked = self._parked is not None and self.transport is None  # the local side is a bare descriptor
        self._finish_parked()
        upstream = self.upstream
        transport = self.transport
        if graceful:
            if upstream is not None:
                upstream.close()
            if transport is not None and not transport.is_closing():
                transport.close()
                # A client that never reads must not keep the socket forever.
                self._closer = self.loop.call_later(GRACEFUL_CLOSE, transport.abort)
        else:
            if upstream is not None:
                upstream.abort()
            if transport is not None:
                transport.abort()
        self.relay_finished(graceful, outcome, failure)
        if parked:
            self.relay_gone()  # no transport left to report connection_lost

"""asyncio VMess server: ``start_server`` accepts VMess clients and relays their sessions through an outbound.

Each inbound connection is an :class:`asyncio.BufferedProtocol` that drives a sans-IO
:class:`~vmess.protocol.server.ServerConnection`:

* handshake: the request header must be complete within ``handshake_timeout``; an authentication or header failure
  is logged once, then the connection is drained (``conn.drain_remaining`` bytes are read and discarded, bounded by
  the same handshake deadline, nothing is sent) and closed, as v2fly/Xray do (spec 3.5);
* relay: decoded client bytes go to the destination, destination bytes are framed back with ``conn.send()``;
  everything decoded from one read leaves in one write. Each direction has bounded buffers: when one transport's
  write buffer passes its high-water mark, reading from the other side pauses until it drains
  (``pause_writing``/``resume_writing``). Half-close is propagated both ways; ``idle_timeout`` seconds without a
  byte either way ends the session (checked by one sweep over all sessions, every quarter of the timeout and at
  least every 5 s: see :mod:`vmess._sweep`).

Memory per idle session is kept small: the read buffers are shared by all sessions (see ``READ_BUFFER_SIZE``), there
is no timer per session once the request is in, and a session quiet for a moment frees its cipher contexts
(``ServerConnection.release``) until its next byte.

Where sessions go is an :class:`Outbound`; :class:`DirectOutbound` (the default) connects to the requested
destination itself and can refuse private, loopback, link-local, multicast and unspecified addresses.
Logs (logger ``vmess.server``) name the session number, the user's tag, the destination and byte counts, never a
user ID or a key.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ipaddress
import itertools
import logging
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Set, Tuple, Union, cast

from ._parking import drop_parked, reattach
from ._sweep import PARK_AFTER, Sweeper
from ._timeouts import END_LINGER, timed
from .constants import Command
from .errors import (
    AuthenticationError,
    ProtocolError,
    ReplayError,
    TruncatedError,
    UnsupportedError,
    VmessError,
)
from .protocol.events import DataReceived, Event, StreamEnded
from .protocol.server import MemoryReplayFilter, ReplayFilter, RequestReceived, ServerConnection, ServerState, UserTable

__all__ = [
    "start_server",
    "VmessServer",
    "ServerStats",
    "Outbound",
    "DirectOutbound",
    "DestinationRefusedError",
    "is_blocked_address",
    "UserSpec",
]

log = logging.getLogger("vmess.server")

UserSpec = Union[UserTable, Iterable[Union[uuid.UUID, str, Tuple[Any, int], Tuple[Any, int, str]]]]
"""A :class:`UserTable`, or UUIDs / strings / ``(uuid, alter_id)`` / ``(uuid, alter_id, name)`` items."""

READ_BUFFER_SIZE = 1 << 18
"""Bytes read per receive call on each side of a session (256 KiB: against 64 KiB, about 15% less server CPU per GiB
uploaded with security none, where syscalls are most of the cost; the local proxy reads as much).

The read buffers are shared: one per server for client reads and one for destination reads. Everything read is
consumed inside ``buffer_updated`` (``ServerConnection.receive_data`` copies what it keeps, ``conn.send`` frames
into new bytes, ``transport.write`` copies what it cannot send at once), so no session keeps a view of them and
an idle session holds no read buffer at all.
"""

WRITE_HIGH_WATER = 1 << 16
"""Write-buffer high-water mark on both sides: above it, reading from the other side pauses."""

DEFAULT_HANDSHAKE_TIMEOUT = 4.0
"""Seconds for a client to deliver its request header (v2ray's default handshake policy is 4 s too)."""

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds without traffic in either direction before a session is closed (v2ray's ``connIdle``)."""

DEFAULT_MAX_SESSIONS = 1024
"""Concurrent inbound connections (handshaking, relaying or draining) above which new ones are refused."""


# ------------------------------------------------------------------------------------------------- outbounds


class DestinationRefusedError(VmessError):
    """The destination policy refused an address (for example a loopback address with ``block_private``)."""


def is_blocked_address(ip: Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]) -> Optional[str]:
    """Why ``ip`` is not a public destination ("loopback", "private" ...), or None if it may be reached.

    IPv4-mapped IPv6 addresses are judged by their IPv4 address, so ``::ffff:127.0.0.1`` is loopback.
    """
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr.scope_id:
            addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_private:
        return "private"
    return None


class Outbound(ABC):
    """Where a session's traffic goes. Implement both methods to plug in another route (a chain, a router ...).

    ``open_tcp`` connects a stream transport to ``protocol`` (calling its ``connection_made``) and returns it; the
    transport must behave like asyncio's (``write``, ``write_eof``/``can_write_eof``, ``pause_reading``/
    ``resume_reading``, ``close``/``abort``, ``get_write_buffer_size``, and it calls the protocol's
    ``pause_writing``/``resume_writing``). ``open_udp`` does the same with a datagram transport whose ``sendto(data)``
    reaches the request's destination and which delivers replies to ``datagram_received``. Both raise
    :class:`DestinationRefusedError` for a policy refusal and ``OSError`` (or ``asyncio.TimeoutError``) on failure.
    """

    @abstractmethod
    async def open_tcp(self, request: RequestReceived, protocol: asyncio.BaseProtocol) -> asyncio.BaseTransport:
        """Connect a stream to ``request.host:request.port`` driving ``protocol``."""

    @abstractmethod
    async def open_udp(self, request: RequestReceived, protocol: asyncio.DatagramProtocol) -> asyncio.BaseTransport:
        """Open a datagram endpoint to ``request.host:request.port`` driving ``protocol``."""


def _literal_addrinfo(host: str, port: int) -> Optional[List[Tuple[Any, ...]]]:
    """getaddrinfo's answer for an IPv4/IPv6 literal (without a zone index), or None for anything else."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        sockaddr: Tuple[Any, ...] = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, 0, 0, "", sockaddr)]
    return None


class DirectOutbound(Outbound):
    """Connects to the requested destination from this host; names are resolved by the event loop.

    With ``block_private`` only public addresses are used: resolved addresses that are private, loopback,
    link-local, multicast or unspecified are skipped, and if none is left the request is refused.
    """

    def __init__(self, *, block_private: bool = False, connect_timeout: float = 10.0) -> None:
        self.block_private = block_private
        self.connect_timeout = connect_timeout

    async def _resolve(self, host: str, port: int, socktype: int) -> List[Tuple[int, Tuple[Any, ...]]]:
        infos: Optional[List[Tuple[Any, ...]]] = _literal_addrinfo(host, port)  # no resolver round trip for a literal
        if infos is None:
            infos = list(await asyncio.get_running_loop().getaddrinfo(host, port, type=socktype))
        addrs: List[Tuple[int, Tuple[Any, ...]]] = []
        refused: Optional[str] = None
        for family, _type, _proto, _name, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if self.block_private:
                why = is_blocked_address(str(sockaddr[0]))
                if why is not None:
                    refused = refused or f"{sockaddr[0]} is a {why} address"
                    continue
            if (family, sockaddr) not in addrs:
                addrs.append((family, sockaddr))
        if not addrs:
            if refused is not None:
                raise DestinationRefusedError(f"destination refused: {refused} (block_private)")
            raise OSError(f"no IPv4/IPv6 address for {host!r}")
        return addrs

    async def _open_tcp(self, request: RequestReceived, protocol: asyncio.BaseProtocol) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        last: Optional[BaseException] = None
        for family, sockaddr in await self._resolve(request.host, request.port, socket.SOCK_STREAM):
            try:
                transport, _ = await loop.create_connection(lambda: protocol, sockaddr[0], sockaddr[1], family=family)
                return transport
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    async def open_tcp(self, request: RequestReceived, protocol: asyncio.BaseProtocol) -> asyncio.BaseTransport:
        return await timed(self._open_tcp(request, protocol), self.connect_timeout)

    async def open_udp(self, request: RequestReceived, protocol: asyncio.DatagramProtocol) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        addrs = await timed(self._resolve(request.host, request.port, socket.SOCK_DGRAM), self.connect_timeout)
        family, sockaddr = addrs[0]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, remote_addr=(sockaddr[0], sockaddr[1]), family=family
        )
        return transport

    def __repr__(self) -> str:
        return f"DirectOutbound(block_private={self.block_private}, connect_timeout={self.connect_timeout})"


# ------------------------------------------------------------------------------------------------- statistics


@dataclass
class ServerStats:
    """Live counters of one server. ``failures`` and ``ended`` are keyed by short reason names."""

    sessions_total: int = 0
    """Inbound connections admitted (not counting those refused by ``max_sessions``)."""
    sessions_active: int = 0
    """Admitted connections still open (handshaking, relaying or draining)."""
    bytes_up: int = 0
    """Payload bytes from clients to destinations."""
    bytes_down: int = 0
    """Payload bytes from destinations to clients."""
    datagrams_dropped: int = 0
    """UDP replies dropped: larger than one chunk, or the client was not reading."""
    parks: int = 0
    """Times a quiet session gave up its transports and parked its two connections (see ``park_idle``)."""
    wakes: int = 0
    """Times a parked session woke (a byte, EOF or error arrived) and got new transports."""
    failures: "collections.Counter[str]" = field(default_factory=collections.Counter)
    """Failures by reason: auth, replay, header, unsupported, truncated, handshake_timeout, max_sessions,
    destination_refused, connect_failed, outbound_error, protocol, destination_reset."""
    ended: "collections.Counter[str]" = field(default_factory=collections.Counter)
    """How every admitted connection ended (failures included), e.g. completed, idle_timeout, drained."""


_FAILURE_KINDS = frozenset(
    {
        "auth", "replay", "header", "unsupported", "truncated", "handshake_timeout", "destination_refused",
        "connect_failed", "outbound_error", "protocol", "destination_reset",
    }
)


def _fmt_addr(addr: Any) -> str:
    """host:port (IPv6 in brackets) for a socket address, "?" if unknown."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return "?"


# ------------------------------------------------------------------------------------------------- sessions


class _Phase(enum.Enum):
    """Where an inbound connection is: the request header, the outbound connect, the relay, or a drain."""

    HANDSHAKE = "handshake"
    CONNECTING = "connecting"
    RELAY = "relay"
    DRAINING = "draining"
    CLOSED = "closed"


class _TcpUpstream(asyncio.BufferedProtocol):
    """The destination side of a TCP session: reads into the server's shared buffer, hands bytes to the session."""

    __slots__ = ("session", "_view")

    def __init__(self, session: "_Session") -> None:
        self.session = session
        self._view = session.server._upstream_view

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session._upstream_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # conn.send() frames into new bytes (both backends), so the shared buffer is reused without a copy.
        self.session._from_destination(cast(bytes, self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.session._destination_eof()
        return True  # keep our sending side open: the client may still have bytes for the destination

    def connection_lost(self, exc: Optional[Exception]) -> None:
        session = self.session
        if session is not None:  # None: the transport was given up when the session parked
            session._upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session._set_upstream_full(True)

    def resume_writing(self) -> None:
        self.session._set_upstream_full(False)


class _UdpUpstream(asyncio.DatagramProtocol):
    """The destination side of a UDP session (command 2): one connected datagram socket."""

    __slots__ = ("session",)

    def __init__(self, session: "_Session") -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session._upstream_made(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session._datagram_from_destination(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable ...) are normal for UDP: the client just gets no reply.
        log.debug("session %d: UDP error from destination: %s", self.session.id, exc)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.session._upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session._set_upstream_full(True)

    def resume_writing(self) -> None:
        self.session._set_upstream_full(False)


class _Session(asyncio.BufferedProtocol):
    """One inbound connection: handshake (or drain), then the relay to the destination and back."""

    __slots__ = (
        "server", "loop", "id", "phase", "conn", "transport", "peer", "request", "upstream", "udp", "bytes_up",
        "bytes_down", "started", "reason", "_received", "_last_activity", "_resting", "_timer", "_open_task",
        "_pending", "_client_ended", "_dest_ended", "_eof_forwarded", "_client_write_closed", "_client_reading_paused",
        "_upstream_full", "_client_full", "_admitted", "_client_lost", "_upstream_lost_seen", "_finished", "_gone",
        "_parked", "_stale_losses", "_unpark_task",
    )

    def __init__(self, server: "VmessServer") -> None:
        self.server = server
        self.loop = server._loop
        self.id = next(server._ids)
        self.phase = _Phase.HANDSHAKE
        self.conn = ServerConnection(
            server.users, server.replay_filter, now=server._now, urandom=server._urandom, chunk_size=server._chunk_size
        )
        self.transport: Optional[asyncio.Transport] = None
        self.peer = "?"
        self.request: Optional[RequestReceived] = None
        self.upstream: Optional[asyncio.BaseTransport] = None
        self.udp = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.started = self.loop.time()
        self.reason = ""
        self._received = 0  # raw bytes read from the client
        self._last_activity = self.started
        self._resting = False  # told to rest by the server's sweeper (cipher contexts freed)
        self._timer: Optional[asyncio.TimerHandle] = None  # handshake deadline, then the close deadline
        self._open_task: Optional[asyncio.Task[None]] = None
        self._pending: List[bytes] = []  # client data decoded while the destination was being opened
        self._client_ended = False  # the client ended its direction (end marker or clean EOF)
        self._dest_ended = False  # the destination ended its direction
        self._eof_forwarded = False
        self._client_write_closed = False  # end marker sent / write_eof() called toward the client
        self._client_reading_paused = False
        self._upstream_full = False  # destination write buffer above high water: client reading paused
        self._client_full = False  # client write buffer above high water: destination reading paused
        self._admitted = False
        self._client_lost = False
        self._upstream_lost_seen = False
        self._finished = False
        self._gone = False
        self._parked: Optional[List[int]] = None  # parked descriptors not yet reattached: [client, destination]
        self._stale_losses = 0  # connection_lost calls still due from client transports given up when parking
        self._unpark_task: Optional[asyncio.Task[None]] = None

    # -------------------------------------------------------------------------------- inbound callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # duck-typed: uvloop's transports are no asyncio.Transport
        if self._parked is not None:  # waking from parking: the same connection, a new transport (see _unpark)
            self.transport = transport
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            self._update_client_reading()
            return
        self.transport = transport
        self.peer = _fmt_addr(transport.get_extra_info("peername"))
        if not self.server._admit(self):
            self.phase = _Phase.CLOSED
            transport.close()
            return
        self._admitted = True
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._timer = self.loop.call_later(self.server.handshake_timeout, self._on_handshake_deadline)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server._client_view

    def buffer_updated(self, nbytes: int) -> None:
        # The server's shared read buffer, valid only during this call. ServerConnection.receive_data copies what
        # it keeps (both backends), so the buffer is reused without a copy; its hints say bytes, hence the cast.
        data = cast(bytes, self.server._client_view[:nbytes])
        self._received += nbytes
        phase = self.phase
        if phase is _Phase.CLOSED:
            return
        if phase is _Phase.DRAINING:
            self.conn.receive_data(data)
            if self.conn.drain_remaining <= 0:
                self._finish("drained")
            return
        try:
            events = self.conn.receive_data(data)
        except VmessError as exc:
            self._client_error(exc)
            return
        self._touch()
        self._handle_events(events)

    def eof_received(self) -> bool:
        phase = self.phase
        if phase is _Phase.DRAINING:
            self._finish("drain_eof")
            return False
        if phase is _Phase.CLOSED:
            return False
        if phase is _Phase.HANDSHAKE and self._received == 0:
            self._finish("client_closed")  # a port check or an aborted client: not worth a warning
            return False
        try:
            events = self.conn.receive_eof()
        except VmessError as exc:
            self._client_error(exc)
            return False
        self._handle_events(events)
        return not self._finished  # keep sending to a client that half-closed

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._stale_losses:  # a transport given up when the session parked: the connection lives on
            self._stale_losses -= 1
            return
        self._client_lost = True
        if self._admitted and not self._finished:
            if exc is not None:  # a client reset is routine (browsers do it): an end, not a failure
                self._finish("client_reset", abort=True, detail=f"client connection lost: {exc}")
            else:
                self._finish("client_closed")
        self._maybe_gone()

    def pause_writing(self) -> None:
        self._client_full = True
        upstream = cast(Optional[asyncio.ReadTransport], self.upstream)  # duck-typed: uvloop's are no ReadTransport
        if not self.udp and hasattr(upstream, "pause_reading") and upstream is not None and not upstream.is_closing():
            upstream.pause_reading()

    def resume_writing(self) -> None:
        self._client_full = False
        upstream = cast(Optional[asyncio.ReadTransport], self.upstream)
        if not self.udp and hasattr(upstream, "pause_reading") and upstream is not None and not upstream.is_closing():
            upstream.resume_reading()

    # -------------------------------------------------------------------------------- handshake

    def _on_handshake_deadline(self) -> None:
        self._timer = None
        if self.phase is _Phase.HANDSHAKE:
            self._fail(
                "handshake_timeout",
                f"no complete request header within {self.server.handshake_timeout:g} s ({self._received} bytes received)",
            )
        elif self.phase is _Phase.DRAINING:
            self._finish("drain_timeout")

    def _client_error(self, exc: VmessError) -> None:
        """A receive failure: before the request it is a handshake failure (drained), afterwards a stream error."""
        if self.phase is not _Phase.HANDSHAKE:
            self._fail("protocol", f"client stream error: {type(exc).__name__}: {exc}")
            return
        if isinstance(exc, ReplayError):
            kind, what = "replay", "replayed request refused"
        elif isinstance(exc, AuthenticationError):
            kind, what = "auth", "authentication failed"
        elif isinstance(exc, TruncatedError):
            kind, what = "truncated", "request header truncated"
        elif isinstance(exc, UnsupportedError):
            kind, what = "unsupported", "unsupported request"
        else:
            kind, what = "header", "invalid request header"
        message = f"{what}: {type(exc).__name__}: {exc}"
        if kind == "auth" and "clock" not in str(exc):
            message += " (a client clock more than 120 s off ours also causes this)"
        self.server.stats.failures[kind] += 1
        drain = self.conn.drain_remaining if self.conn.state is ServerState.DRAINING else 0
        transport = self.transport
        if drain > 0 and transport is not None and not transport.is_closing():
            # Anti-probing (spec 3.5): read and discard, send nothing, then close; bounded by the handshake deadline.
            self.phase = _Phase.DRAINING
            log.warning("session %d from %s: %s; draining %d bytes", self.id, self.peer, message, drain)
            self._resume_client_reading()
            return
        self._finish(kind, detail=message)

    def _handle_events(self, events: List[Event]) -> None:
        # Everything decoded from one read leaves in one write (payloads are gathered, then written together).
        payloads: List[bytes] = []
        for event in events:
            if type(event) is DataReceived:
                payloads.append(event.data)
                continue
            if payloads:
                self._deliver(payloads)
                payloads = []
            if isinstance(event, RequestReceived):
                self._on_request(event)
            elif isinstance(event, StreamEnded):
                self._client_ended = True
                if self.phase is _Phase.RELAY:
                    self._forward_client_eof()
            elif isinstance(event, DataReceived):
                self._deliver([event.data])
        if payloads:
            self._deliver(payloads)

    def _deliver(self, payloads: List[bytes]) -> None:
        if self.phase is _Phase.RELAY:
            if self.udp or len(payloads) == 1:
                for data in payloads:
                    self._to_destination(data)
            else:
                self._to_destination_many(payloads)
        elif self.phase is _Phase.CONNECTING:
            self._pending.extend(payloads)

    def _on_request(self, request: RequestReceived) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.request = request
        self.udp = request.command == Command.UDP
        self.phase = _Phase.CONNECTING
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "session %d from %s user=%s %s: %s header, security %d, options 0x%02x",
                self.id, self.peer, request.user.tag, self._dest(), "legacy" if request.legacy_header else "AEAD",
                request.security, request.options,
            )
        self._update_client_reading()  # nothing more from the client until the destination is open
        self._last_activity = self.loop.time()
        self.server._sweeper.watch(self)  # idle timeout and rest, from now on
        self._open_task = self.loop.create_task(self._open_upstream(request))

    async def _open_upstream(self, request: RequestReceived) -> None:
        outbound = self.server.outbound
        try:
            try:
                if self.udp:
                    transport = await outbound.open_udp(request, _UdpUpstream(self))
                else:
                    transport = await outbound.open_tcp(request, _TcpUpstream(self))
            finally:
                self._open_task = None
        except DestinationRefusedError as exc:
            self._refuse_destination("destination_refused", str(exc))
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            reason = str(exc) or type(exc).__name__
            self._refuse_destination("connect_failed", f"cannot reach the destination: {reason}")
        except Exception as exc:  # a broken outbound must not leave the session hanging
            log.error("session %d: outbound %r failed", self.id, outbound, exc_info=True)
            self._refuse_destination("outbound_error", f"outbound error: {type(exc).__name__}: {exc}")
        else:
            if self.upstream is None:  # an outbound that did not call connection_made itself
                self._upstream_made(transport)
        finally:
            self._maybe_gone()

    def _refuse_destination(self, kind: str, message: str) -> None:
        """End a session whose destination failed: response header and end marker (a clean, empty reply), close."""
        if self._finished:
            return
        self._send_end_marker()
        self.server.stats.failures[kind] += 1
        self._finish(kind, detail=message)

    # -------------------------------------------------------------------------------- relay

    def _upstream_made(self, transport: asyncio.BaseTransport) -> None:
        if self.upstream is not None:
            return
        self.upstream = transport
        if self._finished:
            transport.abort()  # type: ignore[attr-defined]
            return
        if hasattr(transport, "set_write_buffer_limits"):
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._client_full and not self.udp and hasattr(transport, "pause_reading"):
            cast(asyncio.ReadTransport, transport).pause_reading()
        self.phase = _Phase.RELAY
        pending, self._pending = self._pending, []
        if pending:
            self._deliver(pending)
        if self._client_ended:
            self._forward_client_eof()
        self._update_client_reading()

    def _to_destination(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.is_closing():
            return
        n = len(data)
        self.bytes_up += n
        self.server.stats.bytes_up += n
        if self.udp:
            upstream.sendto(data)  # type: ignore[attr-defined]
        else:
            upstream.write(data)  # type: ignore[attr-defined]

    def _to_destination_many(self, payloads: List[bytes]) -> None:
        """Several TCP payloads in one write (vectored where the transport has ``writelines``)."""
        upstream = self.upstream
        if upstream is None or upstream.is_closing():
            return
        n = 0
        for data in payloads:
            n += len(data)
        self.bytes_up += n
        self.server.stats.bytes_up += n
        writelines = getattr(upstream, "writelines", None)
        if writelines is not None:
            writelines(payloads)
        else:
            upstream.write(b"".join(payloads))  # type: ignore[attr-defined]

    def _from_destination(self, data: bytes) -> None:
        transport = self.transport
        if self._finished or self._client_write_closed or transport is None or transport.is_closing():
            return
        try:
            wire = self.conn.send(data)
        except VmessError as exc:
            self._fail("protocol", f"cannot frame destination data: {exc}")
            return
        n = len(data)
        self.bytes_down += n
        self.server.stats.bytes_down += n
        self._touch()
        transport.write(wire)

    def _datagram_from_destination(self, data: bytes) -> None:
        transport = self.transport
        if self._finished or self._client_write_closed or transport is None or transport.is_closing() or not data:
            return
        if self._client_full or len(data) > self.conn.max_datagram:
            # UDP is lossy: a reply that does not fit one chunk, or one for a client that is not reading, is dropped.
            self.server.stats.datagrams_dropped += 1
            return
        try:
            wire = self.conn.send(data)
        except VmessError as exc:
            self._fail("protocol", f"cannot frame a datagram: {exc}")
            return
        self.bytes_down += len(data)
        self.server.stats.bytes_down += len(data)
        self._touch()
        transport.write(wire)

    def _forward_client_eof(self) -> None:
        """The client ended its direction: half-close the destination (TCP), or end the session (UDP)."""
        if self._eof_forwarded:
            return
        self._eof_forwarded = True
        if self.udp:
            self._send_end_marker()
            self._finish("completed")
            return
        upstream = self.upstream
        if upstream is not None and not upstream.is_closing():
            can = getattr(upstream, "can_write_eof", None)
            if can is not None and can():
                upstream.write_eof()  # type: ignore[attr-defined]
        if self._dest_ended:
            self._finish("completed")

    def _send_end_marker(self) -> None:
        """Response header (if unsent) and end-of-stream chunk toward the client, once."""
        transport = self.transport
        if self._client_write_closed or transport is None or transport.is_closing():
            return
        self._client_write_closed = True
        try:
            wire = self.conn.send_eof()
        except VmessError:
            return
        if wire:
            transport.write(wire)

    def _destination_eof(self) -> None:
        if self._finished or self._dest_ended:
            return
        self._dest_ended = True
        self._send_end_marker()
        if self._client_ended:
            self._finish("completed")
            return
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()  # half-close toward the client; keep reading what it still sends
        if transport is not None and not getattr(transport, "half_closes", True) and self._timer is None:
            self._timer = self.loop.call_later(END_LINGER, self._end_linger)

    def _end_linger(self) -> None:
        """TLS / WebSocket: the destination ended, the client has not; close once it is quiet (see END_LINGER)."""
        self._timer = None
        if self._finished:
            return
        quiet = self.loop.time() - self._last_activity
        if quiet >= END_LINGER:
            self._finish("destination_closed")
        else:
            self._timer = self.loop.call_later(END_LINGER - quiet, self._end_linger)

    def _upstream_lost(self, exc: Optional[Exception]) -> None:
        self._upstream_lost_seen = True
        if not self._finished:
            if self._dest_ended:
                self._finish("completed" if self._client_ended else "destination_closed")
            elif exc is not None:
                # Closed without an end marker: a strict client sees a truncated stream (VMess has no error code).
                self._fail("destination_reset", f"destination connection lost: {exc}")
            else:
                if not self.udp:
                    self._destination_eof()
                self._finish("destination_closed")
        self._maybe_gone()

    def _set_upstream_full(self, full: bool) -> None:
        self._upstream_full = full
        self._update_client_reading()

    def _update_client_reading(self) -> None:
        if self.phase is _Phase.CONNECTING or (self.phase is _Phase.RELAY and self._upstream_full):
            self._pause_client_reading()
        else:
            self._resume_client_reading()

    def _pause_client_reading(self) -> None:
        transport = self.transport
        if not self._client_reading_paused and transport is not None and not transport.is_closing():
            transport.pause_reading()
            self._client_reading_paused = True

    def _resume_client_reading(self) -> None:
        transport = self.transport
        if self._client_reading_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()
            self._client_reading_paused = False

    def _touch(self) -> None:
        """Traffic: note the time, and wake a resting session (its ciphers were just made again)."""
        self._last_activity = self.loop.time()
        if self._resting:
            self._resting = False
            self.server._sweeper.woke(self)

    def idle_expired(self) -> None:
        """The sweeper's call: no byte either way for ``idle_timeout`` seconds."""
        self._finish("idle_timeout", abort=True)

    def rest(self) -> None:
        """The sweeper's call: quiet for a moment; free the cipher contexts until the next byte."""
        self._resting = True
        self.conn.release()

    # -------------------------------------------------------------------------------- parking (vmess._parking)

    def park(self) -> bool:
        """The sweeper's call: quiet for longer; give up both transports, keep the connections (True if parked)."""
        lot = self.server._parking
        if (
            lot is None or self._finished or self.phase is not _Phase.RELAY or self.udp or self._parked is not None
            or self._client_ended or self._dest_ended or self._eof_forwarded or self._client_write_closed
            or self._client_reading_paused or self._upstream_full or self._client_full or self._pending
        ):
            return False
        transport, upstream = self.transport, self.upstream
        old_protocol = upstream.get_protocol() if upstream is not None else None  # type: ignore[attr-defined]
        fds = lot.park(self, (transport, upstream))
        if fds is None:
            return False
        self._parked = list(fds)
        self._stale_losses += 1
        if isinstance(old_protocol, _TcpUpstream):
            old_protocol.session = None  # type: ignore[assignment]
        self.transport = self.upstream = None
        self.server.stats.parks += 1
        log.debug("session %d: quiet, parked", self.id)
        return True

    def wake(self) -> None:
        """The parking lot's call: a parked socket turned readable; reattach both connections."""
        fds = self._parked
        if fds is None or self._unpark_task is not None or self._finished:
            return
        self.server._parking.release(fds)  # type: ignore[union-attr]
        self.server.stats.wakes += 1
        log.debug("session %d: woken", self.id)
        self._unpark_task = self.loop.create_task(self._unpark())

    async def _unpark(self) -> None:
        # The client side first, in the CONNECTING phase: what it sends (data, EOF) waits in _pending exactly as
        # while a destination is being opened (uvloop starts reading right after connection_made, whatever the
        # protocol asks). The destination side's connection_made (_upstream_made) then resumes the relay.
        fds = self._parked
        assert fds is not None
        self.phase = _Phase.CONNECTING
        try:
            await reattach(self.loop, fds.pop(0), self)
            self._update_client_reading()
            await reattach(self.loop, fds.pop(0), _TcpUpstream(self))
        except asyncio.CancelledError:
            return  # _finish cancelled us and closed what was attached; _finish_parked closes the rest
        except OSError as exc:
            self._unpark_task = None
            self._fail("protocol", f"cannot resume a parked session: {exc}")
            return
        finally:
            if self._unpark_task is asyncio.current_task():
                self._unpark_task = None
        self._parked = None
        if not self._finished:
            self._touch()

    def _finish_parked(self) -> None:
        """End a parked session's connections that are still bare descriptors (not reattached)."""
        fds, self._parked = self._parked, None
        if fds is None:
            return
        if drop_parked(self.server._parking, fds, self._unpark_task):
            self._unpark_task = None
        if self.transport is None:
            self._client_lost = True
        if self.upstream is None:
            self._upstream_lost_seen = True

    # -------------------------------------------------------------------------------- ending

    def _fail(self, kind: str, message: str) -> None:
        if self._finished:
            return
        self.server.stats.failures[kind] += 1
        self._finish(kind, abort=True, detail=message)

    def _dest(self) -> str:
        request = self.request
        if request is None:
            return "-"
        host = f"[{request.host}]" if ":" in request.host else request.host
        return f"{'udp' if self.udp else 'tcp'}:{host}:{request.port}"

    def _finish(self, reason: str, *, abort: bool = False, detail: str = "") -> None:
        """End the session once: log one line, stop timers and the open task, close (or abort) both transports."""
        if self._finished:
            return
        self._finished = True
        self.reason = reason
        self.phase = _Phase.CLOSED
        self.server._sweeper.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._open_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._admitted:
            self.server.stats.ended[reason] += 1
            failed = reason in _FAILURE_KINDS
            if self.request is not None:
                level = logging.WARNING if failed else logging.INFO
                if log.isEnabledFor(level):  # the arguments cost microseconds (the user's tag is a hash)
                    log.log(
                        level,
                        "session %d from %s user=%s %s up=%d down=%d duration=%.3fs end=%s%s",
                        self.id, self.peer, self.request.user.tag, self._dest(), self.bytes_up, self.bytes_down,
                        self.loop.time() - self.started, reason, f": {detail}" if detail else "",
                    )
            elif detail:
                log.warning("session %d from %s: %s", self.id, self.peer, detail)
            else:
                log.debug("session %d from %s: closed before a request (%s)", self.id, self.peer, reason)
        self.conn.close()
        self._finish_parked()
        for transport in (self.transport, self.upstream):
            if transport is None:
                continue
            if abort:
                transport.abort()  # type: ignore[attr-defined]
            elif not transport.is_closing():
                transport.close()
        if not abort:
            # A graceful close flushes write buffers; a peer that never reads must not hold the session forever.
            self._timer = self.loop.call_later(self.server.idle_timeout, self._abort_leftovers)
        self._maybe_gone()

    def abort(self, reason: str) -> None:
        """Close the session at once (server close or shutdown deadline)."""
        if self._finished:
            self._abort_leftovers()
        else:
            self._finish(reason, abort=True)

    def _abort_leftovers(self) -> None:
        self._timer = None
        for transport in (self.transport, self.upstream):
            if transport is not None:
                transport.abort()  # type: ignore[attr-defined]

    def _maybe_gone(self) -> None:
        """Tell the server once both sockets are closed and no connect is in progress."""
        if self._gone or not self._finished or not self._client_lost or self._open_task is not None:
            return
        if self.upstream is not None and not self._upstream_lost_seen:
            return
        if self._unpark_task is not None:
            return
        self._gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._admitted:
            self.server._session_gone(self)


# ------------------------------------------------------------------------------------------------- the server


def _user_table(users: UserSpec) -> UserTable:
    """A UserTable from any accepted ``users`` form."""
    if isinstance(users, UserTable):
        return users
    items: Iterable[Any] = [users] if isinstance(users, (str, bytes, uuid.UUID)) else users
    table = UserTable()
    for item in items:
        if isinstance(item, tuple):
            if len(item) == 2:
                table.add(item[0], int(item[1]))
            elif len(item) == 3:
                table.add(item[0], int(item[1]), str(item[2]))
            else:
                raise ValueError("a user tuple is (uuid, alter_id) or (uuid, alter_id, name)")
        else:
            table.add(item)
    if not len(table):
        raise ValueError("start_server needs at least one user")
    return table


class VmessServer:
    """A running VMess server (see :func:`start_server`): listening sockets, sessions and counters."""

    def __init__(
        self,
        users: UserTable,
        *,
        outbound: Outbound,
        handshake_timeout: float,
        idle_timeout: float,
        max_sessions: Optional[int],
        replay_filter: ReplayFilter,
        now: Callable[[], float],
        urandom: Callable[[int], bytes],
        chunk_size: int,
        park_idle: Optional[float] = PARK_AFTER,
    ) -> None:
        self.users = users
        self.outbound = outbound
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.replay_filter = replay_filter
        self.stats = ServerStats()
        self._now = now
        self._urandom = urandom
        self._chunk_size = chunk_size
        self._loop = asyncio.get_running_loop()
        # Shared read buffers (see READ_BUFFER_SIZE): client reads and destination reads, one each per server.
        self._client_view = memoryview(bytearray(READ_BUFFER_SIZE))
        self._upstream_view = memoryview(bytearray(READ_BUFFER_SIZE))
        self._ids = itertools.count(1)
        self._sweeper = Sweeper(self._loop, idle_timeout, park_after=park_idle)
        self._parking = self._sweeper.parking  # None where parking is off or unsupported
        self._sessions: Set[_Session] = set()
        self._server: Optional[asyncio.Server] = None
        self._closing = False
        self._closed = self._loop.create_future()
        self._empty = asyncio.Event()
        self._empty.set()

    async def _listen(self, host: Optional[str], port: int, *, websocket: Any = None, **kwargs: Any) -> None:
        factory: Callable[[], asyncio.BaseProtocol] = lambda: _Session(self)
        if websocket is not None or kwargs.get("ssl") is not None:
            from .transport import wrap_server_factory  # WebSocket / TLS relays in front of _Session

            factory = wrap_server_factory(factory, websocket=websocket, tls=kwargs.get("ssl") is not None)
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        self._server = await self._loop.create_server(factory, host, port, **kwargs)

    # --- addresses
    @property
    def sockets(self) -> Tuple[Any, ...]:
        """The listening sockets (empty once closed)."""
        if self._server is None or self._closing:
            return ()
        return tuple(self._server.sockets)

    @property
    def address(self) -> Tuple[str, int]:
        """(host, port) of the first listening socket."""
        socks = self.sockets
        if not socks:
            raise RuntimeError("server is not listening")
        name = socks[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def port(self) -> int:
        """Port of the first listening socket."""
        return self.address[1]

    def is_serving(self) -> bool:
        return self._server is not None and not self._closing

    def buffered_bytes(self) -> int:
        """Bytes waiting in the write buffers of every session's transports (both directions)."""
        total = 0
        for session in self._sessions:
            for transport in (session.transport, session.upstream):
                if transport is not None and not transport.is_closing():
                    total += transport.get_write_buffer_size()  # type: ignore[attr-defined]
        return total

    # --- sessions
    def _admit(self, session: _Session) -> bool:
        if self._closing:
            return False
        if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
            self.stats.failures["max_sessions"] += 1
            log.warning(
                "refusing connection from %s: %d sessions open (max_sessions=%d)",
                session.peer, len(self._sessions), self.max_sessions,
            )
            return False
        self._sessions.add(session)
        self._empty.clear()
        self.stats.sessions_total += 1
        self.stats.sessions_active = len(self._sessions)
        return True

    def _session_gone(self, session: _Session) -> None:
        self._sessions.discard(session)
        self.stats.sessions_active = len(self._sessions)
        if not self._sessions:
            self._empty.set()

    # --- life cycle
    def _stop_listening(self) -> None:
        if not self._closing:
            self._closing = True
            if self._server is not None:
                self._server.close()

    def close(self) -> None:
        """Stop accepting and abort every session now."""
        self._stop_listening()
        for session in list(self._sessions):
            session.abort("server_closed")
        if self._parking is not None:
            self._parking.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the listener is closed and every session's sockets are gone."""
        await asyncio.shield(self._closed)
        if self._server is not None:
            await self._server.wait_closed()
        await self._empty.wait()

    async def shutdown(self, deadline: float = 30.0) -> None:
        """Stop accepting, give sessions in flight up to ``deadline`` seconds to finish, then abort the rest."""
        self._stop_listening()
        if self._sessions:
            log.info("shutting down: waiting up to %gs for %d sessions", deadline, len(self._sessions))
            try:
                await asyncio.wait_for(self._empty.wait(), deadline)
            except asyncio.TimeoutError:
                log.info("shutdown deadline reached: closing %d sessions", len(self._sessions))
        self.close()
        await self.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` (or until cancelled, which closes the server)."""
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self) -> "VmessServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        where = _fmt_addr(self.address) if self.sockets else "closed"
        return f"<VmessServer {where} users={len(self.users)} sessions={len(self._sessions)}>"


async def start_server(
    users: UserSpec,
    host: Optional[str] = "127.0.0.1",
    port: int = 0,
    *,
    outbound: Optional[Outbound] = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_sessions: Optional[int] = DEFAULT_MAX_SESSIONS,
    block_private: bool = False,
    replay_filter: Optional[ReplayFilter] = None,
    now: Callable[[], float] = time.time,
    urandom: Callable[[int], bytes] = os.urandom,
    chunk_size: int = 16384,
    websocket: Any = None,
    park_idle: Optional[float] = PARK_AFTER,
    **listen_kwargs: Any,
) -> VmessServer:
    """Start a VMess server on ``host:port`` (port 0: any free port) and return it, already listening.

    ``users`` is a :class:`UserTable` or UUIDs / strings / ``(uuid, alter_id)`` pairs. ``outbound`` defaults to a
    :class:`DirectOutbound`; ``block_private`` configures that default (combining it with your own outbound is
    an error, so the option is never silently ignored). ``max_sessions=None`` means no limit. ``now`` and
    ``urandom`` are the clock and randomness given to every :class:`ServerConnection`. Further keyword arguments
    go to ``loop.create_server`` (``reuse_port``, ``backlog`` ...). Transports: ``ssl=`` an ``SSLContext``
    (``vmess.transport.server_context(cert, key)``) serves TLS; ``websocket=`` a
    ``vmess.transport.WebSocketServerSettings`` (or just its path) serves WebSocket; both together serve ws+tls.
    ``park_idle``: seconds without traffic after which a plain-TCP session gives up its two loop transports and
    waits as bare sockets in one epoll set (about 2.4 KB less per idle session; it wakes on the next byte, EOF or
    error; see :mod:`vmess._parking`). None or 0 keeps every session's transports.
    """
    if outbound is None:
        outbound = DirectOutbound(block_private=block_private)
    elif block_private:
        raise ValueError("block_private configures the default DirectOutbound; pass DirectOutbound(block_private=True)")
    if handshake_timeout <= 0 or idle_timeout <= 0:
        raise ValueError("timeouts must be positive")
    if max_sessions is not None and max_sessions < 1:
        raise ValueError("max_sessions must be at least 1 (or None for no limit)")
    server = VmessServer(
        _user_table(users),
        outbound=outbound,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        max_sessions=max_sessions,
        replay_filter=replay_filter if replay_filter is not None else MemoryReplayFilter(),
        now=now,
        urandom=urandom,
        chunk_size=chunk_size,
        park_idle=park_idle,
    )
    await server._listen(host, port, websocket=websocket, **listen_kwargs)
    log.info("listening on %s (%d users)", ", ".join(_fmt_addr(s.getsockname()) for s in server.sockets),
             len(server.users))
    return server

"""The local proxy inbound: one TCP port speaking SOCKS5 and HTTP proxy, every session carried over VMess.

The first byte picks the protocol (0x05: SOCKS5, anything else: HTTP). Each SOCKS5 CONNECT, HTTP CONNECT or
absolute-URI request becomes one VMess TCP connection; a SOCKS5 UDP ASSOCIATE gets a UDP socket whose datagrams go
to one VMess UDP session per destination (:func:`vmess.aio.open_udp`). The share link is parsed once at start, so a
bad link or an unimplemented transport fails before anything listens. Log lines (logger ``vmess.inbound``) name
the client, method, destination, byte counts and outcome, never the user ID or credentials.

Each local connection is one :class:`_Inbound` protocol. A short task runs its handshake (the SOCKS5 / HTTP parsers
over the protocol's own buffer) and opens the VMess connection; then the session is relayed at protocol level
(:class:`vmess.relay.LocalRelay`: no task, no StreamReader) and the task ends, so an idle session holds only its
protocol objects, ciphers and sockets.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from .._sweep import PARK_AFTER, Sweeper
from ..aio import ProxySpec, VmessDatagramStream, open_udp, resolve_proxy
from ..config import VmessConfig
from ..errors import ChunkTooLargeError, ConfigError, VmessError
from ..relay import GRACEFUL_CLOSE, READ_SIZE, LocalRelay, VmessUpstream, open_upstream
from ..relay import describe as _describe
from . import http as httpc
from . import socks5
from .errors import HttpProxyError, Socks5Error

__all__ = ["LocalProxy", "ProxyStats", "start_local_proxy"]

log = logging.getLogger("vmess.inbound")

HANDSHAKE_LIMIT = 64 * 1024
"""Bytes a client may have buffered during its handshake; above that, reading from it pauses."""
UDP_QUEUE = 256
"""Datagrams waiting for one VMess UDP session (while it connects or drains); more are dropped."""
LINGER = 1.0
"""Seconds to keep reading a refused HTTP client so that the refusal is not lost to a reset."""

_T = TypeVar("_T")
_UNSPECIFIED = {"0.0.0.0", "::"}


@dataclass
class ProxyStats:
    """Counters since start (payload bytes: up = local client -> VMess, down = VMess -> local client)."""

    connections: int = 0
    sessions: int = 0
    active: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    udp_sessions: int = 0


class _ClientGone(Exception):
    """The local client closed the connection during the handshake."""


def _fmt_addr(addr: Any) -> str:
    """host:port of a socket address ([v6]:port), or '?'."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _fmt_target(host: str, port: int) -> str:
    """host:port of a destination, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _socks_reply_for(exc: BaseException) -> int:
    """SOCKS5 reply code for a failure to open the VMess connection."""
    if isinstance(exc, ConnectionRefusedError):
        return socks5.Reply.CONNECTION_REFUSED
    if isinstance(exc, (asyncio.TimeoutError, socket.gaierror)):
        return socks5.Reply.HOST_UNREACHABLE
    if isinstance(exc, OSError):
        if exc.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
            return socks5.Reply.HOST_UNREACHABLE
        if exc.errno == errno.ENETUNREACH:
            return socks5.Reply.NETWORK_UNREACHABLE
    return socks5.Reply.GENERAL_FAILURE


def _http_status_for(exc: BaseException) -> int:
    """HTTP status for a failure to open the VMess connection."""
    return 504 if isinstance(exc, asyncio.TimeoutError) else 502


def _same_host(a: str, b: str) -> bool:
    """Whether two IP literals name the same host (IPv4-mapped IPv6 equals its IPv4)."""
    try:
        ia, ib = ipaddress.ip_address(a.split("%", 1)[0]), ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b
    if isinstance(ia, ipaddress.IPv6Address) and ia.ipv4_mapped is not None:
        ia = ia.ipv4_mapped
    if isinstance(ib, ipaddress.IPv6Address) and ib.ipv4_mapped is not None:
        ib = ib.ipv4_mapped
    return ia == ib


def _set_result(fut: Optional["asyncio.Future[None]"]) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class _Inbound(LocalRelay):
    """One local connection: its handshake (bytes gathered in ``buf`` for the task that parses them), then the
    protocol-level relay. It also carries what the session did, for its log line and the counters."""

    __slots__ = (
        "proxy", "buf", "_eof", "_lost", "_discard", "_waiter", "_deadline_at", "_deadline_handle", "_full",
        "_drain_waiter", "_ended", "_gone",
        "client", "method", "target", "up", "down", "started", "outcome", "failed",
    )

    def __init__(self, proxy: "LocalProxy") -> None:
        super().__init__(proxy._loop, proxy._local_view)
        self.proxy = proxy
        self.buf: bytearray = bytearray()
        self._eof = False  # the client half-closed during the handshake
        self._lost = False
        self._discard = False  # drop what the client sends (a refused request, a UDP control connection)
        self._waiter: Optional[asyncio.Future[None]] = None
        self._deadline_at: Optional[float] = None  # one timer for the handshake's reads (not one per read)
        self._deadline_handle: Optional[asyncio.TimerHandle] = None
        self._full = False
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self._ended = False  # counted and logged
        self._gone = True  # not (yet) among the proxy's live connections
        self.client = "?"
        self.method = "-"
        self.target = "-"
        self.up = 0
        self.down = 0
        self.started = 0.0
        self.outcome = "ok"
        self.failed = False

    def fail(self, outcome: str) -> None:
        """Record a failure (the first one wins)."""
        if not self.failed:
            self.failed = True
            self.outcome = outcome

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._parked is not None:  # the same connection back from parking (LocalRelay.park): not a new one
            return
        proxy = self.proxy
        if proxy._closing:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._gone = False
        proxy._live.add(self)
        stats = proxy.stats
        stats.connections += 1
        stats.active += 1
        self.client = _fmt_addr(transport.get_extra_info("peername"))
        self.started = self.loop.time()
        task = self.loop.create_task(proxy._serve(self))
        proxy._tasks.add(task)
        task.add_done_callback(proxy._task_done)

    # --- handshake phase (LocalRelay hooks)
    def handshake_data(self, data: memoryview) -> None:
        if self._discard:
            return
        self.buf += data
        if len(self.buf) > HANDSHAKE_LIMIT and not self._local_paused:
            self._local_paused = True
            self.transport.pause_reading()
        _set_result(self._waiter)

    def handshake_eof(self) -> None:
        self._eof = True
        _set_result(self._waiter)

    def handshake_lost(self, exc: Optional[Exception]) -> None:
        self._lost = True
        _set_result(self._waiter)
        _set_result(self._drain_waiter)

    def handshake_full(self, full: bool) -> None:
        self._full = full
        if not full:
            _set_result(self._drain_waiter)

    async def read_more(self, deadline: Optional[float]) -> None:
        """Wait until more bytes are in ``buf`` (or the client half-closed): _ClientGone at EOF, TimeoutError at
        ``deadline`` (a loop time; None waits for ever)."""
        if self._eof or self._lost:
            raise _ClientGone
        if deadline is not None:
            if self.loop.time() >= deadline:
                raise asyncio.TimeoutError
            if deadline != self._deadline_at:
                self._cancel_deadline()
                self._deadline_at = deadline
                self._deadline_handle = self.loop.call_at(deadline, self._on_deadline)
        else:
            self._cancel_deadline()
        if self._local_paused and len(self.buf) <= HANDSHAKE_LIMIT:
            self._local_paused = False
            self.transport.resume_reading()
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        self._deadline_at = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())

    def _cancel_deadline(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        self._deadline_at = None

    def discard_input(self) -> None:
        """From now on, drop whatever the client sends (and what it sent already)."""
        self._discard = True
        self.buf.clear()
        if self._local_paused:
            self._local_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send handshake bytes (a reply) to the client."""
        if not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's write buffer is above its high-water mark; ConnectionResetError once it is gone."""
        if self._full and not self._lost:
            waiter = self._drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("client connection lost")

    def write_eof(self) -> None:
        """Half-close toward the client if it is still open; a client already gone is not an error here."""
        try:
            if not self.transport.is_closing() and self.transport.can_write_eof():
                self.transport.write_eof()
        except (OSError, RuntimeError):
            pass

    def relay_now(self, upstream: VmessUpstream, reply: bytes, **kwargs: Any) -> None:
        """Send ``reply`` and hand the session to the relay, with what the client sent past its request."""
        self._cancel_deadline()
        self.write(reply)
        first = bytes(self.buf)
        self.buf = bytearray()  # the relay reads into the shared buffer: keep nothing per session
        self.start_relay(upstream, first, sweeper=self.proxy._sweeper, client_eof=self._eof, **kwargs)

    def end_handshake(self, graceful: bool) -> None:
        """A session that did not reach the relay: close (flushing what was written) or abort, then account."""
        self._cancel_deadline()
        transport = self.transport
        if graceful:
            if not transport.is_closing():
                transport.close()
                self._closer = self.loop.call_later(GRACEFUL_CLOSE, transport.abort)
        else:
            transport.abort()
        self.account()

    # --- relay phase (LocalRelay hooks)
    def relay_count(self, up: bool, n: int) -> None:
        stats = self.proxy.stats
        if up:
            self.up += n
            stats.bytes_up += n
        else:
            self.down += n
            stats.bytes_down += n

    def relay_finished(self, graceful: bool, outcome: Optional[str], failure: Optional[str]) -> None:
        if failure is not None:
            self.fail(failure)
        elif outcome is not None and not self.failed:
            self.outcome = outcome
        self.account()

    def relay_gone(self) -> None:
        if not self._gone:
            self._gone = True
            self.proxy._forget(self)

    # --- the end
    def account(self) -> None:
        """Count and log the session, once."""
        if self._ended:
            return
        self._ended = True
        stats = self.proxy.stats
        stats.active -= 1
        if self.failed:
            stats.failed += 1
        now = self.loop.time()
        if self.method == "-" and self.outcome == "client closed during handshake":
            log.debug("%s closed without a request", self.client)
            return
        log.info(
            "%s %s %s up=%d down=%d %.3fs %s",
            self.client, self.method, self.target, self.up, self.down, now - self.started, self.outcome,
        )


class LocalProxy:
    """A running local SOCKS5 + HTTP proxy; use :func:`start_local_proxy` to make one."""

    def __init__(
        self,
        upstream: tuple[tuple[str, int], VmessConfig],
        *,
        auth: tuple[str, str] | None,
        connect_timeout: float,
        idle_timeout: float,
        udp_timeout: float,
        handshake_timeout: float,
        max_udp_sessions: int,
        clock_offset: float = 0.0,
        park_idle: Optional[float] = PARK_AFTER,
    ) -> None:
        self._upstream: Any = upstream
        self.clock_offset = clock_offset
        self._server_addr: tuple[str, int] = upstream[0]
        self._config: VmessConfig = upstream[1]
        self._transport_settings: Any = upstream[2] if len(upstream) > 2 else None  # type: ignore[misc]
        self._auth = auth
        self._auth_bytes = (auth[0].encode("utf-8"), auth[1].encode("utf-8")) if auth else None
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.udp_timeout = udp_timeout
        self.handshake_timeout = handshake_timeout
        self.max_udp_sessions = max_udp_sessions
        self.stats = ProxyStats()
        self._server: Optional[asyncio.AbstractServer] = None
        self._loop = asyncio.get_running_loop()
        # Shared read buffers (see vmess.relay): local client reads, and VMess reads.
        self._local_view = memoryview(bytearray(READ_SIZE))
        self._vmess_view = memoryview(bytearray(READ_SIZE))
        self._sweeper = Sweeper(self._loop, idle_timeout, park_after=park_idle)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: set[_Inbound] = set()
        self._all_gone: Optional[asyncio.Future[None]] = None
        self._closing = False
        self._address: tuple[str, int] = ("", 0)

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def _start(self, host: str, port: int) -> None:
        """Bind and start accepting (called by start_local_proxy)."""
        self._server = await self._loop.create_server(lambda: _Inbound(self), host, port)
        name = self._server.sockets[0].getsockname()
        self._address = (str(name[0]), int(name[1]))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()  # type: ignore[attr-defined]

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listening socket (still known after close)."""
        return self._address

    @property
    def port(self) -> int:
        """The TCP port (useful after binding port 0)."""
        return self.address[1]

    @property
    def upstream(self) -> tuple[str, int]:
        """The VMess server's (host, port)."""
        return self._server_addr

    def close(self) -> None:
        """Stop listening and end every session (their VMess connections are closed too)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for inbound in list(self._live):
            if inbound.relaying:
                inbound.abort_relay("proxy shutting down")
        if self._sweeper.parking is not None:
            self._sweeper.parking.close()  # every parked session was just aborted

    async def wait_closed(self) -> None:
        """Wait until the listener and every session have finished."""
        if self._server is not None:
            await self._server.wait_closed()
        while self._tasks or self._live:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            elif self._live:
                self._all_gone = self._loop.create_future()
                await self._all_gone

    async def serve_forever(self) -> None:
        """Serve until cancelled (the listener is already accepting)."""
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> "LocalProxy":
        """Already serving; just hand back the proxy."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close and wait for every session to end."""
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        """Address, upstream server and session count (never the user ID)."""
        where = _fmt_addr(self.address) + ("" if self.sockets else " (closed)")
        return f"<LocalProxy {where} -> {_fmt_addr(self.upstream)} sessions={self.stats.sessions}>"

    # ------------------------------------------------------------------------------------------------ helpers

    def _task_done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("local proxy session failed", exc_info=task.exception())

    def _forget(self, inbound: _Inbound) -> None:
        self._live.discard(inbound)
        if not self._live:
            _set_result(self._all_gone)

    async def _open(self, host: str, port: int) -> VmessUpstream:
        """One VMess TCP connection to host:port through the configured server."""
        return await open_upstream(
            self._server_addr, self._config, self._transport_settings, host, port, self._vmess_view,
            connect_timeout=self.connect_timeout, now=self._now,
        )

    def _now(self) -> float:
        """The clock request headers are stamped with: this machine's, shifted by ``clock_offset``."""
        return time.time() + self.clock_offset

    async def _read_message(
        self,
        inb: _Inbound,
        parse: Callable[[bytearray], Optional[tuple[_T, int]]],
        deadline: float,
    ) -> _T:
        """Wait until ``parse`` finds a message in the client's bytes; consume its bytes and return it."""
        while True:
            result = parse(inb.buf)
            if result is not None:
                message, used = result
                del inb.buf[:used]
                return message
            await inb.read_more(deadline)

    def _count(self, session: _Inbound, up: bool, n: int) -> None:
        """Add relayed payload bytes to the session and the proxy totals."""
        session.relay_count(up, n)

    # ------------------------------------------------------------------------------------------------ accept

    async def _serve(self, inb: _Inbound) -> None:
        """Serve one local connection's handshake: detect the protocol, then hand off to the relay (or end)."""
        clean = False
        try:
            deadline = self._loop.time() + self.handshake_timeout
            if not inb.buf:
                await inb.read_more(deadline)
            if not inb.buf:
                raise _ClientGone
            first = inb.buf[0]
            if first == socks5.VERSION:
                inb.method = "socks5"
                clean = await self._serve_socks5(inb, deadline)
            elif first == 0x04:
                inb.method = "socks4"
                inb.fail("SOCKS4 is not supported")
            else:
                inb.method = "http"
                clean = await self._serve_http(inb, deadline)
        except _ClientGone:
            inb.fail("client closed during handshake")
        except asyncio.TimeoutError:
            inb.fail("handshake timeout")
        except asyncio.CancelledError:
            # Ends normally (the proxy is closing): the session is accounted for below like any other.
            if not inb.failed:
                inb.outcome = "proxy shutting down"
        except (OSError, VmessError) as exc:
            inb.fail(_describe(exc))
        finally:
            if not inb.relaying:  # a relayed session ends (and is accounted for) on its own
                inb.end_handshake(clean)

    # ------------------------------------------------------------------------------------------------ SOCKS5

    async def _serve_socks5(self, inb: _Inbound, deadline: float) -> bool:
        """RFC 1928 handshake, then CONNECT or UDP ASSOCIATE; returns whether the close may be graceful."""
        try:
            greeting = await self._read_message(inb, socks5.parse_greeting, deadline)
        except Socks5Error as exc:
            inb.fail(f"bad greeting: {exc}")
            return False
        method = socks5.select_method(greeting, auth_required=self._auth is not None)
        inb.write(socks5.build_method_selection(method))
        if method == socks5.Method.NO_ACCEPTABLE:
            inb.fail("no acceptable authentication method")
            return True
        if method == socks5.Method.USERNAME_PASSWORD:
            try:
                creds = await self._read_message(inb, socks5.parse_auth_request, deadline)
            except Socks5Error as exc:
                inb.fail(f"bad authentication request: {exc}")
                return False
            ok = self._check_credentials(creds.username, creds.password)
            inb.write(socks5.build_auth_reply(ok))
            if not ok:
                inb.fail("authentication failed")
                return True
        try:
            request = await self._read_message(inb, socks5.parse_request, deadline)
        except Socks5Error as exc:
            if exc.reply is not None:
                inb.write(socks5.build_reply(exc.reply))
            inb.fail(f"refused request: {exc}")
            return exc.reply is not None
        inb.target = _fmt_target(request.host, request.port)
        if request.command == socks5.Command.CONNECT:
            inb.method = "socks5-connect"
            return await self._socks_connect(inb, request)
        inb.method = "socks5-udp"
        return await self._socks_udp(inb, request)

    def _check_credentials(self, username: bytes, password: bytes) -> bool:
        """RFC 1929 check in constant time; without configured auth any credentials are accepted."""
        if self._auth_bytes is None:
            return True
        user_ok = hmac.compare_digest(username, self._auth_bytes[0])
        pass_ok = hmac.compare_digest(password, self._auth_bytes[1])
        return user_ok and pass_ok

    async def _socks_connect(self, inb: _Inbound, request: socks5.Request) -> bool:
        """CONNECT: open the VMess connection, answer with the matching reply code, relay."""
        try:
            upstream = await self._open(request.host, request.port)
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            inb.write(socks5.build_reply(_socks_reply_for(exc)))
            inb.fail(f"upstream: {_describe(exc) if not isinstance(exc, asyncio.TimeoutError) else 'timeout'}")
            return True
        self.stats.sessions += 1
        if inb._lost or inb.transport.is_closing():
            upstream.close()
            inb.fail("client: connection lost")
            return False
        bound = inb.transport.get_extra_info("sockname")
        inb.relay_now(upstream, socks5.build_reply(socks5.Reply.SUCCEEDED, bound[0], bound[1]))
        return True

    async def _socks_udp(self, inb: _Inbound, request: socks5.Request) -> bool:
        """UDP ASSOCIATE: bind a UDP relay next to the control connection and serve it until that closes."""
        local_host = inb.transport.get_extra_info("sockname")[0]
        peer_host = inb.transport.get_extra_info("peername")[0]
        expected_port = request.port or None
        assoc = _UdpAssociation(self, inb, peer_host, expected_port)
        try:
            transport, _ = await self._loop.create_datagram_endpoint(lambda: assoc, local_addr=(local_host, 0))
        except OSError as exc:
            inb.write(socks5.build_reply(socks5.Reply.GENERAL_FAILURE))
            inb.fail(f"UDP bind: {_describe(exc)}")
            return True
        self.stats.sessions += 1
        try:
            bound = transport.get_extra_info("sockname")
            inb.target = f"udp relay {_fmt_addr(bound)}"
            inb.write(socks5.build_reply(socks5.Reply.SUCCEEDED, bound[0], bound[1]))
            await inb.drain()
            await assoc.run(inb)
        finally:
            await assoc.close()
        inb.target = f"udp ({assoc.opened} destination session(s))"
        return True

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _serve_http(self, inb: _Inbound, deadline: float) -> bool:
        """An HTTP proxy request: CONNECT tunnel or one absolute-URI request; returns whether to close gracefully."""
        scanned = 0

        def parse(data: bytearray) -> Optional[tuple[httpc.RequestHead, int]]:
            # Re-parse only when a line ended since the last try: a head trickled in byte by byte costs O(n).
            nonlocal scanned
            if scanned and data.find(b"\n", scanned) < 0 and len(data) <= httpc.MAX_HEAD_SIZE:
                scanned = len(data)
                return None
            scanned = len(data)
            return httpc.parse_request_head(data, httpc.MAX_HEAD_SIZE)

        try:
            head = await self._read_message(inb, parse, deadline)
            inb.method = f"http-{head.method}"
            request = httpc.parse_proxy_request(head)
        except HttpProxyError as exc:
            inb.fail(f"{exc.status} {exc}")
            await self._refuse_http(inb, httpc.error_response(exc.status, str(exc)))
            return True
        inb.target = _fmt_target(request.host, request.port)
        if self._auth is not None and not httpc.check_proxy_auth(head, *self._auth):
            inb.fail("407 proxy authentication required")
            await self._refuse_http(inb, httpc.error_response(407))
            return True
        try:
            upstream = await self._open(request.host, request.port)
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            status = _http_status_for(exc)
            inb.fail(f"{status} upstream: {_describe(exc) if status != 504 else 'timeout'}")
            await self._refuse_http(inb, httpc.error_response(status))
            return True
        self.stats.sessions += 1
        if inb._lost or inb.transport.is_closing():
            upstream.close()
            inb.fail("client: connection lost")
            return False
        if request.is_connect:
            inb.relay_now(upstream, httpc.CONNECT_ESTABLISHED)
        else:
            inb.relay_now(
                upstream, b"", head=httpc.origin_request_head(request), up_limit=request.body_length, http=True
            )
        return True

    async def _refuse_http(self, inb: _Inbound, response: bytes) -> None:
        """Send an error response, then read (and drop) what the client still sends for a moment, so the
        response is not destroyed by a reset caused by unread request bytes."""
        try:
            inb.write(response)
            await inb.drain()
            inb.write_eof()
            inb.discard_input()
            end = self._loop.time() + LINGER
            while True:
                await inb.read_more(end)
        except (OSError, asyncio.TimeoutError, _ClientGone):
            pass


class _UdpSession:
    """One VMess UDP session: datagrams from the local client to one destination, and its replies back."""

    def __init__(self, assoc: "_UdpAssociation", host: str, port: int) -> None:
        self.assoc = assoc
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.queue: collections.deque[bytes] = collections.deque()
        self.wakeup = asyncio.Event()
        self.stream: Optional[VmessDatagramStream] = None
        self.task = asyncio.ensure_future(self._run())

    def push(self, data: bytes) -> None:
        """Queue one datagram for the destination; drop it when the queue is full."""
        self.last = self.loop.time()
        if len(self.queue) >= UDP_QUEUE:
            return
        self.queue.append(data)
        self.wakeup.set()

    def close(self) -> None:
        """End the session (its task closes the VMess stream)."""
        self.task.cancel()

    async def _run(self) -> None:
        """Open the VMess UDP session, then pump both ways until either side ends or the session is closed."""
        proxy = self.assoc.proxy
        where = _fmt_target(self.host, self.port)
        try:
            self.stream = await open_udp(
                self.host, self.port, proxy=proxy._upstream, connect_timeout=proxy.connect_timeout,
                clock_offset=proxy.clock_offset,
            )
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            log.debug("UDP to %s: upstream failed: %s", where, _describe(exc))
            self.assoc.forget(self)
            return
        proxy.stats.udp_sessions += 1
        sender = asyncio.ensure_future(self._send_loop(self.stream))
        receiver = asyncio.ensure_future(self._recv_loop(self.stream))
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                error = t.exception()
                if error is not None and not isinstance(error, EOFError):
                    log.debug("UDP to %s ended: %s", where, _describe(error))
        finally:
            sender.cancel()
            receiver.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            self.stream.close()
            self.assoc.forget(self)

    async def _send_loop(self, stream: VmessDatagramStream) -> None:
        """Queued datagrams -> VMess, one chunk each, honouring the stream's flow control."""
        session = self.assoc.session
        proxy = self.assoc.proxy
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            data = self.queue.popleft()
            try:
                stream.send(data)
            except ChunkTooLargeError:
                log.debug("UDP datagram of %d bytes is too large for VMess; dropped", len(data))
                continue
            proxy._count(session, True, len(data))
            await stream.drain()

    async def _recv_loop(self, stream: VmessDatagramStream) -> None:
        """VMess replies -> the client, wrapped with this destination as their source."""
        assoc = self.assoc
        while True:
            data = await stream.recv()
            self.last = self.loop.time()
            assoc.send_to_client(socks5.build_udp_datagram(self.host, self.port, data), len(data))


class _UdpAssociation(asyncio.DatagramProtocol):
    """The UDP side of one SOCKS5 UDP ASSOCIATE: a local UDP socket and a bounded set of VMess UDP sessions."""

    def __init__(self, proxy: LocalProxy, session: _Inbound, client_host: str, client_port: Optional[int]) -> None:
        self.proxy = proxy
        self.session = session
        self.client_host = client_host
        self.client_port = client_port
        self.client_addr: Optional[tuple[Any, ...]] = None
        self.transport: Optional[asyncio.DatagramTransport] = None
        self.sessions: collections.OrderedDict[tuple[str, int], _UdpSession] = collections.OrderedDict()
        self.opened = 0
        self._closed = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the UDP transport."""
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A packet from the client: unwrap it and queue it on its destination's VMess session."""
        if self._closed or not self._from_client(addr):
            return
        try:
            dgram = socks5.parse_udp_datagram(data)
        except Socks5Error as exc:
            log.debug("dropped a malformed SOCKS5 UDP packet: %s", exc)
            return
        if dgram.frag != 0:
            return  # fragments are not reassembled (RFC 1928 section 7 makes that optional)
        key = (dgram.host, dgram.port)
        udp = self.sessions.get(key)
        if udp is None:
            while len(self.sessions) >= self.proxy.max_udp_sessions:
                _, oldest = self.sessions.popitem(last=False)
                oldest.close()
            udp = _UdpSession(self, dgram.host, dgram.port)
            self.sessions[key] = udp
            self.opened += 1
        else:
            self.sessions.move_to_end(key)
        udp.push(dgram.data)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors and the like: UDP is lossy, so only note them."""
        log.debug("UDP relay socket error: %s", _describe(exc))

    # -- helpers
    def _from_client(self, addr: tuple[Any, ...]) -> bool:
        """Accept datagrams only from the control connection's host, and then only from one port."""
        if self.client_addr is not None:
            return addr[:2] == self.client_addr[:2]
        if not _same_host(str(addr[0]), self.client_host):
            return False
        if self.client_port is not None and addr[1] != self.client_port:
            return False
        self.client_addr = addr
        return True

    def send_to_client(self, packet: bytes, payload: int) -> None:
        """Send a wrapped reply to the client's UDP address."""
        if self.transport is None or self.client_addr is None or self.transport.is_closing():
            return
        self.transport.sendto(packet, self.client_addr)
        self.proxy._count(self.session, False, payload)

    def forget(self, udp: _UdpSession) -> None:
        """Remove a finished session (if it is still the one mapped to its destination)."""
        key = (udp.host, udp.port)
        if self.sessions.get(key) is udp:
            del self.sessions[key]

    async def run(self, control: _Inbound) -> None:
        """Live until the TCP control connection closes, closing VMess UDP sessions idle for ``udp_timeout``."""
        sweeper = asyncio.ensure_future(self._sweep())
        control.discard_input()  # what the client sends on the control connection has no meaning: dropped
        try:
            while True:
                await control.read_more(None)
        except (OSError, _ClientGone):
            pass
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    async def _sweep(self) -> None:
        """Close VMess UDP sessions without traffic for ``udp_timeout`` seconds."""
        timeout = self.proxy.udp_timeout
        interval = min(max(timeout / 4, 0.05), 5.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for key, udp in list(self.sessions.items()):
                if now - udp.last >= timeout:
                    log.debug("UDP to %s idle for %.0fs; closed", _fmt_target(*key), timeout)
                    del self.sessions[key]
                    udp.close()

    async def close(self) -> None:
        """End the association: close the UDP socket and every VMess UDP session."""
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for udp in sessions:
            udp.close()
        if sessions:
            await asyncio.gather(*(udp.task for udp in sessions), return_exceptions=True)


async def start_local_proxy(
    proxy: ProxySpec,
    host: str = "127.0.0.1",
    port: int = 1080,
    *,
    auth: tuple[str, str] | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 300.0,
    udp_timeout: float = 60.0,
    handshake_timeout: float = 30.0,
    max_udp_sessions: int = 64,
    clock_offset: float = 0.0,
    park_idle: Optional[float] = PARK_AFTER,
) -> LocalProxy:
    """Listen on ``host:port`` for SOCKS5 and HTTP proxy clients and carry their sessions over VMess.

    ``proxy`` is a share link, a ``VmessLink`` or ``((server_host, server_port), VmessConfig)``; it is resolved
    once here (ConfigError for a bad link, UnsupportedError for a transport we do not implement). ``auth`` =
    (user, password) requires RFC 1929 credentials on SOCKS5 and Basic ``Proxy-Authorization`` on HTTP.
    Timeouts are in seconds: connecting to the VMess server, no bytes either way on a TCP session, a UDP
    destination without traffic, and a client that does not finish its handshake. ``clock_offset`` (seconds) is
    added to this machine's clock when stamping requests, for a machine whose clock is off by more than 120 s.
    ``park_idle``: seconds without traffic after which a TCP session over plain TCP gives up its two loop
    transports and waits as bare sockets in one epoll set (about 2.4 KB less per idle session; the next byte, EOF
    or error wakes it; see :mod:`vmess._parking`). None or 0 keeps every session's transports.
    """
    server_host, server_port, config = resolve_proxy(proxy)
    from ..transport import transport_for  # TLS / WebSocket settings of the link, carried to open_connection

    upstream: Any = ((server_host, server_port), config)
    transport = transport_for(proxy)
    if transport is not None:
        upstream = (*upstream, transport)
    if auth is not None:
        if not (isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(x, str) for x in auth)):
            raise ConfigError("auth", "<redacted>", "expected a (username, password) pair of strings")
        if not auth[0] or any(len(x.encode("utf-8")) > 255 for x in auth):
            raise ConfigError("auth", "<redacted>", "username must be 1..255 bytes and password at most 255")
    for name, value in (
        ("connect_timeout", connect_timeout), ("idle_timeout", idle_timeout), ("udp_timeout", udp_timeout),
        ("handshake_timeout", handshake_timeout),
    ):
        if not value > 0:
            raise ConfigError(name, value, "must be a positive number of seconds")
    if max_udp_sessions < 1:
        raise ConfigError("max_udp_sessions", max_udp_sessions, "must be at least 1")
    lp = LocalProxy(
        upstream,
        auth=auth,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        udp_timeout=udp_timeout,
        handshake_timeout=handshake_timeout,
        max_udp_sessions=max_udp_sessions,
        clock_offset=clock_offset,
        park_idle=park_idle,
    )
    await lp._start(host, port)
    log.debug("local proxy on %s -> VMess server %s", _fmt_addr(lp.address), _fmt_target(server_host, server_port))
    return lp

"""The local proxy inbound: one TCP port speaking SOCKS5 and HTTP proxy, every session carried over VMess.

The first byte picks the protocol (0x05: SOCKS5, anything else: HTTP). Each SOCKS5 CONNECT, HTTP CONNECT or
absolute-URI request becomes one VMess TCP connection (:func:`vmess.aio.open_connection`); a SOCKS5 UDP ASSOCIATE
gets a UDP socket whose datagrams go to one VMess UDP session per destination (:func:`vmess.aio.open_udp`).
The share link is parsed once at start, so a bad link or an unimplemented transport fails before anything listens.
Log lines (logger ``vmess.inbound``) name the client, method, destination, byte counts and outcome, never the
user ID or credentials.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from ..aio import ProxySpec, VmessDatagramStream, open_connection, open_udp, resolve_proxy
from ..config import VmessConfig
from ..errors import ChunkTooLargeError, ConfigError, VmessError
from . import http as httpc
from . import socks5
from .errors import HttpProxyError, Socks5Error

__all__ = ["LocalProxy", "ProxyStats", "start_local_proxy"]

log = logging.getLogger("vmess.inbound")

READ_SIZE = 256 * 1024
"""Largest single read in the relay (and the local StreamReader's buffer limit)."""
HANDSHAKE_READ = 64 * 1024
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


class _RelayError(Exception):
    """A relay pump failed; ``side`` is "client" or "upstream"."""

    def __init__(self, side: str, error: BaseException) -> None:
        super().__init__(side, error)
        self.side = side
        self.error = error


class _Session:
    """What one local connection did, for its log line and the counters."""

    __slots__ = ("client", "method", "target", "up", "down", "started", "outcome", "failed")

    def __init__(self, client: str, started: float) -> None:
        self.client = client
        self.method = "-"
        self.target = "-"
        self.up = 0
        self.down = 0
        self.started = started
        self.outcome = "ok"
        self.failed = False

    def fail(self, outcome: str) -> None:
        """Record a failure (the first one wins)."""
        if not self.failed:
            self.failed = True
            self.outcome = outcome


class _Activity:
    """The loop time of the last byte relayed in either direction (shared by both pumps)."""

    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


def _fmt_addr(addr: Any) -> str:
    """host:port of a socket address ([v6]:port), or '?'."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _fmt_target(host: str, port: int) -> str:
    """host:port of a destination, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of an exception for a log line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def _write_eof(writer: Any) -> None:
    """Half-close ``writer`` if it is still open; a peer that is already gone is not an error here."""
    try:
        if not writer.is_closing() and writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError, VmessError):
        pass


def _abort(writer: Any) -> None:
    """Drop a connection at once (no flushing)."""
    transport = writer.transport
    if transport is not None:
        transport.abort()


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
    ) -> None:
        self._upstream = upstream
        self._auth = auth
        self._auth_bytes = (auth[0].encode("utf-8"), auth[1].encode("utf-8")) if auth else None
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.udp_timeout = udp_timeout
        self.handshake_timeout = handshake_timeout
        self.max_udp_sessions = max_udp_sessions
        self.stats = ProxyStats()
        self._server: Optional[asyncio.Server] = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._address: tuple[str, int] = ("", 0)

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def _start(self, host: str, port: int) -> None:
        """Bind and start accepting (called by start_local_proxy)."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE)
        name = self._server.sockets[0].getsockname()
        self._address = (str(name[0]), int(name[1]))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()

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
        return self._upstream[0]

    def close(self) -> None:
        """Stop listening and end every session (their VMess connections are closed too)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the listener and every session have finished."""
        if self._server is not None:
            await self._server.wait_closed()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

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

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, Any]:
        """One VMess TCP connection to host:port through the configured server."""
        return await open_connection(host, port, proxy=self._upstream, connect_timeout=self.connect_timeout)

    async def _read_message(
        self,
        reader: asyncio.StreamReader,
        buf: bytearray,
        parse: Callable[[bytearray], Optional[tuple[_T, int]]],
        deadline: float,
    ) -> _T:
        """Read into ``buf`` until ``parse`` returns a message; consume its bytes and return it."""
        loop = asyncio.get_running_loop()
        while True:
            result = parse(buf)
            if result is not None:
                message, used = result
                del buf[:used]
                return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(reader.read(HANDSHAKE_READ), remaining)
            if not data:
                raise _ClientGone
            buf += data

    def _count(self, session: _Session, up: bool, n: int) -> None:
        """Add relayed payload bytes to the session and the proxy totals."""
        if up:
            session.up += n
            self.stats.bytes_up += n
        else:
            session.down += n
            self.stats.bytes_down += n

    # ------------------------------------------------------------------------------------------------ accept

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one local connection: detect the protocol, hand off, log one line."""
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            _abort(writer)
            return
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        session = _Session(_fmt_addr(writer.get_extra_info("peername")), loop.time())
        clean = False
        try:
            deadline = loop.time() + self.handshake_timeout
            buf = bytearray(await asyncio.wait_for(reader.read(HANDSHAKE_READ), self.handshake_timeout))
            if not buf:
                raise _ClientGone
            if buf[0] == socks5.VERSION:
                session.method = "socks5"
                clean = await self._serve_socks5(reader, writer, buf, session, deadline)
            elif buf[0] == 0x04:
                session.method = "socks4"
                session.fail("SOCKS4 is not supported")
            else:
                session.method = "http"
                clean = await self._serve_http(reader, writer, buf, session, deadline)
        except _ClientGone:
            session.fail("client closed during handshake")
        except asyncio.TimeoutError:
            session.fail("handshake timeout")
        except asyncio.CancelledError:
            # Nobody awaits this task (asyncio.start_server owns it), and on 3.11 its done-callback calls
            # task.exception(), which raises for a cancelled task: end normally instead.
            if not session.failed:
                session.outcome = "proxy shutting down"
        except (OSError, VmessError) as exc:
            session.fail(_describe(exc))
        finally:
            if clean:
                await self._close_gracefully(writer)
            else:
                _abort(writer)
            stats.active -= 1
            if session.failed:
                stats.failed += 1
            self._tasks.discard(task)
            self._log_session(session, loop.time())

    def _log_session(self, session: _Session, now: float) -> None:
        """The one INFO line per session (a connection that never sent a byte is only a DEBUG line)."""
        if session.method == "-" and session.outcome == "client closed during handshake":
            log.debug("%s closed without a request", session.client)
            return
        log.info(
            "%s %s %s up=%d down=%d %.3fs %s",
            session.client, session.method, session.target, session.up, session.down, now - session.started,
            session.outcome,
        )

    async def _close_gracefully(self, writer: asyncio.StreamWriter) -> None:
        """Flush and close; abort if the client does not take the last bytes within a few seconds."""
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5.0)
        except asyncio.TimeoutError:
            _abort(writer)
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------------ SOCKS5

    async def _serve_socks5(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buf: bytearray,
        session: _Session,
        deadline: float,
    ) -> bool:
        """RFC 1928 handshake, then CONNECT or UDP ASSOCIATE; returns whether the close may be graceful."""
        try:
            greeting = await self._read_message(reader, buf, socks5.parse_greeting, deadline)
        except Socks5Error as exc:
            session.fail(f"bad greeting: {exc}")
            return False
        method = socks5.select_method(greeting, auth_required=self._auth is not None)
        writer.write(socks5.build_method_selection(method))
        if method == socks5.Method.NO_ACCEPTABLE:
            session.fail("no acceptable authentication method")
            return True
        if method == socks5.Method.USERNAME_PASSWORD:
            try:
                creds = await self._read_message(reader, buf, socks5.parse_auth_request, deadline)
            except Socks5Error as exc:
                session.fail(f"bad authentication request: {exc}")
                return False
            ok = self._check_credentials(creds.username, creds.password)
            writer.write(socks5.build_auth_reply(ok))
            if not ok:
                session.fail("authentication failed")
                return True
        try:
            request = await self._read_message(reader, buf, socks5.parse_request, deadline)
        except Socks5Error as exc:
            if exc.reply is not None:
                writer.write(socks5.build_reply(exc.reply))
            session.fail(f"refused request: {exc}")
            return exc.reply is not None
        session.target = _fmt_target(request.host, request.port)
        if request.command == socks5.Command.CONNECT:
            session.method = "socks5-connect"
            return await self._socks_connect(reader, writer, buf, session, request)
        session.method = "socks5-udp"
        return await self._socks_udp(reader, writer, session, request)

    def _check_credentials(self, username: bytes, password: bytes) -> bool:
        """RFC 1929 check in constant time; without configured auth any credentials are accepted."""
        if self._auth_bytes is None:
            return True
        user_ok = hmac.compare_digest(username, self._auth_bytes[0])
        pass_ok = hmac.compare_digest(password, self._auth_bytes[1])
        return user_ok and pass_ok

    async def _socks_connect(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buf: bytearray,
        session: _Session,
        request: socks5.Request,
    ) -> bool:
        """CONNECT: open the VMess connection, answer with the matching reply code, relay."""
        try:
            v_reader, v_writer = await self._open(request.host, request.port)
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            writer.write(socks5.build_reply(_socks_reply_for(exc)))
            session.fail(f"upstream: {_describe(exc) if not isinstance(exc, asyncio.TimeoutError) else 'timeout'}")
            return True
        self.stats.sessions += 1
        bound = writer.get_extra_info("sockname")
        try:
            writer.write(socks5.build_reply(socks5.Reply.SUCCEEDED, bound[0], bound[1]))
            await writer.drain()
        except OSError as exc:
            v_writer.close()
            session.fail(f"client: {_describe(exc)}")
            return False
        return await self._relay(
            session, reader, writer, v_reader, v_writer, first_up=bytes(buf), up_limit=None, http_mode=False
        )

    async def _socks_udp(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: _Session,
        request: socks5.Request,
    ) -> bool:
        """UDP ASSOCIATE: bind a UDP relay next to the control connection and serve it until that closes."""
        loop = asyncio.get_running_loop()
        local_host = writer.get_extra_info("sockname")[0]
        peer_host = writer.get_extra_info("peername")[0]
        expected_port = request.port or None
        assoc = _UdpAssociation(self, session, peer_host, expected_port)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: assoc, local_addr=(local_host, 0))
        except OSError as exc:
            writer.write(socks5.build_reply(socks5.Reply.GENERAL_FAILURE))
            session.fail(f"UDP bind: {_describe(exc)}")
            return True
        self.stats.sessions += 1
        try:
            bound = transport.get_extra_info("sockname")
            session.target = f"udp relay {_fmt_addr(bound)}"
            writer.write(socks5.build_reply(socks5.Reply.SUCCEEDED, bound[0], bound[1]))
            await writer.drain()
            await assoc.run(reader)
        finally:
            await assoc.close()
        session.target = f"udp ({assoc.opened} destination session(s))"
        return True

    # ------------------------------------------------------------------------------------------------ HTTP

    async def _serve_http(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buf: bytearray,
        session: _Session,
        deadline: float,
    ) -> bool:
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
            head = await self._read_message(reader, buf, parse, deadline)
            session.method = f"http-{head.method}"
            request = httpc.parse_proxy_request(head)
        except HttpProxyError as exc:
            session.fail(f"{exc.status} {exc}")
            await self._refuse_http(reader, writer, httpc.error_response(exc.status, str(exc)))
            return True
        session.target = _fmt_target(request.host, request.port)
        if self._auth is not None and not httpc.check_proxy_auth(head, *self._auth):
            session.fail("407 proxy authentication required")
            await self._refuse_http(reader, writer, httpc.error_response(407))
            return True
        try:
            v_reader, v_writer = await self._open(request.host, request.port)
        except (OSError, asyncio.TimeoutError, VmessError) as exc:
            status = _http_status_for(exc)
            session.fail(f"{status} upstream: {_describe(exc) if status != 504 else 'timeout'}")
            await self._refuse_http(reader, writer, httpc.error_response(status))
            return True
        self.stats.sessions += 1
        if request.is_connect:
            try:
                writer.write(httpc.CONNECT_ESTABLISHED)
                await writer.drain()
            except OSError as exc:
                v_writer.close()
                session.fail(f"client: {_describe(exc)}")
                return False
            return await self._relay(
                session, reader, writer, v_reader, v_writer, first_up=bytes(buf), up_limit=None, http_mode=False
            )
        head_bytes = httpc.origin_request_head(request)
        v_writer.write(head_bytes)
        self._count(session, True, len(head_bytes))
        return await self._relay(
            session, reader, writer, v_reader, v_writer,
            first_up=bytes(buf), up_limit=request.body_length, http_mode=True,
        )

    async def _refuse_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes) -> None:
        """Send an error response, then read (and drop) what the client still sends for a moment, so the
        response is not destroyed by a reset caused by unread request bytes."""
        loop = asyncio.get_running_loop()
        try:
            writer.write(response)
            await writer.drain()
            _write_eof(writer)
            end = loop.time() + LINGER
            while (remaining := end - loop.time()) > 0:
                if not await asyncio.wait_for(reader.read(HANDSHAKE_READ), remaining):
                    break
        except (OSError, asyncio.TimeoutError):
            pass

    # ------------------------------------------------------------------------------------------------ relay

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: Any,
        session: _Session,
        up: bool,
        activity: _Activity,
        first: bytes,
        limit: Optional[int],
        propagate_eof: bool,
    ) -> None:
        """Copy ``src`` to ``dst`` with backpressure (bounded reads, drain after each write).

        Errors come out as :class:`_RelayError` naming the side that failed (the up pump reads the client).
        """
        loop = asyncio.get_running_loop()
        src_side, dst_side = ("client", "upstream") if up else ("upstream", "client")
        remaining = limit
        if remaining is not None:
            first = first[:remaining]
            remaining -= len(first)
        data = first
        while True:
            if data:
                n = len(data)
                try:
                    dst.write(data)
                    self._count(session, up, n)
                    await dst.drain()
                except (OSError, RuntimeError, VmessError) as exc:
                    raise _RelayError(dst_side, exc) from exc
            if remaining is not None and remaining <= 0:
                return
            try:
                data = await src.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
            except (OSError, VmessError) as exc:
                raise _RelayError(src_side, exc) from exc
            if not data:
                if propagate_eof:
                    _write_eof(dst)
                return
            activity.last = loop.time()
            if remaining is not None:
                remaining -= len(data)

    async def _relay(
        self,
        session: _Session,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        v_reader: asyncio.StreamReader,
        v_writer: Any,
        *,
        first_up: bytes,
        up_limit: Optional[int],
        http_mode: bool,
    ) -> bool:
        """Relay both ways until both directions ended (or, for an HTTP request, the response ended).

        Half-closes are passed on (except upstream in HTTP mode, where the request framing ends the body); the
        session ends early on an error, on the idle timeout, or when the VMess connection is gone after its
        stream ended. Returns whether the local connection may be closed gracefully.
        """
        loop = asyncio.get_running_loop()
        activity = _Activity(loop.time())
        up = asyncio.ensure_future(
            self._pump(c_reader, v_writer, session, True, activity, first_up, up_limit, not http_mode)
        )
        down = asyncio.ensure_future(self._pump(v_reader, c_writer, session, False, activity, b"", None, True))
        v_closed = asyncio.ensure_future(v_writer.wait_closed())
        pending: set[asyncio.Future[Any]] = {up, down, v_closed}
        graceful = True
        try:
            while up in pending or down in pending:
                remaining = activity.last + self.idle_timeout - loop.time()
                if remaining <= 0:
                    session.outcome = "idle timeout"
                    graceful = False
                    break
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                errors = [e for t in (up, down) if t in done and (e := t.exception()) is not None]
                if errors:
                    exc = errors[0]
                    if isinstance(exc, _RelayError) and exc.side == "client":
                        session.outcome = f"client: {_describe(exc.error)}"
                    elif isinstance(exc, _RelayError):
                        session.fail(f"upstream: {_describe(exc.error)}")
                    else:
                        session.fail(f"relay: {_describe(exc)}")
                    graceful = False
                    break
                if down not in pending and (http_mode or v_closed not in pending):
                    break
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if graceful:
                v_writer.close()
            else:
                _abort(v_writer)
        return graceful


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
                self.host, self.port, proxy=proxy._upstream, connect_timeout=proxy.connect_timeout
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

    def __init__(self, proxy: LocalProxy, session: _Session, client_host: str, client_port: Optional[int]) -> None:
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

    async def run(self, control: asyncio.StreamReader) -> None:
        """Live until the TCP control connection closes, closing VMess UDP sessions idle for ``udp_timeout``."""
        sweeper = asyncio.ensure_future(self._sweep())
        try:
            while await control.read(HANDSHAKE_READ):
                pass
        except OSError:
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
) -> LocalProxy:
    """Listen on ``host:port`` for SOCKS5 and HTTP proxy clients and carry their sessions over VMess.

    ``proxy`` is a share link, a ``VmessLink`` or ``((server_host, server_port), VmessConfig)``; it is resolved
    once here (ConfigError for a bad link, UnsupportedError for a transport we do not implement). ``auth`` =
    (user, password) requires RFC 1929 credentials on SOCKS5 and Basic ``Proxy-Authorization`` on HTTP.
    Timeouts are in seconds: connecting to the VMess server, no bytes either way on a TCP session, a UDP
    destination without traffic, and a client that does not finish its handshake.
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
    )
    await lp._start(host, port)
    log.debug("local proxy on %s -> VMess server %s", _fmt_addr(lp.address), _fmt_target(server_host, server_port))
    return lp

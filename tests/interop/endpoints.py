"""Local TCP/UDP endpoints on 127.0.0.1 and a minimal SOCKS5 client, for interop tests.

Every endpoint runs in background threads (so it serves sync and asyncio tests
alike), binds 127.0.0.1 on an OS-chosen port (``.port``, ``.address``), bounds
every blocking operation by ``idle_timeout`` and is fully stopped on exit
(listener and connections closed, threads joined).

Public API::

    TcpEcho(*, idle_timeout=30.0)
    TcpSink(*, reply=b"", idle_timeout=30.0)   .wait_result(timeout=30.0) -> (count, sha256hex)
    TcpSource(payload, *, idle_timeout=30.0)
    UdpEcho(*, idle_timeout=30.0)
    socks5_connect(proxy_port, port, host="127.0.0.1", *, timeout=10.0) -> socket.socket
    Socks5UdpAssociation(proxy_port, *, timeout=10.0)  context manager:
        .sendto(data, (host, port)), .recvfrom(timeout=None) -> (data, (host, port))
    exchange(sock, data, *, expect=None, half_close=True, timeout=30.0) -> bytes
    recv_exactly(sock, n) -> bytes
"""

from __future__ import annotations

import hashlib
import ipaddress
import queue
import selectors
import socket
import struct
import threading
from typing import NamedTuple

__all__ = [
    "RECV_SIZE",
    "SinkResult",
    "Socks5Error",
    "Socks5UdpAssociation",
    "TcpEcho",
    "TcpSink",
    "TcpSource",
    "UdpEcho",
    "recv_exactly",
    "exchange",
    "socks5_connect",
]

LOOPBACK = "127.0.0.1"
RECV_SIZE = 256 * 1024
_POLL = 1.0  # safety-net wakeup of the main loop (stop() wakes it at once)


class _Endpoint:
    """Base class: lifecycle, thread and socket bookkeeping."""

    kind = socket.SOCK_STREAM

    def __init__(self, *, idle_timeout: float = 30.0) -> None:
        self.idle_timeout = idle_timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._conns: set[socket.socket] = set()
        self.errors: list[BaseException] = []
        self.sock = socket.socket(socket.AF_INET, self.kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.address: tuple[str, int] = self.sock.getsockname()
        self.port: int = self.address[1]
        self._main: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- lifecycle -------------------------------------------------------

    def start(self):
        if self._main is not None:
            raise RuntimeError("already started")
        self.sock.settimeout(_POLL)
        if self.kind == socket.SOCK_STREAM:
            self.sock.listen(128)
        self._main = threading.Thread(
            target=self._run_main, name=f"{type(self).__name__}:{self.port}", daemon=True
        )
        self._main.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._main is not None:
            self._main.join(timeout)  # no new connections after this
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:  # wakes threads blocked in recv()/send()
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout)
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        for c in conns:
            c.close()
        alive = [t.name for t in [self._main, *threads] if t is not None and t.is_alive()]
        if alive:
            raise RuntimeError(f"{type(self).__name__}: threads did not stop: {alive}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address[0]}:{self.port}>"

    def _run_main(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(_POLL) or self._stop.is_set():
                    continue
                try:
                    self._on_readable()
                except socket.timeout:  # readiness vanished (e.g. peer reset)
                    continue
                except OSError as e:
                    if self._stop.is_set():
                        return
                    self.errors.append(e)
                    self._stop.wait(0.01)  # no busy loop on a persistent error

    # -- TCP plumbing ----------------------------------------------------

    def _on_readable(self) -> None:
        """The listener is readable: accept and serve in a new thread."""
        conn, peer = self.sock.accept()
        conn.settimeout(self.idle_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(
            target=self._run_conn, args=(conn, peer), name=f"{self!r}<-{peer}", daemon=True
        )
        with self._lock:
            self._conns.add(conn)
            self._threads.add(t)
        t.start()

    def _run_conn(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            self.handle(conn, peer)
        except OSError as e:
            if not self._stop.is_set():
                self.errors.append(e)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError


class TcpEcho(_Endpoint):
    """Echoes every byte back; half-closes (SHUT_WR) after reading EOF."""

    def __init__(self, *, idle_timeout: float = 30.0) -> None:
        super().__init__(idle_timeout=idle_timeout)
        self.connections = 0
        self.bytes_echoed = 0

    def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with self._lock:
            self.connections += 1
        while True:
            data = conn.recv(RECV_SIZE)
            if not data:
                break
            with self._lock:  # counted before it is sent: a client that got it all back sees the full count
                self.bytes_echoed += len(data)
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


class SinkResult(NamedTuple):
    count: int
    sha256: str
    error: str | None = None  # set when the connection ended by an error, not EOF


class TcpSink(_Endpoint):
    """Per connection: sends ``reply`` (if any), reads to EOF, records
    ``SinkResult(count, sha256hex, error)`` in :attr:`results` and on a queue,
    then closes.  Keep ``reply`` small (it is sent before reading)."""

    def __init__(self, *, reply: bytes = b"", idle_timeout: float = 30.0) -> None:
        super().__init__(idle_timeout=idle_timeout)
        self.reply = bytes(reply)
        self.results: list[SinkResult] = []
        self._q: queue.Queue[SinkResult] = queue.Queue()

    def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        count = 0
        h = hashlib.sha256()
        error: str | None = None
        try:
            if self.reply:
                conn.sendall(self.reply)
            while True:
                data = conn.recv(RECV_SIZE)
                if not data:
                    break
                count += len(data)
                h.update(data)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        if error is None and self._stop.is_set():
            error = "endpoint stopped"  # the EOF may be our own shutdown()
        result = SinkResult(count, h.hexdigest(), error)
        with self._lock:
            self.results.append(result)
        self._q.put(result)

    def wait_result(self, timeout: float = 30.0) -> tuple[int, str]:
        """(byte count, sha256 hexdigest) of the next finished connection."""
        try:
            r = self._q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self!r}: no connection finished within {timeout}s") from None
        return (r.count, r.sha256)


class TcpSource(_Endpoint):
    """Per connection: sends ``payload``, half-closes, drains what the peer sends
    (counted in :attr:`bytes_received`) until EOF, then closes."""

    def __init__(self, payload: bytes, *, idle_timeout: float = 30.0) -> None:
        super().__init__(idle_timeout=idle_timeout)
        self.payload = bytes(payload)
        self.sha256 = hashlib.sha256(self.payload).hexdigest()
        self.connections = 0
        self.completed = 0
        self.bytes_received = 0

    def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with self._lock:
            self.connections += 1
        conn.sendall(self.payload)
        conn.shutdown(socket.SHUT_WR)
        with self._lock:
            self.completed += 1
        # Drain instead of closing with unread data (that would send RST and
        # could discard payload still queued towards the peer).
        while True:
            data = conn.recv(RECV_SIZE)
            if not data:
                break
            with self._lock:
                self.bytes_received += len(data)


class UdpEcho(_Endpoint):
    """Echoes every datagram back to its sender."""

    kind = socket.SOCK_DGRAM

    def __init__(self, *, idle_timeout: float = 30.0) -> None:
        super().__init__(idle_timeout=idle_timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.datagrams = 0
        self.peers: set[tuple[str, int]] = set()

    def _on_readable(self) -> None:
        data, peer = self.sock.recvfrom(65535)
        self.sock.sendto(data, peer)  # errors: recorded by _run_main
        with self._lock:
            self.datagrams += 1
            self.peers.add(peer)


# --------------------------------------------------------------------------
# helpers for test clients


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def exchange(
    sock: socket.socket,
    data: bytes,
    *,
    expect: int | None = None,
    half_close: bool = True,
    timeout: float = 30.0,
) -> bytes:
    """Send ``data`` (from a writer thread) while reading the peer's bytes.

    After sending, half-close (SHUT_WR) if ``half_close``.  Reading stops at
    EOF, or once ``expect`` bytes have arrived (if given).  Sending from a
    separate thread avoids the deadlock of an echo peer whose replies fill
    our receive buffer while we are still sending."""
    sock.settimeout(timeout)
    err: list[BaseException] = []

    def writer() -> None:
        try:
            if data:
                sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # re-raised below
            err.append(e)

    t = threading.Thread(target=writer, name="exchange-writer", daemon=True)
    t.start()
    out = bytearray()
    try:
        while expect is None or len(out) < expect:
            chunk = sock.recv(RECV_SIZE if expect is None else min(RECV_SIZE, expect - len(out)))
            if not chunk:
                break
            out += chunk
    finally:
        t.join(timeout)
    if err:
        raise err[0]
    return bytes(out)


class Socks5Error(ConnectionError):
    pass


_SOCKS_REPLIES = {
    1: "general failure",
    2: "connection not allowed",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def _socks5_addr(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode("idna")
        return b"\x03" + bytes([len(raw)]) + raw + struct.pack("!H", port)
    atyp = b"\x01" if ip.version == 4 else b"\x04"
    return atyp + ip.packed + struct.pack("!H", port)


def _read_socks5_addr(sock: socket.socket) -> tuple[str, int]:
    atyp = recv_exactly(sock, 1)[0]
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, recv_exactly(sock, 4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, recv_exactly(sock, 16))
    elif atyp == 3:
        host = recv_exactly(sock, recv_exactly(sock, 1)[0]).decode("idna")
    else:
        raise Socks5Error(f"bad ATYP {atyp}")
    (port,) = struct.unpack("!H", recv_exactly(sock, 2))
    return host, port


def _socks5_request(sock: socket.socket, cmd: int, host: str, port: int) -> tuple[str, int]:
    sock.sendall(b"\x05\x01\x00")  # VER, NMETHODS=1, NO AUTH
    ver, method = recv_exactly(sock, 2)
    if ver != 5 or method != 0:
        raise Socks5Error(f"SOCKS5 greeting refused: ver={ver} method={method}")
    sock.sendall(b"\x05" + bytes([cmd, 0]) + _socks5_addr(host, port))
    ver, rep, _rsv = recv_exactly(sock, 3)
    if ver != 5:
        raise Socks5Error(f"bad SOCKS version {ver} in reply")
    bound = _read_socks5_addr(sock)
    if rep != 0:
        raise Socks5Error(f"SOCKS5 request failed: {rep} ({_SOCKS_REPLIES.get(rep, '?')})")
    return bound


def socks5_connect(
    proxy_port: int, port: int, host: str = LOOPBACK, *, timeout: float = 10.0
) -> socket.socket:
    """Open a TCP connection to host:port through the SOCKS5 proxy at
    127.0.0.1:proxy_port (no auth, CONNECT).  The returned socket has
    ``timeout`` set."""
    sock = socket.create_connection((LOOPBACK, proxy_port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _socks5_request(sock, 1, host, port)
    except BaseException:
        sock.close()
        raise
    return sock


class Socks5UdpAssociation:
    """SOCKS5 UDP ASSOCIATE through 127.0.0.1:proxy_port (no auth).

    The TCP control connection stays open for the association's lifetime."""

    def __init__(self, proxy_port: int, *, timeout: float = 10.0) -> None:
        self.proxy_port = proxy_port
        self.timeout = timeout
        self.control: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.relay: tuple[str, int] | None = None

    def open(self) -> "Socks5UdpAssociation":
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.udp.bind((LOOPBACK, 0))
            self.udp.settimeout(self.timeout)
            self.control = socket.create_connection((LOOPBACK, self.proxy_port), timeout=self.timeout)
            host, port = _socks5_request(self.control, 3, "0.0.0.0", 0)
            if host in ("0.0.0.0", "::"):
                host = LOOPBACK
            self.relay = (host, port)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for s in (self.udp, self.control):
            if s is not None:
                s.close()
        self.udp = self.control = None

    def __enter__(self) -> "Socks5UdpAssociation":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.udp is not None and self.relay is not None, "not open"
        self.udp.sendto(b"\x00\x00\x00" + _socks5_addr(*addr) + data, self.relay)

    def recvfrom(self, timeout: float | None = None) -> tuple[bytes, tuple[str, int]]:
        """Next datagram from the relay: (payload, (source host, source port))."""
        assert self.udp is not None, "not open"
        self.udp.settimeout(self.timeout if timeout is None else timeout)
        pkt, _ = self.udp.recvfrom(65535)
        if len(pkt) < 4 or pkt[2] != 0:
            raise Socks5Error(f"bad/fragmented SOCKS5 UDP packet: {pkt[:10].hex()}")
        atyp, off = pkt[3], 4
        if atyp == 1:
            host, off = socket.inet_ntop(socket.AF_INET, pkt[off:off + 4]), off + 4
        elif atyp == 4:
            host, off = socket.inet_ntop(socket.AF_INET6, pkt[off:off + 16]), off + 16
        elif atyp == 3:
            n = pkt[off]
            host, off = pkt[off + 1:off + 1 + n].decode("idna"), off + 1 + n
        else:
            raise Socks5Error(f"bad ATYP {atyp} in UDP packet")
        (port,) = struct.unpack("!H", pkt[off:off + 2])
        return pkt[off + 2:], (host, port)

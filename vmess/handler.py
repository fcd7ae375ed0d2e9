"""The seed's handler surface (tun2proxy's ProxyHandler), kept in Python style on top of the sans-IO client.

A :class:`ProxyHandler` sits between a local client (the side that wants a proxied session) and the proxy
server. The I/O loop pushes bytes that arrived from either side with :meth:`ProxyHandler.push_data`, asks for
bytes to send with :meth:`ProxyHandler.peek_data`, and reports what it sent with
:meth:`ProxyHandler.consume_data`. :class:`VmessProxyImpl` implements it for VMess with the state machine
SendRequest -> ReceiveResponse -> Established (-> Closed).
"""

from __future__ import annotations

import enum
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Optional, Tuple

from .config import VmessConfig
from .constants import Command
from .errors import ConnectionStateError, VmessError
from .protocol.client import ClientConnection, ClientState
from .protocol.events import DataReceived, StreamEnded

__all__ = [
    "IncomingDirection",
    "OutgoingDirection",
    "IncomingDataEvent",
    "OutgoingDataEvent",
    "SessionInfo",
    "ProxyHandler",
    "ProxyHandlerManager",
    "VmessProxyImpl",
    "VmessProxyManager",
]

Address = Tuple[str, int]


class IncomingDirection(enum.Enum):
    """Where pushed bytes came from."""

    FROM_SERVER = "FromServer"
    FROM_CLIENT = "FromClient"


class OutgoingDirection(enum.Enum):
    """Where bytes taken with ``peek_data`` must go."""

    TO_SERVER = "ToServer"
    TO_CLIENT = "ToClient"


@dataclass(frozen=True, slots=True)
class IncomingDataEvent:
    """Bytes that arrived from one side (one datagram per event for UDP sessions)."""

    direction: IncomingDirection
    buffer: bytes


@dataclass(frozen=True, slots=True)
class OutgoingDataEvent:
    """Bytes waiting to be sent to one side (a view: valid until the next call on the handler)."""

    direction: OutgoingDirection
    buffer: memoryview


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """The proxied session: local source, requested destination and transport ("tcp" or "udp")."""

    src: Address
    dst: Address
    protocol: str = "tcp"


class ProxyHandler(ABC):
    """One proxied session, sans-IO (tun2proxy's ProxyHandler trait)."""

    @abstractmethod
    def get_server_addr(self) -> Address:
        """The proxy server's address."""

    @abstractmethod
    def get_session_info(self) -> SessionInfo:
        """The session this handler serves."""

    @abstractmethod
    def get_domain_name(self) -> Optional[str]:
        """The destination domain, when the session was requested by name."""

    @abstractmethod
    async def push_data(self, event: IncomingDataEvent) -> None:
        """Take bytes that arrived from the client or the server."""

    @abstractmethod
    def consume_data(self, direction: OutgoingDirection, size: int) -> None:
        """Report that ``size`` bytes from :meth:`peek_data` were sent."""

    @abstractmethod
    def peek_data(self, direction: OutgoingDirection) -> OutgoingDataEvent:
        """The bytes waiting to go out in ``direction`` (possibly empty)."""

    @abstractmethod
    def connection_established(self) -> bool:
        """True once the proxy handshake completed."""

    @abstractmethod
    def data_len(self, direction: OutgoingDirection) -> int:
        """How many bytes wait to go out in ``direction``."""

    @abstractmethod
    def reset_connection(self) -> bool:
        """True if the session failed and the connection must be reset."""

    @abstractmethod
    def get_udp_associate(self) -> Optional[Address]:
        """The UDP relay address for a UDP-associate session, else None."""


class ProxyHandlerManager(ABC):
    """Creates a handler per session (tun2proxy's ProxyHandlerManager trait)."""

    @abstractmethod
    async def new_proxy_handler(
        self, info: SessionInfo, domain_name: Optional[str], udp_associate: bool
    ) -> ProxyHandler:
        """A new handler for ``info``; ``domain_name`` overrides the destination host."""


class _Outbox:
    """Bytes (TCP) or datagrams (UDP) waiting to go one way, with peek/consume semantics."""

    __slots__ = ("_stream", "_items")

    _EMPTY: Deque[bytes] = deque(maxlen=0)  # shared stand-in until the first push (a deque costs ~600 bytes)

    def __init__(self, stream: bool) -> None:
        self._stream = stream
        self._items: Deque[bytes] = _Outbox._EMPTY

    def push(self, data: bytes) -> None:
        if data:
            if self._items is _Outbox._EMPTY:
                self._items = deque()
            self._items.append(bytes(data))

    def peek(self) -> memoryview:
        items = self._items
        if not items:
            return memoryview(b"")
        if self._stream and len(items) > 1:
            joined = b"".join(items)
            items.clear()
            items.append(joined)
        return memoryview(items[0])

    def consume(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        items = self._items
        while size and items:
            head = items[0]
            if size >= len(head):
                size -= len(head)
                items.popleft()
            elif self._stream:
                items[0] = head[size:]
                size = 0
            else:
                raise ValueError("a datagram must be consumed whole")
        if size:
            raise ValueError("consumed more bytes than were waiting")

    def __len__(self) -> int:
        if self._stream or not self._items:
            return sum(len(x) for x in self._items)
        return len(self._items[0])


class VmessProxyImpl(ProxyHandler):
    """A VMess client session driven through the ProxyHandler interface.

    States: SendRequest (nothing sent yet; the first ``peek_data(TO_SERVER)`` produces the request header together
    with every client byte pushed so far), ReceiveResponse (header sent, waiting for the server's response; client
    bytes are already framed and forwarded, as VMess allows), Established, Closed. A protocol error moves it to
    Closed and makes :meth:`reset_connection` return True; ``push_data`` then raises the error.
    """

    def __init__(
        self,
        server: Address,
        config: VmessConfig,
        info: SessionInfo,
        domain_name: Optional[str] = None,
        udp_associate: bool = False,
        *,
        now: Callable[[], float] = time.time,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._server = server
        self._info = info
        self._domain = domain_name
        udp = udp_associate or info.protocol.lower() == "udp"
        self._udp = udp
        host = domain_name if domain_name else info.dst[0]
        self._conn = ClientConnection(
            config, host, info.dst[1], command=Command.UDP if udp else Command.TCP, now=now, urandom=urandom
        )
        self._to_server = _Outbox(stream=True)
        self._to_client = _Outbox(stream=not udp)
        self._pending_client: list[bytes] = []
        self._error: Optional[VmessError] = None
        self._client_eof = False
        self._server_eof = False

    @property
    def state(self) -> ClientState:
        """The VMess state: SendRequest, ReceiveResponse, Established or Closed."""
        return self._conn.state

    @property
    def error(self) -> Optional[VmessError]:
        """The protocol error that closed the session, if any."""
        return self._error

    @property
    def server_eof(self) -> bool:
        """True once the server ended its stream (pass EOF on to the client after draining TO_CLIENT)."""
        return self._server_eof

    def get_server_addr(self) -> Address:
        return self._server

    def get_session_info(self) -> SessionInfo:
        return self._info

    def get_domain_name(self) -> Optional[str]:
        return self._domain

    def _ensure_request(self) -> None:
        if self._conn.state is ClientState.SEND_REQUEST:
            if self._udp:
                pending, self._pending_client = self._pending_client, []
                self._to_server.push(self._conn.send(pending[0] if pending else b""))
                for datagram in pending[1:]:
                    self._to_server.push(self._conn.send(datagram))
            else:
                data = b"".join(self._pending_client)
                self._pending_client = []
                self._to_server.push(self._conn.send(data))
            if self._client_eof:
                self._to_server.push(self._conn.send_eof())

    async def push_data(self, event: IncomingDataEvent) -> None:
        self.push_data_nowait(event)

    def push_data_nowait(self, event: IncomingDataEvent) -> None:
        """Synchronous form of :meth:`push_data` (it never waits)."""
        if self._error is not None:
            raise self._error
        if event.direction is IncomingDirection.FROM_CLIENT:
            if self._client_eof:
                raise ConnectionStateError("client data after client EOF")
            if self._conn.state is ClientState.SEND_REQUEST:
                if event.buffer or self._udp:
                    self._pending_client.append(bytes(event.buffer))
            elif self._conn.state is ClientState.CLOSED:
                raise ConnectionStateError("session is closed")
            else:
                self._to_server.push(self._guard(self._conn.send, event.buffer))
            return
        self._ensure_request()
        for ev in self._guard(self._conn.receive_data, event.buffer):
            if isinstance(ev, DataReceived):
                self._to_client.push(ev.data)
            elif isinstance(ev, StreamEnded):
                self._server_eof = True

    def push_eof(self, direction: IncomingDirection) -> None:
        """One side closed its sending direction: forward an end-of-stream (client) or check truncation (server)."""
        if self._error is not None:
            raise self._error
        if direction is IncomingDirection.FROM_CLIENT:
            if self._client_eof:
                return
            self._client_eof = True
            if self._conn.state is not ClientState.SEND_REQUEST:
                self._to_server.push(self._guard(self._conn.send_eof))
        else:
            self._guard(self._conn.receive_eof)
            self._server_eof = True

    def _guard(self, fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except VmessError as exc:
            self._error = exc
            raise

    def consume_data(self, direction: OutgoingDirection, size: int) -> None:
        if direction is OutgoingDirection.TO_SERVER:
            self._ensure_request()
            self._to_server.consume(size)
        else:
            self._to_client.consume(size)

    def peek_data(self, direction: OutgoingDirection) -> OutgoingDataEvent:
        if direction is OutgoingDirection.TO_SERVER:
            if self._error is None:
                self._ensure_request()
            return OutgoingDataEvent(direction, self._to_server.peek())
        return OutgoingDataEvent(direction, self._to_client.peek())

    def connection_established(self) -> bool:
        return self._conn.state is ClientState.ESTABLISHED

    def data_len(self, direction: OutgoingDirection) -> int:
        if direction is OutgoingDirection.TO_SERVER:
            if self._error is None:
                self._ensure_request()
            return len(self._to_server)
        return len(self._to_client)

    def reset_connection(self) -> bool:
        return self._error is not None

    def get_udp_associate(self) -> Optional[Address]:
        return None


class VmessProxyManager(ProxyHandlerManager):
    """Makes a :class:`VmessProxyImpl` per session for one VMess server and user."""

    def __init__(
        self,
        server: Address,
        config: VmessConfig,
        *,
        now: Callable[[], float] = time.time,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.server = server
        self.config = config
        self._now = now
        self._urandom = urandom

    async def new_proxy_handler(
        self, info: SessionInfo, domain_name: Optional[str], udp_associate: bool
    ) -> VmessProxyImpl:
        return VmessProxyImpl(
            self.server, self.config, info, domain_name, udp_associate, now=self._now, urandom=self._urandom
        )

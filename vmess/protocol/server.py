"""Sans-IO VMess server: user table, replay filter and the per-connection state machine.

:class:`ServerConnection` authenticates a request (AEAD AuthID first, then the legacy HMAC table), decodes the
command section, and then frames both body directions. It reads no clock and no randomness it was not given.
On any authentication or header failure it raises a typed error and switches to draining: the I/O layer then
reads and discards :attr:`ServerConnection.drain_remaining` bytes, sends nothing, and closes (spec 3.5).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .. import _core
from ..constants import Command, Option, Security
from ..errors import (
    AuthenticationError,
    ConnectionStateError,
    ProtocolError,
    ReplayError,
    UnsupportedError,
    VmessError,
)
from .events import DataReceived, Event, StreamEnded
from .header import SECTION_FIXED_LEN, RequestHeader, ResponseHeader

__all__ = [
    "User",
    "UserTable",
    "ReplayFilter",
    "MemoryReplayFilter",
    "ServerState",
    "ServerConnection",
    "RequestReceived",
    "TIME_WINDOW",
]

_log = logging.getLogger("vmess.server")

TIME_WINDOW = 120
"""Accepted clock difference between client and server, in seconds (both header formats)."""

_LEGACY_REFRESH = 10

# Plain ints for the per-request checks (IntFlag arithmetic costs microseconds per request).
_OPT_S = int(Option.CHUNK_STREAM)
_OPT_M = int(Option.CHUNK_MASKING)
_OPT_P = int(Option.GLOBAL_PADDING)
_OPT_A = int(Option.AUTHENTICATED_LENGTH)
_AEAD_SECURITIES = (int(Security.AES128_GCM), int(Security.CHACHA20_POLY1305))


@dataclass(eq=False)
class User:
    """A configured user: its key material is built once, when it is added to a :class:`UserTable`."""

    user_id: uuid.UUID
    alter_id: int = 0
    name: str = ""
    keys: "_core.UserKeys" = field(init=False, repr=False)
    legacy_ids: Tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = _core.UserKeys(self.user_id.bytes)
        self.legacy_ids = tuple(_core.alter_ids(self.user_id.bytes, self.alter_id)) if self.alter_id else ()

    @property
    def tag(self) -> str:
        """A short label for logs: the name, or a hash prefix that does not reveal the ID."""
        if self.name:
            return self.name
        return "u-" + hashlib.sha256(b"vmess-user-tag" + self.user_id.bytes).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"User(tag={self.tag!r}, alter_id={self.alter_id})"


class UserTable:
    """The server's users. Adding and removing users is thread-safe and may happen while serving.

    AEAD requests are matched by trying each user's AuthID key (spec 3.4). Legacy requests (users with
    ``alter_id > 0``) are matched through a table of HMAC-MD5 values for every ID and every second within
    +-120 s of now, refreshed every 10 s (spec 2.2).
    """

    def __init__(self, users: Optional[List[Tuple[object, int]]] = None, *, drain_seed: Optional[bytes] = None) -> None:
        self._lock = threading.Lock()
        self._users: Dict[bytes, User] = {}
        self._snapshot: Tuple[User, ...] = ()
        self._legacy: Dict[bytes, Tuple[User, int]] = {}
        self._legacy_span: Optional[Tuple[int, int]] = None
        seed = hashlib.sha256(drain_seed if drain_seed is not None else os.urandom(32)).digest()
        self.drain_base = int.from_bytes(seed[0:4], "big") % 3266
        self.drain_rand_max = int.from_bytes(seed[4:8], "big") % 64 + 1
        for user_id, alter_id in users or ():
            self.add(user_id, alter_id)

    def add(self, user_id: object, alter_id: int = 0, name: str = "") -> User:
        """Add (or replace) a user; returns it."""
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
        if not 0 <= alter_id <= 0xFFFF:
            raise ValueError("alter_id must be in 0..65535")
        user = User(uid, alter_id, name)
        with self._lock:
            self._users[uid.bytes] = user
            self._snapshot = tuple(self._users.values())
            self._legacy_span = None  # rebuild the legacy table on next use
        return user

    def remove(self, user_id: object) -> bool:
        """Remove a user; True if it was present."""
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
        with self._lock:
            found = self._users.pop(uid.bytes, None) is not None
            self._snapshot = tuple(self._users.values())
            self._legacy_span = None
        return found

    def __len__(self) -> int:
        return len(self._snapshot)

    def __iter__(self) -> Iterator[User]:
        return iter(self._snapshot)

    def match_auth_id(self, auth_id: bytes, now: float) -> Tuple[Optional[User], Optional[int]]:
        """The user whose key opens ``auth_id`` and its timestamp (even if out of window), else (None, None)."""
        open_auth_id = _core.open_auth_id
        for user in self._snapshot:
            ts = open_auth_id(user.keys, auth_id)
            if ts is not None:
                return user, ts
        return None, None

    def match_legacy(self, auth: bytes, now: float) -> Optional[Tuple[User, int]]:
        """The (user, timestamp) whose legacy HMAC equals ``auth`` within +-120 s of ``now``, else None."""
        t = int(now)
        with self._lock:
            span = self._legacy_span
            if span is None or t - span[0] > TIME_WINDOW + _LEGACY_REFRESH or span[1] - t < TIME_WINDOW:
                self._refresh_legacy(t)
            # A dict lookup, not a loop of comparisons: Python compares the key bytes only after their hashes
            # (SipHash, randomly keyed per process) are equal, so timing says nothing about how close a guess was.
            return self._legacy.get(bytes(auth))

    def _refresh_legacy(self, t: int) -> None:
        lo, hi = t - TIME_WINDOW, t + TIME_WINDOW + _LEGACY_REFRESH
        users = [u for u in self._snapshot if u.alter_id > 0]
        table: Dict[bytes, Tuple[User, int]] = {}
        old = self._legacy_span
        if old is not None:  # keep what is still in the window, compute only the new seconds
            table = {k: v for k, v in self._legacy.items() if lo <= v[1] <= hi}
            start = max(lo, old[1] + 1)
        else:
            start = lo
        for ts in range(start, hi + 1):
            for user in users:
                for id_bytes in (user.user_id.bytes, *user.legacy_ids):
                    table[_core.legacy_auth(id_bytes, ts)] = (user, ts)
        self._legacy = table
        self._legacy_span = (lo, hi)

    def drain_size(self, urandom: Callable[[int], bytes]) -> int:
        """Bytes a failed connection consumes before closing: stable per server plus a small random part."""
        return 16 + 38 + self.drain_base + int.from_bytes(urandom(2), "big") % self.drain_rand_max


class ReplayFilter(ABC):
    """Remembers AuthIDs and request sessions long enough that a replay cannot pass the clock check unseen.

    A request passes the clock check while ``|ts - now| <= TIME_WINDOW`` and its timestamp may be up to 120 s
    ahead of ours, so the same AuthID (or legacy header) can be accepted for up to ``2 * TIME_WINDOW`` = 240 s
    after it is first seen: an implementation must remember both kinds of entries at least that long.
    A shared implementation (several server processes) can replace the in-memory one.
    """

    @abstractmethod
    def check_auth_id(self, auth_id: bytes, now: float) -> bool:
        """Record ``auth_id``; False if it was seen within the window (a replay), or cannot be recorded."""

    @abstractmethod
    def check_session(self, user_id: bytes, req_key: bytes, req_iv: bytes, now: float) -> bool:
        """Record the (user, key, IV) triple; False if it was seen within its lifetime, or cannot be recorded."""


_GENERATIONS = 3


class MemoryReplayFilter(ReplayFilter):
    """In-process replay filter: rotating generations of AuthIDs and an expiring session map.

    Generations rotate every ``window`` seconds and three are kept, so an AuthID is remembered for 2-3 windows
    (240-360 s by default: at least the 240 s during which it can pass the clock check, see
    :class:`ReplayFilter`). Sessions (user, request key, IV) are remembered ``session_ttl`` seconds (240 by default,
    for the same reason; v2fly keeps them 3 minutes, which leaves a gap for clients whose clocks run ahead).

    Memory is bounded: at most ``max_entries`` AuthIDs per generation and ``max_entries`` sessions. When a limit is
    reached, new requests are refused until entries expire (fail closed: a full filter never lets a replay in), and
    a warning is logged once per window. Only requests that already passed authentication reach the filter, so
    only holders of a user ID can fill it.
    """

    def __init__(self, *, window: float = 120.0, session_ttl: float = 240.0, max_entries: int = 1_000_000) -> None:
        if window <= 0 or session_ttl <= 0 or max_entries < 1:
            raise ValueError("window and session_ttl must be positive and max_entries at least 1")
        self.window = window
        self.session_ttl = session_ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._generations: List[set[bytes]] = [set() for _ in range(_GENERATIONS)]  # newest first
        self._rotated_at: Optional[float] = None
        self._sessions: Dict[bytes, float] = {}
        self._sessions_pruned_at = 0.0
        self._full_logged_at: Optional[float] = None

    def check_auth_id(self, auth_id: bytes, now: float) -> bool:
        key = bytes(auth_id)
        with self._lock:
            if self._rotated_at is None:
                self._rotated_at = now
            elif now - self._rotated_at >= self.window:
                # One new generation per window elapsed (all of them after a long quiet spell).
                steps = min(int((now - self._rotated_at) // self.window), _GENERATIONS)
                self._generations = [set() for _ in range(steps)] + self._generations[: _GENERATIONS - steps]
                self._rotated_at = now
            generations = self._generations
            if any(key in g for g in generations):
                return False
            if len(generations[0]) >= self.max_entries:
                self._warn_full("AuthIDs", now)
                return False
            generations[0].add(key)
            return True

    def check_session(self, user_id: bytes, req_key: bytes, req_iv: bytes, now: float) -> bool:
        key = bytes(user_id) + bytes(req_key) + bytes(req_iv)
        with self._lock:
            if now - self._sessions_pruned_at >= 10:
                self._sessions = {k: t for k, t in self._sessions.items() if t > now}
                self._sessions_pruned_at = now
            expires = self._sessions.get(key)
            if expires is not None and expires > now:
                return False
            if len(self._sessions) >= self.max_entries:
                self._warn_full("sessions", now)
                return False
            self._sessions[key] = now + self.session_ttl
            return True

    def _warn_full(self, what: str, now: float) -> None:
        if self._full_logged_at is None or now - self._full_logged_at >= self.window:
            self._full_logged_at = now
            _log.warning(
                "replay filter full (%d %s, max_entries=%d): refusing new requests until entries expire",
                self.max_entries, what, self.max_entries,
            )

    def __len__(self) -> int:
        return sum(len(g) for g in self._generations) + len(self._sessions)


class ServerState(enum.Enum):
    """Where a server connection is in its life."""

    RECEIVE_REQUEST = "ReceiveRequest"
    ESTABLISHED = "Established"
    DRAINING = "Draining"
    CLOSED = "Closed"


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """A request authenticated and decoded: where the client wants to go, and how."""

    user: User
    command: int
    host: str
    port: int
    security: int
    options: int
    legacy_header: bool


class ServerConnection:
    """One inbound VMess connection as a sans-IO state machine (spec 2, 3, 5, 6).

    ``receive_data`` returns events (:class:`RequestReceived` first, then :class:`DataReceived` and
    :class:`StreamEnded`). ``send``/``send_eof`` return the bytes for the client; the first ``send`` carries the
    response header. Failures raise a :class:`~vmess.errors.VmessError`; authentication and header failures also
    set :attr:`drain_remaining` (state DRAINING) so the caller can consume that many more bytes before closing.
    """

    def __init__(
        self,
        users: UserTable,
        replay: ReplayFilter,
        *,
        now: Callable[[], float] = time.time,
        urandom: Callable[[int], bytes] = os.urandom,
        chunk_size: int = 16384,
    ) -> None:
        self.users = users
        self.replay = replay
        self._now = now
        self._urandom = urandom
        self._chunk_size = chunk_size
        self.state = ServerState.RECEIVE_REQUEST
        self._buf = bytearray()
        self._consumed = 0
        self._drain_total = 0
        self.drain_remaining = 0
        self._user: Optional[User] = None
        self._legacy = False
        self._legacy_ts = 0
        self._section_cfb: object = None
        self._section_plain = bytearray()
        self._aead_len: Optional[int] = None
        self.request: Optional[RequestHeader] = None
        self._reader: Optional[_core.ChunkReader] = None
        self._writer: Optional[_core.ChunkWriter] = None
        self._response: bytes = b""
        self._datagrams = False  # UDP (command 2): one event per chunk, each a datagram
        self._received_eof = False
        self._sent_eof = False

    @property
    def user(self) -> Optional[User]:
        """The authenticated user, once known."""
        return self._user

    # ----------------------------------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> List[Event]:
        """Process bytes from the client and return the events they complete."""
        state = self.state
        if state is ServerState.ESTABLISHED:
            return self._receive_body(data)
        if state is ServerState.DRAINING:
            self.drain_remaining = max(0, self.drain_remaining - len(data))
            return []
        if state is ServerState.CLOSED:
            raise ConnectionStateError("connection is closed")
        self._buf += data
        self._consumed += len(data)
        try:
            header = self._parse_request()
        except (AuthenticationError, ProtocolError) as exc:
            self._start_drain()
            raise exc
        except VmessError:
            # An authenticated request for something we do not implement (Mux): nothing to hide, no drain, but
            # never parse on from the middle of a consumed header.
            self.state = ServerState.CLOSED
            raise
        if header is None:
            return []
        rest = bytes(self._buf)
        self._buf = bytearray()
        events: List[Event] = [header]
        if rest:
            events.extend(self._receive_body(rest))
        return events

    def _start_drain(self) -> None:
        self.state = ServerState.DRAINING
        self._buf = bytearray()
        total = self.users.drain_size(self._urandom)
        self.drain_remaining = max(0, total - self._consumed)

    def _receive_body(self, data: bytes) -> List[Event]:
        if self._received_eof:
            # Bytes after the end marker are ignored, as Go peers do (they stop reading the request body), and as
            # when they arrive in the same read as the marker. Not fed to the reader, so they are not kept either.
            return []
        reader = self._reader
        assert reader is not None
        try:
            payloads = reader.feed(data)
        except VmessError:
            self.state = ServerState.CLOSED
            raise
        events: List[Event]
        if len(payloads) > 1 and not self._datagrams:
            # A byte stream: what one read completed is one piece (one event, one write downstream). Many small
            # chunks per read are common (V2Ray sends ~2 KiB chunks).
            events = [DataReceived(b"".join(payloads))]
        else:
            events = [DataReceived(p) for p in payloads]
        if reader.ended:
            self._received_eof = True
            events.append(StreamEnded())
        return events

    def receive_eof(self) -> List[Event]:
        """The client closed its side: [StreamEnded] if clean; TruncatedError mid-header or mid-chunk."""
        from ..errors import TruncatedError

        if self.state in (ServerState.DRAINING, ServerState.CLOSED) or self._received_eof:
            return []
        self._received_eof = True
        if self.state is ServerState.RECEIVE_REQUEST:
            self.state = ServerState.CLOSED
            raise TruncatedError(f"connection closed after {self._consumed} bytes, before a complete request header")
        assert self._reader is not None
        if self._reader.pending:
            self.state = ServerState.CLOSED
            raise TruncatedError("connection closed in the middle of a chunk")
        return [StreamEnded()]

    def _parse_request(self) -> Optional[RequestReceived]:
        buf = self._buf
        if self._user is None:
            if len(buf) < 16:
                return None
            now = self._now()
            auth = bytes(buf[:16])
            user, ts = self.users.match_auth_id(auth, now)
            if user is not None:
                assert ts is not None
                if abs(ts - now) > TIME_WINDOW:
                    raise AuthenticationError(
                        f"invalid user: request time is {int(ts - now):+d} s from ours (check the clocks)"
                    )
                if not self.replay.check_auth_id(auth, now):
                    raise ReplayError("replayed AuthID")
                self._user = user
            else:
                found = self.users.match_legacy(auth, now)
                if found is None:
                    raise AuthenticationError(
                        "invalid user: no user matches (wrong ID, or a client clock more than 120 s off)"
                    )
                self._user, self._legacy_ts = found
                self._legacy = True
                self._section_cfb = _core.legacy_header_decryptor(self._user.keys, self._legacy_ts)
        user = self._user
        if self._legacy:
            return self._parse_legacy(user)
        return self._parse_aead(user)

    def _parse_aead(self, user: User) -> Optional[RequestReceived]:
        buf = self._buf
        if self._aead_len is None:
            if len(buf) < 42:
                return None
            self._aead_len = _core.open_aead_header_length(user.keys, bytes(buf[:16]), bytes(buf[34:42]), bytes(buf[16:34]))
        need = 42 + self._aead_len + 16
        if len(buf) < need:
            return None
        section = _core.open_aead_header(user.keys, bytes(buf[:16]), bytes(buf[34:42]), bytes(buf[42:need]))
        del buf[:need]
        return self._accept(RequestHeader.decode(section))

    def _parse_legacy(self, user: User) -> Optional[RequestReceived]:
        # Decrypt only the command section: the body that may follow in the same read has its own keys.
        buf = self._buf
        plain = self._section_plain
        cfb = self._section_cfb
        while True:
            need = RequestHeader.section_length(plain)
            if need is not None and len(plain) >= need:
                break
            if need is not None:
                target = need
            elif len(plain) < SECTION_FIXED_LEN + 3:
                target = SECTION_FIXED_LEN + 3
            else:
                target = len(plain) + 1
            start = 16 + len(plain)
            take = min(target - len(plain), len(buf) - start)
            if take <= 0:
                return None
            plain += cfb.update(bytes(buf[start : start + take]))  # type: ignore[attr-defined]
        del buf[: 16 + need]
        return self._accept(RequestHeader.decode(bytes(plain)))

    def _accept(self, header: RequestHeader) -> RequestReceived:
        user = self._user
        assert user is not None
        security = header.security
        options = header.options
        if options & _OPT_P and not options & _OPT_M:
            raise ProtocolError("invalid options: global padding (P) without chunk masking (M)")
        if security in _AEAD_SECURITIES and not options & _OPT_S:
            raise ProtocolError("invalid options: an AEAD security needs chunk stream (S)")
        if options & _OPT_A and security not in _AEAD_SECURITIES:
            raise ProtocolError("invalid options: authenticated length (A) needs AES-128-GCM or ChaCha20-Poly1305")
        if header.command == Command.UDP and not options & _OPT_S:
            raise ProtocolError("invalid options: UDP needs chunk stream (S)")
        if not self.replay.check_session(user.user_id.bytes, header.req_key, header.req_iv, self._now()):
            raise ReplayError("replayed session (same request key and IV)")
        if header.command == Command.MUX:
            raise UnsupportedError("Mux (command 3) is not implemented")
        packet = header.command == Command.UDP
        self._datagrams = packet
        self._reader = _core.ChunkReader(
            security, options, header.req_key, header.req_iv, header.req_key, header.req_iv, packet, None
        )
        resp_key, resp_iv = _core.response_keys(header.req_key, header.req_iv, self._legacy)
        plain = ResponseHeader(header.resp_v).encode()
        body_cfb = None
        if self._legacy:
            cfb = _core.cfb_encryptor(resp_key, resp_iv)
            self._response = cfb.update(plain)
            if security == Security.LEGACY:
                body_cfb = cfb  # the legacy response's CFB stream continues into a LEGACY body (spec 6.1)
        else:
            self._response = _core.seal_aead_response(resp_key, resp_iv, plain)
        self._writer = _core.ChunkWriter(
            security, options, resp_key, resp_iv, header.req_key, header.req_iv, self._urandom, packet, body_cfb,
            self._chunk_size,
        )
        self.request = header
        self.state = ServerState.ESTABLISHED
        return RequestReceived(
            user, header.command, header.host, header.port, security, options, self._legacy
        )

    # ----------------------------------------------------------------------------------------- sending

    def _take_response(self) -> bytes:
        response, self._response = self._response, b""
        return response

    def send(self, data: bytes = b"") -> bytes:
        """Frame ``data`` for the client (one datagram for UDP); the response header leads the first call."""
        if self.state is not ServerState.ESTABLISHED or self._writer is None:
            raise ConnectionStateError(f"cannot send in state {self.state.value}")
        if self._sent_eof:
            raise ConnectionStateError("send after send_eof")
        body = self._writer.write(data) if len(data) else b""
        return self._take_response() + body if self._response else body

    def send_eof(self) -> bytes:
        """End the response direction with the end-of-stream chunk (the response header first if unsent)."""
        if self.state is not ServerState.ESTABLISHED or self._writer is None:
            raise ConnectionStateError(f"cannot send in state {self.state.value}")
        if self._sent_eof:
            return b""
        self._sent_eof = True
        return self._take_response() + self._writer.write_end()

    @property
    def max_datagram(self) -> int:
        """Largest UDP datagram one response chunk can carry."""
        if self._writer is None:
            raise ConnectionStateError("no request yet")
        return self._writer.max_payload

    def close(self) -> None:
        """Mark the connection closed."""
        self.state = ServerState.CLOSED

    def release(self) -> None:
        """A hint that the connection is idle: the body ciphers free their contexts until next used (about 2 KiB
        each with the compiled core; see ``ChunkWriter.release``). Nothing observable changes."""
        if self._writer is not None:
            self._writer.release()
        if self._reader is not None:
            self._reader.release()

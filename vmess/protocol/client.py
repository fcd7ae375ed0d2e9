"""Sans-IO VMess client connection: SendRequest -> ReceiveResponse -> Established -> Closed.

:class:`ClientConnection` turns application bytes into wire bytes and wire bytes into events. It does no I/O and
takes its clock and randomness as parameters, so tests can replay it and any I/O layer can drive it.
"""

from __future__ import annotations

import enum
import functools
import os
import time
from typing import Callable, List, Optional, Tuple

from cryptography.hazmat.primitives.ciphers import CipherContext

from .. import _core
from ..config import VmessConfig
from ..constants import MAX_WRITE_CHUNK, Command, Option, Security
from ..errors import AuthenticationError, ConnectionStateError, ProtocolError, TruncatedError, VmessError
from .events import DataReceived, Event, ResponseReceived, StreamEnded
from .header import RequestHeader, ResponseHeader

__all__ = ["ClientState", "ClientConnection", "user_keys", "legacy_ids", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = MAX_WRITE_CHUNK
"""Whole-chunk cap used by our writers; chosen by measurement (bench/bench_core.py chunk-size sweep)."""

_MAX_RESPONSE_HEADER = 18 + 0xFFFF + 16

_RANDOM_BYTES = 16 + 16 + 1 + 1 + 4 + 8 + 15
"""Bytes drawn from ``urandom`` per connection, in one call (see ClientConnection.__init__)."""


@functools.lru_cache(maxsize=256)
def _wire_params(config: VmessConfig) -> Tuple[int, int]:
    """(security code, option bits) of a config: computed once per config, not per connection (IntFlag is slow)."""
    return int(config.security), int(config.options)


class ClientState(enum.Enum):
    """Where a client connection is in its life (the seed's state machine, plus Closed)."""

    SEND_REQUEST = "SendRequest"
    RECEIVE_RESPONSE = "ReceiveResponse"
    ESTABLISHED = "Established"
    CLOSED = "Closed"


@functools.lru_cache(maxsize=1024)
def user_keys(uuid_bytes: bytes) -> "_core.UserKeys":
    """Per-user key material (cmd key, AuthID cipher), built once per user and shared by its connections."""
    return _core.UserKeys(uuid_bytes)


@functools.lru_cache(maxsize=256)
def legacy_ids(uuid_bytes: bytes, alter_id: int) -> Tuple[bytes, ...]:
    """The user's legacy alter IDs (spec 1.3), computed once per (user, alterId)."""
    return tuple(_core.alter_ids(uuid_bytes, alter_id))


class ClientConnection:
    """One VMess client connection (TCP command 1 or UDP command 2), as a sans-IO state machine.

    ``send`` returns the bytes to write to the server; the first call returns the request header and the first
    body chunk together, in one buffer (some servers refuse a header split across reads). ``receive_data`` takes
    bytes from the server and returns events. Any failure raises a :class:`~vmess.errors.VmessError` subclass and
    moves the connection to ``CLOSED``.
    """

    def __init__(
        self,
        config: VmessConfig,
        host: str,
        port: int,
        *,
        command: Command = Command.TCP,
        now: Callable[[], float] = time.time,
        urandom: Callable[[int], bytes] = os.urandom,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if command not in (Command.TCP, Command.UDP):
            raise ValueError(f"unsupported command {command!r}: only TCP and UDP are implemented")
        self.config = config
        self.command = Command(command)
        self._now = now
        self._urandom = urandom
        security, options = _wire_params(config)
        if command == Command.UDP and not options & Option.CHUNK_STREAM:
            # A raw ("zero") stream cannot delimit datagrams: frame UDP as NONE with S|M, as V2Ray does.
            options = Option.CHUNK_STREAM | Option.CHUNK_MASKING
        self.security = security
        self.options = int(options)
        # All of this connection's randomness in one call: request IV and key, response V, padding length,
        # AuthID random part (legacy: alter ID choice) and connection nonce, then up to 15 bytes of padding.
        rnd = urandom(_RANDOM_BYTES)
        if len(rnd) != _RANDOM_BYTES:
            raise ValueError("urandom returned the wrong number of bytes")
        self._req_iv = rnd[0:16]
        self._req_key = rnd[16:32]
        self._resp_v = rnd[32]
        self._rand4 = rnd[34:38]
        self._conn_nonce = rnd[38:46]
        header = RequestHeader(
            req_iv=self._req_iv,
            req_key=self._req_key,
            resp_v=self._resp_v,
            options=self.options,
            security=security,
            command=int(command),
            host=host,
            port=port,
            padding=rnd[46 : 46 + (rnd[33] & 0x0F)],
        )
        self._section = header.encode()  # encoded once: validates the destination now, sealed at the first send
        self._legacy = config.alter_id > 0
        self._user = user_keys(config.user_id.bytes)
        self._resp_key, self._resp_iv = _core.response_keys(self._req_key, self._req_iv, self._legacy)
        self._writer = _core.ChunkWriter(
            security,
            self.options,
            self._req_key,
            self._req_iv,
            self._req_key,
            self._req_iv,
            urandom,
            command == Command.UDP,
            None,
            chunk_size,
        )
        self._reader: Optional[_core.ChunkReader] = None
        self._resp_buf = bytearray()
        self._resp_cfb: Optional[CipherContext] = None
        self.state = ClientState.SEND_REQUEST
        self._sent_eof = False
        self._received_eof = False

    # ----------------------------------------------------------------------------------------- sending

    @property
    def max_datagram(self) -> int:
        """Largest UDP datagram that fits one chunk."""
        return self._writer.max_payload

    def _request(self) -> bytes:
        ts = int(self._now())
        if self._legacy:
            ids = legacy_ids(self.config.user_id.bytes, self.config.alter_id)
            chosen = ids[int.from_bytes(self._rand4[:2], "big") % len(ids)]
            wire = _core.seal_legacy_header(self._user, chosen, ts, self._section)
        else:
            auth_id = _core.create_auth_id(self._user, ts, self._rand4)
            wire = _core.seal_aead_header(self._user, auth_id, self._conn_nonce, self._section)
        self._section = b""  # sealed once: not kept for the connection's lifetime
        self.state = ClientState.RECEIVE_RESPONSE
        return wire

    def send(self, data: bytes = b"") -> bytes:
        """Frame ``data`` (one datagram for UDP) and return the bytes to write; the header leads the first call."""
        if self.state is ClientState.CLOSED:
            raise ConnectionStateError("connection is closed")
        if self._sent_eof:
            raise ConnectionStateError("send after send_eof")
        try:
            body = self._writer.write(data) if len(data) else b""
        except VmessError:
            raise
        if self.state is ClientState.SEND_REQUEST:
            return self._request() + body
        return body

    def send_eof(self) -> bytes:
        """End our direction: the end-of-stream chunk (nothing for a raw stream). Idempotent."""
        if self.state is ClientState.CLOSED:
            raise ConnectionStateError("connection is closed")
        prefix = self._request() if self.state is ClientState.SEND_REQUEST else b""
        if self._sent_eof:
            return prefix
        self._sent_eof = True
        return prefix + self._writer.write_end()

    @property
    def request_sent(self) -> bool:
        """True once the request header has been produced by :meth:`send` or :meth:`send_eof`."""
        return self.state is not ClientState.SEND_REQUEST

    # ----------------------------------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> List[Event]:
        """Process bytes from the server and return the events they complete."""
        if self.state is ClientState.CLOSED:
            raise ConnectionStateError("connection is closed")
        if self.state is ClientState.SEND_REQUEST:
            self.state = ClientState.CLOSED
            raise ProtocolError("server sent data before the request")
        if self._received_eof:
            return []  # bytes after the end marker are ignored, as when they arrive in the same read as the marker
        try:
            return self._receive(data)
        except VmessError:
            self.state = ClientState.CLOSED
            raise

    def _receive(self, data: bytes) -> List[Event]:
        events: List[Event] = []
        if self._reader is None:
            self._resp_buf += data
            header = self._parse_response()
            if header is None:
                return events
            events.append(header)
            data = bytes(self._resp_buf)
            self._resp_buf = bytearray()
            self.state = ClientState.ESTABLISHED
            if not data:
                return events
        reader = self._reader
        assert reader is not None
        payloads = reader.feed(data)
        if len(payloads) > 1 and self.command != Command.UDP:
            # A byte stream: what one read completed is one piece (one event, one write downstream). Many small
            # chunks per read are common (V2Ray sends ~2 KiB chunks).
            events.append(DataReceived(b"".join(payloads)))
        else:
            for payload in payloads:
                events.append(DataReceived(payload))
        if reader.ended and not self._received_eof:
            self._received_eof = True
            events.append(StreamEnded())
        return events

    def _parse_response(self) -> Optional[ResponseReceived]:
        buf = self._resp_buf
        packet = self.command == Command.UDP
        if self._legacy:
            if self._resp_cfb is None:
                if len(buf) < 4:
                    return None
                self._resp_cfb = _core.cfb_decryptor(self._resp_key, self._resp_iv)
                buf[0:4] = self._resp_cfb.update(bytes(buf[0:4]))  # type: ignore[attr-defined]
            need = 4 + buf[3]
            if len(buf) < need:
                return None
            cfb = self._resp_cfb
            plain = bytes(buf[0:4]) + cfb.update(bytes(buf[4:need]))  # type: ignore[attr-defined]
            del buf[:need]
            body_cfb = cfb if self.security == Security.LEGACY else None
        else:
            if len(buf) < 18:
                return None
            length = _core.open_aead_response_length(self._resp_key, self._resp_iv, bytes(buf[:18]))
            need = 18 + length + 16
            if len(buf) < need:
                return None
            plain = _core.open_aead_response(self._resp_key, self._resp_iv, bytes(buf[18:need]))
            del buf[:need]
            body_cfb = None
        header = ResponseHeader.decode(plain)
        if header.resp_v != self._resp_v:
            raise AuthenticationError("unexpected response header: V byte does not match the request")
        self._reader = _core.ChunkReader(
            self.security,
            self.options,
            self._resp_key,
            self._resp_iv,
            self._req_key,
            self._req_iv,
            packet,
            body_cfb,
        )
        return ResponseReceived(header.options, header.command, header.command_data)

    def receive_eof(self) -> List[Event]:
        """The server closed its side. Returns [StreamEnded] for a clean end; TruncatedError mid-header/chunk."""
        if self.state is ClientState.CLOSED:
            return []
        if self._received_eof:
            return []
        self._received_eof = True
        if self._reader is None:
            if not self._resp_buf and self.state is ClientState.RECEIVE_RESPONSE:
                # V2Ray sends its response header only with the first response bytes: when the destination
                # closes (or refuses) without sending anything, the server just closes. That is an empty
                # response, not a forged one: no byte was accepted without authentication.
                return [StreamEnded()]
            self.state = ClientState.CLOSED
            raise TruncatedError("connection closed in the middle of the response header")
        if self._reader.pending:
            self.state = ClientState.CLOSED
            raise TruncatedError(f"connection closed in the middle of a chunk ({self._reader.pending} bytes pending)")
        return [StreamEnded()]

    @property
    def received_eof(self) -> bool:
        """True once the server's direction has ended."""
        return self._received_eof

    def close(self) -> None:
        """Mark the connection closed; further use raises ConnectionStateError."""
        self.state = ClientState.CLOSED

    def release(self) -> None:
        """A hint that the connection is idle: the body ciphers free their contexts until next used (about 2 KiB
        each with the compiled core; see ``ChunkWriter.release``). Nothing observable changes."""
        if self._writer is not None:
            self._writer.release()
        if self._reader is not None:
            self._reader.release()

"""Sans-IO VMess: request/response headers, body framing and the client state machine. No I/O here."""

from __future__ import annotations

from .address import decode_address, encode_address
from .client import ClientConnection, ClientState
from .events import DataReceived, Event, ResponseReceived, StreamEnded
from .header import RequestHeader, ResponseHeader

__all__ = [
    "ClientConnection",
    "ClientState",
    "DataReceived",
    "Event",
    "RequestHeader",
    "ResponseHeader",
    "ResponseReceived",
    "StreamEnded",
    "decode_address",
    "encode_address",
]

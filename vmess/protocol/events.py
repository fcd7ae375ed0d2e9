"""Events that the sans-IO connections return from ``receive_data`` (h11 style: typed events in, bytes out)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "ResponseReceived", "DataReceived", "StreamEnded"]


class Event:
    """Base class of connection events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """The server's response header arrived and matched the request; the connection is established."""

    options: int
    command: int
    command_data: bytes


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Payload bytes from the peer: a piece of the stream (TCP) or exactly one datagram (UDP)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer ended its direction: an end-of-stream chunk, or a clean close at a chunk boundary."""

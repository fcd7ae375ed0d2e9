"""The seed's ProxyHandler surface (VmessProxyImpl / VmessProxyManager) against the sans-IO server."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from vmess.config import VmessConfig
from vmess.errors import AuthenticationError, ConnectionStateError
from vmess.handler import (
    IncomingDataEvent,
    IncomingDirection,
    OutgoingDirection,
    ProxyHandler,
    ProxyHandlerManager,
    SessionInfo,
    VmessProxyImpl,
    VmessProxyManager,
)
from vmess.protocol import ClientState, DataReceived
from vmess.protocol.server import MemoryReplayFilter, RequestReceived, ServerConnection, UserTable

UID = uuid.UUID("0c3bd3b7-87c7-4b5b-9f5a-54c9d7e0d8a1")
SERVER = ("127.0.0.1", 10086)
INFO = SessionInfo(src=("10.0.0.2", 50000), dst=("93.184.216.34", 80))


def drain(handler: VmessProxyImpl, direction: OutgoingDirection) -> bytes:
    out = bytearray()
    while handler.data_len(direction):
        view = handler.peek_data(direction).buffer
        out += view
        handler.consume_data(direction, len(view))
    return bytes(out)


def run(coro):
    return asyncio.run(coro)


def test_manager_makes_handlers_with_the_session_details() -> None:
    manager = VmessProxyManager(SERVER, VmessConfig.new(UID))
    assert isinstance(manager, ProxyHandlerManager)
    handler = run(manager.new_proxy_handler(INFO, "example.org", False))
    assert isinstance(handler, ProxyHandler)
    assert handler.get_server_addr() == SERVER
    assert handler.get_session_info() == INFO
    assert handler.get_domain_name() == "example.org"
    assert handler.get_udp_associate() is None
    assert not handler.connection_established() and not handler.reset_connection()


@pytest.mark.parametrize("encryption", ["aes-128-gcm", "chacha20-poly1305", "none", "zero", "aes-128-cfb"])
@pytest.mark.parametrize("alter_id", [0, 4])
def test_state_machine_and_relay(encryption: str, alter_id: int) -> None:
    config = VmessConfig.new(UID).with_encryption(encryption).with_alter_id(alter_id)
    handler = VmessProxyImpl(SERVER, config, INFO, "example.org")
    server = ServerConnection(UserTable([(UID, alter_id)]), MemoryReplayFilter())
    assert handler.state is ClientState.SEND_REQUEST
    run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, b"GET / HTTP/1.1\r\n\r\n")))
    wire = drain(handler, OutgoingDirection.TO_SERVER)  # header + first chunk, in one buffer
    assert handler.state is ClientState.RECEIVE_RESPONSE
    events = server.receive_data(wire)
    assert isinstance(events[0], RequestReceived) and events[0].host == "example.org" and events[0].port == 80
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"GET / HTTP/1.1\r\n\r\n"

    # More client data before the response: framed and forwarded at once.
    run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, b"more")))
    events = server.receive_data(drain(handler, OutgoingDirection.TO_SERVER))
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"more"

    body = random.Random(1).randbytes(100_000)
    back = server.send(body)
    for i in range(0, len(back), 4096):
        run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_SERVER, back[i : i + 4096])))
    assert handler.connection_established() and handler.state is ClientState.ESTABLISHED
    assert handler.data_len(OutgoingDirection.TO_CLIENT) == len(body)
    # Partial consumption keeps the rest.
    view = handler.peek_data(OutgoingDirection.TO_CLIENT).buffer
    handler.consume_data(OutgoingDirection.TO_CLIENT, 10)
    assert bytes(view[:10]) == body[:10]
    assert drain(handler, OutgoingDirection.TO_CLIENT) == body[10:]

    handler.push_eof(IncomingDirection.FROM_CLIENT)
    events = server.receive_data(drain(handler, OutgoingDirection.TO_SERVER))
    if config.options:
        assert server.receive_eof() == [] or True
    run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_SERVER, server.send_eof())))
    if config.options:
        assert handler.server_eof


def test_client_eof_before_the_request_is_sent() -> None:
    handler = VmessProxyImpl(SERVER, VmessConfig.new(UID).with_encryption("aes-128-gcm"), INFO)
    run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, b"only")))
    handler.push_eof(IncomingDirection.FROM_CLIENT)
    server = ServerConnection(UserTable([(UID, 0)]), MemoryReplayFilter())
    events = server.receive_data(drain(handler, OutgoingDirection.TO_SERVER))
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"only"
    assert type(events[-1]).__name__ == "StreamEnded"
    with pytest.raises(ConnectionStateError):
        run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, b"late")))


def test_protocol_error_resets_the_session() -> None:
    handler = VmessProxyImpl(SERVER, VmessConfig.new(UID).with_encryption("aes-128-gcm"), INFO)
    drain(handler, OutgoingDirection.TO_SERVER)
    with pytest.raises(AuthenticationError):
        run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_SERVER, bytes(64))))
    assert handler.reset_connection()
    assert isinstance(handler.error, AuthenticationError)
    with pytest.raises(AuthenticationError):
        run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, b"x")))


def test_udp_handler_keeps_datagram_boundaries() -> None:
    info = SessionInfo(src=("10.0.0.2", 5353), dst=("1.1.1.1", 53), protocol="udp")
    handler = VmessProxyImpl(SERVER, VmessConfig.new(UID).with_encryption("chacha20-poly1305"), info, None, True)
    for gram in (b"q1", b"query-two"):
        run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_CLIENT, gram)))
    server = ServerConnection(UserTable([(UID, 0)]), MemoryReplayFilter())
    events = server.receive_data(drain(handler, OutgoingDirection.TO_SERVER))
    assert events[0].command == 2
    assert [e.data for e in events if isinstance(e, DataReceived)] == [b"q1", b"query-two"]
    back = server.send(b"a1") + server.send(b"answer-2")
    run(handler.push_data(IncomingDataEvent(IncomingDirection.FROM_SERVER, back)))
    first = handler.peek_data(OutgoingDirection.TO_CLIENT).buffer
    assert bytes(first) == b"a1"
    handler.consume_data(OutgoingDirection.TO_CLIENT, 2)
    assert bytes(handler.peek_data(OutgoingDirection.TO_CLIENT).buffer) == b"answer-2"
    with pytest.raises(ValueError):
        handler.consume_data(OutgoingDirection.TO_CLIENT, 3)

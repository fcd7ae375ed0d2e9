"""Sans-IO client and server state machines against each other, with an injected clock and randomness."""

from __future__ import annotations

import itertools
import random
import uuid

import pytest

from vmess import _core
from vmess.config import VmessConfig, VmessEncryption, VmessSecurityLevel
from vmess.constants import Command, Option
from vmess.errors import (
    AuthenticationError,
    ConnectionStateError,
    ProtocolError,
    ReplayError,
    TruncatedError,
)
from vmess.protocol import ClientConnection, ClientState, DataReceived, ResponseReceived, StreamEnded
from vmess.protocol.header import RequestHeader, ResponseHeader
from vmess.protocol.server import MemoryReplayFilter, RequestReceived, ServerConnection, ServerState, UserTable

UID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")
NOW = 1_750_000_000.0


def clock(t: float = NOW):
    return lambda: t


def rng(seed: int):
    return random.Random(seed).randbytes


def make_pair(config: VmessConfig, *, command: Command = Command.TCP, seed: int = 1, users: UserTable | None = None):
    users = users or UserTable([(UID, config.alter_id)])
    client = ClientConnection(config, "example.com", 443, command=command, now=clock(), urandom=rng(seed))
    server = ServerConnection(users, MemoryReplayFilter(), now=clock(), urandom=rng(seed + 1))
    return client, server


def data_of(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


ENCRYPTIONS = list(VmessEncryption)
LEVELS = list(VmessSecurityLevel)


@pytest.mark.parametrize(
    "encryption,level,alter_id,test_enabled",
    list(itertools.product(ENCRYPTIONS, LEVELS, (0, 4), (False, True))),
)
def test_client_server_every_cipher_level_and_header(encryption, level, alter_id, test_enabled) -> None:
    config = (
        VmessConfig.new(UID)
        .with_encryption(encryption)
        .with_security_level(level)
        .with_alter_id(alter_id)
        .with_test_enabled(test_enabled)
    )
    client, server = make_pair(config)
    assert client.state is ClientState.SEND_REQUEST
    payload = random.Random(2).randbytes(70_000)
    wire = client.send(payload)
    assert client.state is ClientState.RECEIVE_RESPONSE
    wire += client.send_eof()
    events = []
    for i in range(0, len(wire), 1000):
        events += server.receive_data(wire[i : i + 1000])
    req = events[0]
    assert isinstance(req, RequestReceived)
    assert (req.host, req.port, req.command, req.legacy_header) == ("example.com", 443, Command.TCP, alter_id > 0)
    assert req.options == config.options and req.security == config.security
    assert data_of(events) == payload
    if config.options & Option.CHUNK_STREAM:
        assert isinstance(events[-1], StreamEnded)
    back = server.send(b"response body") + server.send_eof()
    events = client.receive_data(back)
    assert isinstance(events[0], ResponseReceived)
    assert client.state is ClientState.ESTABLISHED
    assert data_of(events) == b"response body"
    if not config.options & Option.CHUNK_STREAM:
        assert client.receive_eof() == [StreamEnded()]


def test_header_and_first_chunk_leave_in_one_buffer() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    wire = client.send(b"first")
    events = server.receive_data(wire)
    assert isinstance(events[0], RequestReceived) and data_of(events) == b"first"
    assert len(wire) >= 100  # sing-box's "header protect" wants >= 100 bytes in the first read


def test_request_uses_injected_clock_and_randomness() -> None:
    config = VmessConfig.new(UID).with_encryption("chacha20-poly1305")
    a = ClientConnection(config, "1.2.3.4", 80, now=clock(), urandom=rng(9)).send(b"x")
    b = ClientConnection(config, "1.2.3.4", 80, now=clock(), urandom=rng(9)).send(b"x")
    assert a == b  # deterministic given the same clock and random source
    user = _core.UserKeys(UID.bytes)
    assert _core.open_auth_id(user, a[:16]) == int(NOW)


def test_command_section_layout() -> None:
    header = RequestHeader(b"I" * 16, b"K" * 16, 0x42, 0x0D, 3, 1, "10.0.0.1", 8080, b"pp")
    section = header.encode()
    assert section[0] == 1 and section[1:17] == b"I" * 16 and section[17:33] == b"K" * 16
    assert section[33] == 0x42 and section[34] == 0x0D and section[35] == (2 << 4) | 3 and section[36] == 0
    assert section[37] == 1 and section[38:40] == (8080).to_bytes(2, "big") and section[40] == 1
    assert section[41:45] == bytes([10, 0, 0, 1]) and section[45:47] == b"pp"
    assert int.from_bytes(section[47:], "big") == _core.fnv1a32(section[:47])
    assert RequestHeader.decode(section) == header
    v6 = RequestHeader(b"I" * 16, b"K" * 16, 1, 1, 5, 2, "::1", 53).encode()
    assert v6[40] == 3 and RequestHeader.decode(v6).host == "::1"
    bad = bytearray(section)
    bad[-1] ^= 1
    with pytest.raises(ProtocolError):
        RequestHeader.decode(bytes(bad))


def test_response_v_mismatch_is_authentication_error() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    server.receive_data(client.send(b"hi"))
    resp_key, resp_iv = _core.response_keys(server.request.req_key, server.request.req_iv, False)
    forged = _core.seal_aead_response(resp_key, resp_iv, ResponseHeader((server.request.resp_v + 1) & 0xFF).encode())
    with pytest.raises(AuthenticationError):
        client.receive_data(forged)
    assert client.state is ClientState.CLOSED
    with pytest.raises(ConnectionStateError):
        client.send(b"more")


def test_response_option_byte_is_ignored_and_dynamic_port_command_skipped() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    server.receive_data(client.send(b"hi"))
    req = server.request
    resp_key, resp_iv = _core.response_keys(req.req_key, req.req_iv, False)
    header = ResponseHeader(req.resp_v, options=req.options, command=1, command_data=b"\x00" * 26)
    events = client.receive_data(_core.seal_aead_response(resp_key, resp_iv, header.encode()))
    assert events == [ResponseReceived(req.options, 1, b"\x00" * 26)]


def test_forged_response_header_is_rejected() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    server.receive_data(client.send(b"hi"))
    wire = bytearray(server.send(b"x"))
    wire[20] ^= 1
    with pytest.raises(AuthenticationError):
        client.receive_data(bytes(wire))


def test_truncated_response_and_mid_chunk_eof() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    server.receive_data(client.send(b"hi"))
    wire = server.send(b"some data")
    client.receive_data(wire[:10])
    with pytest.raises(TruncatedError):
        client.receive_eof()

    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"), seed=5)
    server.receive_data(client.send(b"hi"))
    wire = server.send(b"some data")
    client.receive_data(wire[:-3])
    with pytest.raises(TruncatedError):
        client.receive_eof()


def test_close_without_any_response_is_an_empty_response() -> None:
    client, _ = make_pair(VmessConfig.new(UID).with_encryption("zero"))
    client.send(b"request")
    assert client.receive_eof() == [StreamEnded()]
    assert client.received_eof


def test_clean_tcp_close_without_end_marker_is_a_normal_end() -> None:
    client, server = make_pair(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    server.receive_data(client.send(b"hi"))
    assert data_of(client.receive_data(server.send(b"abc"))) == b"abc"
    assert client.receive_eof() == [StreamEnded()]


def test_udp_one_datagram_per_chunk() -> None:
    for encryption in ("aes-128-gcm", "chacha20-poly1305", "none", "zero", "aes-128-cfb"):
        for alter_id in (0, 4):
            config = VmessConfig.new(UID).with_encryption(encryption).with_alter_id(alter_id)
            client, server = make_pair(config, command=Command.UDP)
            grams = [b"one", b"two" * 100, b"3"]
            wire = b"".join(client.send(g) for g in grams)
            events = server.receive_data(wire)
            assert events[0].command == Command.UDP
            assert [e.data for e in events if isinstance(e, DataReceived)] == grams
            back = server.send(b"r1") + server.send(b"r2")
            assert [e.data for e in client.receive_data(back) if isinstance(e, DataReceived)] == [b"r1", b"r2"]


def test_destination_is_validated_at_construction() -> None:
    from vmess.errors import AddressError

    with pytest.raises(AddressError):
        ClientConnection(VmessConfig.new(UID), "a" * 300, 80)
    with pytest.raises(AddressError):
        ClientConnection(VmessConfig.new(UID), "example.com", 70000)


# ------------------------------------------------------------------------------------------- server failures


def request_bytes(config: VmessConfig, *, now: float = NOW, seed: int = 3) -> bytes:
    return ClientConnection(config, "example.com", 80, now=clock(now), urandom=rng(seed)).send(b"payload")


def test_wrong_user_is_rejected_with_drain() -> None:
    other = VmessConfig.new(uuid.uuid4()).with_encryption("aes-128-gcm")
    _, server = make_pair(VmessConfig.new(UID))
    wire = request_bytes(other)
    with pytest.raises(AuthenticationError, match="clock"):
        server.receive_data(wire)
    assert server.state is ServerState.DRAINING
    # The drain total is per-server stable plus a small random part, minus what was already read.
    assert 0 <= server.drain_remaining <= 16 + 38 + 3266 + 64 - len(wire)
    before = server.drain_remaining
    assert server.receive_data(b"x" * 10) == []
    assert server.drain_remaining == max(0, before - 10)
    big = UserTable([(UID, 0)], drain_seed=b"stable")
    assert 16 + 38 + big.drain_base <= big.drain_size(rng(1)) < 16 + 38 + big.drain_base + big.drain_rand_max


@pytest.mark.parametrize("skew", [-600, 600, -121, 121])
def test_clock_skew_beyond_120s_is_rejected(skew: int) -> None:
    _, server = make_pair(VmessConfig.new(UID))
    with pytest.raises(AuthenticationError):
        server.receive_data(request_bytes(VmessConfig.new(UID).with_encryption("aes-128-gcm"), now=NOW + skew))


@pytest.mark.parametrize("skew", [-600, 600])
def test_legacy_clock_skew_is_rejected(skew: int) -> None:
    config = VmessConfig.new(UID).with_encryption("aes-128-gcm").with_alter_id(4)
    _, server = make_pair(config)
    with pytest.raises(AuthenticationError):
        server.receive_data(request_bytes(config, now=NOW + skew))


def test_replayed_auth_id_is_rejected() -> None:
    config = VmessConfig.new(UID).with_encryption("aes-128-gcm")
    users = UserTable([(UID, 0)])
    replay = MemoryReplayFilter()
    wire = request_bytes(config)
    first = ServerConnection(users, replay, now=clock(), urandom=rng(1))
    assert isinstance(first.receive_data(wire)[0], RequestReceived)
    second = ServerConnection(users, replay, now=clock(NOW + 5), urandom=rng(1))
    with pytest.raises(ReplayError):
        second.receive_data(wire)
    assert second.state is ServerState.DRAINING


def test_replayed_legacy_session_is_rejected() -> None:
    config = VmessConfig.new(UID).with_encryption("aes-128-gcm").with_alter_id(4)
    users = UserTable([(UID, 4)])
    replay = MemoryReplayFilter()
    wire = request_bytes(config)
    ServerConnection(users, replay, now=clock()).receive_data(wire)
    with pytest.raises(ReplayError):
        ServerConnection(users, replay, now=clock()).receive_data(wire)


def test_every_flipped_header_byte_is_rejected() -> None:
    config = VmessConfig.new(UID).with_encryption("aes-128-gcm")
    wire = request_bytes(config)
    header_len = 16 + 18 + 8 + (len(RequestHeader(b"i" * 16, b"k" * 16, 0, 0, 3, 1, "example.com", 80).encode())) + 16
    users = UserTable([(UID, 0)])
    for i in range(0, header_len, 3):
        forged = bytearray(wire)
        forged[i] ^= 0x10
        server = ServerConnection(users, MemoryReplayFilter(), now=clock())
        with pytest.raises(AuthenticationError):
            server.receive_data(bytes(forged))
        assert server.state is ServerState.DRAINING


def test_truncated_header_then_eof() -> None:
    wire = request_bytes(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    _, server = make_pair(VmessConfig.new(UID))
    assert server.receive_data(wire[:50]) == []
    with pytest.raises(TruncatedError):
        server.receive_eof()


def test_many_users_still_authenticate() -> None:
    users = UserTable([(uuid.uuid4(), 0) for _ in range(999)])
    users.add(UID)
    assert len(users) == 1000
    server = ServerConnection(users, MemoryReplayFilter(), now=clock())
    events = server.receive_data(request_bytes(VmessConfig.new(UID).with_encryption("aes-128-gcm")))
    assert isinstance(events[0], RequestReceived) and data_of(events) == b"payload"


def test_users_added_and_removed_at_run_time() -> None:
    users = UserTable()
    wire = request_bytes(VmessConfig.new(UID).with_encryption("aes-128-gcm"))
    with pytest.raises(AuthenticationError):
        ServerConnection(users, MemoryReplayFilter(), now=clock()).receive_data(wire)
    users.add(UID, name="alice")
    events = ServerConnection(users, MemoryReplayFilter(), now=clock()).receive_data(wire)
    assert events[0].user.tag == "alice"
    assert users.remove(UID) and not users.remove(UID)


def test_user_tag_hides_the_id() -> None:
    user = UserTable().add(UID)
    assert str(UID) not in repr(user) and UID.hex not in user.tag


def test_replay_filter_rotation_bounds_memory() -> None:
    f = MemoryReplayFilter(window=120)
    assert f.check_auth_id(b"a" * 16, 0)
    assert not f.check_auth_id(b"a" * 16, 100)
    assert f.check_auth_id(b"b" * 16, 130)  # rotation: "a" now in the previous generation
    assert not f.check_auth_id(b"a" * 16, 131)
    assert f.check_auth_id(b"c" * 16, 250)  # second rotation: "a" is still remembered, as it must be until
    assert not f.check_auth_id(b"a" * 16, 251)  # 240 s (its timestamp may be 120 s ahead of our clock)
    assert f.check_auth_id(b"e" * 16, 371)  # third rotation: "a" forgotten (remembered 240-360 s)
    assert f.check_auth_id(b"a" * 16, 372)
    assert f.check_auth_id(b"d" * 16, 2000)  # long idle: everything old dropped at once
    assert len(f) == 1
    assert f.check_session(b"u", b"k", b"i", 0) and not f.check_session(b"u", b"k", b"i", 239)
    assert f.check_session(b"u", b"k", b"i", 241)


def test_p_without_m_is_refused_by_the_server() -> None:
    header = RequestHeader(b"I" * 16, b"K" * 16, 7, Option.CHUNK_STREAM | Option.GLOBAL_PADDING, 3, 1, "a.b", 1)
    user = _core.UserKeys(UID.bytes)
    auth = _core.create_auth_id(user, int(NOW), b"1234")
    wire = _core.seal_aead_header(user, auth, b"n" * 8, header.encode())
    _, server = make_pair(VmessConfig.new(UID))
    with pytest.raises(ProtocolError, match="padding"):
        server.receive_data(wire)

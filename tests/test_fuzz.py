"""Hypothesis-driven fuzzing of every parser of untrusted input (the targets live in ``tests/fuzz.py``).

Arbitrary and mutated bytes (valid streams with bytes flipped, truncated, extended, repeated, replayed, spliced;
command sections and response headers mutated in clear text and then sealed with the real keys) go to
``ServerConnection`` (AEAD and legacy users), to ``ClientConnection`` as server responses after a valid request,
to ``ChunkReader`` for every security and every option set (both backends must agree), and to the share-link
parser. Every input is cut at random points and fed as bytes, bytearray or memoryview. Only
:class:`~vmess.errors.VmessError` subclasses may escape; the targets also check their invariants.

Example counts are small for CI; ``VMESS_FUZZ_EXAMPLES=N`` raises them (and ``python -m tests.fuzz`` runs
millions of inputs). The regression tests at the end pin down what fuzzing found.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz
from vmess.constants import Command
from vmess.errors import ConfigError, UnsupportedError, VmessError
from vmess.links import parse_link, parse_subscription
from vmess.protocol.client import ClientState
from vmess.protocol.events import DataReceived, StreamEnded
from vmess.protocol.header import RequestHeader
from vmess.protocol.server import MemoryReplayFilter, ServerConnection, ServerState

_SCALE = int(os.environ.get("VMESS_FUZZ_EXAMPLES", "0") or 0)


def examples(n: int) -> settings:
    """``n`` examples (or ``VMESS_FUZZ_EXAMPLES``), no deadline: the pure backend is slower and that is fine."""
    return settings(
        max_examples=_SCALE or n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


ops = st.lists(
    st.tuples(
        st.sampled_from(fuzz.OP_KINDS),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 16),
        st.binary(max_size=48),
    ),
    min_size=1,
    max_size=5,
)
cuts = st.lists(st.integers(0, 1 << 20), max_size=6)
kinds = st.lists(st.integers(0, 2), max_size=7)
client_cases = st.integers(0, len(fuzz.CLIENT_CASES) - 1)


def _case_id(index: int) -> str:
    security, options = fuzz.READER_CASES[index]
    return f"sec{security}-opt{options:#04x}"


def pieces(data: bytes, cut_points: List[int], piece_kinds: List[int]) -> List[Any]:
    return fuzz.split_pieces(data, cut_points, piece_kinds)


# ------------------------------------------------------------------------------------------- server


@examples(300)
@given(client_cases, client_cases, ops, cuts, kinds)
def test_server_mutated_requests(case: int, other: int, mutations: Any, cut_points: Any, piece_kinds: Any) -> None:
    data = fuzz.apply_ops(fuzz.server_seed(case), mutations, fuzz.server_seed(other))
    fuzz.run_server(pieces(data, cut_points, piece_kinds))


@examples(300)
@given(client_cases, ops, st.booleans(), st.booleans(), st.integers(0, 1 << 30), st.binary(max_size=80), cuts, kinds)
def test_server_sealed_broken_sections(
    case: int, mutations: Any, legacy: bool, fix_fnv: bool, nonce: int, tail: bytes, cut_points: Any, piece_kinds: Any
) -> None:
    """Command sections mutated in clear text, then sealed with the user's keys: the decoder sees hostile input."""
    section = fuzz.apply_ops(fuzz._section_seed(case), mutations)
    data = fuzz.seal_section(section, legacy, fix_fnv, nonce) + tail
    fuzz.run_server(pieces(data, cut_points, piece_kinds))


@examples(150)
@given(st.binary(max_size=4000), cuts, kinds)
def test_server_arbitrary_bytes(data: bytes, cut_points: Any, piece_kinds: Any) -> None:
    fuzz.run_server(pieces(data, cut_points, piece_kinds))


# ------------------------------------------------------------------------------------------- client


@examples(300)
@given(client_cases, client_cases, ops, cuts, kinds)
def test_client_mutated_responses(case: int, other: int, mutations: Any, cut_points: Any, piece_kinds: Any) -> None:
    data = fuzz.apply_ops(fuzz.client_seed(case), mutations, fuzz.client_seed(other))
    fuzz.run_client(case, pieces(data, cut_points, piece_kinds))


@examples(200)
@given(client_cases, st.binary(max_size=300), st.binary(max_size=200), cuts, kinds)
def test_client_sealed_broken_response_headers(
    case: int, plain: bytes, tail: bytes, cut_points: Any, piece_kinds: Any
) -> None:
    """Response headers of any content, sealed with the keys the client expects."""
    data = fuzz.seal_response(case, plain) + tail
    fuzz.run_client(case, pieces(data, cut_points, piece_kinds))


@examples(100)
@given(client_cases, st.binary(max_size=2000), cuts, kinds)
def test_client_arbitrary_bytes(case: int, data: bytes, cut_points: Any, piece_kinds: Any) -> None:
    fuzz.run_client(case, pieces(data, cut_points, piece_kinds))


# ------------------------------------------------------------------------------------------- chunk reader


_ALL_CASES = list(range(len(fuzz.READER_CASES)))


@pytest.mark.parametrize("index", _ALL_CASES, ids=[_case_id(i) for i in _ALL_CASES])
@examples(30)
@given(st.booleans(), ops, cuts, kinds)
def test_reader_every_security_and_option_set(
    index: int, packet: bool, mutations: Any, cut_points: Any, piece_kinds: Any
) -> None:
    data = fuzz.apply_ops(fuzz.reader_seed(index, packet), mutations, fuzz.reader_seed(index, not packet))
    fuzz.run_reader(index, packet, pieces(data, cut_points, piece_kinds))


_A_CASES = [i for i, (_, opts) in enumerate(fuzz.READER_CASES) if opts & 0x10]


@pytest.mark.parametrize("index", _A_CASES, ids=[_case_id(i) for i in _A_CASES])
@examples(40)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=3), st.integers(0, 1 << 30), cuts, kinds)
def test_reader_forged_authenticated_lengths(
    index: int, sizes: List[int], seed: int, cut_points: Any, piece_kinds: Any
) -> None:
    """Authenticated length fields sealed with the real key but carrying any value (option A)."""
    import random

    data = fuzz.forge_auth_len(index, sizes, random.Random(seed))
    fuzz.run_reader(index, False, pieces(data, cut_points, piece_kinds))


# ------------------------------------------------------------------------------------------- links


@examples(400)
@given(st.integers(0, len(fuzz.link_seeds()) - 1), st.integers(0, len(fuzz.link_seeds()) - 1), ops, st.booleans())
def test_links_mutated(index: int, other: int, mutations: Any, as_bytes: bool) -> None:
    seeds = fuzz.link_seeds()
    data = fuzz.apply_ops(seeds[index].encode(), mutations, seeds[other].encode())
    fuzz.run_links(data if as_bytes else data.decode("utf-8", "replace"))


@examples(200)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_links_arbitrary_input(data: Any) -> None:
    fuzz.run_links(data)


# ------------------------------------------------------------------------------------------- regressions


def test_mux_request_ends_the_connection_instead_of_parsing_on() -> None:
    """An authenticated Mux request raised UnsupportedError but left the state at ReceiveRequest, so the next
    bytes were parsed as if they continued a request header."""
    section = RequestHeader(b"I" * 16, b"K" * 16, 1, 1, 3, Command.MUX, "", 0).encode()
    for legacy in (False, True):
        conn = ServerConnection(fuzz.server_users(), MemoryReplayFilter(), now=fuzz._clock)
        with pytest.raises(UnsupportedError):
            conn.receive_data(fuzz.seal_section(section, legacy, True, 1) + b"more")
        assert conn.state is ServerState.CLOSED


@pytest.mark.parametrize("case", [0, 7, len(fuzz.CLIENT_CASES) - 1])
def test_bytes_after_the_end_marker_are_ignored_however_they_are_split(case: int) -> None:
    """Trailing bytes after the end marker were ignored in the marker's read but raised ConnectionStateError
    in a later read (a connection's fate depended on TCP segmentation)."""
    wire = fuzz.server_seed(case)
    for split in (len(wire), len(wire) + 3):
        data = wire + b"trailing junk"
        conn = ServerConnection(fuzz.server_users(), MemoryReplayFilter(), now=fuzz._clock)
        events = conn.receive_data(data[:split]) + conn.receive_data(data[split:])
        assert sum(isinstance(e, StreamEnded) for e in events) == 1
        assert conn.state is ServerState.ESTABLISHED
        assert conn.send(b"reply")  # the response direction is still open

    response = fuzz.client_seed(case)
    for split in (len(response), len(response) + 3):
        data = response + b"trailing junk"
        client = fuzz._client(case)
        client.send(b"hello")
        events = client.receive_data(data[:split]) + client.receive_data(data[split:])
        assert sum(isinstance(e, StreamEnded) for e in events) == 1
        assert b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert client.state is ClientState.ESTABLISHED


MANGLED_LINKS = [
    # A stray "://" later in the text made everything before it the "scheme", echoed whole.
    "vmess:/aes-128-gcm:{uid}@1.2.3.4:10086?path=http://x",
    "vmess//{uid}@h:1?host=https://example.com",
    # A doubled paste: the part after the first "@" (with the ID) was echoed as the bad server address.
    "vmess://{uid}@h{uid}@example.com:443?encryption=aes-128-gcm",
    "vmess://{uid}@{uid}@[::1:443",
    # A doubled paste whose second copy lost its first character (no longer a whole UUID).
    "vmess://{uid}@h:1vmess:\x02/\x19{uid_tail}@h:1",
]


@pytest.mark.parametrize("template", MANGLED_LINKS)
def test_link_errors_never_echo_a_user_id_from_a_mangled_link(template: str) -> None:
    uid = uuid.UUID("0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f")
    text = template.format(uid=uid, uid_tail=str(uid)[1:])
    with pytest.raises(ConfigError) as info:
        parse_link(text)
    message = str(info.value) + repr(info.value.value) + info.value.reason
    assert str(uid)[1:] not in message and uid.hex[1:] not in message
    _, problems = parse_subscription(text)
    assert problems and all(str(uid)[1:] not in reason for _, reason in problems)


def test_only_typed_errors_escape_a_run_that_rejects() -> None:
    """The harness itself: a rejected input raises nothing, an untyped exception would propagate."""
    fuzz.run_server([b"\x00" * 100])
    fuzz.run_client(0, [b"\x00" * 100])
    with pytest.raises(TypeError):
        fuzz.run_case("server", {}, [object()])  # a wrong input type is not a VmessError: it propagates
    assert issubclass(ConfigError, VmessError)


_S_CASES = [i for i, (_, opts) in enumerate(fuzz.READER_CASES) if opts & 0x01]  # raw streams have no lengths


@pytest.mark.parametrize("index", _S_CASES, ids=[_case_id(i) for i in _S_CASES])
def test_stream_cut_right_after_a_length_field_is_truncated(index: int) -> None:
    """``pending`` was 0 once a length field was decoded and none of its body had arrived (both backends), so an
    EOF there passed for a clean end instead of TruncatedError."""
    security, options = fuzz.READER_CASES[index]
    head = 18 if options & 0x10 else 2
    wire = fuzz.reader_seed(index, False)
    for mod in [m for m in (fuzz._core_py, fuzz._native) if m is not None]:
        reader = fuzz._reader_for(mod, index, False)
        assert reader.feed(wire[:head]) == []
        assert reader.pending == head
        assert reader.feed(wire[head:]) and reader.ended and reader.pending == 0


def test_server_and_client_report_a_cut_after_a_length_field_as_truncated() -> None:
    from vmess.errors import TruncatedError
    from vmess.protocol.client import ClientConnection
    from vmess.protocol.server import UserTable

    users = UserTable([(fuzz.AEAD_UID, 0)])
    client = ClientConnection(fuzz._config("none", 0, "none"), "example.com", 80, now=fuzz._clock)
    request = client.send(b"hello")  # NONE with S only: the header, then a 2-byte length and the payload
    server = ServerConnection(users, MemoryReplayFilter(), now=fuzz._clock)
    events = server.receive_data(request[:-5])
    assert len(events) == 1  # the request, and nothing of the chunk whose length field arrived
    with pytest.raises(TruncatedError):
        server.receive_eof()
    server = ServerConnection(users, MemoryReplayFilter(), now=fuzz._clock)
    server.receive_data(request)
    response = server.send(b"world")
    client.receive_data(response[:-5])
    with pytest.raises(TruncatedError):
        client.receive_eof()

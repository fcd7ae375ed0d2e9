"""Mutation fuzzing of everything that parses untrusted input: server, client, chunk reader, share links.

The rule checked is the library's error contract: the only exceptions that may escape are the typed ones from
:mod:`vmess.errors` (:class:`~vmess.errors.VmessError` subclasses). Anything else (``IndexError``,
``struct.error``, ``UnicodeError``, an untyped ``ValueError`` ...) is a bug, and so is a broken invariant
(a connection that keeps parsing after it raised, a drain beyond its bound, the two core backends disagreeing,
a user ID in an error message).

Inputs start from valid seeds (real requests, responses, chunk streams and links, built deterministically with
a fixed clock and seeded randomness) and are mutated: bytes flipped or set, ranges truncated, extended, inserted,
deleted, repeated, the whole input replayed, spliced with another seed, or replaced by random bytes. Structured
mutations go past the cryptography: a command section or response header is mutated in clear text and then
sealed with the real keys, so the decoders behind authentication see hostile input too. Every input is then cut
into pieces at random points and fed as ``bytes``, ``bytearray`` or ``memoryview``.

``tests/test_fuzz.py`` drives the same targets with hypothesis (small example counts, for CI). This module is
also the long-running entry point::

    python -m tests.fuzz --target server --count 1000000 [--seed N] [--out DIR]
    python -m tests.fuzz --replay fuzz-crashes/server-IndexError-1.json

It prints inputs/s as it goes and, for every distinct unexpected exception, writes a JSON reproducer (target,
case, pieces in hex, traceback) that ``--replay`` runs again.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import json
import os
import random
import struct
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from vmess import _core, _core_py
from vmess.config import VmessConfig
from vmess.constants import Command, Security
from vmess.errors import VmessError
from vmess.links import VmessLink, parse_link, parse_subscription
from vmess.protocol.client import ClientConnection, ClientState
from vmess.protocol.events import DataReceived, Event, StreamEnded
from vmess.protocol.header import RequestHeader, ResponseHeader
from vmess.protocol.server import MemoryReplayFilter, RequestReceived, ServerConnection, ServerState, UserTable

_native: Any
try:
    from vmess import _speedups as _native
except ImportError:  # the extension is not built: the reader target then checks one backend only
    _native = None

__all__ = [
    "TARGETS",
    "OP_KINDS",
    "Op",
    "apply_ops",
    "split_pieces",
    "random_ops",
    "random_splits",
    "FuzzBug",
    "run_case",
    "main",
]

NOW = 1_750_000_000.0
AEAD_UID = uuid.UUID("9d5c6f0e-3a71-4e2b-8c44-1f0a2b3c4d5e")
LEGACY_UID = uuid.UUID("5e4d3c2b-1a0f-4b8c-9e7d-6c5b4a392817")
LEGACY_ALTER_ID = 4
MAX_DRAIN = 16 + 38 + 3265 + 64
"""Largest drain a server may ask for (spec 3.5)."""

SECURITIES = (Security.LEGACY, Security.AES128_GCM, Security.CHACHA20_POLY1305, Security.NONE)
_S, _R, _M, _P, _A = 0x01, 0x02, 0x04, 0x08, 0x10


def valid_option_sets(security: int) -> List[int]:
    """Every option byte the body codec accepts for ``security`` (S, M, P, A combinations, R sometimes set)."""
    out = []
    for s in (0, _S):
        for m in (0, _M):
            for p in (0, _P):
                for a in (0, _A):
                    opts = s | m | p | a
                    if a and security not in (Security.AES128_GCM, Security.CHACHA20_POLY1305):
                        continue
                    if not s and security in (Security.AES128_GCM, Security.CHACHA20_POLY1305):
                        continue
                    out.append(opts)
    return out


READER_CASES: List[Tuple[int, int]] = [(int(sec), opts) for sec in SECURITIES for opts in valid_option_sets(sec)]
"""(security, options) pairs: every security and every option set its body codec accepts."""


class FuzzBug(AssertionError):
    """A broken invariant (as opposed to an unexpected exception type, which is reported as it is)."""


# ================================================================================================ mutations

OP_KINDS = ("flip", "set", "truncate", "extend", "insert", "delete", "repeat", "replay", "splice", "random")
"""Mutation kinds; ``Op`` is (kind, a, b, blob) with positions taken modulo the input's length."""

Op = Tuple[str, int, int, bytes]
_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x02, 0x03, 0x05, 0x10, 0x40)


def apply_ops(data: bytes, ops: Sequence[Op], other: bytes = b"") -> bytes:
    """Apply mutations in order; ``other`` is the seed used by "splice". Deterministic for given arguments."""
    buf = bytearray(data)
    for kind, a, b, blob in ops:
        n = len(buf)
        if kind == "flip":
            if n:
                buf[a % n] ^= 1 << (b % 8)
        elif kind == "set":
            if n:
                buf[a % n] = blob[0] if blob else _INTERESTING[b % len(_INTERESTING)]
        elif kind == "truncate":
            del buf[a % (n + 1) :]
        elif kind == "extend":
            buf += blob if blob else bytes(b % 64)
        elif kind == "insert":
            pos = a % (n + 1)
            buf[pos:pos] = blob
        elif kind == "delete":
            if n:
                start = a % n
                del buf[start : start + 1 + b % 64]
        elif kind == "repeat":
            if n:
                start = a % n
                piece = buf[start : start + 1 + b % 256]
                buf[start:start] = piece * (1 + b % 3)
        elif kind == "replay":
            buf += buf[: (a % (n + 1)) or n]
        elif kind == "splice":
            if other:
                cut = a % (n + 1)
                ocut = b % (len(other) + 1)
                buf[cut:] = other[ocut:]
        elif kind == "random":
            buf = bytearray(blob)
        else:
            raise ValueError(f"unknown mutation {kind!r}")
    return bytes(buf)


def split_pieces(data: bytes, cuts: Sequence[int], kinds: Sequence[int] = ()) -> List[Any]:
    """Cut ``data`` at ``cuts`` (taken modulo its length, empty pieces kept); piece i is bytes, bytearray or a
    memoryview according to ``kinds[i] % 3``."""
    n = len(data)
    points = sorted(c % (n + 1) for c in cuts)
    pieces: List[Any] = []
    start = 0
    for p in points + [n]:
        pieces.append(data[start:p])
        start = p
    out: List[Any] = []
    for i, piece in enumerate(pieces):
        kind = kinds[i] % 3 if i < len(kinds) else 0
        out.append(piece if kind == 0 else bytearray(piece) if kind == 1 else memoryview(bytearray(piece)))
    return out


def random_ops(rng: random.Random, size_hint: int) -> List[Op]:
    """1-4 random mutations for the standalone loop (hypothesis builds its own)."""
    ops: List[Op] = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        kind = rng.choice(OP_KINDS)
        if kind == "random" and rng.random() < 0.8:
            kind = "flip"
        a = rng.randrange(1 << 20)
        b = rng.randrange(1 << 16)
        if kind in ("extend", "insert"):
            blob = rng.randbytes(rng.choice((1, 2, 4, 16, 64, 300)))
        elif kind == "set":
            blob = bytes((rng.choice(_INTERESTING),)) if rng.random() < 0.5 else rng.randbytes(1)
        elif kind == "random":
            blob = rng.randbytes(rng.choice((0, 1, 15, 16, 17, 33, 42, 57, 58, 100, 600, max(size_hint, 1))))
        else:
            blob = b""
        if kind in ("flip", "set", "truncate", "delete", "repeat") and size_hint:
            a = rng.randrange(size_hint + 1)
        ops.append((kind, a, b, blob))
    return ops


def random_splits(rng: random.Random, size: int) -> Tuple[List[int], List[int]]:
    """Random cut points (0-7, sometimes one byte at a time for short inputs) and piece kinds."""
    if size and size <= 200 and rng.random() < 0.05:
        cuts = list(range(1, size))
    else:
        cuts = [rng.randrange(size + 1) for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 7)))]
    kinds = [rng.randrange(3) for _ in range(len(cuts) + 1)]
    return cuts, kinds


# ================================================================================================ helpers


def _seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def _clock() -> float:
    return NOW


def _check_events(events: Any) -> List[Event]:
    if not isinstance(events, list) or not all(isinstance(e, Event) for e in events):
        raise FuzzBug(f"receive_data returned {events!r}, not a list of events")
    return events


_SECRET_FORMS = tuple(
    form
    for uid in (AEAD_UID, LEGACY_UID)
    for form in (str(uid), uid.hex, str(uid).upper(), uid.hex.upper(), repr(uid.bytes)[2:-1])
)


def _check_secret_free(text: str) -> None:
    for form in _SECRET_FORMS:
        if form in text:
            raise FuzzBug("a user ID appears in an error message or repr")


# ================================================================================================ server


@functools.lru_cache(maxsize=None)
def server_users() -> UserTable:
    """One AEAD-only user and one legacy user (alterId 4); the legacy table is built once for the fixed clock."""
    table = UserTable([(AEAD_UID, 0), (LEGACY_UID, LEGACY_ALTER_ID)], drain_seed=b"fuzz")
    table.match_legacy(b"\0" * 16, NOW)  # build the legacy lookup table now, not in the first timed input
    return table


def _client_configs() -> List[Tuple[str, int, str, bool]]:
    """(encryption, alter_id, level, udp) combinations used to build seeds."""
    out = []
    for enc in ("aes-128-gcm", "chacha20-poly1305", "none", "zero", "aes-128-cfb"):
        for aid in (0, LEGACY_ALTER_ID):
            for level in ("none", "standard", "high"):
                for udp in (False, True):
                    if udp and level != "standard":
                        continue
                    out.append((enc, aid, level, udp))
    return out


CLIENT_CASES = _client_configs()


def _config(enc: str, aid: int, level: str) -> VmessConfig:
    uid = LEGACY_UID if aid else AEAD_UID
    return VmessConfig.new(uid).with_encryption(enc).with_alter_id(aid).with_security_level(level)


def _client(case: int) -> ClientConnection:
    enc, aid, level, udp = CLIENT_CASES[case]
    return ClientConnection(
        _config(enc, aid, level), "example.com" if case % 3 else "10.1.2.3", 443,
        command=Command.UDP if udp else Command.TCP, now=_clock, urandom=_seeded(1000 + case),
    )


_SEED_PAYLOADS = (b"hello", b"\x00" * 3000, bytes(range(256)) * 70)


@functools.lru_cache(maxsize=None)
def server_seed(case: int) -> bytes:
    """A complete valid client stream: request header, body chunks, end marker."""
    client = _client(case)
    udp = CLIENT_CASES[case][3]
    wire = b"".join(client.send(p[: client.max_datagram] if udp else p) for p in _SEED_PAYLOADS)
    return wire + client.send_eof()


def _section_seed(case: int) -> bytes:
    """The plaintext command section of a request (what the structured server mutations start from)."""
    enc, aid, level, udp = CLIENT_CASES[case]
    config = _config(enc, aid, level)
    host = ("example.com", "10.1.2.3", "2001:db8::1")[case % 3]
    return RequestHeader(
        b"I" * 16, bytes(random.Random(case).randbytes(16)), 0x42, config.options, config.security,
        Command.UDP if udp else Command.TCP, host, 443, b"p" * (case % 16),
    ).encode()


def seal_section(section: bytes, legacy: bool, fix_fnv: bool, nonce_seed: int) -> bytes:
    """Seal an arbitrary (possibly broken) command section with a real user's keys, so it passes authentication."""
    if fix_fnv and len(section) >= 4:
        section = section[:-4] + struct.pack(">I", _core.fnv1a32(section[:-4]))
    rnd = random.Random(nonce_seed)
    if legacy:
        user = _core.UserKeys(LEGACY_UID.bytes)
        ids = _core.alter_ids(LEGACY_UID.bytes, LEGACY_ALTER_ID)
        return _core.seal_legacy_header(user, ids[nonce_seed % len(ids)], int(NOW), section)
    user = _core.UserKeys(AEAD_UID.bytes)
    auth_id = _core.create_auth_id(user, int(NOW), rnd.randbytes(4))
    return _core.seal_aead_header(user, auth_id, rnd.randbytes(8), section[:0xFFFF])


def run_server(pieces: Sequence[Any]) -> str:
    """Feed ``pieces`` to a fresh ServerConnection the way the asyncio server does, checking its invariants.

    Returns how far the input got ("established", "incomplete", or the stage and type of the first error).
    """
    conn = ServerConnection(server_users(), MemoryReplayFilter(), now=_clock, urandom=_seeded(7))
    established = False
    outcome = ""
    for piece in pieces:
        try:
            events = _check_events(conn.receive_data(piece))
        except VmessError as exc:
            _check_secret_free(str(exc))
            outcome = outcome or f"{'body' if conn.request is not None else 'header'}: {type(exc).__name__}"
            if conn.state not in (ServerState.DRAINING, ServerState.CLOSED):
                raise FuzzBug(f"{type(exc).__name__} left the server in state {conn.state.value}") from exc
            if conn.state is ServerState.DRAINING:
                if not 0 <= conn.drain_remaining <= MAX_DRAIN:
                    raise FuzzBug(f"drain of {conn.drain_remaining} bytes") from exc
                continue
            break
        for event in events:
            if isinstance(event, RequestReceived):
                if established:
                    raise FuzzBug("two requests on one connection")
                established = True
                _check_secret_free(repr(event) + repr(conn))
        if events and not established:
            raise FuzzBug("events before the request")
    try:
        conn.receive_eof()
    except VmessError as exc:
        _check_secret_free(str(exc))
    if established and conn.state is ServerState.ESTABLISHED:
        udp = conn.request is not None and conn.request.command == Command.UDP
        conn.send(b"x" * (min(conn.max_datagram, 2000) if udp else 40000))
        conn.send_eof()
    return outcome or ("established" if established else "incomplete")


def gen_server(rng: random.Random) -> Tuple[Dict[str, Any], List[Any]]:
    """One server input: a mutated valid stream, a sealed mutated section, or random bytes."""
    case = rng.randrange(len(CLIENT_CASES))
    mode = rng.random()
    if mode < 0.45:
        seed = server_seed(case)
        data = apply_ops(seed, random_ops(rng, min(len(seed), 400)), server_seed(rng.randrange(len(CLIENT_CASES))))
    elif mode < 0.95:
        section = apply_ops(_section_seed(case), random_ops(rng, 60))
        legacy = rng.random() < 0.5
        data = seal_section(section, legacy, rng.random() < 0.8, rng.randrange(1 << 30))
        if rng.random() < 0.7:
            data += rng.randbytes(rng.choice((0, 2, 18, 50, 300)))
    else:
        data = rng.randbytes(rng.choice((1, 15, 16, 17, 41, 42, 58, 100, 4000)))
    cuts, kinds = random_splits(rng, len(data))
    return {}, split_pieces(data, cuts, kinds)


# ================================================================================================ client


@functools.lru_cache(maxsize=None)
def client_seed(case: int) -> bytes:
    """A valid server response stream for ``_client(case)``'s request: response header, chunks, end marker."""
    client = _client(case)
    request = client.send(b"hello")
    server = ServerConnection(server_users(), MemoryReplayFilter(), now=_clock, urandom=_seeded(2000 + case))
    server.receive_data(request)
    udp = CLIENT_CASES[case][3]
    wire = b"".join(server.send(p[: server.max_datagram] if udp else p) for p in _SEED_PAYLOADS)
    return wire + server.send_eof()


def seal_response(case: int, plain: bytes) -> bytes:
    """Seal an arbitrary (possibly broken) response header with the keys ``_client(case)`` expects."""
    client = _client(case)
    enc, aid, level, udp = CLIENT_CASES[case]
    resp_key, resp_iv = client._resp_key, client._resp_iv  # the client's own keys: test-only access
    if aid:
        return _core.cfb_encryptor(resp_key, resp_iv).update(plain)
    return _core.seal_aead_response(resp_key, resp_iv, plain[:0xFFFF])


def run_client(case: int, pieces: Sequence[Any]) -> str:
    """Feed ``pieces`` as the server's answer to ``_client(case)``'s request, checking its invariants.

    Returns how far the input got ("established", "incomplete", or the stage and type of the first error).
    """
    conn = _client(case)
    conn.send(b"hello")
    for piece in pieces:
        try:
            events = _check_events(conn.receive_data(piece))
        except VmessError as exc:
            _check_secret_free(str(exc))
            if conn.state is not ClientState.CLOSED:
                raise FuzzBug(f"{type(exc).__name__} left the client in state {conn.state.value}") from exc
            return f"{'body' if conn._reader is not None else 'header'}: {type(exc).__name__}"
        body_events = any(isinstance(e, (DataReceived, StreamEnded)) for e in events)
        if body_events and conn.state is not ClientState.ESTABLISHED:
            raise FuzzBug("data before the response header")
    try:
        conn.receive_eof()
    except VmessError as exc:
        _check_secret_free(str(exc))
        return f"eof: {type(exc).__name__}"
    _check_secret_free(repr(conn) + repr(conn.config))
    return "established" if conn.state is ClientState.ESTABLISHED else "incomplete"


def gen_client(rng: random.Random) -> Tuple[Dict[str, Any], List[Any]]:
    case = rng.randrange(len(CLIENT_CASES))
    mode = rng.random()
    if mode < 0.6:
        seed = client_seed(case)
        data = apply_ops(seed, random_ops(rng, min(len(seed), 300)), client_seed(rng.randrange(len(CLIENT_CASES))))
    elif mode < 0.95:
        client = _client(case)
        command_data = rng.randbytes(rng.randrange(30))
        plain = ResponseHeader(client._resp_v, rng.randrange(256), rng.choice((0, 1, 2)), command_data).encode()
        plain = apply_ops(plain, random_ops(rng, len(plain)))
        data = seal_response(case, plain) + client_seed(case)[len(seal_response(case, b"")) + 4 :]
    else:
        data = rng.randbytes(rng.choice((1, 4, 17, 18, 34, 35, 300)))
    cuts, kinds = random_splits(rng, len(data))
    return {"case": case}, split_pieces(data, cuts, kinds)


# ================================================================================================ chunk reader

_KEY, _IV, _REQ_KEY, _REQ_IV = (bytes([i]) * 16 for i in (1, 2, 3, 4))


@functools.lru_cache(maxsize=None)
def reader_seed(index: int, packet: bool) -> bytes:
    """A valid chunk stream for READER_CASES[index] (several chunk sizes, then the end marker)."""
    security, options = READER_CASES[index]
    writer = _core.ChunkWriter(security, options, _KEY, _IV, _REQ_KEY, _REQ_IV, _seeded(index), packet)
    sizes = (1, 100, 0, 2000) if packet else (1, 100, 20000, 3)
    wire = b"".join(writer.write(bytes([i]) * n) for i, n in enumerate(sizes))
    return wire + writer.write_end()


def forge_auth_len(index: int, sizes: Sequence[int], rng: random.Random) -> bytes:
    """Frames whose authenticated length fields carry arbitrary values (option A), followed by random bodies.

    Only the length is sealed correctly, so the reader's size checks and buffering see sizes no writer makes.
    """
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    security, options = READER_CASES[index]
    len_key = _core.kdf16(_REQ_KEY, b"auth_len")
    aead = AESGCM(len_key) if security == Security.AES128_GCM else ChaCha20Poly1305(_core.chacha_key(len_key))
    out = bytearray()
    for counter, size in enumerate(sizes):
        nonce = struct.pack(">H", counter & 0xFFFF) + _REQ_IV[2:12]
        out += aead.encrypt(nonce, struct.pack(">H", size & 0xFFFF), None)
        out += rng.randbytes(min(size + 16, 70000) if rng.random() < 0.5 else rng.randrange(64))
    return bytes(out)


def _reader_for(mod: Any, index: int, packet: bool) -> Any:
    security, options = READER_CASES[index]
    return mod.ChunkReader(security, options, _KEY, _IV, _REQ_KEY, _REQ_IV, packet, None)


def _drive_reader(reader: Any, pieces: Sequence[Any]) -> Tuple[List[bytes], Optional[type], int, bool, bytes]:
    out: List[bytes] = []
    error: Optional[type] = None
    for piece in pieces:
        try:
            got = reader.feed(piece)
        except VmessError as exc:
            _check_secret_free(str(exc))
            error = type(exc)
            break
        if not isinstance(got, list) or not all(isinstance(p, bytes) and p for p in got):
            raise FuzzBug(f"feed returned {got!r}")
        out.extend(got)
    return out, error, reader.pending, reader.ended, reader.unused_data


def run_reader(index: int, packet: bool, pieces: Sequence[Any]) -> str:
    """Feed ``pieces`` to the live backend's ChunkReader; when both backends exist, they must agree.

    Returns the outcome: the error type, "ended" (end marker seen) or "open".
    """
    live = _drive_reader(_reader_for(_core, index, packet), pieces)
    outcome = live[1].__name__ if live[1] else "ended" if live[3] else "open"
    if _native is None:
        return outcome
    other_mod = _core_py if _core.BACKEND == "native" else _native
    other = _drive_reader(_reader_for(other_mod, index, packet), [bytes(p) for p in pieces])
    if live[1] is not None:  # after an error a reader is dead: only what it returned and raised must agree
        live, other = live[:2] + (0, False, b""), other[:2] + (0, False, b"")
    if live != other:
        raise FuzzBug(
            f"backends disagree on {READER_CASES[index]}: {_core.BACKEND} {_summary(live)} vs {_summary(other)}"
        )
    return outcome


def _summary(result: Tuple[List[bytes], Optional[type], int, bool, bytes]) -> str:
    out, error, pending, ended, unused = result
    name = error.__name__ if error else None
    return f"(payloads={[len(p) for p in out]}, error={name}, pending={pending}, ended={ended}, unused={len(unused)})"


def gen_reader(rng: random.Random) -> Tuple[Dict[str, Any], List[Any]]:
    index = rng.randrange(len(READER_CASES))
    packet = rng.random() < 0.3
    security, options = READER_CASES[index]
    if options & _A and rng.random() < 0.3:
        choices = (0, 1, 15, 16, 17, 63, 64, 65535, rng.randrange(65536))
        sizes = [rng.choice(choices) for _ in range(rng.randrange(1, 4))]
        data = forge_auth_len(index, sizes, rng)
    elif rng.random() < 0.03:
        data = rng.randbytes(rng.choice((1, 2, 17, 18, 19, 100, 5000)))
    else:
        seed = reader_seed(index, packet)
        data = apply_ops(seed, random_ops(rng, min(len(seed), 200)), reader_seed(index, not packet))
    cuts, kinds = random_splits(rng, len(data))
    return {"index": index, "packet": packet}, split_pieces(data, cuts, kinds)


# ================================================================================================ links

_LINK_UID = AEAD_UID


@functools.lru_cache(maxsize=None)
def link_seeds() -> Tuple[str, ...]:
    """Valid links of every supported shape, and a subscription body."""
    uid = str(_LINK_UID)
    v2rayn = {
        "v": "2", "ps": "name ü", "add": "example.com", "port": "443", "id": uid, "aid": "0", "scy": "auto",
        "net": "ws", "type": "none", "host": "h.example", "path": "/p?x=1", "tls": "tls", "sni": "s.example",
    }
    plain = {"v": 2, "add": "2001:db8::1", "port": 8443, "id": uid, "aid": 4, "net": "tcp", "scy": "chacha20-poly1305"}
    links = [
        "vmess://" + base64.b64encode(json.dumps(v2rayn).encode()).decode(),
        "vmess://" + base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("="),
        f"vmess://{uid}@example.com:443?encryption=aes-128-gcm&type=ws&path=%2Fws&security=tls#remark%20%F0%9F%98%80",
        f"vmess://{uid}@[2001:db8::2]:80?encryption=none&type=grpc&serviceName=svc&security=reality&pbk=k#g",
        f"vmess://aes-128-gcm:{uid}@1.2.3.4:10086?alterId=4&test=true&security=auto",
        f"vmess://{uid}@h:1",
    ]
    sub = "\n".join(links[:4] + ["ss://abc@h:1#x", "garbage", ""])
    return tuple(links + [sub, base64.b64encode(sub.encode()).decode()])


def run_links(text: Union[str, bytes]) -> str:
    """Parse ``text`` as one link and as a subscription; successful links must re-serialise and re-parse.

    Returns "link" if it parsed as a link, else the error type.
    """
    texts = [text] if isinstance(text, str) else [text.decode("utf-8", "replace"), text.decode("latin-1")]
    outcome = ""
    for t in texts:
        try:
            link = parse_link(t)
        except VmessError as exc:
            _check_secret_free(str(exc))
            outcome = outcome or type(exc).__name__
        else:
            _check_links_round_trip(link)
            outcome = "link"
        links, problems = parse_subscription(t)
        for link in links:
            _check_links_round_trip(link)
        for _, reason in problems:
            _check_secret_free(reason)
    if isinstance(text, bytes):
        links, problems = parse_subscription(text)
        for _, reason in problems:
            _check_secret_free(reason)
    return outcome


def _key_fields(link: VmessLink) -> Tuple[Any, ...]:
    c = link.config
    return (link.server_host, link.server_port, c.user_id, c.encryption, c.alter_id, link.name)


def _check_links_round_trip(link: VmessLink) -> None:
    # The remark and transport settings are the user's own text (a mutated link may carry an ID there): the repr
    # is checked only when they do not.
    own_text = link.name + repr(link.name) + "".join(k + v + repr(k) + repr(v) for k, v in link.transport.items())
    if not any(form in own_text for form in _SECRET_FORMS):
        _check_secret_free(repr(link))
    _check_secret_free(repr(link.config) + str(link.config))
    again = parse_link(link.to_v2rayn())  # levels and the test switch are presets, not link fields: not compared
    if _key_fields(again) != _key_fields(link):
        raise FuzzBug(f"to_v2rayn round trip changed the link: {link!r} -> {again!r}")


def gen_links(rng: random.Random) -> Tuple[Dict[str, Any], List[Any]]:
    seeds = link_seeds()
    seed = rng.choice(seeds).encode()
    mode = rng.random()
    if mode < 0.3 and b"@" not in seed and b"\n" not in seed and seed.startswith(b"vmess://"):
        # Structured: mutate the JSON inside the base64, then re-encode it.
        urlsafe = b"-" in seed or b"_" in seed
        raw = base64.b64decode(seed[8:] + b"=" * (-len(seed[8:]) % 4), altchars=b"-_" if urlsafe else None)
        data = b"vmess://" + base64.b64encode(apply_ops(raw, random_ops(rng, len(raw))))
    elif mode < 0.97:
        data = apply_ops(seed, random_ops(rng, len(seed)), rng.choice(seeds).encode())
    else:
        data = rng.randbytes(rng.randrange(200))
    as_bytes = rng.random() < 0.3
    return {"bytes": as_bytes}, [data if as_bytes else data.decode("utf-8", "replace")]


# ================================================================================================ registry


@dataclass(frozen=True)
class Target:
    """A fuzz target: ``gen(rng)`` makes (case, pieces); ``run(case, pieces)`` executes one input."""

    name: str
    gen: Callable[[random.Random], Tuple[Dict[str, Any], List[Any]]]
    run: Callable[[Dict[str, Any], Sequence[Any]], str]
    warm: Callable[[], object] = field(default=lambda: None)


def _run_links_case(case: Dict[str, Any], pieces: Sequence[Any]) -> str:
    return run_links(pieces[0])


def _warm_server() -> None:
    server_users()
    for i in range(len(CLIENT_CASES)):
        server_seed(i)


def _warm_client() -> None:
    for i in range(len(CLIENT_CASES)):
        client_seed(i)


TARGETS: Dict[str, Target] = {
    "server": Target("server", gen_server, lambda case, pieces: run_server(pieces), _warm_server),
    "client": Target("client", gen_client, lambda case, pieces: run_client(case["case"], pieces), _warm_client),
    "reader": Target("reader", gen_reader, lambda case, pieces: run_reader(case["index"], case["packet"], pieces)),
    "links": Target("links", gen_links, _run_links_case, link_seeds),
}


def run_case(target: str, case: Dict[str, Any], pieces: Sequence[Any]) -> str:
    """Run one input on ``target`` and return its outcome; VmessError is the contract, anything else propagates."""
    return TARGETS[target].run(case, pieces)


# ================================================================================================ reproducers


def _encode_piece(piece: Any) -> Dict[str, str]:
    if isinstance(piece, str):
        return {"str": piece}
    kind = "bytes" if isinstance(piece, bytes) else "bytearray" if isinstance(piece, bytearray) else "memoryview"
    return {kind: bytes(piece).hex()}


def _decode_piece(item: Dict[str, str]) -> Any:
    ((kind, value),) = item.items()
    if kind == "str":
        return value
    raw = bytes.fromhex(value)
    return raw if kind == "bytes" else bytearray(raw) if kind == "bytearray" else memoryview(bytearray(raw))


def write_reproducer(out_dir: str, target: str, case: Dict[str, Any], pieces: Sequence[Any], exc: BaseException) -> str:
    """Write a JSON reproducer for ``exc`` and return its path."""
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{target}-{type(exc).__name__}"
    n = 1
    while os.path.exists(os.path.join(out_dir, f"{stem}-{n}.json")):
        n += 1
    path = os.path.join(out_dir, f"{stem}-{n}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "target": target,
                "backend": _core.BACKEND,
                "case": case,
                "pieces": [_encode_piece(p) for p in pieces],
                "error": "".join(traceback.format_exception(exc)),
            },
            fh,
            indent=1,
        )
    return path


def replay(path: str) -> int:
    """Run a reproducer again; exit status 1 if it still fails."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    pieces = [_decode_piece(p) for p in data["pieces"]]
    try:
        run_case(data["target"], data["case"], pieces)
    except VmessError as exc:
        print(f"ok: raised the typed {type(exc).__name__}: {exc}")
        return 0
    except Exception:  # noqa: BLE001 - the point is to show it
        traceback.print_exc()
        return 1
    print("ok: no exception")
    return 0


def _signature(exc: BaseException) -> Tuple[str, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return type(exc).__name__, where


def fuzz(target: str, count: int, seed: int, out_dir: str, report_every: float = 10.0) -> Dict[str, Any]:
    """The mutation loop: ``count`` inputs on ``target``; returns figures and the distinct crashes."""
    t = TARGETS[target]
    t.warm()
    rng = random.Random(seed)
    crashes: Dict[Tuple[str, str], Dict[str, Any]] = {}
    outcomes: "collections.Counter[str]" = collections.Counter()
    start = last = time.perf_counter()
    done = 0
    for done in range(1, count + 1):
        case, pieces = t.gen(rng)
        try:
            outcomes[t.run(case, pieces)] += 1
        except VmessError as exc:
            outcomes[f"raised {type(exc).__name__}"] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding
            sig = _signature(exc)
            entry = crashes.get(sig)
            if entry is None:
                path = write_reproducer(out_dir, target, case, pieces, exc)
                crashes[sig] = {"count": 1, "reproducer": path, "error": f"{type(exc).__name__}: {exc}"}
                print(f"[{target}] NEW CRASH {sig[0]} at {sig[1]}: {exc} -> {path}", file=sys.stderr, flush=True)
            else:
                entry["count"] += 1
        now = time.perf_counter()
        if now - last >= report_every:
            last = now
            print(
                f"[{target}] {done} inputs, {done / (now - start):.0f} inputs/s, {len(crashes)} distinct crashes",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - start
    return {
        "target": target,
        "backend": _core.BACKEND,
        "inputs": done,
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(done / elapsed) if elapsed else 0,
        "outcomes": dict(outcomes.most_common()),
        "crash_inputs": sum(c["count"] for c in crashes.values()),
        "distinct_crashes": len(crashes),
        "crashes": [{"signature": list(sig), **info} for sig, info in crashes.items()],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=sorted(TARGETS), help="what to fuzz")
    parser.add_argument("--count", type=int, default=100_000, help="inputs to run (default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--out", default="fuzz-crashes", help="directory for reproducers (default fuzz-crashes)")
    parser.add_argument("--replay", metavar="FILE", help="run one reproducer again")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if not args.target:
        parser.error("--target is required (or --replay FILE)")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"[{args.target}] backend={_core.BACKEND} seed={seed} count={args.count}", file=sys.stderr, flush=True)
    result = fuzz(args.target, args.count, seed, args.out, args.report_every)
    result["seed"] = seed
    print(json.dumps(result, indent=1))
    return 1 if result["distinct_crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Core behaviour on the live backend (run the suite with VMESS_NO_EXTENSIONS=1 for the pure twin)."""

from __future__ import annotations

import hashlib
import hmac
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmess import _core
from vmess.errors import AuthenticationError, ChunkTooLargeError, IntegrityError, ProtocolError

S, M, P, A = 0x01, 0x04, 0x08, 0x10
AEAD_SECURITIES = (3, 4)
ALL_SECURITIES = (1, 3, 4, 5)


def valid_options(security: int) -> list[int]:
    """Every option byte the writer accepts for ``security`` (R is obsolete and left out)."""
    out = []
    for opt in range(32):
        if opt & 0x02:
            continue
        if security in AEAD_SECURITIES and not opt & S:
            continue
        if opt & A and security not in AEAD_SECURITIES:
            continue
        out.append(opt)
    return out


COMBOS = [(sec, opt) for sec in ALL_SECURITIES for opt in valid_options(sec)]


def keys(seed: int) -> tuple[bytes, bytes, bytes, bytes]:
    r = random.Random(seed)
    return tuple(r.randbytes(16) for _ in range(4))  # type: ignore[return-value]


def det_random(seed: int):
    return random.Random(seed).randbytes


def test_kdf_published_vector() -> None:
    out = _core.kdf(
        b"Demo Key for KDF Value Test",
        b"Demo Path for KDF Value Test",
        b"Demo Path for KDF Value Test2",
        b"Demo Path for KDF Value Test3",
    )
    assert out.hex() == "53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"


def test_kdf_without_path_is_plain_hmac() -> None:
    assert _core.kdf(b"abc") == hmac.new(b"VMess AEAD KDF", b"abc", hashlib.sha256).digest()
    assert _core.kdf16(b"abc", b"x") == _core.kdf(b"abc", b"x")[:16]


def test_fnv1a32_known_values() -> None:
    assert _core.fnv1a32(b"") == 0x811C9DC5
    assert _core.fnv1a32(b"a") == 0xE40C292C
    assert _core.fnv1a32(b"foobar") == 0xBF9CF968


def test_shake_stream_is_one_continuous_stream() -> None:
    seed = bytes(range(16))
    expected = hashlib.shake_128(seed).digest(1000)
    s = _core.ShakeStream(seed)
    got = bytearray()
    r = random.Random(1)
    while len(got) < 900:
        if r.random() < 0.5:
            v = s.draw()
            got += v.to_bytes(2, "big")
        else:
            got += s.read(r.randrange(0, 40))
    assert bytes(got) == expected[: len(got)]


def test_cmd_key_and_chacha_key() -> None:
    u = bytes(range(16))
    assert _core.cmd_key(u) == hashlib.md5(u + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()
    k = b"k" * 16
    assert _core.chacha_key(k) == hashlib.md5(k).digest() + hashlib.md5(hashlib.md5(k).digest()).digest()


def test_alter_ids_chain() -> None:
    u = bytes(range(16))
    ids = _core.alter_ids(u, 3)
    first = hashlib.md5(u + b"16167dc8-16b6-4e6d-b8bb-65dd68113a81").digest()
    assert ids[0] == first
    assert ids[1] == hashlib.md5(first + b"16167dc8-16b6-4e6d-b8bb-65dd68113a81").digest()
    assert len(set(ids)) == 3 and u not in ids


def test_auth_id_round_trip_and_layout() -> None:
    user = _core.UserKeys(bytes(range(16)))
    auth = _core.create_auth_id(user, 1_700_000_000, b"\x01\x02\x03\x04")
    assert len(auth) == 16
    assert _core.open_auth_id(user, auth) == 1_700_000_000
    other = _core.UserKeys(bytes(range(1, 17)))
    assert _core.open_auth_id(other, auth) is None
    # Flip any byte: the CRC no longer matches (with overwhelming probability).
    for i in range(16):
        forged = bytearray(auth)
        forged[i] ^= 0x40
        assert _core.open_auth_id(user, bytes(forged)) is None
    # The plaintext is BE64(ts) || rand4 || CRC32.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(user.auth_id_key), modes.ECB()).decryptor().update(auth)
    assert dec[:8] == (1_700_000_000).to_bytes(8, "big") and dec[8:12] == b"\x01\x02\x03\x04"
    assert int.from_bytes(dec[12:], "big") == zlib.crc32(dec[:12])


def test_aead_header_seal_open_and_forgery() -> None:
    user = _core.UserKeys(bytes(range(16)))
    auth = _core.create_auth_id(user, 1_700_000_000, b"abcd")
    section = bytes(range(60))
    wire = _core.seal_aead_header(user, auth, b"N" * 8, section)
    assert len(wire) == 16 + 18 + 8 + 60 + 16
    assert wire[:16] == auth and wire[34:42] == b"N" * 8
    assert _core.open_aead_header_length(user, auth, b"N" * 8, wire[16:34]) == 60
    assert _core.open_aead_header(user, auth, b"N" * 8, wire[42:]) == section
    for region in (slice(16, 34), slice(42, None)):
        forged = bytearray(wire)
        forged[region.start + 3] ^= 1
        with pytest.raises(AuthenticationError):
            if region.stop == 34:
                _core.open_aead_header_length(user, auth, b"N" * 8, bytes(forged[16:34]))
            else:
                _core.open_aead_header(user, auth, b"N" * 8, bytes(forged[42:]))
    wrong = _core.UserKeys(bytes(range(2, 18)))
    with pytest.raises(AuthenticationError):
        _core.open_aead_header_length(wrong, auth, b"N" * 8, wire[16:34])
    with pytest.raises(AuthenticationError):
        _core.open_aead_header(user, auth, b"N" * 8, wire[42:50])  # truncated below the tag


def test_legacy_header() -> None:
    uid = bytes(range(16))
    user = _core.UserKeys(uid)
    alter = _core.alter_ids(uid, 1)[0]
    ts = 1_700_000_123
    assert _core.legacy_auth(alter, ts) == hmac.new(alter, ts.to_bytes(8, "big"), hashlib.md5).digest()
    assert _core.legacy_iv(ts) == hashlib.md5(ts.to_bytes(8, "big") * 4).digest()
    wire = _core.seal_legacy_header(user, alter, ts, b"section bytes")
    assert wire[:16] == _core.legacy_auth(alter, ts)
    assert _core.legacy_header_decryptor(user, ts).update(wire[16:]) == b"section bytes"


def test_response_header_both_formats() -> None:
    rk, ri = b"K" * 16, b"I" * 16
    assert _core.response_keys(rk, ri, True) == (hashlib.md5(rk).digest(), hashlib.md5(ri).digest())
    aead = _core.response_keys(rk, ri, False)
    assert aead == (hashlib.sha256(rk).digest()[:16], hashlib.sha256(ri).digest()[:16])
    wire = _core.seal_aead_response(aead[0], aead[1], b"\x07\x00\x00\x00")
    assert len(wire) == 38
    assert _core.open_aead_response_length(aead[0], aead[1], wire[:18]) == 4
    assert _core.open_aead_response(aead[0], aead[1], wire[18:]) == b"\x07\x00\x00\x00"
    with pytest.raises(AuthenticationError):
        _core.open_aead_response_length(aead[0], aead[1], wire[:17] + bytes([wire[17] ^ 1]))
    with pytest.raises(AuthenticationError):
        _core.open_aead_response(aead[0], aead[1], wire[18:-1] + bytes([wire[-1] ^ 1]))


@pytest.mark.parametrize("security,options", COMBOS)
def test_chunk_round_trip_every_security_and_option(security: int, options: int) -> None:
    k, iv, rk, riv = keys(security * 100 + options)
    w = _core.ChunkWriter(security, options, k, iv, rk, riv, det_random(1))
    r = _core.ChunkReader(security, options, k, iv, rk, riv)
    rnd = random.Random(options)
    pieces = [rnd.randbytes(rnd.choice([0, 1, 100, 5000, 16302, 16303, 40000])) for _ in range(12)]
    wire = b"".join(w.write(p) for p in pieces) + w.write_end()
    got = bytearray()
    pos = 0
    while pos < len(wire):
        step = rnd.randrange(1, 9000)
        for payload in r.feed(wire[pos : pos + step]):
            assert payload
            got += payload
        pos += step
    assert bytes(got) == b"".join(pieces)
    assert r.pending == 0
    if options & S:
        assert r.ended and w.ended
    with pytest.raises(ProtocolError):
        w.write(b"after end")


@pytest.mark.parametrize("security,options", [c for c in COMBOS if c[1] & S])
def test_written_chunks_never_exceed_16384(security: int, options: int) -> None:
    k, iv, rk, riv = keys(7)
    w = _core.ChunkWriter(security, options, k, iv, rk, riv, det_random(2))
    assert w.max_output(100_000) >= 100_000
    wire = w.write(bytes(100_000))
    # Walk the chunks with a reader that records the sizes it sees through a second, identical writer stream.
    r = _core.ChunkReader(security, options, k, iv, rk, riv)
    out = r.feed(wire)
    assert sum(map(len, out)) == 100_000
    assert all(len(p) <= w.max_payload for p in out)
    head = 18 if options & A else 2
    overhead = {1: 4, 3: 16, 4: 16, 5: 0}[security]
    pad = 64 if options & P else 0
    assert head + w.max_payload + overhead + pad <= 16384


def test_end_marker_and_trailing_bytes() -> None:
    k, iv, rk, riv = keys(3)
    w = _core.ChunkWriter(3, S | M | P, k, iv, rk, riv, det_random(3))
    r = _core.ChunkReader(3, S | M | P, k, iv, rk, riv)
    wire = w.write(b"hello") + w.write_end()
    assert w.write_end() == b""  # idempotent
    assert r.feed(wire + b"junk") == [b"hello"]
    assert r.ended and r.unused_data == b"junk"


@pytest.mark.parametrize("security,options", [(3, S | M | P), (4, S | M | P | A), (3, S)])
def test_counter_wraps_at_65536_chunks(security: int, options: int) -> None:
    k, iv, rk, riv = keys(11)
    w = _core.ChunkWriter(security, options, k, iv, rk, riv, det_random(4))
    r = _core.ChunkReader(security, options, k, iv, rk, riv)
    total = 65536 + 300
    for i in range(total):
        payload = i.to_bytes(3, "big")
        assert r.feed(w.write(payload)) == [payload]
    # After the wrap the nonce counter is back to where chunk 0 was: the 65536th chunk reuses chunk 0's nonce.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    aead = AESGCM(k) if security == 3 else ChaCha20Poly1305(_core.chacha_key(k))
    w2 = _core.ChunkWriter(security, options & ~(M | P | A), k, iv, rk, riv, det_random(4))
    first = w2.write(b"abc")
    assert aead.decrypt(iv[:0] + (0).to_bytes(2, "big") + iv[2:12], first[2:], None) == b"abc"


@pytest.mark.parametrize("security,options", [(3, S), (4, S | M), (3, S | M | P), (4, S | M | P | A)])
def test_flipped_tag_byte_is_integrity_error(security: int, options: int) -> None:
    k, iv, rk, riv = keys(5)
    w = _core.ChunkWriter(security, options, k, iv, rk, riv, det_random(5))
    wire = bytearray(w.write(b"x" * 100))
    pad_free_tail = 2 if not options & P else None
    # Flip a byte inside the sealed payload (just after the length field), which is always tag-protected.
    head = 18 if options & A else 2
    wire[head + 5] ^= 0x01
    r = _core.ChunkReader(security, options, k, iv, rk, riv)
    with pytest.raises(IntegrityError):
        r.feed(bytes(wire))
    del pad_free_tail


def test_flipped_authenticated_length_is_integrity_error() -> None:
    k, iv, rk, riv = keys(6)
    w = _core.ChunkWriter(3, S | M | A, k, iv, rk, riv, det_random(6))
    wire = bytearray(w.write(b"x" * 100))
    wire[3] ^= 0x80
    with pytest.raises(IntegrityError):
        _core.ChunkReader(3, S | M | A, k, iv, rk, riv).feed(bytes(wire))


def test_bad_fnv_is_integrity_error() -> None:
    k, iv, rk, riv = keys(8)
    w = _core.ChunkWriter(5, S, k, iv, rk, riv, det_random(8))
    # NONE has no checksum: build a legacy stream without CFB by checking through the legacy path instead.
    w = _core.ChunkWriter(1, S, k, iv, rk, riv, det_random(8))
    wire = bytearray(w.write(b"payload bytes"))
    wire[8] ^= 0x01  # inside the payload; CFB keeps the flip local to this byte (and garbles the next block)
    with pytest.raises(IntegrityError):
        _core.ChunkReader(1, S, k, iv, rk, riv).feed(bytes(wire))


def test_undersized_chunk_length_is_protocol_error() -> None:
    k, iv, rk, riv = keys(9)
    r = _core.ChunkReader(3, S, k, iv, rk, riv)
    with pytest.raises(ProtocolError):
        r.feed(b"\x00\x05" + bytes(5))  # 5 < the 16-byte tag


def test_reader_accepts_65535_byte_chunks() -> None:
    k, iv, rk, riv = keys(10)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    payload = bytes(65535 - 16)
    sealed = AESGCM(k).encrypt(b"\x00\x00" + iv[2:12], payload, None)
    r = _core.ChunkReader(3, S, k, iv, rk, riv)
    assert r.feed((65535).to_bytes(2, "big") + sealed) == [payload]
    none = _core.ChunkReader(5, S, k, iv, rk, riv)
    assert none.feed(b"\xff\xff" + bytes(65535)) == [bytes(65535)]


def test_packet_mode_one_datagram_per_chunk_and_size_limit() -> None:
    k, iv, rk, riv = keys(12)
    w = _core.ChunkWriter(4, S | M | P, k, iv, rk, riv, det_random(12), True)
    r = _core.ChunkReader(4, S | M | P, k, iv, rk, riv, True)
    grams = [b"a", b"bb" * 100, bytes(w.max_payload)]
    wire = b"".join(w.write(g) for g in grams)
    assert r.feed(wire) == grams
    assert w.write(b"") == b""
    with pytest.raises(ChunkTooLargeError):
        w.write(bytes(w.max_payload + 1))


def test_invalid_writer_arguments_raise_value_error() -> None:
    k, iv, rk, riv = keys(13)
    with pytest.raises(ValueError):
        _core.ChunkWriter(2, S, k, iv, rk, riv, det_random(1))  # AUTO has no body codec
    with pytest.raises(ValueError):
        _core.ChunkWriter(3, 0, k, iv, rk, riv, det_random(1))  # AEAD without S
    with pytest.raises(ValueError):
        _core.ChunkWriter(5, S | A, k, iv, rk, riv, det_random(1))  # A without AEAD
    with pytest.raises(ValueError):
        _core.ChunkWriter(3, S, k[:15], iv, rk, riv, det_random(1))
    with pytest.raises(ValueError):
        _core.ChunkReader(6, S, k, iv, rk, riv)


def test_write_into_matches_write() -> None:
    k, iv, rk, riv = keys(14)
    a = _core.ChunkWriter(3, S | M | P, k, iv, rk, riv, det_random(14))
    b = _core.ChunkWriter(3, S | M | P, k, iv, rk, riv, det_random(14))
    data = bytes(range(256)) * 300
    out = bytearray(b.max_output(len(data)) + 10)
    n = b.write_into(data, out, 10)
    assert bytes(out[10 : 10 + n]) == a.write(data)
    with pytest.raises(ValueError):
        b.write_into(data, bytearray(10))


@settings(max_examples=40, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    sizes=st.lists(st.integers(0, 40000), max_size=6),
    splits=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_round_trip_property(combo: tuple[int, int], sizes: list[int], splits: list[int], seed: int) -> None:
    security, options = combo
    k, iv, rk, riv = keys(seed)
    w = _core.ChunkWriter(security, options, k, iv, rk, riv, det_random(seed))
    r = _core.ChunkReader(security, options, k, iv, rk, riv)
    rnd = random.Random(seed)
    data = [rnd.randbytes(n) for n in sizes]
    wire = b"".join(w.write(d) for d in data) + w.write_end()
    got = bytearray()
    pos = i = 0
    while pos < len(wire):
        step = splits[i % len(splits)]
        i += 1
        for p in r.feed(wire[pos : pos + step]):
            got += p
        pos += step
    assert bytes(got) == b"".join(data)

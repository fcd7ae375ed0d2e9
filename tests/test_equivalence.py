"""The compiled core (vmess._speedups) and the pure twin (vmess._core_py) agree byte for byte.

For arbitrary inputs both backends must return identical bytes / ints / lists and raise the same exception
types. Chunk streams are written by both with the same deterministic ``urandom`` and each backend's reader must
decode both backends' streams, fed in random splits. The module is skipped when the extension is not built,
unless ``VMESS_REQUIRE_NATIVE=1``.
"""

from __future__ import annotations

import inspect
import os
import random
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

try:
    from vmess import _speedups as N
except ImportError as exc:  # pragma: no cover - depends on the build
    if os.environ.get("VMESS_REQUIRE_NATIVE", "") not in ("", "0"):
        raise
    pytest.skip(
        f"compiled core vmess._speedups is not built ({exc}); run `python setup.py build_ext --inplace` "
        "or set VMESS_REQUIRE_NATIVE=1 to make this an error",
        allow_module_level=True,
    )

from vmess import _core_py as P
from vmess.errors import AuthenticationError, ChunkTooLargeError, IntegrityError, ProtocolError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAM = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

key16 = st.binary(min_size=16, max_size=16)
ts64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
SECURITIES = (1, 3, 4, 5)
S, M, PAD, A = 0x01, 0x04, 0x08, 0x10
ALL_OPTIONS = sorted({s | m | p | a for s in (0, S) for m in (0, M) for p in (0, PAD) for a in (0, A)})


def both(fn: str, *args: Any, **kwargs: Any) -> Tuple[Any, Any]:
    """Call ``fn`` on both backends; return both results, or assert they raise the same exception type."""
    results: List[Any] = []
    errors: List[Optional[type]] = []
    for mod in (N, P):
        try:
            results.append(getattr(mod, fn)(*args, **kwargs))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
            errors.append(type(exc))
    assert errors[0] is errors[1], f"{fn}: native {results[0]!r} vs pure {results[1]!r}"
    return results[0], results[1]


def same(fn: str, *args: Any) -> Any:
    a, b = both(fn, *args)
    if isinstance(a, Exception):
        return a
    assert type(a) is type(b), (fn, type(a), type(b))
    assert a == b, fn
    return a


def raises_same(exc_type: type, fn: str, *args: Any) -> None:
    a, b = both(fn, *args)
    assert isinstance(a, exc_type) and isinstance(b, exc_type), (fn, a, b)


# --------------------------------------------------------------------------------------------- API surface


def test_same_public_names() -> None:
    assert sorted(N.__all__) == sorted(P.__all__)
    for name in P.__all__:
        assert hasattr(N, name), name


@pytest.mark.parametrize("name", [n for n in P.__all__ if inspect.isfunction(getattr(P, n))])
def test_same_function_parameters(name: str) -> None:
    pure = list(inspect.signature(getattr(P, name)).parameters)
    native = list(inspect.signature(getattr(N, name)).parameters)
    assert native == pure


def test_kdf_known_answer() -> None:
    out = same(
        "kdf",
        b"Demo Key for KDF Value Test",
        b"Demo Path for KDF Value Test",
        b"Demo Path for KDF Value Test2",
        b"Demo Path for KDF Value Test3",
    )
    assert out.hex() == "53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"


# --------------------------------------------------------------------------------------------- primitives


@FAST
@given(st.binary(max_size=3000))
def test_fnv1a32(data: bytes) -> None:
    same("fnv1a32", data)
    assert N.fnv1a32(bytearray(data)) == N.fnv1a32(memoryview(data)) == P.fnv1a32(data)


@FAST
@given(
    st.binary(max_size=300),
    st.lists(st.one_of(st.just(-1), st.integers(min_value=0, max_value=400)), max_size=60),
)
def test_shake_stream(seed: bytes, ops: List[int]) -> None:
    a, b = N.ShakeStream(seed), P.ShakeStream(seed)
    for op in ops:
        if op < 0:
            x, y = a.draw(), b.draw()
            assert type(x) is int and x == y
        else:
            x, y = a.read(op), b.read(op)
            assert type(x) is bytes and x == y
    with pytest.raises(ValueError):
        a.read(-1)
    with pytest.raises(ValueError):
        b.read(-1)


path_element = st.one_of(st.binary(max_size=40), st.binary(min_size=60, max_size=200))


@FAST
@given(st.binary(max_size=150), st.lists(path_element, max_size=4))
def test_kdf(key: bytes, path: List[bytes]) -> None:
    out = same("kdf", key, *path)
    assert len(out) == 32
    assert same("kdf16", key, *path) == out[:16]


def test_kdf_deep_path_and_buffer_types() -> None:
    rnd = random.Random(7)
    for n in range(0, 8):  # beyond the C tree depth too
        path = [rnd.randbytes(rnd.choice([0, 5, 64, 65, 130])) for _ in range(n)]
        key = rnd.randbytes(20)
        same("kdf", key, *path)
        assert N.kdf(bytearray(key), *map(memoryview, path)) == P.kdf(key, *path)
    # more distinct first elements than the level-1 cache holds
    for i in range(80):
        same("kdf16", b"k", f"label {i}".encode(), b"x")


@FAST
@given(st.binary(min_size=16, max_size=16), st.integers(min_value=0, max_value=6))
def test_identity(uuid: bytes, count: int) -> None:
    same("cmd_key", uuid)
    same("alter_ids", uuid, count)
    same("chacha_key", uuid)
    a, b = N.UserKeys(uuid), P.UserKeys(uuid)
    assert (a.uuid, a.cmd_key, a.auth_id_key) == (b.uuid, b.cmd_key, b.auth_id_key)
    assert repr(a) == repr(b)


@pytest.mark.parametrize("bad", [b"", b"x" * 15, b"x" * 17])
def test_identity_bad_lengths(bad: bytes) -> None:
    raises_same(ValueError, "cmd_key", bad)
    raises_same(ValueError, "alter_ids", bad, 1)
    raises_same(ValueError, "UserKeys", bad)
    raises_same(ValueError, "alter_ids", b"u" * 16, -1)


@FAST
@given(key16, ts64, st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
def test_auth_id(uuid: bytes, ts: int, rand4: bytes, junk: bytes) -> None:
    un, up = N.UserKeys(uuid), P.UserKeys(uuid)
    a, b = N.create_auth_id(un, ts, rand4), P.create_auth_id(up, ts, rand4)
    assert type(a) is bytes and a == b
    expect = ts if ts < (1 << 63) else None
    assert N.open_auth_id(un, b) == P.open_auth_id(up, a) == expect
    assert N.open_auth_id(un, junk) == P.open_auth_id(up, junk)


def test_auth_id_errors() -> None:
    un, up = N.UserKeys(b"u" * 16), P.UserKeys(b"u" * 16)
    for ts, rand4 in ((-1, b"abcd"), (1 << 64, b"abcd"), (5, b"abc"), (5, b"abcde")):
        for fn, user in ((N.create_auth_id, un), (P.create_auth_id, up)):
            with pytest.raises(ValueError):
                fn(user, ts, rand4)
    for fn, user in ((N.open_auth_id, un), (P.open_auth_id, up)):
        with pytest.raises(ValueError):
            fn(user, b"x" * 15)


# --------------------------------------------------------------------------------------------- headers


@FAST
@given(key16, st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.binary(max_size=400))
def test_aead_header(uuid: bytes, auth_id: bytes, nonce: bytes, section: bytes) -> None:
    un, up = N.UserKeys(uuid), P.UserKeys(uuid)
    wire = N.seal_aead_header(un, auth_id, nonce, section)
    assert type(wire) is bytes and wire == P.seal_aead_header(up, auth_id, nonce, section)
    enc_len, enc_hdr = wire[16:34], wire[42:]
    for mod, user in ((N, un), (P, up)):
        assert mod.open_aead_header_length(user, auth_id, nonce, enc_len) == len(section)
        assert mod.open_aead_header(user, auth_id, nonce, enc_hdr) == section
    # forged: one flipped bit anywhere in either sealed part
    i = len(section) % 18
    bad_len = enc_len[:i] + bytes([enc_len[i] ^ 1]) + enc_len[i + 1 :]
    j = len(section) * 7 % len(enc_hdr)
    bad_hdr = enc_hdr[:j] + bytes([enc_hdr[j] ^ 0x80]) + enc_hdr[j + 1 :]
    for mod, user in ((N, un), (P, up)):
        with pytest.raises(AuthenticationError):
            mod.open_aead_header_length(user, auth_id, nonce, bad_len)
        with pytest.raises(AuthenticationError):
            mod.open_aead_header(user, auth_id, nonce, bad_hdr)
        with pytest.raises(AuthenticationError):
            mod.open_aead_header(user, auth_id, nonce, enc_hdr[:15])
        other = mod.UserKeys(bytes(b ^ 0xFF for b in uuid))
        with pytest.raises(AuthenticationError):
            mod.open_aead_header(other, auth_id, nonce, enc_hdr)


def test_aead_header_bad_lengths() -> None:
    for mod in (N, P):
        u = mod.UserKeys(b"u" * 16)
        for args in (
            (b"a" * 15, b"n" * 8, b"s"),
            (b"a" * 16, b"n" * 7, b"s"),
            (b"a" * 16, b"n" * 8, b"s" * 0x10000),
        ):
            with pytest.raises(ValueError):
                mod.seal_aead_header(u, *args)
        with pytest.raises(ValueError):
            mod.open_aead_header_length(u, b"a" * 16, b"n" * 8, b"x" * 17)
        with pytest.raises(ValueError):
            mod.open_aead_header_length(u, b"a" * 17, b"n" * 8, b"x" * 18)
        with pytest.raises(ValueError):
            mod.open_aead_header(u, b"a" * 16, b"n" * 9, b"x" * 18)


@FAST
@given(key16, key16, ts64, st.binary(max_size=200))
def test_legacy_header(uuid: bytes, id_bytes: bytes, ts: int, section: bytes) -> None:
    un, up = N.UserKeys(uuid), P.UserKeys(uuid)
    same("legacy_auth", id_bytes, ts)
    same("legacy_iv", ts)
    wire = N.seal_legacy_header(un, id_bytes, ts, section)
    assert type(wire) is bytes and wire == P.seal_legacy_header(up, id_bytes, ts, section)
    assert N.legacy_header_decryptor(un, ts).update(wire[16:]) == section
    assert P.legacy_header_decryptor(up, ts).update(wire[16:]) == section
    enc = N.cfb_encryptor(uuid, id_bytes).update(section)
    assert enc == P.cfb_encryptor(uuid, id_bytes).update(section)
    assert N.cfb_decryptor(uuid, id_bytes).update(enc) == P.cfb_decryptor(uuid, id_bytes).update(enc) == section


def test_legacy_errors() -> None:
    raises_same(ValueError, "legacy_auth", b"i" * 15, 1)
    raises_same(ValueError, "legacy_auth", b"i" * 16, -1)
    raises_same(ValueError, "legacy_iv", 1 << 64)


@FAST
@given(key16, key16, st.booleans(), st.binary(max_size=300))
def test_response(req_key: bytes, req_iv: bytes, legacy: bool, plain: bytes) -> None:
    rk, riv = same("response_keys", req_key, req_iv, legacy)
    wire = same("seal_aead_response", rk, riv, plain)
    for mod in (N, P):
        assert mod.open_aead_response_length(rk, riv, wire[:18]) == len(plain)
        assert mod.open_aead_response(rk, riv, wire[18:]) == plain
        bad = wire[:17] + bytes([wire[17] ^ 4])
        with pytest.raises(AuthenticationError):
            mod.open_aead_response_length(rk, riv, bad)
        bad = wire[18:-1] + bytes([wire[-1] ^ 4])
        with pytest.raises(AuthenticationError):
            mod.open_aead_response(rk, riv, bad)
        with pytest.raises(AuthenticationError):
            mod.open_aead_response(rk, riv, wire[18:33])


def test_response_errors() -> None:
    raises_same(ValueError, "response_keys", b"k" * 15, b"i" * 16, True)
    raises_same(ValueError, "response_keys", b"k" * 16, b"i" * 17, False)
    raises_same(ValueError, "seal_aead_response", b"k" * 16, b"i" * 16, b"x" * 0x10000)
    raises_same(ValueError, "open_aead_response_length", b"k" * 16, b"i" * 16, b"x" * 19)


# --------------------------------------------------------------------------------------------- chunk streams


def _valid(sec: int, opt: int) -> bool:
    if opt & A and sec not in (3, 4):
        return False
    if not opt & S and sec in (3, 4):
        return False
    return True


class Keys:
    def __init__(self, rnd: random.Random) -> None:
        self.key, self.iv, self.req_key, self.req_iv = (rnd.randbytes(16) for _ in range(4))
        self.cfb_key, self.cfb_iv = rnd.randbytes(16), rnd.randbytes(16)


def _writer(mod: Any, sec: int, opt: int, k: Keys, seed: int, packet: bool, cfb: bool, chunk_size: int) -> Any:
    return mod.ChunkWriter(
        sec, opt, k.key, k.iv, k.req_key, k.req_iv, random.Random(seed).randbytes,
        packet=packet, cfb=mod.cfb_encryptor(k.cfb_key, k.cfb_iv) if cfb else None, chunk_size=chunk_size,
    )


def _reader(mod: Any, sec: int, opt: int, k: Keys, packet: bool, cfb: bool) -> Any:
    return mod.ChunkReader(
        sec, opt, k.key, k.iv, k.req_key, k.req_iv,
        packet=packet, cfb=mod.cfb_decryptor(k.cfb_key, k.cfb_iv) if cfb else None,
    )


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


def _agree(x: Any, y: Any) -> Any:
    if isinstance(x, Exception) or isinstance(y, Exception):
        assert type(x) is type(y), (x, y)
        return None
    assert type(x) is type(y) and x == y
    return x


@pytest.mark.parametrize("opt", ALL_OPTIONS, ids=lambda o: f"opt{o:02x}")
@pytest.mark.parametrize("sec", SECURITIES, ids=lambda s: f"sec{s}")
@STREAM
@given(data=st.data())
def test_chunk_stream(sec: int, opt: int, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32), label="seed")
    rnd = random.Random(seed)
    k = Keys(rnd)
    packet = data.draw(st.booleans(), label="packet")
    cfb = data.draw(st.sampled_from([False, False, False, True]), label="cfb")
    chunk_size = data.draw(st.sampled_from([162, 163, 700, 2048, 16384]), label="chunk_size")
    if not _valid(sec, opt):
        for mod in (N, P):
            with pytest.raises(ValueError):
                _writer(mod, sec, opt, k, seed, packet, cfb, chunk_size)
            with pytest.raises(ValueError):
                _reader(mod, sec, opt, k, packet, cfb)
        return
    wn = _writer(N, sec, opt, k, seed, packet, cfb, chunk_size)
    wp = _writer(P, sec, opt, k, seed, packet, cfb, chunk_size)
    mp = wp.max_payload
    assert wn.max_payload == mp
    sizes = data.draw(
        st.lists(
            st.one_of(
                st.just(0),
                st.integers(1, 200),
                st.integers(max(0, mp - 3), mp + 3),
                st.integers(mp * 2 - 1, mp * 2 + 100),
            ),
            max_size=5,
        ),
        label="sizes",
    )
    wire = b""
    written: List[bytes] = []
    for n in sizes:
        payload = rnd.randbytes(n)
        assert wn.max_output(n) == wp.max_output(n)
        how = data.draw(st.sampled_from(["write", "into", "into_mv"]), label="how")
        if how == "write":
            x = _call(lambda: wn.write(payload))
            y = _call(lambda: wp.write(payload))
        else:
            off = data.draw(st.integers(0, 9), label="offset")
            bn = bytearray(b"\xaa" * (off + wn.max_output(n) + 5))
            bp = bytearray(bn)
            src = memoryview(payload) if how == "into_mv" else payload
            x = _call(lambda: (wn.write_into(src, bn if how == "into" else memoryview(bn), off), bytes(bn)))
            y = _call(lambda: (wp.write_into(payload, bp, off), bytes(bp)))
            if not isinstance(x, Exception) and not isinstance(y, Exception):
                assert x == y
                cnt = x[0]
                x = y = x[1][off : off + cnt]
                assert bn[off + cnt :] == bp[off + cnt :]
        out = _agree(x, y)
        if isinstance(x, ChunkTooLargeError):
            assert packet and n > mp
        if out is not None:
            wire += out
            if n:
                written.append(payload)
    end = data.draw(st.booleans(), label="end")
    trailer = b""
    if end:
        e = _agree(wn.write_end(), wp.write_end())
        assert wn.ended and wp.ended
        assert _agree(wn.write_end(), wp.write_end()) == b""
        wire += e
        with pytest.raises(ProtocolError):
            wn.write(b"x")
        with pytest.raises(ProtocolError):
            wp.write(b"x")
        with pytest.raises(ProtocolError):
            wn.write_into(b"x", bytearray(200))
        if opt & S:
            trailer = rnd.randbytes(rnd.randrange(0, 40))

    # Read the stream with both readers, fed in the same random splits.
    stream = wire + trailer
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
    pieces = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)])]
    rn = _reader(N, sec, opt, k, packet, cfb)
    rp = _reader(P, sec, opt, k, packet, cfb)
    got: List[bytes] = []
    for i, piece in enumerate(pieces):
        feed_arg = memoryview(piece) if i % 2 else piece
        a, b = rn.feed(feed_arg), rp.feed(piece)
        assert type(a) is list and a == b
        assert all(type(x) is bytes for x in a)
        got += a
        assert rn.pending == rp.pending
        assert rn.ended == rp.ended
        assert rn.unused_data == rp.unused_data
    if opt & S:
        if packet:
            assert got == written
        assert rn.ended == end
        assert rn.pending == 0
    assert b"".join(got) == b"".join(written)


def _stream(mod: Any, sec: int, opt: int, payloads: List[bytes], end: bool = True) -> bytes:
    k = Keys(random.Random(1))
    w = mod.ChunkWriter(sec, opt, k.key, k.iv, k.req_key, k.req_iv, random.Random(2).randbytes)
    out = b"".join(w.write(p) for p in payloads)
    return out + (w.write_end() if end else b"")


def _feed_both(sec: int, opt: int, wire: bytes) -> Tuple[Any, Any]:
    k = Keys(random.Random(1))
    res = []
    for mod in (N, P):
        r = mod.ChunkReader(sec, opt, k.key, k.iv, k.req_key, k.req_iv)
        res.append(_call(lambda: r.feed(wire)))
    return res[0], res[1]


@pytest.mark.parametrize("opt", [S, S | M, S | A, S | M | A])
@pytest.mark.parametrize("sec", [3, 4])
def test_flipped_tag_is_integrity_error(sec: int, opt: int) -> None:
    payload = b"p" * 100
    wire = _stream(N, sec, opt, [payload, payload])
    assert wire == _stream(P, sec, opt, [payload, payload])
    head = 18 if opt & A else 2
    pos = head + len(payload) + 15  # last tag byte of the first chunk
    bad = wire[:pos] + bytes([wire[pos] ^ 1]) + wire[pos + 1 :]
    a, b = _feed_both(sec, opt, bad)
    assert isinstance(a, IntegrityError) and isinstance(b, IntegrityError)
    if opt & A:  # a forged length field
        bad = bytes([wire[0] ^ 1]) + wire[1:]
        a, b = _feed_both(sec, opt, bad)
        assert isinstance(a, IntegrityError) and isinstance(b, IntegrityError)


def test_bad_fnv_is_integrity_error() -> None:
    payload = b"q" * 100
    wire = _stream(N, 1, S, [payload])
    assert wire == _stream(P, 1, S, [payload])
    bad = wire[:3] + bytes([wire[3] ^ 0x10]) + wire[4:]  # inside the FNV field (CFB garbles the next block too)
    a, b = _feed_both(1, S, bad)
    assert isinstance(a, IntegrityError) and isinstance(b, IntegrityError)


@pytest.mark.parametrize("sec", [1, 3, 4])  # NONE has no overhead: every size is valid there
def test_short_chunk_is_protocol_error(sec: int) -> None:
    # a plain (S only) size field smaller than the overhead: no valid chunk can be that short
    if sec == 1:
        k = Keys(random.Random(1))
        wire = N.cfb_encryptor(k.key, k.iv).update(b"\x00\x03abc")
    else:
        wire = b"\x00\x05hello"
    a, b = _feed_both(sec, S, wire)
    assert type(a) is type(b) and isinstance(a, ProtocolError) and not isinstance(a, IntegrityError)


def test_writer_argument_errors() -> None:
    good = dict(key=b"k" * 16, iv=b"i" * 16, req_key=b"K" * 16, req_iv=b"I" * 16)
    cases = [
        dict(security=2, options=S),
        dict(security=0, options=S),
        dict(security=3, options=0x100),
        dict(security=3, options=-1),
        dict(security=3, options=S, key=b"k" * 15),
        dict(security=3, options=S, iv=b"i" * 17),
        dict(security=3, options=S, req_key=b""),
        dict(security=3, options=S, req_iv=b"I" * 15),
        dict(security=5, options=S | A),
        dict(security=1, options=S | A),
        dict(security=4, options=M),
        dict(security=3, options=S, chunk_size=161),
        dict(security=3, options=S, chunk_size=16385),
    ]
    for case in cases:
        kw = {**good, **case}
        chunk_size = kw.pop("chunk_size", 16384)
        for mod in (N, P):
            with pytest.raises(ValueError):
                mod.ChunkWriter(urandom=os.urandom, chunk_size=chunk_size, **kw)
            if "chunk_size" not in case:
                with pytest.raises(ValueError):
                    mod.ChunkReader(**kw)
    for mod in (N, P):
        w = mod.ChunkWriter(3, S | M | PAD, urandom=os.urandom, **good)
        with pytest.raises(ValueError):
            w.write_into(b"x" * 100, bytearray(w.max_output(100) - 1))
        with pytest.raises(ValueError):
            w.write_into(b"x" * 100, bytearray(w.max_output(100) + 5), 6)
        with pytest.raises(ValueError):
            w.write_into(b"x" * 100, bytearray(w.max_output(100) + 5), -1)
        w = mod.ChunkWriter(3, S, urandom=os.urandom, packet=True, **good)
        with pytest.raises(ChunkTooLargeError):
            w.write(b"x" * (w.max_payload + 1))
        with pytest.raises(ChunkTooLargeError):
            w.write_into(b"x" * (w.max_payload + 1), bytearray(40000))


@pytest.mark.parametrize("sec,opt", [(3, S | M | PAD), (4, S | M | PAD | A), (1, S), (5, S | M)])
def test_os_urandom_padding_roundtrip(sec: int, opt: int) -> None:
    """With os.urandom itself the native writer pads from a pool; the stream must still decode everywhere."""
    k = Keys(random.Random(3))
    payloads = [os.urandom(n) for n in (1, 100, 5000, 20000)]
    w = N.ChunkWriter(sec, opt, k.key, k.iv, k.req_key, k.req_iv, os.urandom)
    wire = b"".join(w.write(p) for p in payloads) + w.write_end()
    for mod in (N, P):
        r = mod.ChunkReader(sec, opt, k.key, k.iv, k.req_key, k.req_iv)
        assert b"".join(r.feed(wire)) == b"".join(payloads)
        assert r.ended and r.pending == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_os_urandom_padding_differs_after_fork() -> None:
    """Parent and a forked child must not hand out the same padding bytes from the native pool."""

    def frame() -> bytes:
        w = N.ChunkWriter(5, S | M | PAD, b"k" * 16, b"i" * 16, b"K" * 16, b"I" * 16, os.urandom)
        return b"".join(w.write(b"x") for _ in range(200))  # same keys: only the padding bytes can differ

    frame()  # make sure the pool is filled before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(w, frame())
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = frame()
    assert len(child) == len(parent) and child != parent

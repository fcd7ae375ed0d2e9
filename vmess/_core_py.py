"""Pure-Python twin of the compiled core (``csrc/_speedups.pyx``).

Both backends export the same names with the same signatures, raise the same exceptions and produce
identical bytes; ``tests/test_equivalence.py`` checks that with hypothesis. The wire format is described in
``docs/vmess-protocol.md`` (sections cited below). Ciphers are ``cryptography`` objects in both backends.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from typing import Callable, List, Optional, Tuple, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHAKE128, XOFHash

from .errors import AuthenticationError, ChunkTooLargeError, IntegrityError, ProtocolError

__all__ = [
    "fnv1a32",
    "ShakeStream",
    "kdf",
    "kdf16",
    "cmd_key",
    "alter_ids",
    "chacha_key",
    "UserKeys",
    "create_auth_id",
    "open_auth_id",
    "seal_aead_header",
    "open_aead_header_length",
    "open_aead_header",
    "legacy_auth",
    "legacy_iv",
    "seal_legacy_header",
    "legacy_header_decryptor",
    "response_keys",
    "seal_aead_response",
    "open_aead_response_length",
    "open_aead_response",
    "cfb_encryptor",
    "cfb_decryptor",
    "ChunkWriter",
    "ChunkReader",
]

# Wire constants, duplicated from vmess.constants as plain ints (the compiled twin defines them in C).
SEC_LEGACY = 1
SEC_AES128_GCM = 3
SEC_CHACHA20_POLY1305 = 4
SEC_NONE = 5
OPT_S = 0x01
OPT_M = 0x04
OPT_P = 0x08
OPT_A = 0x10
MAX_WRITE_CHUNK = 16384
MAX_PADDING = 64  # padding is draw() % 64, so at most 63; 64 keeps the spec's margin

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
_ALTER_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
_ALTER_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"
_KDF_ROOT = b"VMess AEAD KDF"
_AUTH_ID_LABEL = b"AES Auth ID Encryption"
_HDR_LEN_KEY = b"VMess Header AEAD Key_Length"
_HDR_LEN_NONCE = b"VMess Header AEAD Nonce_Length"
_HDR_KEY = b"VMess Header AEAD Key"
_HDR_NONCE = b"VMess Header AEAD Nonce"
_RESP_LEN_KEY = b"AEAD Resp Header Len Key"
_RESP_LEN_IV = b"AEAD Resp Header Len IV"
_RESP_KEY = b"AEAD Resp Header Key"
_RESP_IV = b"AEAD Resp Header IV"
_AUTH_LEN_LABEL = b"auth_len"

Buffer = Union[bytes, bytearray, memoryview]
"""Any bytes-like object the core accepts as input."""

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


# --------------------------------------------------------------------------------------------- FNV-1a


def fnv1a32(data: Buffer) -> int:
    """FNV-1a 32-bit hash (spec 2.3): the command-section checksum and the legacy chunk checksum."""
    h = _FNV_OFFSET
    for b in bytes(data):
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


# --------------------------------------------------------------------------------------------- SHAKE128


class ShakeStream:
    """One continuous SHAKE128 output stream seeded with an IV (spec 5.2): the length mask and padding source."""

    __slots__ = ("_xof", "_buf", "_pos")

    def __init__(self, seed: bytes) -> None:
        self._xof = XOFHash(SHAKE128(digest_size=(1 << 62)))
        self._xof.update(bytes(seed))
        self._buf = b""
        self._pos = 0

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the stream."""
        if n < 0:
            raise ValueError("n must be >= 0")
        out = bytearray()
        while n > 0:
            if self._pos >= len(self._buf):
                self._buf = self._xof.squeeze(168)
                self._pos = 0
            take = min(n, len(self._buf) - self._pos)
            out += self._buf[self._pos : self._pos + take]
            self._pos += take
            n -= take
        return bytes(out)

    def draw(self) -> int:
        """The next two bytes of the stream as a big-endian 16-bit number."""
        pos = self._pos
        if pos + 2 <= len(self._buf):
            self._pos = pos + 2
            return (self._buf[pos] << 8) | self._buf[pos + 1]
        b = self.read(2)
        return (b[0] << 8) | b[1]


# --------------------------------------------------------------------------------------------- KDF

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class _NestedHmac:
    """HMAC whose underlying hash is another HMAC (spec 3.1); exposes update/copy/digest like hashlib."""

    __slots__ = ("inner", "outer")

    def __init__(self, inner: object, outer: object) -> None:
        self.inner = inner
        self.outer = outer

    @classmethod
    def derive(cls, parent: object, key: bytes) -> "_NestedHmac":
        if len(key) > 64:
            h = parent.copy()  # type: ignore[attr-defined]
            h.update(key)
            key = h.digest()
        key = key.ljust(64, b"\0")
        inner = parent.copy()  # type: ignore[attr-defined]
        inner.update(key.translate(_IPAD))
        outer = parent.copy()  # type: ignore[attr-defined]
        outer.update(key.translate(_OPAD))
        return cls(inner, outer)

    def update(self, data: bytes) -> None:
        self.inner.update(data)  # type: ignore[attr-defined]

    def copy(self) -> "_NestedHmac":
        return _NestedHmac(self.inner.copy(), self.outer.copy())  # type: ignore[attr-defined]

    def digest(self) -> bytes:
        o = self.outer.copy()  # type: ignore[attr-defined]
        o.update(self.inner.digest())  # type: ignore[attr-defined]
        return o.digest()  # type: ignore[no-any-return]


_KDF_LEVEL0 = hmac.new(_KDF_ROOT, digestmod=hashlib.sha256)
_KDF_LEVEL1_CACHE: dict = {}


def kdf(key: bytes, *path: bytes) -> bytes:
    """VMess AEAD KDF (spec 3.1): nested HMAC-SHA256 keyed by each path element in turn; 32 bytes."""
    key = bytes(key)
    if not path:
        h = _KDF_LEVEL0.copy()
        h.update(key)
        return h.digest()
    first = bytes(path[0])
    level = _KDF_LEVEL1_CACHE.get(first)
    if level is None:
        level = _NestedHmac.derive(_KDF_LEVEL0, first)
        if len(_KDF_LEVEL1_CACHE) < 64:
            _KDF_LEVEL1_CACHE[first] = level
    obj = level
    for element in path[1:]:
        obj = _NestedHmac.derive(obj, bytes(element))
    obj = obj.copy()
    obj.update(key)
    return obj.digest()


def kdf16(key: bytes, *path: bytes) -> bytes:
    """The first 16 bytes of :func:`kdf`."""
    return kdf(key, *path)[:16]


# --------------------------------------------------------------------------------------------- identity


def cmd_key(uuid_bytes: bytes) -> bytes:
    """cmdKey = MD5(uuid || fixed salt) (spec 1.2)."""
    _check_len("uuid_bytes", uuid_bytes, 16)
    return hashlib.md5(bytes(uuid_bytes) + _CMD_KEY_SALT).digest()


def alter_ids(uuid_bytes: bytes, count: int) -> List[bytes]:
    """The legacy alter-ID chain derived from the primary ID (spec 1.3)."""
    _check_len("uuid_bytes", uuid_bytes, 16)
    if count < 0:
        raise ValueError("count must be >= 0")
    out: List[bytes] = []
    prev = bytes(uuid_bytes)
    for _ in range(count):
        h = hashlib.md5(prev)
        h.update(_ALTER_SALT)
        cand = h.digest()
        while cand == prev:
            h.update(_ALTER_RETRY_SALT)
            cand = h.digest()
        out.append(cand)
        prev = cand
    return out


def chacha_key(key: bytes) -> bytes:
    """The 32-byte ChaCha20-Poly1305 key made from a 16-byte VMess key: MD5(K) || MD5(MD5(K)) (spec 4.3)."""
    first = hashlib.md5(bytes(key)).digest()
    return first + hashlib.md5(first).digest()


def _check_len(name: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{name} must be {n} bytes, got {len(value)}")


def _check_ts(ts: int) -> None:
    if not 0 <= ts < (1 << 64):
        raise ValueError("timestamp out of range")


class UserKeys:
    """Per-user key material and cipher objects, built once when the user is configured (spec 1.2, 3.2)."""

    __slots__ = ("_uuid", "_cmd_key", "_auth_id_key", "_ecb_enc", "_ecb_dec")

    def __init__(self, uuid_bytes: bytes) -> None:
        _check_len("uuid_bytes", uuid_bytes, 16)
        self._uuid = bytes(uuid_bytes)
        self._cmd_key = cmd_key(self._uuid)
        self._auth_id_key = kdf16(self._cmd_key, _AUTH_ID_LABEL)
        ecb = Cipher(algorithms.AES(self._auth_id_key), modes.ECB())
        self._ecb_enc = ecb.encryptor()
        self._ecb_dec = ecb.decryptor()

    @property
    def uuid(self) -> bytes:
        return self._uuid

    @property
    def cmd_key(self) -> bytes:
        return self._cmd_key

    @property
    def auth_id_key(self) -> bytes:
        return self._auth_id_key

    def __repr__(self) -> str:
        return "<UserKeys>"


# --------------------------------------------------------------------------------------------- AuthID


def create_auth_id(user: UserKeys, ts: int, rand4: bytes) -> bytes:
    """AuthID = AES-ECB(authIDKey, BE64(ts) || rand4 || CRC32) (spec 3.2)."""
    _check_ts(ts)
    _check_len("rand4", rand4, 4)
    plain = _BE64.pack(ts) + bytes(rand4)
    plain += _BE32.pack(zlib.crc32(plain))
    return user._ecb_enc.update(plain)


def open_auth_id(user: UserKeys, auth_id: bytes) -> Optional[int]:
    """The timestamp inside ``auth_id`` if it decrypts to a valid block for this user, else None."""
    _check_len("auth_id", auth_id, 16)
    plain = user._ecb_dec.update(bytes(auth_id))
    if zlib.crc32(plain[:12]) != _BE32.unpack_from(plain, 12)[0]:
        return None
    ts = _BE64.unpack_from(plain, 0)[0]
    if ts >= (1 << 63):  # a negative Go int64
        return None
    return ts  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------- AEAD request header


def seal_aead_header(user: UserKeys, auth_id: bytes, conn_nonce: bytes, section: bytes) -> bytes:
    """authID || GCM(len) || connNonce || GCM(section) (spec 3.3)."""
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    if len(section) > 0xFFFF:
        raise ValueError("command section too long")
    ck = user._cmd_key
    auth_id = bytes(auth_id)
    conn_nonce = bytes(conn_nonce)
    enc_len = AESGCM(kdf16(ck, _HDR_LEN_KEY, auth_id, conn_nonce)).encrypt(
        kdf(ck, _HDR_LEN_NONCE, auth_id, conn_nonce)[:12], _BE16.pack(len(section)), auth_id
    )
    enc_hdr = AESGCM(kdf16(ck, _HDR_KEY, auth_id, conn_nonce)).encrypt(
        kdf(ck, _HDR_NONCE, auth_id, conn_nonce)[:12], bytes(section), auth_id
    )
    return auth_id + enc_len + conn_nonce + enc_hdr


def open_aead_header_length(user: UserKeys, auth_id: bytes, conn_nonce: bytes, enc_len: bytes) -> int:
    """Open the 18-byte encrypted length of an AEAD request header; AuthenticationError if it is forged."""
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    _check_len("enc_len", enc_len, 18)
    ck = user._cmd_key
    auth_id = bytes(auth_id)
    conn_nonce = bytes(conn_nonce)
    try:
        plain = AESGCM(kdf16(ck, _HDR_LEN_KEY, auth_id, conn_nonce)).decrypt(
            kdf(ck, _HDR_LEN_NONCE, auth_id, conn_nonce)[:12], bytes(enc_len), auth_id
        )
    except InvalidTag:
        raise AuthenticationError("AEAD request header: length failed authentication") from None
    return _BE16.unpack(plain)[0]  # type: ignore[no-any-return]


def open_aead_header(user: UserKeys, auth_id: bytes, conn_nonce: bytes, enc_header: bytes) -> bytes:
    """Open the encrypted command section of an AEAD request header; AuthenticationError if it is forged."""
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    if len(enc_header) < 16:
        raise AuthenticationError("AEAD request header: encrypted section shorter than its tag")
    ck = user._cmd_key
    auth_id = bytes(auth_id)
    conn_nonce = bytes(conn_nonce)
    try:
        return AESGCM(kdf16(ck, _HDR_KEY, auth_id, conn_nonce)).decrypt(
            kdf(ck, _HDR_NONCE, auth_id, conn_nonce)[:12], bytes(enc_header), auth_id
        )
    except InvalidTag:
        raise AuthenticationError("AEAD request header: section failed authentication") from None


# --------------------------------------------------------------------------------------------- legacy header


def legacy_auth(id_bytes: bytes, ts: int) -> bytes:
    """Legacy auth = HMAC-MD5(key = an (alter) ID's bytes, msg = BE64(ts)) (spec 2.1)."""
    _check_len("id_bytes", id_bytes, 16)
    _check_ts(ts)
    return hmac.new(bytes(id_bytes), _BE64.pack(ts), hashlib.md5).digest()


def legacy_iv(ts: int) -> bytes:
    """IV of the legacy command section: MD5(BE64(ts) x 4) (spec 2.1)."""
    _check_ts(ts)
    return hashlib.md5(_BE64.pack(ts) * 4).digest()


def cfb_encryptor(key: bytes, iv: bytes) -> CipherContext:
    """A full-block AES-128-CFB encryption stream (Go's NewCFBEncrypter)."""
    return Cipher(algorithms.AES(bytes(key)), CFB(bytes(iv))).encryptor()


def cfb_decryptor(key: bytes, iv: bytes) -> CipherContext:
    """A full-block AES-128-CFB decryption stream."""
    return Cipher(algorithms.AES(bytes(key)), CFB(bytes(iv))).decryptor()


def seal_legacy_header(user: UserKeys, id_bytes: bytes, ts: int, section: bytes) -> bytes:
    """auth(id_bytes, ts) || AES-CFB(primary cmdKey, legacy_iv(ts), section) (spec 2.1)."""
    auth = legacy_auth(id_bytes, ts)
    return auth + cfb_encryptor(user._cmd_key, legacy_iv(ts)).update(bytes(section))


def legacy_header_decryptor(user: UserKeys, ts: int) -> CipherContext:
    """The CFB stream that decrypts a legacy command section, once the auth matched ``user`` at ``ts``."""
    return cfb_decryptor(user._cmd_key, legacy_iv(ts))


# --------------------------------------------------------------------------------------------- response header


def response_keys(req_key: bytes, req_iv: bytes, legacy: bool) -> Tuple[bytes, bytes]:
    """(RespKey, RespIV): MD5 of the request pair for legacy headers, SHA-256[:16] for AEAD (spec 4.2)."""
    _check_len("req_key", req_key, 16)
    _check_len("req_iv", req_iv, 16)
    if legacy:
        return hashlib.md5(bytes(req_key)).digest(), hashlib.md5(bytes(req_iv)).digest()
    return hashlib.sha256(bytes(req_key)).digest()[:16], hashlib.sha256(bytes(req_iv)).digest()[:16]


def seal_aead_response(resp_key: bytes, resp_iv: bytes, plain: bytes) -> bytes:
    """GCM(len) || GCM(header) with keys from the KDF over RespKey/RespIV (spec 6.2)."""
    if len(plain) > 0xFFFF:
        raise ValueError("response header too long")
    resp_key = bytes(resp_key)
    resp_iv = bytes(resp_iv)
    enc_len = AESGCM(kdf16(resp_key, _RESP_LEN_KEY)).encrypt(
        kdf(resp_iv, _RESP_LEN_IV)[:12], _BE16.pack(len(plain)), None
    )
    enc = AESGCM(kdf16(resp_key, _RESP_KEY)).encrypt(kdf(resp_iv, _RESP_IV)[:12], bytes(plain), None)
    return enc_len + enc


def open_aead_response_length(resp_key: bytes, resp_iv: bytes, enc_len: bytes) -> int:
    """Open the 18-byte length of an AEAD response header; AuthenticationError if it is forged."""
    _check_len("enc_len", enc_len, 18)
    try:
        plain = AESGCM(kdf16(bytes(resp_key), _RESP_LEN_KEY)).decrypt(
            kdf(bytes(resp_iv), _RESP_LEN_IV)[:12], bytes(enc_len), None
        )
    except InvalidTag:
        raise AuthenticationError("AEAD response header: length failed authentication") from None
    return _BE16.unpack(plain)[0]  # type: ignore[no-any-return]


def open_aead_response(resp_key: bytes, resp_iv: bytes, enc_header: bytes) -> bytes:
    """Open the AEAD response header body; AuthenticationError if it is forged."""
    if len(enc_header) < 16:
        raise AuthenticationError("AEAD response header: shorter than its tag")
    try:
        return AESGCM(kdf16(bytes(resp_key), _RESP_KEY)).decrypt(
            kdf(bytes(resp_iv), _RESP_IV)[:12], bytes(enc_header), None
        )
    except InvalidTag:
        raise AuthenticationError("AEAD response header: failed authentication") from None


# --------------------------------------------------------------------------------------------- body chunks


def _payload_aead(security: int, key: bytes) -> object:
    if security == SEC_AES128_GCM:
        return AESGCM(bytes(key))
    return ChaCha20Poly1305(chacha_key(key))


def _check_body_args(security: int, options: int, key: bytes, iv: bytes, req_key: bytes, req_iv: bytes) -> None:
    if security not in (SEC_LEGACY, SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE):
        raise ValueError(f"security code {security} has no body codec")
    if not 0 <= options <= 0xFF:
        raise ValueError("options must be one byte")
    for name, value in (("key", key), ("iv", iv), ("req_key", req_key), ("req_iv", req_iv)):
        _check_len(name, value, 16)
    if options & OPT_A and security not in (SEC_AES128_GCM, SEC_CHACHA20_POLY1305):
        raise ValueError("authenticated length (A) needs AES-128-GCM or ChaCha20-Poly1305")
    if not options & OPT_S and security in (SEC_AES128_GCM, SEC_CHACHA20_POLY1305):
        raise ValueError("AEAD securities need chunk stream (S)")


class _BodyState:
    """State shared by writer and reader: ciphers, counters and the SHAKE stream of one direction."""

    __slots__ = (
        "security", "options", "packet", "chunked", "overhead", "iv_tail", "req_iv_tail",
        "aead", "len_aead", "shake", "cfb", "counter", "len_counter",
    )

    def __init__(
        self, security: int, options: int, key: bytes, iv: bytes, req_key: bytes, req_iv: bytes,
        packet: bool, cfb: Optional[CipherContext], encrypt: bool,
    ) -> None:
        _check_body_args(security, options, key, iv, req_key, req_iv)
        self.security = security
        self.options = options
        self.packet = bool(packet)
        self.chunked = bool(options & OPT_S)
        self.iv_tail = bytes(iv[2:12])
        self.req_iv_tail = bytes(req_iv[2:12])
        self.counter = 0
        self.len_counter = 0
        self.aead: object = None
        self.len_aead: object = None
        self.cfb = cfb
        if security in (SEC_AES128_GCM, SEC_CHACHA20_POLY1305):
            self.overhead = 16
            self.aead = _payload_aead(security, key)
            if options & OPT_A:
                self.len_aead = _payload_aead(security, kdf16(req_key, _AUTH_LEN_LABEL))
        elif security == SEC_LEGACY:
            self.overhead = 4 if self.chunked else 0
            if self.cfb is None:
                self.cfb = cfb_encryptor(key, iv) if encrypt else cfb_decryptor(key, iv)
        else:
            self.overhead = 0
        self.shake = ShakeStream(iv) if self.chunked and options & (OPT_M | OPT_P) else None

    def next_nonce(self) -> bytes:
        nonce = _BE16.pack(self.counter) + self.iv_tail
        self.counter = (self.counter + 1) & 0xFFFF
        return nonce

    def next_len_nonce(self) -> bytes:
        nonce = _BE16.pack(self.len_counter) + self.req_iv_tail
        self.len_counter = (self.len_counter + 1) & 0xFFFF
        return nonce


class ChunkWriter:
    """Frames one direction of a VMess body (spec 5): chunking, masking, padding, sealing.

    ``security`` is the wire code (1 legacy CFB, 3 GCM, 4 ChaCha, 5 none) and ``options`` the option byte; without
    S the body is a raw stream. ``key``/``iv`` are this direction's pair and ``req_key``/``req_iv`` the request pair
    (used by authenticated length in both directions). ``packet`` frames each write as one datagram. ``cfb``
    continues an existing CFB stream (legacy response). ``chunk_size`` caps a whole chunk (at most 16384).
    """

    __slots__ = ("_s", "_urandom", "_max_payload", "_ended")

    def __init__(
        self,
        security: int,
        options: int,
        key: bytes,
        iv: bytes,
        req_key: bytes,
        req_iv: bytes,
        urandom: Callable[[int], bytes],
        packet: bool = False,
        cfb: Optional[CipherContext] = None,
        chunk_size: int = MAX_WRITE_CHUNK,
    ) -> None:
        self._s = _BodyState(security, options, key, iv, req_key, req_iv, packet, cfb, True)
        self._urandom = urandom
        if not 64 + 18 + 16 + MAX_PADDING <= chunk_size <= MAX_WRITE_CHUNK:
            raise ValueError(f"chunk_size must be in [{64 + 18 + 16 + MAX_PADDING}, {MAX_WRITE_CHUNK}]")
        head = 18 if options & OPT_A else 2
        pad = MAX_PADDING if options & OPT_P else 0
        self._max_payload = chunk_size - head - self._s.overhead - pad
        self._ended = False

    def release(self) -> None:
        """A hint that the connection is idle: the compiled core frees its cipher contexts until the next write;
        this twin keeps them (nothing to do)."""

    @property
    def max_payload(self) -> int:
        """Largest payload carried by one chunk (and so the largest datagram in packet mode)."""
        return self._max_payload

    @property
    def ended(self) -> bool:
        """True once the end-of-stream marker was written."""
        return self._ended

    def write(self, data: bytes) -> bytes:
        """Frame ``data`` (split into chunks as needed; one chunk in packet mode) and return the wire bytes."""
        s = self._s
        if self._ended:
            raise ProtocolError("write after end of stream")
        n = len(data)
        if not s.chunked:
            if s.cfb is not None:
                return s.cfb.update(bytes(data))
            return bytes(data)
        if n == 0:
            return b""
        mv = memoryview(bytes(data))
        if s.packet:
            if n > self._max_payload:
                raise ChunkTooLargeError(f"datagram of {n} bytes exceeds the chunk limit of {self._max_payload}")
            return self._frame(mv)
        out = bytearray()
        step = self._max_payload
        for start in range(0, n, step):
            out += self._frame(mv[start : start + step])
        return bytes(out)

    def max_output(self, n: int) -> int:
        """An upper bound on the wire size of ``write(data)`` for ``len(data) == n`` (for :meth:`write_into`)."""
        s = self._s
        if not s.chunked:
            return n
        chunks = max(1, -(-n // self._max_payload))
        head = 18 if s.options & OPT_A else 2
        pad = MAX_PADDING if s.options & OPT_P else 0
        return n + chunks * (head + s.overhead + pad)

    def write_into(self, data: bytes, out: bytearray, offset: int = 0) -> int:
        """Like :meth:`write`, but into ``out`` at ``offset`` (room for ``max_output(len(data))`` needed).

        Returns the number of bytes written. The compiled backend seals straight into ``out``.
        """
        if offset < 0 or offset + self.max_output(len(data)) > len(out):
            raise ValueError("output buffer too small")
        wire = self.write(data)
        n = len(wire)
        out[offset : offset + n] = wire
        return n

    def write_end(self) -> bytes:
        """The end-of-stream marker (an empty chunk); empty bytes for a raw stream. Idempotent."""
        s = self._s
        if self._ended or not s.chunked:
            self._ended = True
            return b""
        self._ended = True
        return self._frame(memoryview(b""))

    def _frame(self, payload: memoryview) -> bytes:
        s = self._s
        options = s.options
        pad = s.shake.draw() % 64 if options & OPT_P else 0  # type: ignore[union-attr]
        if s.security == SEC_LEGACY:
            sealed = _BE32.pack(fnv1a32(payload)) + bytes(payload)
        elif s.aead is not None:
            sealed = s.aead.encrypt(s.next_nonce(), bytes(payload), None)  # type: ignore[attr-defined]
        else:
            sealed = bytes(payload)
        if options & OPT_A:
            head = s.len_aead.encrypt(s.next_len_nonce(), _BE16.pack(len(payload) + pad), None)  # type: ignore
        else:
            size = len(sealed) + pad
            if options & OPT_M:
                size ^= s.shake.draw()  # type: ignore[union-attr]
            head = _BE16.pack(size)
        frame = head + sealed
        if pad:
            frame += self._urandom(pad)
        if s.cfb is not None:
            frame = s.cfb.update(frame)
        return frame


class ChunkReader:
    """Decodes one direction of a VMess body (spec 5), the mirror of :class:`ChunkWriter`.

    Feed it bytes as they arrive; it returns the payloads of the complete chunks. It accepts any 16-bit size.
    After the end-of-stream marker ``ended`` is True and further bytes are kept in ``unused_data``.
    """

    __slots__ = ("_s", "_buf", "_size", "_pad", "_ended", "_unused")

    def __init__(
        self,
        security: int,
        options: int,
        key: bytes,
        iv: bytes,
        req_key: bytes,
        req_iv: bytes,
        packet: bool = False,
        cfb: Optional[CipherContext] = None,
    ) -> None:
        self._s = _BodyState(security, options, key, iv, req_key, req_iv, packet, cfb, False)
        self._buf = bytearray()
        self._size = -1  # size of the chunk being read, -1 while its length field is not decoded
        self._pad = 0
        self._ended = False
        self._unused = b""

    def release(self) -> None:
        """A hint that the connection is idle: the compiled core frees its cipher contexts until the next feed;
        this twin keeps them (nothing to do)."""

    @property
    def ended(self) -> bool:
        """True once the end-of-stream marker was read."""
        return self._ended

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete chunk (non-zero at EOF means truncation).

        A decoded length field counts until its chunk is complete: a stream cut right after one is truncated too.
        """
        head = 0
        if self._size >= 0:
            head = 18 if self._s.options & OPT_A else 2
        return len(self._buf) + head

    @property
    def unused_data(self) -> bytes:
        """Bytes that arrived after the end-of-stream marker."""
        return self._unused

    def feed(self, data: bytes) -> List[bytes]:
        """Add received bytes; return the payloads of every chunk completed by them (empty ones omitted)."""
        s = self._s
        if self._ended:
            self._unused += bytes(data)
            return []
        if s.cfb is not None:
            data = s.cfb.update(bytes(data))
        if not s.chunked:
            return [bytes(data)] if len(data) else []
        buf = self._buf
        buf += data
        out: List[bytes] = []
        pos = 0
        options = s.options
        overhead = s.overhead
        while True:
            if self._size < 0:
                if options & OPT_A:
                    if len(buf) - pos < 18:
                        break
                    pad = s.shake.draw() % 64 if options & OPT_P else 0  # type: ignore[union-attr]
                    try:
                        plain = s.len_aead.decrypt(  # type: ignore[attr-defined]
                            s.next_len_nonce(), bytes(buf[pos : pos + 18]), None
                        )
                    except InvalidTag:
                        raise IntegrityError("chunk length failed authentication") from None
                    size = _BE16.unpack(plain)[0] + overhead
                    pos += 18
                else:
                    if len(buf) - pos < 2:
                        break
                    pad = s.shake.draw() % 64 if options & OPT_P else 0  # type: ignore[union-attr]
                    size = (buf[pos] << 8) | buf[pos + 1]
                    if options & OPT_M:
                        size ^= s.shake.draw()  # type: ignore[union-attr]
                    pos += 2
                if size < overhead + pad:
                    raise ProtocolError(f"chunk size {size} is smaller than its overhead {overhead} + padding {pad}")
                self._size = size
                self._pad = pad
            size = self._size
            if len(buf) - pos < size:
                break
            body = bytes(buf[pos : pos + size - self._pad])
            pos += size
            self._size = -1
            if s.aead is not None:
                try:
                    payload = s.aead.decrypt(s.next_nonce(), body, None)  # type: ignore[attr-defined]
                except InvalidTag:
                    raise IntegrityError("chunk failed authentication") from None
            elif s.security == SEC_LEGACY:
                payload = body[4:]
                if fnv1a32(payload) != _BE32.unpack_from(body, 0)[0]:
                    raise IntegrityError("chunk failed its FNV-1a checksum")
            else:
                payload = body
            if not payload:
                self._ended = True
                self._unused = bytes(buf[pos:])
                pos = len(buf)
                break
            out.append(payload)
        del buf[:pos]
        return out

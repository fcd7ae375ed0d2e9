# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``vmess._core_py`` (see that module for the reference semantics).

Same public names, signatures, exceptions and bytes as the pure-Python twin. Ciphers are ``cryptography``
objects (AES-GCM, ChaCha20-Poly1305, AES-ECB, AES-CFB) called with ``encrypt_into`` / ``decrypt_into`` /
``update_into`` on memoryviews over C memory, so a chunk is sealed straight into its frame. C owns what Python
is slow at: FNV-1a, the SHAKE128 mask stream (csrc/vm_shake.c), the nested-HMAC KDF over SHA-256 midstates
(csrc/vm_kdf.c, csrc/vm_sha256.c), CRC32 of the AuthID, chunk framing and buffers.
"""

cimport cython
from cpython.buffer cimport (
    PyBUF_READ,
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBUF_WRITE,
    PyBuffer_FillInfo,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.list cimport PyList_Append
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

import hashlib
import hmac as _hmac
import os as _os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vmess.errors import AuthenticationError, ChunkTooLargeError, IntegrityError, ProtocolError


cdef extern from "Python.h":
    # Variants that hand back a raw reference, so a fresh bytes object can be filled and shrunk in place.
    PyObject *_vm_bytes_new "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n) except NULL
    int _vm_bytes_resize "_PyBytes_Resize"(PyObject **s, Py_ssize_t n) except -1


cdef extern from "vm_shake.h" nogil:
    ctypedef struct vm_shake128:
        pass
    void vm_shake128_init(vm_shake128 *s, const uint8_t *seed, size_t n)
    void vm_shake128_squeeze(vm_shake128 *s, uint8_t *out, size_t n)
    uint16_t vm_shake128_draw(vm_shake128 *s)


cdef extern from "vm_sha256.h" nogil:
    void vm_sha256_digest(const uint8_t *p, size_t n, uint8_t *out)


cdef extern from "vm_kdf.h" nogil:
    int VM_KDF_MAX_DEPTH
    ctypedef struct vm_kdf:
        int depth
    void vm_kdf_root(vm_kdf *o)
    int vm_kdf_derive(vm_kdf *child, const vm_kdf *parent, const uint8_t *key, size_t n)
    void vm_kdf_update(vm_kdf *o, const uint8_t *p, size_t n)
    void vm_kdf_final(const vm_kdf *o, uint8_t *out)
    void vm_kdf_copy(vm_kdf *dst, const vm_kdf *src)


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

# Wire constants (the same plain ints as in the pure twin).
SEC_LEGACY = 1
SEC_AES128_GCM = 3
SEC_CHACHA20_POLY1305 = 4
SEC_NONE = 5
OPT_S = 0x01
OPT_M = 0x04
OPT_P = 0x08
OPT_A = 0x10
MAX_WRITE_CHUNK = 16384
MAX_PADDING = 64

cdef enum:
    C_SEC_LEGACY = 1
    C_SEC_GCM = 3
    C_SEC_CHACHA = 4
    C_SEC_NONE = 5
    C_OPT_S = 0x01
    C_OPT_M = 0x04
    C_OPT_P = 0x08
    C_OPT_A = 0x10
    C_MAX_WRITE_CHUNK = 16384
    C_MAX_PADDING = 64
    C_MIN_CHUNK = 64 + 18 + 16 + 64

cdef uint8_t _EMPTY[1]
cdef bytes _CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
cdef bytes _ALTER_SALT = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81"
cdef bytes _ALTER_RETRY_SALT = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2"

_md5 = hashlib.md5
_hmac_digest = _hmac.digest
_os_urandom = _os.urandom


# Padding bytes when the caller passed os.urandom itself. Padding is filler: it needs to be unpredictable, not
# fresh from the kernel for every chunk. A process-local pool is refilled from an AES-128-CTR keystream whose key
# and IV come from os.urandom (rekeyed every 1 MiB of output and in a forked child), which costs ~1 us per 4 KiB
# instead of a getrandom() call per chunk. An injected (e.g. deterministic) urandom is still called exactly as the
# pure twin calls it, so both backends produce identical bytes for it.
cdef enum:
    C_POOL = 4096
    C_POOL_REKEY = 1 << 20
cdef uint8_t _POOL[C_POOL]
cdef uint8_t _POOL_ZEROS[C_POOL]
cdef Py_ssize_t _POOL_POS = C_POOL
cdef Py_ssize_t _POOL_BUDGET = 0
cdef object _POOL_CTR = None


cdef int _pool_refill() except -1:
    global _POOL_POS, _POOL_BUDGET, _POOL_CTR
    cdef _Buf src, dst
    if _POOL_CTR is None or _POOL_BUDGET <= 0:
        _POOL_CTR = Cipher(algorithms.AES(_os_urandom(16)), modes.CTR(_os_urandom(16))).encryptor().update_into
        _POOL_BUDGET = C_POOL_REKEY
    src = _new_buf(True)
    dst = _new_buf(False)
    _POOL_CTR(_at(src, _POOL_ZEROS, C_POOL), _at(dst, _POOL, C_POOL))
    _POOL_BUDGET -= C_POOL
    _POOL_POS = 0
    return 0


cdef bint _POOL_BUSY = False


cdef inline int _pool_take(uint8_t *dst, Py_ssize_t n) except -1:
    global _POOL_POS, _POOL_BUSY
    cdef bytes r
    if _POOL_POS + n > C_POOL:
        if _POOL_BUSY:  # another thread is refilling (only if a cipher call let go of the GIL): no sharing
            r = _os_urandom(n)
            memcpy(dst, PyBytes_AS_STRING(r), n)
            return 0
        _POOL_BUSY = True
        try:
            _pool_refill()
        finally:
            _POOL_BUSY = False
    memcpy(dst, _POOL + _POOL_POS, n)
    memset(_POOL + _POOL_POS, 0, n)
    _POOL_POS += n
    return 0


def _pool_reset():
    """Forget the pool and its key (run in a forked child, so parent and child never share padding bytes)."""
    global _POOL_POS, _POOL_BUDGET, _POOL_CTR
    memset(_POOL, 0, C_POOL)
    _POOL_POS = C_POOL
    _POOL_BUDGET = 0
    _POOL_CTR = None


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_pool_reset)


# ============================================================================================ buffers


cdef int _getbuf(object obj, Py_buffer *view) except -1:
    """A simple contiguous read buffer of ``obj``; anything else goes through ``bytes(obj)`` like the twin."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except (TypeError, BufferError, ValueError):
        obj = bytes(obj)
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    return 0


cdef inline object _rview(const uint8_t *p, Py_ssize_t n):
    return PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ)


cdef inline object _wview(uint8_t *p, Py_ssize_t n):
    return PyMemoryView_FromMemory(<char *>p, n, PyBUF_WRITE)


@cython.final
@cython.auto_pickle(False)
cdef class _Buf:
    """A reusable buffer exporter over C memory (no allocation per chunk, unlike a memoryview).

    Private to this module: the owner points it at a region right before handing it to a cipher call, and the
    cipher releases the buffer before the call returns. Whoever owns the memory keeps it alive meanwhile.
    """

    cdef char *ptr
    cdef Py_ssize_t size
    cdef bint readonly

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self.readonly and (flags & PyBUF_WRITABLE) == PyBUF_WRITABLE:
            raise BufferError("read-only buffer")
        PyBuffer_FillInfo(view, self, self.ptr, self.size, self.readonly, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef inline _Buf _new_buf(bint readonly):
    cdef _Buf b = _Buf.__new__(_Buf)
    b.ptr = NULL
    b.size = 0
    b.readonly = readonly
    return b


cdef inline _Buf _at(_Buf b, const uint8_t *p, Py_ssize_t n):
    b.ptr = <char *>p
    b.size = n
    return b


cdef inline void _be16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void _be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint32_t _rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline void _be64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline uint64_t _rd64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef int _check_len(str name, object value, Py_ssize_t n) except -1:
    cdef Py_ssize_t got = len(value)
    if got != n:
        raise ValueError(f"{name} must be {n} bytes, got {got}")
    return 0


cdef uint64_t _check_ts(object ts) except? 0xFFFFFFFFFFFFFFFF:
    if not 0 <= ts < (1 << 64):
        raise ValueError("timestamp out of range")
    return <uint64_t>ts


# ============================================================================================ FNV-1a


cdef inline uint32_t _fnv(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef uint32_t h = 0x811C9DC5u
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        h = (h ^ p[i]) * 0x01000193u
        h = (h ^ p[i + 1]) * 0x01000193u
        h = (h ^ p[i + 2]) * 0x01000193u
        h = (h ^ p[i + 3]) * 0x01000193u
        i += 4
    while i < n:
        h = (h ^ p[i]) * 0x01000193u
        i += 1
    return h


def fnv1a32(data):
    """FNV-1a 32-bit hash (spec 2.3): the command-section checksum and the legacy chunk checksum."""
    cdef Py_buffer v
    cdef uint32_t h
    _getbuf(data, &v)
    h = _fnv(<const uint8_t *>v.buf, v.len)
    PyBuffer_Release(&v)
    return h


# ============================================================================================ CRC32 (AuthID)

cdef uint32_t _CRC_TABLE[256]


cdef void _crc_init() noexcept nogil:
    cdef uint32_t c, k
    cdef int i
    for i in range(256):
        c = <uint32_t>i
        for k in range(8):
            if c & 1:
                c = 0xEDB88320u ^ (c >> 1)
            else:
                c = c >> 1
        _CRC_TABLE[i] = c


cdef inline uint32_t _crc32(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef uint32_t c = 0xFFFFFFFFu
    cdef Py_ssize_t i
    for i in range(n):
        c = _CRC_TABLE[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFu


_crc_init()


# ============================================================================================ SHAKE128


@cython.final
@cython.auto_pickle(False)
cdef class ShakeStream:
    """One continuous SHAKE128 output stream seeded with an IV (spec 5.2): the length mask and padding source."""

    cdef vm_shake128 _st

    def __init__(self, seed):
        cdef Py_buffer v
        _getbuf(seed, &v)
        vm_shake128_init(&self._st, <const uint8_t *>v.buf, <size_t>v.len)
        PyBuffer_Release(&v)

    def read(self, Py_ssize_t n):
        """The next ``n`` bytes of the stream."""
        if n < 0:
            raise ValueError("n must be >= 0")
        out = PyBytes_FromStringAndSize(NULL, n)
        vm_shake128_squeeze(&self._st, <uint8_t *>PyBytes_AS_STRING(out), <size_t>n)
        return out

    def draw(self):
        """The next two bytes of the stream as a big-endian 16-bit number."""
        return vm_shake128_draw(&self._st)


# ============================================================================================ KDF

# Level-0 object (HMAC-SHA256 keyed "VMess AEAD KDF") and level-1 objects for every constant label.
cdef vm_kdf _K_ROOT
cdef vm_kdf _K_AUTH_ID
cdef vm_kdf _K_HDR_LEN_KEY
cdef vm_kdf _K_HDR_LEN_NONCE
cdef vm_kdf _K_HDR_KEY
cdef vm_kdf _K_HDR_NONCE
cdef vm_kdf _K_RESP_LEN_KEY
cdef vm_kdf _K_RESP_LEN_IV
cdef vm_kdf _K_RESP_KEY
cdef vm_kdf _K_RESP_IV
cdef vm_kdf _K_AUTH_LEN


cdef int _derive_label(vm_kdf *dst, bytes label) except -1:
    vm_kdf_derive(dst, &_K_ROOT, <const uint8_t *>PyBytes_AS_STRING(label), <size_t>len(label))
    return 0


vm_kdf_root(&_K_ROOT)
_derive_label(&_K_AUTH_ID, b"AES Auth ID Encryption")
_derive_label(&_K_HDR_LEN_KEY, b"VMess Header AEAD Key_Length")
_derive_label(&_K_HDR_LEN_NONCE, b"VMess Header AEAD Nonce_Length")
_derive_label(&_K_HDR_KEY, b"VMess Header AEAD Key")
_derive_label(&_K_HDR_NONCE, b"VMess Header AEAD Nonce")
_derive_label(&_K_RESP_LEN_KEY, b"AEAD Resp Header Len Key")
_derive_label(&_K_RESP_LEN_IV, b"AEAD Resp Header Len IV")
_derive_label(&_K_RESP_KEY, b"AEAD Resp Header Key")
_derive_label(&_K_RESP_IV, b"AEAD Resp Header IV")
_derive_label(&_K_AUTH_LEN, b"auth_len")


cdef inline void _kdf1(const vm_kdf *l1, const uint8_t *key, size_t klen, uint8_t *out) noexcept nogil:
    """KDF(key, label) from a cached level-1 object."""
    cdef vm_kdf o
    vm_kdf_copy(&o, l1)
    vm_kdf_update(&o, key, klen)
    vm_kdf_final(&o, out)


cdef inline void _kdf3(const vm_kdf *l1, const uint8_t *key, size_t klen, const uint8_t *p2, size_t n2,
                       const uint8_t *p3, size_t n3, uint8_t *out) noexcept nogil:
    """KDF(key, label, p2, p3) from a cached level-1 object."""
    cdef vm_kdf o
    vm_kdf_derive(&o, l1, p2, n2)
    vm_kdf_derive(&o, &o, p3, n3)
    vm_kdf_update(&o, key, klen)
    vm_kdf_final(&o, out)


@cython.final
@cython.auto_pickle(False)
cdef class _KdfNode:
    """A cached fresh level-1 KDF object for one first path element."""

    cdef vm_kdf *o

    def __dealloc__(self):
        free(self.o)


cdef dict _KDF_LEVEL1_CACHE = {}
cdef object _pure_kdf = None
cdef _KdfNode _KDF_SPARE = None


cdef const vm_kdf *_level1(object first) except NULL:
    cdef _KdfNode node = _KDF_LEVEL1_CACHE.get(first)
    cdef Py_buffer v
    if node is not None:
        return node.o
    node = _KdfNode.__new__(_KdfNode)
    node.o = <vm_kdf *>malloc(sizeof(vm_kdf))
    if node.o == NULL:
        raise MemoryError()
    _getbuf(first, &v)
    vm_kdf_derive(node.o, &_K_ROOT, <const uint8_t *>v.buf, <size_t>v.len)
    PyBuffer_Release(&v)
    if len(_KDF_LEVEL1_CACHE) < 64:
        _KDF_LEVEL1_CACHE[first] = node
        return node.o
    # Not cached: keep it alive in a one-slot holder until the caller has copied it.
    global _KDF_SPARE
    _KDF_SPARE = node
    return node.o


cdef int _kdf_path(object key, tuple path, uint8_t *out) except -1:
    cdef Py_ssize_t n = len(path), i
    cdef vm_kdf o
    cdef Py_buffer kv, pv
    cdef object first
    if n == 0:
        vm_kdf_copy(&o, &_K_ROOT)
    else:
        first = path[0]
        if not PyBytes_CheckExact(first):
            first = bytes(first)
        vm_kdf_copy(&o, _level1(first))
        for i in range(1, n):
            _getbuf(path[i], &pv)
            vm_kdf_derive(&o, &o, <const uint8_t *>pv.buf, <size_t>pv.len)
            PyBuffer_Release(&pv)
    _getbuf(key, &kv)
    vm_kdf_update(&o, <const uint8_t *>kv.buf, <size_t>kv.len)
    PyBuffer_Release(&kv)
    vm_kdf_final(&o, out)
    return 0


def kdf(key, *path):
    """VMess AEAD KDF (spec 3.1): nested HMAC-SHA256 keyed by each path element in turn; 32 bytes."""
    cdef uint8_t out[32]
    global _pure_kdf
    if len(path) > VM_KDF_MAX_DEPTH:  # deeper than the C tree supports (VMess never goes past 3)
        if _pure_kdf is None:
            from vmess._core_py import kdf as _pk
            _pure_kdf = _pk
        return _pure_kdf(key, *path)
    _kdf_path(key, path, out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


def kdf16(key, *path):
    """The first 16 bytes of :func:`kdf`."""
    cdef uint8_t out[32]
    if len(path) > VM_KDF_MAX_DEPTH:
        return kdf(key, *path)[:16]
    _kdf_path(key, path, out)
    return PyBytes_FromStringAndSize(<char *>out, 16)


# ============================================================================================ identity


def cmd_key(uuid_bytes):
    """cmdKey = MD5(uuid || fixed salt) (spec 1.2)."""
    _check_len("uuid_bytes", uuid_bytes, 16)
    return _md5(bytes(uuid_bytes) + _CMD_KEY_SALT).digest()


def alter_ids(uuid_bytes, count):
    """The legacy alter-ID chain derived from the primary ID (spec 1.3)."""
    _check_len("uuid_bytes", uuid_bytes, 16)
    if count < 0:
        raise ValueError("count must be >= 0")
    cdef list out = []
    cdef bytes prev = bytes(uuid_bytes)
    cdef bytes cand
    for _ in range(count):
        h = _md5(prev)
        h.update(_ALTER_SALT)
        cand = h.digest()
        while cand == prev:
            h.update(_ALTER_RETRY_SALT)
            cand = h.digest()
        out.append(cand)
        prev = cand
    return out


def chacha_key(key):
    """The 32-byte ChaCha20-Poly1305 key made from a 16-byte VMess key: MD5(K) || MD5(MD5(K)) (spec 4.3)."""
    first = _md5(bytes(key)).digest()
    return first + _md5(first).digest()


@cython.final
@cython.auto_pickle(False)
cdef class UserKeys:
    """Per-user key material and cipher objects, built once when the user is configured (spec 1.2, 3.2)."""

    cdef bytes _uuid
    cdef bytes _cmd_key
    cdef bytes _auth_id_key
    cdef object _ecb_enc_update
    cdef object _ecb_dec_update

    def __init__(self, uuid_bytes):
        cdef uint8_t out[32]
        _check_len("uuid_bytes", uuid_bytes, 16)
        self._uuid = bytes(uuid_bytes)
        self._cmd_key = cmd_key(self._uuid)
        _kdf1(&_K_AUTH_ID, <const uint8_t *>PyBytes_AS_STRING(self._cmd_key), 16, out)
        self._auth_id_key = PyBytes_FromStringAndSize(<char *>out, 16)
        ecb = Cipher(algorithms.AES(self._auth_id_key), modes.ECB())
        self._ecb_enc_update = ecb.encryptor().update
        self._ecb_dec_update = ecb.decryptor().update

    @property
    def uuid(self):
        return self._uuid

    @property
    def cmd_key(self):
        return self._cmd_key

    @property
    def auth_id_key(self):
        return self._auth_id_key

    def __repr__(self):
        return "<UserKeys>"


# ============================================================================================ AuthID


def create_auth_id(UserKeys user not None, ts, rand4):
    """AuthID = AES-ECB(authIDKey, BE64(ts) || rand4 || CRC32) (spec 3.2)."""
    cdef uint64_t t = _check_ts(ts)
    cdef uint8_t plain[16]
    cdef Py_buffer v
    _check_len("rand4", rand4, 4)
    _getbuf(rand4, &v)
    if v.len != 4:
        PyBuffer_Release(&v)
        raise ValueError(f"rand4 must be 4 bytes, got {v.len}")
    _be64(plain, t)
    memcpy(plain + 8, v.buf, 4)
    PyBuffer_Release(&v)
    _be32(plain + 12, _crc32(plain, 12))
    return user._ecb_enc_update(PyBytes_FromStringAndSize(<char *>plain, 16))


def open_auth_id(UserKeys user not None, auth_id):
    """The timestamp inside ``auth_id`` if it decrypts to a valid block for this user, else None."""
    _check_len("auth_id", auth_id, 16)
    cdef bytes plain = user._ecb_dec_update(auth_id if PyBytes_CheckExact(auth_id) else bytes(auth_id))
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(plain)
    if _crc32(p, 12) != _rd32(p + 12):
        return None
    cdef uint64_t ts = _rd64(p)
    if ts >= (<uint64_t>1 << 63):  # a negative Go int64
        return None
    return ts


# ============================================================================================ AEAD request header


cdef inline bytes _exact_bytes(object x):
    return x if PyBytes_CheckExact(x) else bytes(x)


cdef int _header_keys(UserKeys user, bytes auth_id, bytes conn_nonce, const vm_kdf *lk, const vm_kdf *ln,
                      uint8_t *key_out, uint8_t *nonce_out) except -1:
    cdef const uint8_t *ck = <const uint8_t *>PyBytes_AS_STRING(user._cmd_key)
    cdef const uint8_t *a = <const uint8_t *>PyBytes_AS_STRING(auth_id)
    cdef const uint8_t *c = <const uint8_t *>PyBytes_AS_STRING(conn_nonce)
    _kdf3(lk, ck, 16, a, 16, c, 8, key_out)
    _kdf3(ln, ck, 16, a, 16, c, 8, nonce_out)
    return 0


def seal_aead_header(UserKeys user not None, auth_id, conn_nonce, section):
    """authID || GCM(len) || connNonce || GCM(section) (spec 3.3)."""
    cdef uint8_t k[32]
    cdef uint8_t nc[32]
    cdef uint8_t lb[2]
    cdef Py_buffer sv
    cdef Py_ssize_t L
    cdef uint8_t *o
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    if len(section) > 0xFFFF:
        raise ValueError("command section too long")
    cdef bytes a = _exact_bytes(auth_id)
    cdef bytes c = _exact_bytes(conn_nonce)
    _getbuf(section, &sv)
    try:
        L = sv.len
        if L > 0xFFFF:
            raise ValueError("command section too long")
        out = PyBytes_FromStringAndSize(NULL, 16 + 18 + 8 + L + 16)
        o = <uint8_t *>PyBytes_AS_STRING(out)
        memcpy(o, PyBytes_AS_STRING(a), 16)
        memcpy(o + 34, PyBytes_AS_STRING(c), 8)
        _be16(lb, <uint32_t>L)
        _header_keys(user, a, c, &_K_HDR_LEN_KEY, &_K_HDR_LEN_NONCE, k, nc)
        AESGCM(PyBytes_FromStringAndSize(<char *>k, 16)).encrypt_into(
            PyBytes_FromStringAndSize(<char *>nc, 12), PyBytes_FromStringAndSize(<char *>lb, 2), a,
            _wview(o + 16, 18))
        _header_keys(user, a, c, &_K_HDR_KEY, &_K_HDR_NONCE, k, nc)
        AESGCM(PyBytes_FromStringAndSize(<char *>k, 16)).encrypt_into(
            PyBytes_FromStringAndSize(<char *>nc, 12), _rview(<const uint8_t *>sv.buf, L), a,
            _wview(o + 42, L + 16))
    finally:
        PyBuffer_Release(&sv)
    return out


def open_aead_header_length(UserKeys user not None, auth_id, conn_nonce, enc_len):
    """Open the 18-byte encrypted length of an AEAD request header; AuthenticationError if it is forged."""
    cdef uint8_t k[32]
    cdef uint8_t nc[32]
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    _check_len("enc_len", enc_len, 18)
    cdef bytes a = _exact_bytes(auth_id)
    _header_keys(user, a, _exact_bytes(conn_nonce), &_K_HDR_LEN_KEY, &_K_HDR_LEN_NONCE, k, nc)
    try:
        plain = AESGCM(PyBytes_FromStringAndSize(<char *>k, 16)).decrypt(
            PyBytes_FromStringAndSize(<char *>nc, 12), _exact_bytes(enc_len), a)
    except InvalidTag:
        raise AuthenticationError("AEAD request header: length failed authentication") from None
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(plain)
    return (<int>p[0] << 8) | p[1]


def open_aead_header(UserKeys user not None, auth_id, conn_nonce, enc_header):
    """Open the encrypted command section of an AEAD request header; AuthenticationError if it is forged."""
    cdef uint8_t k[32]
    cdef uint8_t nc[32]
    _check_len("auth_id", auth_id, 16)
    _check_len("conn_nonce", conn_nonce, 8)
    if len(enc_header) < 16:
        raise AuthenticationError("AEAD request header: encrypted section shorter than its tag")
    cdef bytes a = _exact_bytes(auth_id)
    _header_keys(user, a, _exact_bytes(conn_nonce), &_K_HDR_KEY, &_K_HDR_NONCE, k, nc)
    try:
        return AESGCM(PyBytes_FromStringAndSize(<char *>k, 16)).decrypt(
            PyBytes_FromStringAndSize(<char *>nc, 12), _exact_bytes(enc_header), a)
    except InvalidTag:
        raise AuthenticationError("AEAD request header: section failed authentication") from None


# ============================================================================================ legacy header


cdef bytes _be64_bytes(uint64_t t):
    cdef uint8_t b[8]
    _be64(b, t)
    return PyBytes_FromStringAndSize(<char *>b, 8)


def legacy_auth(id_bytes, ts):
    """Legacy auth = HMAC-MD5(key = an (alter) ID's bytes, msg = BE64(ts)) (spec 2.1)."""
    _check_len("id_bytes", id_bytes, 16)
    cdef uint64_t t = _check_ts(ts)
    return _hmac_digest(bytes(id_bytes), _be64_bytes(t), "md5")


def legacy_iv(ts):
    """IV of the legacy command section: MD5(BE64(ts) x 4) (spec 2.1)."""
    cdef uint64_t t = _check_ts(ts)
    return _md5(_be64_bytes(t) * 4).digest()


def cfb_encryptor(key, iv):
    """A full-block AES-128-CFB encryption stream (Go's NewCFBEncrypter)."""
    return Cipher(algorithms.AES(bytes(key)), CFB(bytes(iv))).encryptor()


def cfb_decryptor(key, iv):
    """A full-block AES-128-CFB decryption stream."""
    return Cipher(algorithms.AES(bytes(key)), CFB(bytes(iv))).decryptor()


def seal_legacy_header(UserKeys user not None, id_bytes, ts, section):
    """auth(id_bytes, ts) || AES-CFB(primary cmdKey, legacy_iv(ts), section) (spec 2.1)."""
    auth = legacy_auth(id_bytes, ts)
    return auth + cfb_encryptor(user._cmd_key, legacy_iv(ts)).update(bytes(section))


def legacy_header_decryptor(UserKeys user not None, ts):
    """The CFB stream that decrypts a legacy command section, once the auth matched ``user`` at ``ts``."""
    return cfb_decryptor(user._cmd_key, legacy_iv(ts))


# ============================================================================================ response header


cdef bytes _sha256_16(object data):
    cdef uint8_t out[32]
    cdef Py_buffer v
    _getbuf(data, &v)
    vm_sha256_digest(<const uint8_t *>v.buf, <size_t>v.len, out)
    PyBuffer_Release(&v)
    return PyBytes_FromStringAndSize(<char *>out, 16)


def response_keys(req_key, req_iv, legacy):
    """(RespKey, RespIV): MD5 of the request pair for legacy headers, SHA-256[:16] for AEAD (spec 4.2)."""
    _check_len("req_key", req_key, 16)
    _check_len("req_iv", req_iv, 16)
    if legacy:
        return _md5(bytes(req_key)).digest(), _md5(bytes(req_iv)).digest()
    return _sha256_16(req_key), _sha256_16(req_iv)


cdef bytes _kdf1_bytes(const vm_kdf *l1, object key, Py_ssize_t n):
    cdef uint8_t out[32]
    cdef Py_buffer v
    _getbuf(key, &v)
    _kdf1(l1, <const uint8_t *>v.buf, <size_t>v.len, out)
    PyBuffer_Release(&v)
    return PyBytes_FromStringAndSize(<char *>out, n)


def seal_aead_response(resp_key, resp_iv, plain):
    """GCM(len) || GCM(header) with keys from the KDF over RespKey/RespIV (spec 6.2)."""
    cdef uint8_t lb[2]
    cdef Py_buffer pv
    cdef Py_ssize_t L
    cdef uint8_t *o
    if len(plain) > 0xFFFF:
        raise ValueError("response header too long")
    lkey = _kdf1_bytes(&_K_RESP_LEN_KEY, resp_key, 16)
    lnonce = _kdf1_bytes(&_K_RESP_LEN_IV, resp_iv, 12)
    key = _kdf1_bytes(&_K_RESP_KEY, resp_key, 16)
    nonce = _kdf1_bytes(&_K_RESP_IV, resp_iv, 12)
    _getbuf(plain, &pv)
    try:
        L = pv.len
        if L > 0xFFFF:
            raise ValueError("response header too long")
        out = PyBytes_FromStringAndSize(NULL, 18 + L + 16)
        o = <uint8_t *>PyBytes_AS_STRING(out)
        _be16(lb, <uint32_t>L)
        AESGCM(lkey).encrypt_into(lnonce, PyBytes_FromStringAndSize(<char *>lb, 2), None, _wview(o, 18))
        AESGCM(key).encrypt_into(nonce, _rview(<const uint8_t *>pv.buf, L), None, _wview(o + 18, L + 16))
    finally:
        PyBuffer_Release(&pv)
    return out


def open_aead_response_length(resp_key, resp_iv, enc_len):
    """Open the 18-byte length of an AEAD response header; AuthenticationError if it is forged."""
    _check_len("enc_len", enc_len, 18)
    try:
        plain = AESGCM(_kdf1_bytes(&_K_RESP_LEN_KEY, resp_key, 16)).decrypt(
            _kdf1_bytes(&_K_RESP_LEN_IV, resp_iv, 12), _exact_bytes(enc_len), None)
    except InvalidTag:
        raise AuthenticationError("AEAD response header: length failed authentication") from None
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(plain)
    return (<int>p[0] << 8) | p[1]


def open_aead_response(resp_key, resp_iv, enc_header):
    """Open the AEAD response header body; AuthenticationError if it is forged."""
    if len(enc_header) < 16:
        raise AuthenticationError("AEAD response header: shorter than its tag")
    try:
        return AESGCM(_kdf1_bytes(&_K_RESP_KEY, resp_key, 16)).decrypt(
            _kdf1_bytes(&_K_RESP_IV, resp_iv, 12), _exact_bytes(enc_header), None)
    except InvalidTag:
        raise AuthenticationError("AEAD response header: failed authentication") from None


# ============================================================================================ body chunks


cdef bytes _aead_key_material(int security, object key):
    """What the AEAD constructor of ``security`` takes for a 16-byte VMess key (ChaCha's key is derived)."""
    if security == C_SEC_GCM:
        return bytes(key)
    return chacha_key(key)


cdef int _check_body_args(object security, object options, object key, object iv, object req_key,
                          object req_iv) except -1:
    if security not in (SEC_LEGACY, SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE):
        raise ValueError(f"security code {security} has no body codec")
    if not 0 <= options <= 0xFF:
        raise ValueError("options must be one byte")
    _check_len("key", key, 16)
    _check_len("iv", iv, 16)
    _check_len("req_key", req_key, 16)
    _check_len("req_iv", req_iv, 16)
    if options & OPT_A and security not in (SEC_AES128_GCM, SEC_CHACHA20_POLY1305):
        raise ValueError("authenticated length (A) needs AES-128-GCM or ChaCha20-Poly1305")
    if not options & OPT_S and security in (SEC_AES128_GCM, SEC_CHACHA20_POLY1305):
        raise ValueError("AEAD securities need chunk stream (S)")
    return 0


cdef class _Body:
    """State shared by writer and reader: ciphers, counters, nonces and the SHAKE stream of one direction."""

    cdef int security, options, overhead
    cdef bint chunked, packet, aead, opt_a, opt_m, opt_p, has_shake
    cdef object cfb                      # a cryptography CipherContext or None
    cdef object _cfb_update_into
    cdef object _aead_obj, _len_aead_obj # None while released (see release()); made again at the next use
    cdef bytes _aead_key, _len_aead_key  # their key material, kept so that the contexts can be made again
    cdef vm_shake128 shake
    cdef uint8_t nonce[12]
    cdef uint8_t len_nonce[12]
    cdef uint16_t counter, len_counter
    cdef uint8_t lenplain[2]
    # Reusable buffer exporters handed to the cipher calls: _vn for a nonce, _vin for input, _vout for output.
    # (Three small _Buf objects instead of a memoryview per field: a memoryview costs ~250 bytes with its
    # managed buffer, and every open connection has a reader and a writer. With AEAD they come and go with the
    # cipher objects, so a resting connection holds none; CFB keeps them, its stream cannot be released.)
    cdef _Buf _vn, _vin, _vout

    cdef int _setup(self, object security, object options, object key, object iv, object req_key,
                    object req_iv, object packet, object cfb, bint encrypt) except -1:
        cdef Py_buffer v
        _check_body_args(security, options, key, iv, req_key, req_iv)
        self.security = security
        self.options = options
        self.packet = bool(packet)
        self.chunked = (self.options & C_OPT_S) != 0
        self.opt_a = (self.options & C_OPT_A) != 0
        self.opt_m = (self.options & C_OPT_M) != 0
        self.opt_p = (self.options & C_OPT_P) != 0
        ivb = bytes(iv)
        req_ivb = bytes(req_iv)
        memcpy(self.nonce + 2, PyBytes_AS_STRING(ivb) + 2, 10)
        memcpy(self.len_nonce + 2, PyBytes_AS_STRING(req_ivb) + 2, 10)
        self.nonce[0] = 0
        self.nonce[1] = 0
        self.len_nonce[0] = 0
        self.len_nonce[1] = 0
        self.counter = 0
        self.len_counter = 0
        self.cfb = cfb
        self.aead = False
        if self.security == C_SEC_GCM or self.security == C_SEC_CHACHA:
            self.overhead = 16
            self.aead = True
            self._aead_key = _aead_key_material(self.security, key)
            if self.opt_a:
                self._len_aead_key = _aead_key_material(self.security, _kdf1_bytes(&_K_AUTH_LEN, req_key, 16))
        elif self.security == C_SEC_LEGACY:
            self.overhead = 4 if self.chunked else 0
            if self.cfb is None:
                self.cfb = cfb_encryptor(key, iv) if encrypt else cfb_decryptor(key, iv)
        else:
            self.overhead = 0
        if self.cfb is not None:
            self._cfb_update_into = self.cfb.update_into
            self._new_bufs()
        self.has_shake = self.chunked and (self.options & (C_OPT_M | C_OPT_P)) != 0
        if self.has_shake:
            vm_shake128_init(&self.shake, <const uint8_t *>PyBytes_AS_STRING(ivb), 16)
        return 0

    cdef int _new_bufs(self) except -1:
        self._vn = _new_buf(True)
        self._vin = _new_buf(True)
        self._vout = _new_buf(False)
        return 0

    cdef int _open_ciphers(self) except -1:
        """Make the AEAD objects (each holds OpenSSL contexts, ~2 KiB) from the kept key material."""
        if self._vn is None:
            self._new_bufs()
        if self.security == C_SEC_GCM:
            self._aead_obj = AESGCM(self._aead_key)
            if self.opt_a:
                self._len_aead_obj = AESGCM(self._len_aead_key)
        else:
            self._aead_obj = ChaCha20Poly1305(self._aead_key)
            if self.opt_a:
                self._len_aead_obj = ChaCha20Poly1305(self._len_aead_key)
        return 0

    cdef void _release_ciphers(self) noexcept:
        self._aead_obj = None
        self._len_aead_obj = None
        self._vn = self._vin = self._vout = None

    cdef inline void next_nonce(self) noexcept:
        _be16(self.nonce, self.counter)
        self.counter = <uint16_t>(self.counter + 1)

    cdef inline void next_len_nonce(self) noexcept:
        _be16(self.len_nonce, self.len_counter)
        self.len_counter = <uint16_t>(self.len_counter + 1)


@cython.final
@cython.auto_pickle(False)
cdef class ChunkWriter(_Body):
    """Frames one direction of a VMess body (spec 5): chunking, masking, padding, sealing.

    ``security`` is the wire code (1 legacy CFB, 3 GCM, 4 ChaCha, 5 none) and ``options`` the option byte; without
    S the body is a raw stream. ``key``/``iv`` are this direction's pair and ``req_key``/``req_iv`` the request pair
    (used by authenticated length in both directions). ``packet`` frames each write as one datagram. ``cfb``
    continues an existing CFB stream (legacy response). ``chunk_size`` caps a whole chunk (at most 16384).
    """

    cdef object _urandom
    cdef bint _os_rand                  # urandom is os.urandom: padding comes from a process-local pool
    cdef object _enc_into, _len_enc_into
    cdef Py_ssize_t _max_payload
    cdef int _head, _padmax
    cdef bint _ended
    cdef uint8_t *_scratch              # frame staging when the frame goes through a CFB stream
    cdef bint _via_cfb                  # chunked frames are built in _scratch, then CFB-encrypted into place

    def __cinit__(self):
        self._scratch = NULL

    def __dealloc__(self):
        free(self._scratch)

    def __init__(self, security, options, key, iv, req_key, req_iv, urandom, packet=False, cfb=None,
                 chunk_size=MAX_WRITE_CHUNK):
        self._setup(security, options, key, iv, req_key, req_iv, packet, cfb, True)
        self._urandom = urandom
        self._os_rand = urandom is _os_urandom
        if not C_MIN_CHUNK <= chunk_size <= C_MAX_WRITE_CHUNK:
            raise ValueError(f"chunk_size must be in [{C_MIN_CHUNK}, {C_MAX_WRITE_CHUNK}]")
        self._head = 18 if self.opt_a else 2
        self._padmax = C_MAX_PADDING if self.opt_p else 0
        self._max_payload = <Py_ssize_t>chunk_size - self._head - self.overhead - self._padmax
        self._ended = False
        if self.aead:
            self._open_ciphers()
        self._via_cfb = self.cfb is not None and self.chunked
        if self._via_cfb and self._scratch == NULL:
            self._scratch = <uint8_t *>malloc(C_MAX_WRITE_CHUNK + 128)
            if self._scratch == NULL:
                raise MemoryError()

    cdef int _open_ciphers(self) except -1:
        _Body._open_ciphers(self)
        self._enc_into = self._aead_obj.encrypt_into
        if self.opt_a:
            self._len_enc_into = self._len_aead_obj.encrypt_into
        return 0

    def release(self):
        """Free the cipher contexts until the next write (a hint for idle connections; the stream goes on as if
        nothing happened). An AEAD context costs about 2 KiB; the next write makes it again (about 1 us)."""
        if self.aead:
            self._release_ciphers()
            self._enc_into = None
            self._len_enc_into = None

    @property
    def max_payload(self):
        """Largest payload carried by one chunk (and so the largest datagram in packet mode)."""
        return self._max_payload

    @property
    def ended(self):
        """True once the end-of-stream marker was written."""
        return self._ended

    cdef Py_ssize_t _max_output(self, Py_ssize_t n) noexcept:
        cdef Py_ssize_t chunks
        if not self.chunked:
            return n
        chunks = (n + self._max_payload - 1) // self._max_payload
        if chunks < 1:
            chunks = 1
        return n + chunks * (self._head + self.overhead + self._padmax)

    def max_output(self, Py_ssize_t n):
        """An upper bound on the wire size of ``write(data)`` for ``len(data) == n`` (for :meth:`write_into`)."""
        return self._max_output(n)

    cdef Py_ssize_t _frame(self, const uint8_t *p, Py_ssize_t n, uint8_t *dst) except -1:
        """One chunk carrying p[0:n] written to dst; returns its wire length."""
        cdef uint8_t *f = self._scratch if self._via_cfb else dst
        cdef uint32_t pad = 0, size
        cdef Py_ssize_t h, flen
        cdef Py_buffer rv
        if self.opt_p:
            pad = vm_shake128_draw(&self.shake) % 64
        if self.opt_a:
            _be16(self.lenplain, <uint32_t>(n + pad))
            self.next_len_nonce()
            self._len_enc_into(_at(self._vn, self.len_nonce, 12), _at(self._vin, self.lenplain, 2), None,
                               _at(self._vout, f, 18))
            h = 18
        else:
            size = <uint32_t>(n + self.overhead + pad)
            if self.opt_m:
                size ^= vm_shake128_draw(&self.shake)
            _be16(f, size)
            h = 2
        if self.aead:
            self.next_nonce()
            self._enc_into(_at(self._vn, self.nonce, 12), _at(self._vin, p, n), None, _at(self._vout, f + h, n + 16))
        elif self.security == C_SEC_LEGACY:
            _be32(f + h, _fnv(p, n))
            memcpy(f + h + 4, p, n)
        else:
            memcpy(f + h, p, n)
        flen = h + n + self.overhead
        if pad and self._os_rand:
            _pool_take(f + flen, pad)
            flen += pad
        elif pad:
            r = self._urandom(pad)
            PyObject_GetBuffer(r, &rv, PyBUF_SIMPLE)
            if rv.len != pad:
                PyBuffer_Release(&rv)
                raise ValueError(f"urandom({pad}) returned {len(r)} bytes")
            memcpy(f + flen, rv.buf, pad)
            PyBuffer_Release(&rv)
            flen += pad
        if self._via_cfb:
            self._cfb_update_into(_at(self._vin, f, flen), _at(self._vout, dst, flen))
        return flen

    cdef Py_ssize_t _write(self, const uint8_t *p, Py_ssize_t n, uint8_t *dst) except -1:
        """Frame p[0:n] into dst (room for _max_output(n)); returns the bytes written. Caller checked _ended."""
        cdef Py_ssize_t total = 0, step, mp = self._max_payload
        if self.aead and self._enc_into is None:
            self._open_ciphers()
        if not self.chunked:
            if self.cfb is not None:
                if n:
                    self._cfb_update_into(_at(self._vin, p, n), _at(self._vout, dst, n))
            else:
                memcpy(dst, p, n)
            return n
        if n == 0:
            return 0
        if self.packet:
            if n > mp:
                raise ChunkTooLargeError(f"datagram of {n} bytes exceeds the chunk limit of {mp}")
            return self._frame(p, n, dst)
        while n > 0:
            step = mp if n > mp else n
            total += self._frame(p, step, dst + total)
            p += step
            n -= step
        return total

    def write(self, data):
        """Frame ``data`` (split into chunks as needed; one chunk in packet mode) and return the wire bytes."""
        cdef Py_buffer v
        cdef PyObject *res = NULL
        cdef Py_ssize_t n, total
        if self._ended:
            raise ProtocolError("write after end of stream")
        _getbuf(data, &v)
        try:
            n = v.len
            if not self.chunked:
                if self.cfb is not None:
                    return self.cfb.update(_rview(<const uint8_t *>v.buf, n))
                return PyBytes_FromStringAndSize(<char *>v.buf, n)
            if n == 0:
                return b""
            if self.packet and n > self._max_payload:
                raise ChunkTooLargeError(
                    f"datagram of {n} bytes exceeds the chunk limit of {self._max_payload}")
            res = _vm_bytes_new(NULL, self._max_output(n))
            try:
                total = self._write(<const uint8_t *>v.buf, n, <uint8_t *>PyBytes_AS_STRING(<object>res))
                _vm_bytes_resize(&res, total)
            except BaseException:
                Py_XDECREF(res)
                raise
            out = <object>res
            Py_XDECREF(res)
            return out
        finally:
            PyBuffer_Release(&v)

    def write_into(self, data, out, Py_ssize_t offset=0):
        """Like :meth:`write`, but into ``out`` at ``offset`` (room for ``max_output(len(data))`` needed).

        Returns the number of bytes written. The compiled backend seals straight into ``out``.
        """
        cdef Py_buffer v, ov
        cdef Py_ssize_t n
        _getbuf(data, &v)
        try:
            n = v.len
            try:
                PyObject_GetBuffer(out, &ov, PyBUF_WRITABLE)
            except (TypeError, BufferError):
                if offset < 0 or offset + self._max_output(n) > len(out):
                    raise ValueError("output buffer too small")
                raise TypeError("out must be a writable buffer (bytearray, memoryview ...)") from None
            try:
                if offset < 0 or offset + self._max_output(n) > ov.len:
                    raise ValueError("output buffer too small")
                if self._ended:
                    raise ProtocolError("write after end of stream")
                return self._write(<const uint8_t *>v.buf, n, <uint8_t *>ov.buf + offset)
            finally:
                PyBuffer_Release(&ov)
        finally:
            PyBuffer_Release(&v)

    def write_end(self):
        """The end-of-stream marker (an empty chunk); empty bytes for a raw stream. Idempotent."""
        cdef uint8_t buf[C_MAX_WRITE_CHUNK]
        cdef Py_ssize_t n
        if self._ended or not self.chunked:
            self._ended = True
            return b""
        if self.aead and self._enc_into is None:
            self._open_ciphers()
        self._ended = True
        n = self._frame(_EMPTY, 0, buf)
        return PyBytes_FromStringAndSize(<char *>buf, n)


@cython.final
@cython.auto_pickle(False)
cdef class ChunkReader(_Body):
    """Decodes one direction of a VMess body (spec 5), the mirror of :class:`ChunkWriter`.

    Feed it bytes as they arrive; it returns the payloads of the complete chunks. It accepts any 16-bit size.
    After the end-of-stream marker ``ended`` is True and further bytes are kept in ``unused_data``.
    """

    cdef object _dec_into, _dec, _len_dec_into
    cdef uint8_t *_buf                  # a partial length field or chunk body carried between feeds
    cdef Py_ssize_t _blen, _bcap
    cdef uint8_t *_tmp                  # CFB-decrypted input
    cdef Py_ssize_t _tcap
    cdef Py_ssize_t _size               # size of the chunk being read, -1 while its length field is not decoded
    cdef int _pad, _hlen
    cdef bint _ended
    cdef bytes _unused

    def __cinit__(self):
        self._buf = NULL
        self._tmp = NULL
        self._blen = 0
        self._bcap = 0
        self._tcap = 0

    def __dealloc__(self):
        free(self._buf)
        free(self._tmp)

    def __init__(self, security, options, key, iv, req_key, req_iv, packet=False, cfb=None):
        self._setup(security, options, key, iv, req_key, req_iv, packet, cfb, False)
        self._blen = 0
        self._size = -1
        self._pad = 0
        self._ended = False
        self._unused = b""
        self._hlen = 18 if self.opt_a else 2
        if self.aead:
            self._open_ciphers()

    cdef int _open_ciphers(self) except -1:
        _Body._open_ciphers(self)
        self._dec_into = self._aead_obj.decrypt_into
        self._dec = self._aead_obj.decrypt
        if self.opt_a:
            self._len_dec_into = self._len_aead_obj.decrypt_into
        return 0

    def release(self):
        """Free the cipher contexts until the next feed (a hint for idle connections; the stream goes on as if
        nothing happened). An AEAD context costs about 2 KiB; the next feed makes it again (about 1 us)."""
        if self.aead:
            self._release_ciphers()
            self._dec_into = None
            self._dec = None
            self._len_dec_into = None

    @property
    def ended(self):
        """True once the end-of-stream marker was read."""
        return self._ended

    @property
    def pending(self):
        """Bytes received that do not yet form a complete chunk (non-zero at EOF means truncation).

        A decoded length field counts until its chunk is complete: a stream cut right after one is truncated too.
        """
        return self._blen + (self._hlen if self._size >= 0 else 0)

    @property
    def unused_data(self):
        """Bytes that arrived after the end-of-stream marker."""
        return self._unused

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef uint8_t *nb
        if need <= self._bcap:
            return 0
        cap = 256 if self._bcap < 256 else self._bcap
        while cap < need:
            cap *= 2
        nb = <uint8_t *>realloc(self._buf, cap)
        if nb == NULL:
            raise MemoryError()
        self._buf = nb
        self._bcap = cap
        return 0

    cdef int _header(self, const uint8_t *hp) except -1:
        """Decode a length field (draws pad, then mask); sets _size and _pad."""
        cdef uint32_t pad = 0
        cdef Py_ssize_t size
        if self.opt_p:
            pad = vm_shake128_draw(&self.shake) % 64
        if self.opt_a:
            self.next_len_nonce()
            try:
                self._len_dec_into(_at(self._vn, self.len_nonce, 12), _at(self._vin, hp, 18), None,
                                   _at(self._vout, self.lenplain, 2))
            except InvalidTag:
                raise IntegrityError("chunk length failed authentication") from None
            size = ((<Py_ssize_t>self.lenplain[0] << 8) | self.lenplain[1]) + self.overhead
        else:
            size = (<Py_ssize_t>hp[0] << 8) | hp[1]
            if self.opt_m:
                size ^= vm_shake128_draw(&self.shake)
        if size < self.overhead + <Py_ssize_t>pad:
            raise ProtocolError(
                f"chunk size {size} is smaller than its overhead {self.overhead} + padding {pad}")
        self._size = size
        self._pad = pad
        return 0

    cdef object _body(self, const uint8_t *bp, Py_ssize_t blen):
        """Open one chunk body (padding already cut off); returns its payload (b"" is the end marker)."""
        cdef Py_ssize_t plen
        if self.aead:
            plen = blen - 16
            self.next_nonce()
            try:
                if plen == 0:
                    return self._dec(_at(self._vn, self.nonce, 12), _at(self._vin, bp, blen), None)
                res = PyBytes_FromStringAndSize(NULL, plen)
                self._dec_into(_at(self._vn, self.nonce, 12), _at(self._vin, bp, blen), None,
                               _at(self._vout, <uint8_t *>PyBytes_AS_STRING(res), plen))
                return res
            except InvalidTag:
                raise IntegrityError("chunk failed authentication") from None
        if self.security == C_SEC_LEGACY:
            if _fnv(bp + 4, blen - 4) != _rd32(bp):
                raise IntegrityError("chunk failed its FNV-1a checksum")
            return PyBytes_FromStringAndSize(<char *>bp + 4, blen - 4)
        return PyBytes_FromStringAndSize(<char *>bp, blen)

    def feed(self, data):
        """Add received bytes; return the payloads of every chunk completed by them (empty ones omitted)."""
        cdef Py_buffer v
        cdef const uint8_t *src
        cdef const uint8_t *up
        cdef Py_ssize_t n, pos = 0, take, need, size
        cdef uint8_t *nt
        cdef list out
        if self._ended:
            self._unused += bytes(data)
            return []
        if self.aead and self._dec_into is None:
            self._open_ciphers()
        _getbuf(data, &v)
        try:
            n = v.len
            src = <const uint8_t *>v.buf
            if self.cfb is not None:
                if n > self._tcap:
                    nt = <uint8_t *>realloc(self._tmp, n)
                    if nt == NULL:
                        raise MemoryError()
                    self._tmp = nt
                    self._tcap = n
                if n:
                    self._cfb_update_into(_at(self._vin, src, n), _at(self._vout, self._tmp, n))
                src = self._tmp
            if not self.chunked:
                return [PyBytes_FromStringAndSize(<char *>src, n)] if n else []
            out = []
            while True:
                if self._size < 0:
                    need = self._hlen
                    if self._blen > 0 or n - pos < need:
                        self._reserve(need)
                        take = need - self._blen
                        if take > n - pos:
                            take = n - pos
                        memcpy(self._buf + self._blen, src + pos, take)
                        self._blen += take
                        pos += take
                        if self._blen < need:
                            break
                        self._blen = 0
                        self._header(self._buf)
                    else:
                        self._header(src + pos)
                        pos += need
                size = self._size
                if self._blen > 0 or n - pos < size:
                    self._reserve(size)
                    take = size - self._blen
                    if take > n - pos:
                        take = n - pos
                    memcpy(self._buf + self._blen, src + pos, take)
                    self._blen += take
                    pos += take
                    if self._blen < size:
                        break
                    self._blen = 0
                    up = self._buf
                else:
                    up = src + pos
                    pos += size
                self._size = -1
                payload = self._body(up, size - self._pad)
                if not payload:
                    self._ended = True
                    self._unused = PyBytes_FromStringAndSize(<char *>src + pos, n - pos)
                    break
                PyList_Append(out, payload)
            return out
        finally:
            PyBuffer_Release(&v)

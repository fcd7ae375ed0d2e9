/*
 * vm_sha256.c - SHA-256, portable C block function plus an x86 SHA-NI one
 * selected at run time.
 */
#include "vm_sha256.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define VM_SHA256_X86 1
#include <immintrin.h>
#if !(defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11)
#include <cpuid.h>
#endif
#endif

static const uint32_t K256[64] = {
    0x428a2f98U, 0x71374491U, 0xb5c0fbcfU, 0xe9b5dba5U,
    0x3956c25bU, 0x59f111f1U, 0x923f82a4U, 0xab1c5ed5U,
    0xd807aa98U, 0x12835b01U, 0x243185beU, 0x550c7dc3U,
    0x72be5d74U, 0x80deb1feU, 0x9bdc06a7U, 0xc19bf174U,
    0xe49b69c1U, 0xefbe4786U, 0x0fc19dc6U, 0x240ca1ccU,
    0x2de92c6fU, 0x4a7484aaU, 0x5cb0a9dcU, 0x76f988daU,
    0x983e5152U, 0xa831c66dU, 0xb00327c8U, 0xbf597fc7U,
    0xc6e00bf3U, 0xd5a79147U, 0x06ca6351U, 0x14292967U,
    0x27b70a85U, 0x2e1b2138U, 0x4d2c6dfcU, 0x53380d13U,
    0x650a7354U, 0x766a0abbU, 0x81c2c92eU, 0x92722c85U,
    0xa2bfe8a1U, 0xa81a664bU, 0xc24b8b70U, 0xc76c51a3U,
    0xd192e819U, 0xd6990624U, 0xf40e3585U, 0x106aa070U,
    0x19a4c116U, 0x1e376c08U, 0x2748774cU, 0x34b0bcb5U,
    0x391c0cb3U, 0x4ed8aa4aU, 0x5b9cca4fU, 0x682e6ff3U,
    0x748f82eeU, 0x78a5636fU, 0x84c87814U, 0x8cc70208U,
    0x90befffaU, 0xa4506cebU, 0xbef9a3f7U, 0xc67178f2U,
};

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* explicit bswap: GCC otherwise tends to "vectorize" the byte-wise version badly */
static inline uint32_t load32_be(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}

static inline void store32_be(uint8_t *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}
#else
static inline uint32_t load32_be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void store32_be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
#endif

/* ------------------------------------------------------------------ */
/* Portable block function                                            */
/* ------------------------------------------------------------------ */

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROR32(x, 2) ^ ROR32(x, 13) ^ ROR32(x, 22))
#define BSIG1(x) (ROR32(x, 6) ^ ROR32(x, 11) ^ ROR32(x, 25))
#define SSIG0(x) (ROR32(x, 7) ^ ROR32(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROR32(x, 17) ^ ROR32(x, 19) ^ ((x) >> 10))
#define CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

static void compress_portable(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
    uint32_t w[64];

    while (nblocks--) {
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
        int t;

        for (t = 0; t < 16; t++)
            w[t] = load32_be(p + 4 * t);
        for (t = 16; t < 64; t++)
            w[t] = SSIG1(w[t - 2]) + w[t - 7] + SSIG0(w[t - 15]) + w[t - 16];
        for (t = 0; t < 64; t++) {
            uint32_t t1 = hh + BSIG1(e) + CH(e, f, g) + K256[t] + w[t];
            uint32_t t2 = BSIG0(a) + MAJ(a, b, c);
            hh = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
        h[5] += f;
        h[6] += g;
        h[7] += hh;
        p += 64;
    }
}

/* ------------------------------------------------------------------ */
/* x86 SHA-NI block function                                          */
/* ------------------------------------------------------------------ */

#ifdef VM_SHA256_X86

/*
 * Register layout used by SHA256RNDS2: "abef" holds (from element 3 down to
 * element 0) A, B, E, F and "cdgh" holds C, D, G, H.  Each rnds2 performs two
 * rounds with the two low dwords of its message operand (W[t] + K[t]).
 *
 * Message schedule, for group g (words 4g .. 4g+3), g >= 4, with m[] a ring
 * of the last four groups:
 *   msg1(m[g-4], m[g-3])       -> W[t-16] + s0(W[t-15])     (4 lanes)
 *   + alignr(m[g-1], m[g-2],4) -> + W[t-7]
 *   msg2(.., m[g-1])           -> + s1(W[t-2])  (handles the in-group dependency)
 */
#define VM_SHANI_ROUNDS4(g, m)                                                \
    do {                                                                      \
        __m128i wk_ = _mm_add_epi32((m), _mm_loadu_si128((const __m128i *)(K256 + 4 * (g)))); \
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk_);                        \
        wk_ = _mm_shuffle_epi32(wk_, 0x0E);                                   \
        abef = _mm_sha256rnds2_epu32(abef, cdgh, wk_);                        \
    } while (0)

#define VM_SHANI_SCHED(m0, m1, m2, m3)                                        \
    do {                                                                      \
        (m0) = _mm_add_epi32(_mm_sha256msg1_epu32((m0), (m1)),                \
                             _mm_alignr_epi8((m3), (m2), 4));                 \
        (m0) = _mm_sha256msg2_epu32((m0), (m3));                              \
    } while (0)

__attribute__((target("sha,sse4.1,ssse3")))
static void compress_shani(uint32_t h[8], const uint8_t *p, size_t nblocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i abef, cdgh, t;

    /* h[0..3] = (A,B,C,D), h[4..7] = (E,F,G,H)  ->  abef, cdgh */
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);        /* e0..3 = B A D C */
    cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B); /* e0..3 = H G F E */
    abef = _mm_alignr_epi8(t, cdgh, 8);                                       /* e0..3 = F E B A */
    cdgh = _mm_blend_epi16(cdgh, t, 0xF0);                                    /* e0..3 = H G D C */

    while (nblocks--) {
        const __m128i save_abef = abef, save_cdgh = cdgh;
        __m128i m0, m1, m2, m3;

        m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), bswap);
        m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), bswap);
        m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), bswap);
        m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), bswap);

        VM_SHANI_ROUNDS4(0, m0);
        VM_SHANI_ROUNDS4(1, m1);
        VM_SHANI_ROUNDS4(2, m2);
        VM_SHANI_ROUNDS4(3, m3);
        VM_SHANI_SCHED(m0, m1, m2, m3); VM_SHANI_ROUNDS4(4, m0);
        VM_SHANI_SCHED(m1, m2, m3, m0); VM_SHANI_ROUNDS4(5, m1);
        VM_SHANI_SCHED(m2, m3, m0, m1); VM_SHANI_ROUNDS4(6, m2);
        VM_SHANI_SCHED(m3, m0, m1, m2); VM_SHANI_ROUNDS4(7, m3);
        VM_SHANI_SCHED(m0, m1, m2, m3); VM_SHANI_ROUNDS4(8, m0);
        VM_SHANI_SCHED(m1, m2, m3, m0); VM_SHANI_ROUNDS4(9, m1);
        VM_SHANI_SCHED(m2, m3, m0, m1); VM_SHANI_ROUNDS4(10, m2);
        VM_SHANI_SCHED(m3, m0, m1, m2); VM_SHANI_ROUNDS4(11, m3);
        VM_SHANI_SCHED(m0, m1, m2, m3); VM_SHANI_ROUNDS4(12, m0);
        VM_SHANI_SCHED(m1, m2, m3, m0); VM_SHANI_ROUNDS4(13, m1);
        VM_SHANI_SCHED(m2, m3, m0, m1); VM_SHANI_ROUNDS4(14, m2);
        VM_SHANI_SCHED(m3, m0, m1, m2); VM_SHANI_ROUNDS4(15, m3);

        abef = _mm_add_epi32(abef, save_abef);
        cdgh = _mm_add_epi32(cdgh, save_cdgh);
        p += 64;
    }

    /* back to h[0..3] = (A,B,C,D), h[4..7] = (E,F,G,H) */
    t = _mm_shuffle_epi32(abef, 0x1B);    /* e0..3 = A B E F */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1); /* e0..3 = G H C D */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, cdgh, 0xF0));        /* A B C D */
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(cdgh, t, 8));     /* E F G H */
}

static int detect_shani(void)
{
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    __builtin_cpu_init();
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
           __builtin_cpu_supports("ssse3");
#else
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) /* SSSE3, SSE4.1 */
        return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (b >> 29) & 1u; /* SHA */
#endif
}

#endif /* VM_SHA256_X86 */

/* ------------------------------------------------------------------ */
/* Dispatch                                                           */
/* ------------------------------------------------------------------ */

static int g_has_shani = -1; /* -1: not yet detected */
static int g_force_portable = 0;

int vm_sha256_has_shani(void)
{
#ifdef VM_SHA256_X86
    int v = __atomic_load_n(&g_has_shani, __ATOMIC_RELAXED);
    if (v < 0) {
        v = detect_shani() ? 1 : 0;
        __atomic_store_n(&g_has_shani, v, __ATOMIC_RELAXED);
    }
    return v;
#else
    (void)g_has_shani;
    return 0;
#endif
}

void vm_sha256_force_portable(int on)
{
    __atomic_store_n(&g_force_portable, on ? 1 : 0, __ATOMIC_RELAXED);
}

int vm_sha256_using_shani(void)
{
    return vm_sha256_has_shani() && !__atomic_load_n(&g_force_portable, __ATOMIC_RELAXED);
}

void vm_sha256_compress(uint32_t h[8], const uint8_t *blocks, size_t nblocks)
{
#ifdef VM_SHA256_X86
    if (vm_sha256_using_shani()) {
        compress_shani(h, blocks, nblocks);
        return;
    }
#endif
    compress_portable(h, blocks, nblocks);
}

/* ------------------------------------------------------------------ */
/* Streaming API                                                      */
/* ------------------------------------------------------------------ */

static const uint32_t H256_INIT[8] = {
    0x6a09e667U, 0xbb67ae85U, 0x3c6ef372U, 0xa54ff53aU,
    0x510e527fU, 0x9b05688cU, 0x1f83d9abU, 0x5be0cd19U,
};

void vm_sha256_init(vm_sha256 *c)
{
    memcpy(c->h, H256_INIT, sizeof c->h);
    c->nbytes = 0;
    c->buflen = 0;
}

void vm_sha256_update(vm_sha256 *c, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    c->nbytes += n;
    if (c->buflen) {
        size_t k = 64 - c->buflen;
        if (k > n)
            k = n;
        memcpy(c->buf + c->buflen, p, k);
        c->buflen += (uint32_t)k;
        p += k;
        n -= k;
        if (c->buflen < 64)
            return;
        vm_sha256_compress(c->h, c->buf, 1);
        c->buflen = 0;
    }
    if (n >= 64) {
        vm_sha256_compress(c->h, p, n >> 6);
        p += n & ~(size_t)63;
        n &= 63;
    }
    if (n) {
        memcpy(c->buf, p, n);
        c->buflen = (uint32_t)n;
    }
}

void vm_sha256_final_with(const vm_sha256 *c, const uint8_t *p, size_t n, uint8_t out[32])
{
    uint32_t h[8];
    uint8_t blk[128];
    size_t len = c->buflen, total;
    uint64_t bits;
    int i;

    if (n > 128 - 9 - len) {
        /* does not fit the last one or two blocks: take the general route */
        vm_sha256 t = *c;
        vm_sha256_update(&t, p, n);
        vm_sha256_final_with(&t, NULL, 0, out);
        return;
    }
    bits = (c->nbytes + n) << 3;
    memcpy(h, c->h, sizeof h);
    memcpy(blk, c->buf, len);
    if (n) {
        memcpy(blk + len, p, n);
        len += n;
    }
    blk[len++] = 0x80;
    total = (len <= 56) ? 64 : 128;
    memset(blk + len, 0, total - 8 - len);
    store32_be(blk + total - 8, (uint32_t)(bits >> 32));
    store32_be(blk + total - 4, (uint32_t)bits);
    vm_sha256_compress(h, blk, total >> 6);
    for (i = 0; i < 8; i++)
        store32_be(out + 4 * i, h[i]);
}

void vm_sha256_final(const vm_sha256 *c, uint8_t out[32])
{
    vm_sha256_final_with(c, NULL, 0, out);
}

void vm_sha256_digest(const uint8_t *p, size_t n, uint8_t out[32])
{
    vm_sha256 c;

    vm_sha256_init(&c);
    vm_sha256_update(&c, p, n);
    vm_sha256_final(&c, out);
}

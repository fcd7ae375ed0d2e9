/*
 * vm_shake.c - Keccak-f[1600] and a SHAKE128 output stream (FIPS 202).
 *
 * Lane naming in vm_keccakf1600: aYX / eYX is the lane at column x, row y,
 * i.e. st[x + 5*y].  Each loop iteration performs two rounds (a -> e -> a)
 * so no state copies are needed between rounds.
 */
#include "vm_shake.h"

#include <string.h>

#define ROL64(v, n) (((v) << (n)) | ((v) >> (64 - (n))))

static const uint64_t RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL,
    0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL,
    0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL,
    0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL,
    0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL,
    0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL,
    0x0000000080000001ULL, 0x8000000080008008ULL,
};

void vm_keccakf1600(uint64_t st[25])
{
    uint64_t a00, a01, a02, a03, a04,
             a10, a11, a12, a13, a14,
             a20, a21, a22, a23, a24,
             a30, a31, a32, a33, a34,
             a40, a41, a42, a43, a44;
    uint64_t e00, e01, e02, e03, e04,
             e10, e11, e12, e13, e14,
             e20, e21, e22, e23, e24,
             e30, e31, e32, e33, e34,
             e40, e41, e42, e43, e44;
    uint64_t b0, b1, b2, b3, b4, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4;
    int i;

    a00 = st[0];
    a01 = st[1];
    a02 = st[2];
    a03 = st[3];
    a04 = st[4];
    a10 = st[5];
    a11 = st[6];
    a12 = st[7];
    a13 = st[8];
    a14 = st[9];
    a20 = st[10];
    a21 = st[11];
    a22 = st[12];
    a23 = st[13];
    a24 = st[14];
    a30 = st[15];
    a31 = st[16];
    a32 = st[17];
    a33 = st[18];
    a34 = st[19];
    a40 = st[20];
    a41 = st[21];
    a42 = st[22];
    a43 = st[23];
    a44 = st[24];

    for (i = 0; i < 24; i += 2) {
        c0 = a00 ^ a10 ^ a20 ^ a30 ^ a40;
        c1 = a01 ^ a11 ^ a21 ^ a31 ^ a41;
        c2 = a02 ^ a12 ^ a22 ^ a32 ^ a42;
        c3 = a03 ^ a13 ^ a23 ^ a33 ^ a43;
        c4 = a04 ^ a14 ^ a24 ^ a34 ^ a44;
        d0 = c4 ^ ROL64(c1, 1);
        d1 = c0 ^ ROL64(c2, 1);
        d2 = c1 ^ ROL64(c3, 1);
        d3 = c2 ^ ROL64(c4, 1);
        d4 = c3 ^ ROL64(c0, 1);
        b0 = a00 ^ d0;
        b1 = ROL64(a11 ^ d1, 44);
        b2 = ROL64(a22 ^ d2, 43);
        b3 = ROL64(a33 ^ d3, 21);
        b4 = ROL64(a44 ^ d4, 14);
        e00 = b0 ^ (~b1 & b2) ^ RC[i];
        e01 = b1 ^ (~b2 & b3);
        e02 = b2 ^ (~b3 & b4);
        e03 = b3 ^ (~b4 & b0);
        e04 = b4 ^ (~b0 & b1);
        b0 = ROL64(a03 ^ d3, 28);
        b1 = ROL64(a14 ^ d4, 20);
        b2 = ROL64(a20 ^ d0, 3);
        b3 = ROL64(a31 ^ d1, 45);
        b4 = ROL64(a42 ^ d2, 61);
        e10 = b0 ^ (~b1 & b2);
        e11 = b1 ^ (~b2 & b3);
        e12 = b2 ^ (~b3 & b4);
        e13 = b3 ^ (~b4 & b0);
        e14 = b4 ^ (~b0 & b1);
        b0 = ROL64(a01 ^ d1, 1);
        b1 = ROL64(a12 ^ d2, 6);
        b2 = ROL64(a23 ^ d3, 25);
        b3 = ROL64(a34 ^ d4, 8);
        b4 = ROL64(a40 ^ d0, 18);
        e20 = b0 ^ (~b1 & b2);
        e21 = b1 ^ (~b2 & b3);
        e22 = b2 ^ (~b3 & b4);
        e23 = b3 ^ (~b4 & b0);
        e24 = b4 ^ (~b0 & b1);
        b0 = ROL64(a04 ^ d4, 27);
        b1 = ROL64(a10 ^ d0, 36);
        b2 = ROL64(a21 ^ d1, 10);
        b3 = ROL64(a32 ^ d2, 15);
        b4 = ROL64(a43 ^ d3, 56);
        e30 = b0 ^ (~b1 & b2);
        e31 = b1 ^ (~b2 & b3);
        e32 = b2 ^ (~b3 & b4);
        e33 = b3 ^ (~b4 & b0);
        e34 = b4 ^ (~b0 & b1);
        b0 = ROL64(a02 ^ d2, 62);
        b1 = ROL64(a13 ^ d3, 55);
        b2 = ROL64(a24 ^ d4, 39);
        b3 = ROL64(a30 ^ d0, 41);
        b4 = ROL64(a41 ^ d1, 2);
        e40 = b0 ^ (~b1 & b2);
        e41 = b1 ^ (~b2 & b3);
        e42 = b2 ^ (~b3 & b4);
        e43 = b3 ^ (~b4 & b0);
        e44 = b4 ^ (~b0 & b1);
        /* second round: e -> a */
        c0 = e00 ^ e10 ^ e20 ^ e30 ^ e40;
        c1 = e01 ^ e11 ^ e21 ^ e31 ^ e41;
        c2 = e02 ^ e12 ^ e22 ^ e32 ^ e42;
        c3 = e03 ^ e13 ^ e23 ^ e33 ^ e43;
        c4 = e04 ^ e14 ^ e24 ^ e34 ^ e44;
        d0 = c4 ^ ROL64(c1, 1);
        d1 = c0 ^ ROL64(c2, 1);
        d2 = c1 ^ ROL64(c3, 1);
        d3 = c2 ^ ROL64(c4, 1);
        d4 = c3 ^ ROL64(c0, 1);
        b0 = e00 ^ d0;
        b1 = ROL64(e11 ^ d1, 44);
        b2 = ROL64(e22 ^ d2, 43);
        b3 = ROL64(e33 ^ d3, 21);
        b4 = ROL64(e44 ^ d4, 14);
        a00 = b0 ^ (~b1 & b2) ^ RC[i + 1];
        a01 = b1 ^ (~b2 & b3);
        a02 = b2 ^ (~b3 & b4);
        a03 = b3 ^ (~b4 & b0);
        a04 = b4 ^ (~b0 & b1);
        b0 = ROL64(e03 ^ d3, 28);
        b1 = ROL64(e14 ^ d4, 20);
        b2 = ROL64(e20 ^ d0, 3);
        b3 = ROL64(e31 ^ d1, 45);
        b4 = ROL64(e42 ^ d2, 61);
        a10 = b0 ^ (~b1 & b2);
        a11 = b1 ^ (~b2 & b3);
        a12 = b2 ^ (~b3 & b4);
        a13 = b3 ^ (~b4 & b0);
        a14 = b4 ^ (~b0 & b1);
        b0 = ROL64(e01 ^ d1, 1);
        b1 = ROL64(e12 ^ d2, 6);
        b2 = ROL64(e23 ^ d3, 25);
        b3 = ROL64(e34 ^ d4, 8);
        b4 = ROL64(e40 ^ d0, 18);
        a20 = b0 ^ (~b1 & b2);
        a21 = b1 ^ (~b2 & b3);
        a22 = b2 ^ (~b3 & b4);
        a23 = b3 ^ (~b4 & b0);
        a24 = b4 ^ (~b0 & b1);
        b0 = ROL64(e04 ^ d4, 27);
        b1 = ROL64(e10 ^ d0, 36);
        b2 = ROL64(e21 ^ d1, 10);
        b3 = ROL64(e32 ^ d2, 15);
        b4 = ROL64(e43 ^ d3, 56);
        a30 = b0 ^ (~b1 & b2);
        a31 = b1 ^ (~b2 & b3);
        a32 = b2 ^ (~b3 & b4);
        a33 = b3 ^ (~b4 & b0);
        a34 = b4 ^ (~b0 & b1);
        b0 = ROL64(e02 ^ d2, 62);
        b1 = ROL64(e13 ^ d3, 55);
        b2 = ROL64(e24 ^ d4, 39);
        b3 = ROL64(e30 ^ d0, 41);
        b4 = ROL64(e41 ^ d1, 2);
        a40 = b0 ^ (~b1 & b2);
        a41 = b1 ^ (~b2 & b3);
        a42 = b2 ^ (~b3 & b4);
        a43 = b3 ^ (~b4 & b0);
        a44 = b4 ^ (~b0 & b1);
    }

    st[0] = a00;
    st[1] = a01;
    st[2] = a02;
    st[3] = a03;
    st[4] = a04;
    st[5] = a10;
    st[6] = a11;
    st[7] = a12;
    st[8] = a13;
    st[9] = a14;
    st[10] = a20;
    st[11] = a21;
    st[12] = a22;
    st[13] = a23;
    st[14] = a24;
    st[15] = a30;
    st[16] = a31;
    st[17] = a32;
    st[18] = a33;
    st[19] = a34;
    st[20] = a40;
    st[21] = a41;
    st[22] = a42;
    st[23] = a43;
    st[24] = a44;
}

static inline uint64_t load64_le(const uint8_t *p)
{
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

void vm_shake128_init(vm_shake128 *s, const uint8_t *seed, size_t n)
{
    size_t i;

    memset(s->st, 0, sizeof s->st);
    /* full blocks */
    while (n >= VM_SHAKE128_RATE) {
        for (i = 0; i < VM_SHAKE128_RATE / 8; i++)
            s->st[i] ^= load64_le(seed + 8 * i);
        vm_keccakf1600(s->st);
        seed += VM_SHAKE128_RATE;
        n -= VM_SHAKE128_RATE;
    }
    /* last partial block (n < 168 bytes, possibly 0) plus padding */
    for (i = 0; i + 8 <= n; i += 8)
        s->st[i >> 3] ^= load64_le(seed + i);
    for (; i < n; i++)
        s->st[i >> 3] ^= (uint64_t)seed[i] << ((i & 7) * 8);
    s->st[n >> 3] ^= (uint64_t)0x1F << ((n & 7) * 8);
    s->st[(VM_SHAKE128_RATE - 1) >> 3] ^= (uint64_t)0x80 << (((VM_SHAKE128_RATE - 1) & 7) * 8);
    vm_keccakf1600(s->st);
    s->pos = 0;
}

void vm_shake128_squeeze(vm_shake128 *s, uint8_t *out, size_t n)
{
    while (n) {
        unsigned p = s->pos;
        size_t k;

        if (p >= VM_SHAKE128_RATE) {
            vm_keccakf1600(s->st);
            p = 0;
        }
        k = VM_SHAKE128_RATE - p;
        if (k > n)
            k = n;
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(out, (const unsigned char *)s->st + p, k);
#else
        {
            size_t j;
            for (j = 0; j < k; j++) {
                unsigned q = p + (unsigned)j;
                out[j] = (uint8_t)(s->st[q >> 3] >> ((q & 7u) * 8u));
            }
        }
#endif
        s->pos = p + (unsigned)k;
        out += k;
        n -= k;
    }
}

uint16_t vm_shake128_draw_slow(vm_shake128 *s)
{
    uint8_t b[2];

    vm_shake128_squeeze(s, b, 2);
    return (uint16_t)((b[0] << 8) | b[1]);
}

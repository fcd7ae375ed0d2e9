/*
 * vm_shake.h - SHAKE128 (FIPS 202) absorb-then-squeeze output stream.
 *
 * Plain C99, no external dependencies.  The output of
 *     vm_shake128_init(&s, seed, n);
 * followed by any sequence of vm_shake128_squeeze() / vm_shake128_draw()
 * calls is one continuous stream equal to hashlib.shake_128(seed).digest(N).
 */
#ifndef VM_SHAKE_H
#define VM_SHAKE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VM_SHAKE128_RATE 168u /* bytes per Keccak block for SHAKE128 */

typedef struct {
    uint64_t st[25]; /* Keccak-f[1600] state; lane i = x + 5*y, bytes little-endian in a lane */
    unsigned pos;    /* bytes of the current 168-byte block already squeezed (0..168) */
} vm_shake128;

/* The Keccak-f[1600] permutation (24 rounds), in place. */
void vm_keccakf1600(uint64_t st[25]);

/* Absorb seed (any length, may be NULL when n == 0), pad (0x1F ... 0x80), ready to squeeze. */
void vm_shake128_init(vm_shake128 *s, const uint8_t *seed, size_t n);

/* Write the next n bytes of the output stream to out. */
void vm_shake128_squeeze(vm_shake128 *s, uint8_t *out, size_t n);

/* Out-of-line part of vm_shake128_draw (block boundary); do not call directly. */
uint16_t vm_shake128_draw_slow(vm_shake128 *s);

/* Next 2 bytes of the same stream, big-endian: (b0 << 8) | b1. */
static inline uint16_t vm_shake128_draw(vm_shake128 *s)
{
    unsigned p = s->pos;
#if defined(__GNUC__)
    if (__builtin_expect(p <= VM_SHAKE128_RATE - 2u, 1))
#else
    if (p <= VM_SHAKE128_RATE - 2u)
#endif
    {
        s->pos = p + 2u;
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        {
            uint16_t v;
            memcpy(&v, (const unsigned char *)s->st + p, 2);
            return (uint16_t)((v << 8) | (v >> 8));
        }
#else
        {
            unsigned q = p + 1u;
            unsigned b0 = (unsigned)(s->st[p >> 3] >> ((p & 7u) * 8u)) & 0xffu;
            unsigned b1 = (unsigned)(s->st[q >> 3] >> ((q & 7u) * 8u)) & 0xffu;
            return (uint16_t)((b0 << 8) | b1);
        }
#endif
    }
    return vm_shake128_draw_slow(s);
}

#ifdef __cplusplus
}
#endif

#endif /* VM_SHAKE_H */

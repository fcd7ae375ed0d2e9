/*
 * vm_sha256.h - SHA-256 (FIPS 180-4) with a streaming context.
 *
 * Plain C99 + GCC builtins.  On x86/x86-64 the block function uses the
 * SHA-NI instructions when the CPU has them (detected at run time), with a
 * portable C fallback; both give identical results.
 */
#ifndef VM_SHA256_H
#define VM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VM_SHA256_BLOCK 64
#define VM_SHA256_DIGEST 32

typedef struct {
    uint32_t h[8];   /* chaining state */
    uint64_t nbytes; /* total bytes absorbed so far (including buf) */
    uint8_t buf[64]; /* pending partial block */
    uint32_t buflen; /* bytes used in buf (0..63) */
} vm_sha256;

void vm_sha256_init(vm_sha256 *c);
void vm_sha256_update(vm_sha256 *c, const uint8_t *p, size_t n);
/* Writes the digest of everything absorbed so far; does NOT modify c. */
void vm_sha256_final(const vm_sha256 *c, uint8_t out[32]);
/* Digest of (everything absorbed by c) || p[0..n), without modifying c
 * (saves a context copy when finishing with a short suffix, e.g. HMAC outer). */
void vm_sha256_final_with(const vm_sha256 *c, const uint8_t *p, size_t n, uint8_t out[32]);

/* One-shot convenience: out = SHA-256(p[0..n)). */
void vm_sha256_digest(const uint8_t *p, size_t n, uint8_t out[32]);

/* Low level: run the block function over nblocks consecutive 64-byte blocks. */
void vm_sha256_compress(uint32_t h[8], const uint8_t *blocks, size_t nblocks);

/* 1 if the SHA-NI path is available on this CPU (regardless of forcing), else 0. */
int vm_sha256_has_shani(void);
/* on != 0: always use the portable C block function (for testing); 0: auto. */
void vm_sha256_force_portable(int on);
/* 1 if vm_sha256_compress currently uses SHA-NI, else 0. */
int vm_sha256_using_shani(void);

#ifdef __cplusplus
}
#endif

#endif /* VM_SHA256_H */

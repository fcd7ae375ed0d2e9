/*
 * vm_kdf.h - the VMess AEAD KDF (nested HMAC-SHA-256).
 *
 *   H_0(m) = HMAC(hash = SHA-256, key = "VMess AEAD KDF", msg = m)
 *   H_i(m) = HMAC(hash = H_{i-1}, key = path_i, msg = m)     i = 1..n
 *   KDF(key, path_1..path_n) = H_n(key)                        (32 bytes)
 *
 * Every H_i has block size 64 and output size 32.  A vm_kdf object is a
 * streaming instance of some H_d, stored as a complete binary tree of SHA-256
 * midstates: a level-d object uses s[0 .. 2<<d); the first half is the inner
 * H_{d-1} instance (already fed path_d' xor ipad), the second half the outer
 * one (fed path_d' xor opad).  For d = 0 s[0] / s[1] are the inner / outer
 * SHA-256 contexts of HMAC-SHA256 keyed "VMess AEAD KDF".  Message data only
 * ever enters s[0].  A fresh object built for a fixed path prefix can thus be
 * cached and cloned with vm_kdf_copy (which copies only the used contexts).
 */
#ifndef VM_KDF_H
#define VM_KDF_H

#include <stddef.h>
#include <stdint.h>

#include "vm_sha256.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VM_KDF_MAX_DEPTH 5

typedef struct {
    int depth;                             /* d: the object computes H_d */
    vm_sha256 s[2 << VM_KDF_MAX_DEPTH];    /* only the first 2<<depth are used */
} vm_kdf;

/* Level 0: HMAC-SHA256 keyed "VMess AEAD KDF", nothing absorbed yet. */
void vm_kdf_root(vm_kdf *o);

/* child = HMAC(hash = parent, key = key[0..n)), i.e. level parent->depth + 1.
 * parent must be fresh (no data absorbed with vm_kdf_update).  child may be
 * the same object as parent (in-place), otherwise they must not overlap.
 * Returns 0, or -1 (child untouched) if the depth would exceed VM_KDF_MAX_DEPTH. */
int vm_kdf_derive(vm_kdf *child, const vm_kdf *parent, const uint8_t *key, size_t n);

/* Absorb message bytes (only the innermost-left SHA-256 context changes). */
void vm_kdf_update(vm_kdf *o, const uint8_t *p, size_t n);

/* 32-byte output of the hash over everything absorbed so far; o is not modified. */
void vm_kdf_final(const vm_kdf *o, uint8_t out[32]);

/* dst = src, copying only the 2<<depth used contexts. */
void vm_kdf_copy(vm_kdf *dst, const vm_kdf *src);

/* Convenience: out = KDF(key, path[0], ..., path[n-1]).
 * Returns 0, or -1 if n > VM_KDF_MAX_DEPTH. */
int vm_kdf_compute(const uint8_t *key, size_t keylen, const uint8_t *const *path,
                   const size_t *pathlen, size_t n, uint8_t out[32]);

#ifdef __cplusplus
}
#endif

#endif /* VM_KDF_H */

/*
 * vm_kdf.c - the VMess AEAD nested-HMAC KDF over a tree of SHA-256 midstates.
 */
#include "vm_kdf.h"

#include <string.h>

static const uint8_t ROOT_KEY[] = "VMess AEAD KDF";

/*
 * Output of the level-d tree t, where the leftmost (innermost-left) context is
 * taken to be *first followed by the sfx_len bytes at sfx (sfx may be NULL if
 * sfx_len == 0) instead of t[0].  HMAC(H, k, m) = H_outer(H_inner(m)): the
 * inner digest becomes the suffix of the outer subtree's leftmost context, so
 * no SHA-256 context is ever copied here; the tree is only read.
 */
static void tree_final(const vm_sha256 *t, const vm_sha256 *first, const uint8_t *sfx,
                       size_t sfx_len, int d, uint8_t out[32])
{
    uint8_t inner[32];

    if (d == 0) {
        vm_sha256_final_with(first, sfx, sfx_len, inner);
        vm_sha256_final_with(&t[1], inner, sizeof inner, out);
        return;
    }
    /* a level d-1 subtree has 2 << (d-1) == 1 << d contexts */
    tree_final(t, first, sfx, sfx_len, d - 1, inner);
    tree_final(t + ((size_t)1 << d), &t[(size_t)1 << d], inner, sizeof inner, d - 1, out);
}

static void xor_pad(uint8_t pad[64], const uint8_t k[64], uint8_t v)
{
    int i;
    for (i = 0; i < 64; i++)
        pad[i] = (uint8_t)(k[i] ^ v);
}

void vm_kdf_root(vm_kdf *o)
{
    uint8_t k[64], pad[64];

    memset(k, 0, sizeof k);
    memcpy(k, ROOT_KEY, sizeof ROOT_KEY - 1);
    vm_sha256_init(&o->s[0]);
    xor_pad(pad, k, 0x36);
    vm_sha256_update(&o->s[0], pad, 64);
    vm_sha256_init(&o->s[1]);
    xor_pad(pad, k, 0x5c);
    vm_sha256_update(&o->s[1], pad, 64);
    o->depth = 0;
}

int vm_kdf_derive(vm_kdf *child, const vm_kdf *parent, const uint8_t *key, size_t n)
{
    int d = parent->depth;
    size_t half = (size_t)2 << d; /* contexts used by parent */
    uint8_t k[64], pad[64];

    if (d < 0 || d >= VM_KDF_MAX_DEPTH)
        return -1;

    memset(k, 0, sizeof k);
    if (n > 64) {
        /* k' = parent-hash(key) */
        tree_final(parent->s, &parent->s[0], key, n, d, k);
    } else if (n) {
        memcpy(k, key, n);
    }

    /* outer half first: it does not overlap parent->s even when child == parent */
    memcpy(child->s + half, parent->s, half * sizeof(vm_sha256));
    if (child != parent)
        memcpy(child->s, parent->s, half * sizeof(vm_sha256));
    xor_pad(pad, k, 0x5c);
    vm_sha256_update(&child->s[half], pad, 64);
    xor_pad(pad, k, 0x36);
    vm_sha256_update(&child->s[0], pad, 64);
    child->depth = d + 1;
    return 0;
}

void vm_kdf_update(vm_kdf *o, const uint8_t *p, size_t n)
{
    vm_sha256_update(&o->s[0], p, n);
}

void vm_kdf_final(const vm_kdf *o, uint8_t out[32])
{
    tree_final(o->s, &o->s[0], NULL, 0, o->depth, out);
}

void vm_kdf_copy(vm_kdf *dst, const vm_kdf *src)
{
    if (dst == src)
        return;
    dst->depth = src->depth;
    memcpy(dst->s, src->s, ((size_t)2 << src->depth) * sizeof(vm_sha256));
}

int vm_kdf_compute(const uint8_t *key, size_t keylen, const uint8_t *const *path,
                   const size_t *pathlen, size_t n, uint8_t out[32])
{
    vm_kdf o;
    size_t i;

    if (n > VM_KDF_MAX_DEPTH)
        return -1;
    vm_kdf_root(&o);
    for (i = 0; i < n; i++)
        vm_kdf_derive(&o, &o, path[i], pathlen[i]);
    vm_kdf_update(&o, key, keylen);
    vm_kdf_final(&o, out);
    return 0;
}

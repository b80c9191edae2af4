/*
 * The portable kernel: S-box and multiplier as 256-entry tables, any C99 compiler (MSVC
 * included). Its lookups are indexed by key- and data-dependent bytes, so it is NOT
 * constant time (a cache-timing side channel on shared hardware); it runs where no vector
 * kernel fits the CPU.
 */
#include "sf_core.h"

/* The XORs run in loops the compiler vectorises, the lookups in plain byte loops. GCC
 * would "vectorise" those with emulated gathers, slower than scalar code (measured:
 * decryption 2x slower), so it is told not to. */
#define CHUNK 256
#if defined(__GNUC__) && !defined(__clang__)
#define SF_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define SF_NO_VECTORIZE
#endif

/* out[t] = tab1[a[t]] + tab2[b[t]] (mod 256) for t < n. */
SF_NO_VECTORIZE
static void lookup_add(uint8_t *out, const uint8_t *tab1, const uint8_t *a, const uint8_t *tab2, const uint8_t *b,
                       ptrdiff_t n)
{
    for (ptrdiff_t t = 0; t < n; t++)
        out[t] = (uint8_t)(tab1[a[t]] + tab2[b[t]]);
}

/* out[t] = tab1[a[t] - tab2[b[t]]] (mod 256) for t < n. */
SF_NO_VECTORIZE
static void lookup_sub(uint8_t *out, const uint8_t *tab1, const uint8_t *a, const uint8_t *tab2, const uint8_t *b,
                       ptrdiff_t n)
{
    for (ptrdiff_t t = 0; t < n; t++)
        out[t] = tab1[(uint8_t)(a[t] - tab2[b[t]])];
}

/* out[j] = S[~(in[j] ⊕ K[j] ⊕ W ⊕ prev[j])] + g·cross[(j + d) mod L]. */
static void enc_row(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                    const uint8_t *lane_key, uint8_t rk, ptrdiff_t L, ptrdiff_t d, ptrdiff_t width, const sf_consts *c)
{
    uint8_t v[CHUNK];
    for (ptrdiff_t j0 = 0; j0 < width; j0 += CHUNK) {
        ptrdiff_t n = width - j0 < CHUNK ? width - j0 : CHUNK;
        for (ptrdiff_t t = 0; t < n; t++)
            v[t] = (uint8_t)(in[j0 + t] ^ lane_key[j0 + t] ^ prev[j0 + t] ^ rk);
        /* lanes j < L - d take cross[j + d], the others cross[j + d - L] */
        ptrdiff_t split = L - d - j0;
        split = split < 0 ? 0 : (split > n ? n : split);
        if (split > 0)
            lookup_add(out + j0, c->tab, v, c->mul, cross + j0 + d, split);
        if (split < n)
            lookup_add(out + j0 + split, c->tab, v + split, c->mul, cross + j0 + split + d - L, n - split);
    }
}

/* Inverse: out[j] = ~(S^-1[in[j] - g·cross[(j + d) mod L]] ⊕ prev[j]) ⊕ K[j] ⊕ W. */
static void dec_row(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                    const uint8_t *lane_key, uint8_t rk, ptrdiff_t L, ptrdiff_t d, ptrdiff_t width, const sf_consts *c)
{
    uint8_t w = (uint8_t)(rk ^ 0xFFu); /* the XNOR's complement folded into the row key */
    uint8_t v[CHUNK];
    for (ptrdiff_t j0 = 0; j0 < width; j0 += CHUNK) {
        ptrdiff_t n = width - j0 < CHUNK ? width - j0 : CHUNK;
        ptrdiff_t split = L - d - j0;
        split = split < 0 ? 0 : (split > n ? n : split);
        if (split > 0)
            lookup_sub(v, c->tab, in + j0, c->mul, cross + j0 + d, split);
        if (split < n)
            lookup_sub(v + split, c->tab, in + j0 + split, c->mul, cross + j0 + split + d - L, n - split);
        for (ptrdiff_t t = 0; t < n; t++)
            out[j0 + t] = (uint8_t)(v[t] ^ prev[j0 + t] ^ lane_key[j0 + t] ^ w);
    }
}

static int always(void)
{
    return 1;
}

const sf_kernel sf_kernel_table = {"table", SF_NEEDS_TABLES, 0, always, enc_row, dec_row};

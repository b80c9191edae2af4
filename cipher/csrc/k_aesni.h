/*
 * The AES-NI round, shared by k_aesni_sse.c, k_aesni_avx2.c and k_vaes_avx2.c, which
 * define SF_KERNEL_TARGET, SF_V, sf_vec and the operations below for their register width:
 *   ld/st, vxor, vand, vadd, vsub, vsrl4 (16-bit lanes shifted right by 4),
 *   vshuf(table, idx) (PSHUFB within 128-bit lanes), vbcast16(p) (16 bytes to every lane),
 *   vsub_bytes(y): AESENCLAST(y, 0) per 128-bit lane, i.e. ShiftRows(SubBytes(y)).
 *
 * S(~z) = Fout(SubBytes(Fin(z))) with both affine maps as nibble lookups (sf_core.c,
 * pass_consts). AESENCLAST permutes the bytes of each 128-bit lane by ShiftRows; one
 * PSHUFB with InvShiftRows before it cancels that, and with the round key zero nothing
 * else is added. Constant time: PSHUFB, AESENCLAST and the arithmetic take the same time
 * whatever the bytes; no memory is indexed by data.
 */

typedef struct {
    sf_vec in_lo, in_hi, out_lo, out_hi, mul_lo, mul_hi, mask, isr;
} kc;

/* byte q of a lane takes byte ISR[q]: cancels the ShiftRows that AESENCLAST applies */
static const uint8_t inv_shift_rows[16] = {0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3};
static const uint8_t low_nibbles[16] = {15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};

/* lo[x & 15] ⊕ hi[x >> 4] for every byte: an affine map of bytes over GF(2) */
SF_KERNEL_TARGET static inline sf_vec affine(sf_vec x, sf_vec lo, sf_vec hi, sf_vec mask)
{
    return vxor(vshuf(lo, vand(x, mask)), vshuf(hi, vand(vsrl4(x), mask)));
}

/* The row whitening W = rk is folded into the nibble tables, once per row, so a vector
 * of the round costs one XOR less: encrypting, Fin(z ⊕ W) = Fin(z) ⊕ A·W, added to
 * in_lo (A·W = Fin(W) ⊕ Fin(0), Fin(0) = in_lo[0], computed with the same lookups: no
 * memory access indexed by rk); decrypting, the output's ⊕ W goes into out_lo. */
SF_KERNEL_TARGET static inline void kc_init(kc *k, const sf_consts *c, uint8_t rk, int decrypt)
{
    uint8_t w[16];
    memset(w, rk, sizeof w);
    sf_vec wv = vbcast16(w), zero = vxor(wv, wv);
    k->in_lo = vbcast16(c->in_lo);
    k->in_hi = vbcast16(c->in_hi);
    k->out_lo = vbcast16(c->out_lo);
    k->out_hi = vbcast16(c->out_hi);
    k->mul_lo = vbcast16(c->mul_lo);
    k->mul_hi = vbcast16(c->mul_hi);
    k->mask = vbcast16(low_nibbles);
    k->isr = vbcast16(inv_shift_rows);
    if (decrypt) {
        k->out_lo = vxor(k->out_lo, wv);
    } else {
        sf_vec aw = vxor(affine(wv, k->in_lo, k->in_hi, k->mask), vshuf(k->in_lo, zero));
        k->in_lo = vxor(k->in_lo, aw);
    }
}

SF_KERNEL_TARGET static inline sf_vec enc_block(const kc *k, sf_vec x, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec z = vxor(vxor(x, prev), key);
    sf_vec y = affine(z, k->in_lo, k->in_hi, k->mask);
    sf_vec s = affine(vsub_bytes(vshuf(y, k->isr)), k->out_lo, k->out_hi, k->mask);
    return vadd(s, affine(cross, k->mul_lo, k->mul_hi, k->mask));
}

SF_KERNEL_TARGET static inline sf_vec dec_block(const kc *k, sf_vec c, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec y = vsub(c, affine(cross, k->mul_lo, k->mul_hi, k->mask));
    sf_vec u = affine(y, k->in_lo, k->in_hi, k->mask);
    sf_vec s = affine(vsub_bytes(vshuf(u, k->isr)), k->out_lo, k->out_hi, k->mask);
    return vxor(vxor(s, prev), key);
}

#include "rowloop.h"

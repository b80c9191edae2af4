/*
 * The GFNI round, shared by k_gfni_avx2.c and k_gfni_avx512.c, which define
 * SF_KERNEL_TARGET, SF_V, sf_vec and ld/st, vxor, vadd, vsub, vset1_8(byte), vset1_64(q),
 * vaff(x, q) (GF2P8AFFINEQB with constant 0) and vaffinv(x, q) (GF2P8AFFINEINVQB, 0).
 *
 * S(v) = A2·inv(A1·v ⊕ c1) ⊕ c2 is one affine and one affine-inverse instruction (their
 * field is the AES field), with the XNOR's ~ folded into the first constant; g·x is one
 * more affine. Constant time, like the AES-NI kernels.
 */

typedef struct {
    sf_vec q1, q2, qg, b1, b2, w, b1w;
} kc;

SF_KERNEL_TARGET static inline void kc_init(kc *k, const sf_consts *c, uint8_t rk, int decrypt)
{
    (void)decrypt;
    k->q1 = vset1_64(c->q1);
    k->q2 = vset1_64(c->q2);
    k->qg = vset1_64(c->qg);
    k->b1 = vset1_8(c->b1);
    k->b2 = vset1_8(c->b2);
    k->w = vset1_8(rk);
    k->b1w = vset1_8((uint8_t)(c->b1 ^ rk ^ 0xFFu)); /* decryption: ~ and W after S^-1 */
}

SF_KERNEL_TARGET static inline sf_vec enc_block(const kc *k, sf_vec x, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec v = vxor(vxor(x, prev), vxor(key, k->w));
    sf_vec y = vxor(vaff(v, k->q1), k->b1);
    sf_vec s = vxor(vaffinv(y, k->q2), k->b2);
    return vadd(s, vaff(cross, k->qg));
}

/* S^-1(y) = A1^-1·inv(A2^-1·y ⊕ b2) ⊕ b1 with b2 = A2^-1·c2, b1 = A1^-1·c1. */
SF_KERNEL_TARGET static inline sf_vec dec_block(const kc *k, sf_vec c, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec y = vsub(c, vaff(cross, k->qg));
    sf_vec t = vxor(vaff(y, k->q2), k->b2);
    sf_vec u = vxor(vaffinv(t, k->q1), k->b1w);
    return vxor(u, vxor(prev, key));
}

#include "rowloop.h"

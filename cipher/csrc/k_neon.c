/*
 * The ARMv8 kernel: NEON + the AES extension (Cortex-A53 and later with crypto, Apple M,
 * Neoverse). AESE(y, 0) = ShiftRows(SubBytes(y)); one TBL with InvShiftRows after it
 * cancels the permutation; the affine maps are TBL nibble lookups, as on x86 (k_aesni.h
 * explains the algebra). Constant time.
 */
#include "sf_core.h"

#if SF_ARM
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_AES
#define HWCAP_AES (1 << 3)
#endif
#endif

#if defined(__clang__)
#define SF_KERNEL_TARGET __attribute__((target("aes")))
#else
#define SF_KERNEL_TARGET __attribute__((target("+crypto"))) /* GCC 12 spells AES "+crypto" */
#endif
#define SF_V 16
typedef uint8x16_t sf_vec;

typedef struct {
    sf_vec in_lo, in_hi, out_lo, out_hi, mul_lo, mul_hi, mask, isr, w;
} kc;

static const uint8_t inv_shift_rows[16] = {0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3};

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return vld1q_u8(p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { vst1q_u8(p, v); }

SF_KERNEL_TARGET static inline void kc_init(kc *k, const sf_consts *c, uint8_t rk, int decrypt)
{
    (void)decrypt;
    k->in_lo = vld1q_u8(c->in_lo);
    k->in_hi = vld1q_u8(c->in_hi);
    k->out_lo = vld1q_u8(c->out_lo);
    k->out_hi = vld1q_u8(c->out_hi);
    k->mul_lo = vld1q_u8(c->mul_lo);
    k->mul_hi = vld1q_u8(c->mul_hi);
    k->mask = vdupq_n_u8(15);
    k->isr = vld1q_u8(inv_shift_rows);
    k->w = vdupq_n_u8(rk);
}

SF_KERNEL_TARGET static inline sf_vec affine(sf_vec x, sf_vec lo, sf_vec hi, sf_vec mask)
{
    return veorq_u8(vqtbl1q_u8(lo, vandq_u8(x, mask)), vqtbl1q_u8(hi, vshrq_n_u8(x, 4)));
}

SF_KERNEL_TARGET static inline sf_vec sub_bytes(const kc *k, sf_vec y)
{
    return vqtbl1q_u8(vaeseq_u8(y, vdupq_n_u8(0)), k->isr);
}

SF_KERNEL_TARGET static inline sf_vec enc_block(const kc *k, sf_vec x, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec z = veorq_u8(veorq_u8(x, prev), veorq_u8(key, k->w));
    sf_vec s = affine(sub_bytes(k, affine(z, k->in_lo, k->in_hi, k->mask)), k->out_lo, k->out_hi, k->mask);
    return vaddq_u8(s, affine(cross, k->mul_lo, k->mul_hi, k->mask));
}

SF_KERNEL_TARGET static inline sf_vec dec_block(const kc *k, sf_vec c, sf_vec prev, sf_vec key, sf_vec cross)
{
    sf_vec y = vsubq_u8(c, affine(cross, k->mul_lo, k->mul_hi, k->mask));
    sf_vec s = affine(sub_bytes(k, affine(y, k->in_lo, k->in_hi, k->mask)), k->out_lo, k->out_hi, k->mask);
    return veorq_u8(veorq_u8(s, prev), veorq_u8(key, k->w));
}

#include "rowloop.h"

static int cpu_ok(void)
{
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_AES) != 0;
#elif defined(__APPLE__)
    return 1; /* every Apple ARM CPU has the AES extension */
#else
    return 0;
#endif
}

const sf_kernel sf_kernel_neon_aes = {"neon-aes", SF_NEEDS_NIBBLES, 1, cpu_ok, enc_row, dec_row};
#endif

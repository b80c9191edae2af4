/*
 * GF(2^8), GF(2) matrices, the S-box, the per-pass constants of every kernel, the three
 * passes of the chaos cipher and their inverses (cipher/SPEC.md §1.4–1.7), and the kernel
 * list; same bits as cipher/_reference.py. The logistic maps are in sf_maps.c.
 */
#include "sf_core.h"

/* ------------------------------------------------------------------ GF(2^8), GF(2) matrices */

static uint8_t gf_inv[256]; /* inverse in GF(2^8) mod x^8+x^4+x^3+x+1, inv(0) = 0 */

void sf_init(void)
{
    uint8_t exp[255];
    int log[256];
    unsigned x = 1;
    for (int i = 0; i < 255; i++) { /* powers of the generator 0x03 */
        exp[i] = (uint8_t)x;
        log[x] = i;
        x ^= (x << 1) ^ ((x & 0x80) ? 0x11B : 0);
        x &= 0xFF;
    }
    gf_inv[0] = 0;
    for (int v = 1; v < 256; v++)
        gf_inv[v] = exp[(255 - log[v]) % 255];
}

/* a·b without branches or lookups (the multipliers are key-derived). */
uint8_t sf_gf_mul(uint8_t a, uint8_t b)
{
    unsigned p = 0, x = a;
    for (int i = 0; i < 8; i++) {
        p ^= x & (0u - ((b >> i) & 1u));
        x = ((x << 1) ^ (0x1Bu & (0u - (x >> 7)))) & 0xFFu;
    }
    return (uint8_t)p;
}

static unsigned parity8(unsigned v)
{
    v ^= v >> 4;
    v ^= v >> 2;
    v ^= v >> 1;
    return v & 1;
}

/* A·x for the matrix given by its 8 row bytes: bit i of the result is parity(A[i] & x). */
static uint8_t mat_apply(const uint8_t a[8], unsigned x)
{
    unsigned out = 0;
    for (int i = 0; i < 8; i++)
        out |= parity8(a[i] & x) << i;
    return (uint8_t)out;
}

/* Row bytes of the matrix whose columns are col[0..7] (column b = image of bit b). */
static void mat_from_columns(const uint8_t col[8], uint8_t rows[8])
{
    for (int i = 0; i < 8; i++) {
        unsigned r = 0;
        for (int b = 0; b < 8; b++)
            r |= ((col[b] >> i) & 1u) << b;
        rows[i] = (uint8_t)r;
    }
}

/* out = a·b (apply b first). */
static void mat_mul(const uint8_t a[8], const uint8_t b[8], uint8_t out[8])
{
    uint8_t col[8];
    for (int t = 0; t < 8; t++)
        col[t] = mat_apply(a, mat_apply(b, 1u << t));
    mat_from_columns(col, out);
}

/* Inverse of an invertible matrix by Gauss–Jordan elimination on [A | I], with masks in
 * place of branches (the matrices are key-derived). */
static void mat_inverse(const uint8_t a[8], uint8_t out[8])
{
    unsigned w[8];
    for (int i = 0; i < 8; i++)
        w[i] = a[i] | (1u << (8 + i));
    for (int c = 0; c < 8; c++) {
        for (int r = c + 1; r < 8; r++) { /* make bit c of row c one */
            unsigned need = ((~w[c] >> c) & (w[r] >> c) & 1u);
            w[c] ^= w[r] & (0u - need);
        }
        for (int r = 0; r < 8; r++) {
            unsigned hit = (r != c) & (w[r] >> c) & 1u;
            w[r] ^= w[c] & (0u - hit);
        }
    }
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(w[i] >> 8);
}

/* The matrix of multiplication by g in GF(2^8) (linear over GF(2)). */
static void mul_matrix(uint8_t g, uint8_t rows[8])
{
    uint8_t col[8];
    for (int b = 0; b < 8; b++)
        col[b] = sf_gf_mul(g, (uint8_t)(1u << b));
    mat_from_columns(col, rows);
}

/* SPEC §1.4: A = Lo·Up from 8 + 8 samples; row i of the product is the XOR of the rows
 * Up[t] for every bit t set in Lo[i]. */
static void lu_matrix(const uint8_t *lower, const uint8_t *upper, uint8_t out[8])
{
    uint8_t lo[8], up[8];
    for (int i = 0; i < 8; i++) {
        lo[i] = (uint8_t)((lower[i] & ((1u << i) - 1)) | (1u << i));
        up[i] = (uint8_t)((upper[i] & ~((1u << (i + 1)) - 1) & 0xFFu) | (1u << i));
    }
    for (int i = 0; i < 8; i++) {
        unsigned acc = 0;
        for (int t = 0; t < 8; t++)
            acc ^= up[t] & (0u - ((lo[i] >> t) & 1u));
        out[i] = (uint8_t)acc;
    }
}

void sf_sbox_from_samples(const uint8_t *s, sf_sbox *d)
{
    lu_matrix(s + 0, s + 8, d->a1);
    d->c1 = s[16];
    lu_matrix(s + 17, s + 25, d->a2);
    d->c2 = s[33];
}

uint8_t sf_sbox_eval(const sf_sbox *d, unsigned x)
{
    return (uint8_t)(mat_apply(d->a2, gf_inv[mat_apply(d->a1, x) ^ d->c1]) ^ d->c2);
}

/* x86 GF2P8AFFINEQB matrix operand: row i (output bit i) in byte 7 - i of the qword. */
static uint64_t mat_qword(const uint8_t a[8])
{
    uint64_t q = 0;
    for (int i = 0; i < 8; i++)
        q |= (uint64_t)a[i] << (8 * (7 - i));
    return q;
}

/* ------------------------------------------------------------------ per-pass constants */

/* The linear part of the inverse of the AES affine map: SubBytes(y) = M·inv(y) ⊕ 0x63,
 * so inv(y) = M^-1·SubBytes(y) ⊕ M^-1·0x63 with M^-1·s = rotl(s,1) ⊕ rotl(s,3) ⊕ rotl(s,6). */
static void aes_inverse_affine(uint8_t rows[8])
{
    uint8_t col[8];
    for (int b = 0; b < 8; b++) {
        unsigned s = 1u << b;
        unsigned v = ((s << 1) | (s >> 7)) ^ ((s << 3) | (s >> 5)) ^ ((s << 6) | (s >> 2));
        col[b] = (uint8_t)v;
    }
    mat_from_columns(col, rows);
}

/* f(x) = A·x ⊕ c as two 16-entry lookups: lo[i] = A·i ⊕ c, hi[i] = A·(i << 4). */
static void nibbles(const uint8_t a[8], uint8_t c, uint8_t lo[16], uint8_t hi[16])
{
    for (unsigned i = 0; i < 16; i++) {
        lo[i] = (uint8_t)(mat_apply(a, i) ^ c);
        hi[i] = mat_apply(a, i << 4);
    }
}

/* The constants of a pass that depend on the S-box, for a kernel that reads `needs`. The round is written as
 *   encrypt: c = Fout(SB(Fin(z))) + g·cross,   z = x ⊕ K ⊕ W ⊕ prev
 *   decrypt: x = Fout(SB(Fin(c − g·cross))) ⊕ prev ⊕ K ⊕ W
 * where SB is AES SubBytes, so that S(~z) = A2·inv(A1·~z ⊕ c1) ⊕ c2 gives
 *   encrypt: Fin = A1·z ⊕ (A1·0xFF ⊕ c1), Fout = A2·M^-1·s ⊕ (A2·M^-1·0x63 ⊕ c2)
 * and S^-1(y) = A1^-1·(inv(A2^-1·y ⊕ A2^-1·c2) ⊕ c1), with the XNOR's ~ folded in, gives
 *   decrypt: Fin = A2^-1·y ⊕ A2^-1·c2, Fout = A1^-1·M^-1·s ⊕ (A1^-1·(M^-1·0x63 ⊕ c1) ⊕ 0xFF).
 * The GFNI kernels use A1, A2 (encrypt) or their inverses (decrypt) directly: the affine-
 * inverse instruction computes A·inv(x) itself. */
static void sbox_consts(sf_consts *c, const sf_sbox *sd, int decrypt, int needs)
{
    memset(c, 0, sizeof *c);
    if (needs & SF_NEEDS_TABLES) {
        for (unsigned v = 0; v < 256; v++) {
            if (decrypt)
                c->tab[sf_sbox_eval(sd, v)] = (uint8_t)v;
            else
                c->tab[v] = sf_sbox_eval(sd, v ^ 0xFFu);
        }
    }
    if (needs & (SF_NEEDS_NIBBLES | SF_NEEDS_QWORDS)) {
        uint8_t minv[8], a1i[8], a2i[8], pout[8];
        aes_inverse_affine(minv);
        mat_inverse(sd->a1, a1i); /* Lo·Up with unit diagonals: always invertible */
        mat_inverse(sd->a2, a2i);
        uint8_t m63 = mat_apply(minv, 0x63);
        if (needs & SF_NEEDS_NIBBLES) {
            if (decrypt) {
                nibbles(a2i, mat_apply(a2i, sd->c2), c->in_lo, c->in_hi);
                mat_mul(a1i, minv, pout);
                nibbles(pout, (uint8_t)(mat_apply(a1i, m63 ^ sd->c1) ^ 0xFFu), c->out_lo, c->out_hi);
            } else {
                nibbles(sd->a1, (uint8_t)(mat_apply(sd->a1, 0xFF) ^ sd->c1), c->in_lo, c->in_hi);
                mat_mul(sd->a2, minv, pout);
                nibbles(pout, (uint8_t)(mat_apply(pout, 0x63) ^ sd->c2), c->out_lo, c->out_hi);
            }
        }
        if (needs & SF_NEEDS_QWORDS) {
            if (decrypt) { /* S^-1(y) = A1^-1·inv(A2^-1·y ⊕ b2) ⊕ b1 */
                c->q1 = mat_qword(a1i);
                c->q2 = mat_qword(a2i);
                c->b1 = mat_apply(a1i, sd->c1);
                c->b2 = mat_apply(a2i, sd->c2);
            } else { /* S(~v) = A2·inv(A1·v ⊕ b1) ⊕ b2 */
                c->q1 = mat_qword(sd->a1);
                c->q2 = mat_qword(sd->a2);
                c->b1 = (uint8_t)(mat_apply(sd->a1, 0xFF) ^ sd->c1);
                c->b2 = sd->c2;
            }
        }
    }
}

/* The multiplication by g of one pass (the forward and backward passes share the rest). */
static void multiplier_consts(sf_consts *c, uint8_t g, int needs)
{
    uint8_t mg[8];
    mul_matrix(g, mg);
    nibbles(mg, 0, c->mul_lo, c->mul_hi);
    if (needs & SF_NEEDS_TABLES) /* g·v is linear: the two nibbles' images XORed */
        for (unsigned v = 0; v < 256; v++)
            c->mul[v] = (uint8_t)(c->mul_lo[v & 15] ^ c->mul_hi[v >> 4]);
    if (needs & SF_NEEDS_QWORDS)
        c->qg = mat_qword(mg);
}

/* The constants of the forward (cf) and backward (cb) passes. */
static void pass_consts(sf_consts *cf, sf_consts *cb, const sf_sbox *sd, uint8_t g_f, uint8_t g_b, int decrypt,
                        int needs)
{
    sbox_consts(cf, sd, decrypt, needs);
    *cb = *cf;
    multiplier_consts(cf, g_f, needs);
    multiplier_consts(cb, g_b, needs);
}

/* ------------------------------------------------------------------ the passes */

static ptrdiff_t shift_of(const sf_job *jb, ptrdiff_t i)
{
    return jb->k > 0 ? (ptrdiff_t)1 << (i % jb->k) : 0;
}

/* Row i as it was before the current pass: from the caller's input or the matrix. */
static const uint8_t *unread_row(const sf_job *jb, ptrdiff_t i)
{
    return i < jb->src_rows ? jb->src + i * jb->L : jb->m + i * jb->L;
}

/* Copy rows [from, R) of the input into the matrix, padding lanes of the last row zero. */
static void copy_rows(const sf_job *jb, ptrdiff_t from)
{
    ptrdiff_t L = jb->L, n = (jb->R - 1) * L + jb->last;
    memmove(jb->m + from * L, jb->src + from * L, (size_t)(n - from * L)); /* src may be m */
    memset(jb->m + n, 0, (size_t)(L - jb->last));
}

/* One encryption pass: rows first, first+step, ... up to (not including) stop. The
 * predecessor of the first row is the matrix row before it when chain_from_matrix (tail
 * pass), else iv. One lane (L = 1): the multiplier takes the row two steps back in
 * processing order, iv standing in for rows before the first. In a backward pass only
 * the `last` lanes of row R-1 are written. */
static void enc_pass(const sf_job *jb, ptrdiff_t first, ptrdiff_t stop, ptrdiff_t step, const uint8_t *iv,
                     const uint8_t *lane_key, const uint8_t *row_key, int chain_from_matrix, sf_row_fn fn,
                     const sf_consts *c)
{
    uint8_t *m = jb->m;
    ptrdiff_t L = jb->L, R = jb->R;
    for (ptrdiff_t i = first; step > 0 ? i < stop : i > stop; i += step) {
        const uint8_t *prev = (chain_from_matrix || i != first) ? m + (i - step) * L : iv;
        const uint8_t *cross = prev;
        if (L == 1) {
            ptrdiff_t i2 = i - 2 * step;
            if (chain_from_matrix)
                cross = i2 >= 0 ? m + i2 : iv;
            else
                cross = (i2 - first) * step >= 0 ? m + i2 : iv;
        }
        ptrdiff_t width = (i == R - 1 && step < 0) ? jb->last : L;
        fn(m + i * L, unread_row(jb, i), prev, cross, lane_key, row_key[i], L, shift_of(jb, i), width, c);
    }
}

/* Inverse of one pass: rows visited so that each predecessor (row i + chain) is still
 * ciphertext; row iv_row takes iv as predecessor. */
static void dec_pass(const sf_job *jb, ptrdiff_t first, ptrdiff_t stop, ptrdiff_t step, ptrdiff_t chain,
                     const uint8_t *iv, const uint8_t *lane_key, const uint8_t *row_key, ptrdiff_t iv_row,
                     sf_row_fn fn, const sf_consts *c)
{
    ptrdiff_t L = jb->L, R = jb->R;
    for (ptrdiff_t i = first; step > 0 ? i < stop : i > stop; i += step) {
        const uint8_t *prev = i == iv_row ? iv : unread_row(jb, i + chain);
        const uint8_t *cross = prev;
        if (L == 1) {
            ptrdiff_t i2 = i + 2 * chain;
            cross = (i2 >= 0 && i2 < R) ? unread_row(jb, i2) : iv;
        }
        fn(jb->m + i * L, unread_row(jb, i), prev, cross, lane_key, row_key[i], L, shift_of(jb, i), L, c);
    }
}

static void reset_padding(const sf_job *jb)
{
    ptrdiff_t R = jb->R, L = jb->L, last = jb->last;
    memcpy(jb->m + (R - 1) * L + last, jb->iv_b + last, (size_t)(L - last));
}

void sf_encrypt(sf_job *jb, const sf_sbox *sd, uint8_t g_f, uint8_t g_b, const sf_kernel *kn)
{
    sf_consts cf, cb;
    pass_consts(&cf, &cb, sd, g_f, g_b, 0, kn->needs);
    ptrdiff_t R = jb->R;
    if (jb->src != NULL) { /* the forward pass reads full rows from the input */
        copy_rows(jb, R - 1);
        jb->src_rows = R - 1;
    }
    enc_pass(jb, 0, R, 1, jb->iv_f, jb->key_f, jb->row_f, 0, kn->enc, &cf);
    jb->src_rows = 0;
    reset_padding(jb);
    ptrdiff_t t0 = jb->t0;
    if (jb->L >= 2 && t0 >= 2 && t0 <= R - 1) {
        /* The tail pass reads rows t0-1 … R-1 only, and the backward pass never reads a
         * row above the one it writes plus one: so the tail runs as soon as the backward
         * pass has written row t0-1, on rows still in cache, and the backward pass then
         * finishes rows t0-2 … 0, which read nothing the tail wrote. Same bytes. */
        enc_pass(jb, R - 1, t0 - 2, -1, jb->iv_b, jb->key_b, jb->row_b, 0, kn->enc, &cb);
        enc_pass(jb, t0, R, 1, jb->iv_f, jb->key_f, jb->row_f, 1, kn->enc, &cf);
        enc_pass(jb, t0 - 2, -1, -1, jb->iv_b, jb->key_b, jb->row_b, 1, kn->enc, &cb);
        return;
    }
    enc_pass(jb, R - 1, -1, -1, jb->iv_b, jb->key_b, jb->row_b, 0, kn->enc, &cb);
    enc_pass(jb, t0, R, 1, jb->iv_f, jb->key_f, jb->row_f, 1, kn->enc, &cf);
}

/* Decryption in one sweep over memory (rows R-1 … 0), for L >= 2 with the input in
 * src (not overlapping m) and 5 <= t0 <= R-1. Every inverse pass reads ciphertext of
 * that pass only (SPEC §1.7), so at step i, with b = the backward pass's output and
 * f = the forward pass's output:
 *   b[i] = tail undone from src rows i, i-1 (i >= t0; else src row i itself),
 *   f[i] = backward undone from b[i], b[i+1] (IVB for row R-1),
 *   x[i+1] = forward undone from f[i+1], f[i] (IVF for row 0), written to m[i+1].
 * f alternates in m[0] and m[1], the tail's b in m[2] and m[3]: rows of m not written
 * before steps 0 … 2 (x[1] and x[0] are computed in place). The last row, padded, is
 * copied into m[R-1] first. So the image is read once and written once, and the rows
 * a step reads were written one or two steps before; three separate passes would stream
 * it through memory three times. Same bytes as the pass-by-pass order. (Writing x with
 * non-temporal stores was measured too: slower on the development machine, whose L3
 * holds much of a radiograph.) */
static void dec_sweep(const sf_job *jb, sf_row_fn fn, const sf_consts *cf, const sf_consts *cb)
{
    uint8_t *m = jb->m;
    const uint8_t *src = jb->src;
    ptrdiff_t L = jb->L, R = jb->R, t0 = jb->t0, last = jb->last;
    memcpy(m + (R - 1) * L, src + (R - 1) * L, (size_t)last);
    memset(m + (R - 1) * L + last, 0, (size_t)(L - last));
    const uint8_t *b_next = jb->iv_b; /* b[i+1] */
    for (ptrdiff_t i = R - 1; i >= 0; i--) {
        ptrdiff_t d = shift_of(jb, i);
        const uint8_t *b = src + i * L;
        uint8_t *f = m + (i & 1) * L, *f_next = m + ((i + 1) & 1) * L;
        if (i >= t0) {
            uint8_t *slot = m + (2 + (i & 1)) * L;
            const uint8_t *c = i == R - 1 ? m + i * L : src + i * L;
            fn(slot, c, src + (i - 1) * L, src + (i - 1) * L, jb->key_f, jb->row_f[i], L, d, L, cf);
            if (i == R - 1)
                memcpy(slot + last, jb->iv_b + last, (size_t)(L - last));
            b = slot;
        }
        fn(f, b, b_next, b_next, jb->key_b, jb->row_b[i], L, d, L, cb);
        if (i + 1 < R)
            fn(m + (i + 1) * L, f_next, f, f, jb->key_f, jb->row_f[i + 1], L, shift_of(jb, i + 1), L, cf);
        b_next = b;
    }
    fn(m, m, jb->iv_f, jb->iv_f, jb->key_f, jb->row_f[0], L, shift_of(jb, 0), L, cf);
}

void sf_decrypt(sf_job *jb, const sf_sbox *sd, uint8_t g_f, uint8_t g_b, const sf_kernel *kn)
{
    sf_consts cf, cb;
    pass_consts(&cf, &cb, sd, g_f, g_b, 1, kn->needs);
    ptrdiff_t R = jb->R, t0 = jb->t0;
    uintptr_t s0 = (uintptr_t)(const void *)jb->src, m0 = (uintptr_t)(void *)jb->m;
    uintptr_t n = (uintptr_t)((R - 1) * jb->L + jb->last), size = (uintptr_t)(R * jb->L);
    if (jb->src != NULL && jb->L >= 2 && t0 >= 5 && t0 <= R - 1 && (s0 + n <= m0 || m0 + size <= s0)) {
        dec_sweep(jb, kn->dec, &cf, &cb);
        return;
    }
    /* the tail undo needs rows t0-2 .. R-1 (t0-2: the one-lane cross row) in the matrix;
     * the backward undo reads the rows below from the input */
    ptrdiff_t tail_from = t0 >= 2 ? t0 - 2 : 0;
    if (jb->src != NULL)
        copy_rows(jb, tail_from);
    dec_pass(jb, R - 1, t0 - 1, -1, -1, jb->iv_f, jb->key_f, jb->row_f, -1, kn->dec, &cf);
    reset_padding(jb);
    if (jb->src != NULL)
        jb->src_rows = tail_from;
    dec_pass(jb, 0, R, 1, 1, jb->iv_b, jb->key_b, jb->row_b, R - 1, kn->dec, &cb);
    jb->src_rows = 0;
    dec_pass(jb, R - 1, -1, -1, -1, jb->iv_f, jb->key_f, jb->row_f, 0, kn->dec, &cf);
}

/* ------------------------------------------------------------------ the kernel list */

extern const sf_kernel sf_kernel_table;
#if SF_X86
extern const sf_kernel sf_kernel_gfni_avx512, sf_kernel_gfni_avx2, sf_kernel_vaes_avx2, sf_kernel_aesni_avx2,
    sf_kernel_aesni_sse;
#endif
#if SF_ARM
extern const sf_kernel sf_kernel_neon_aes;
#endif

/* Fastest first (measured with `scanfort bench`; see the README's cipher table). */
const sf_kernel *const sf_kernels[] = {
#if SF_X86
    &sf_kernel_gfni_avx512, &sf_kernel_gfni_avx2, &sf_kernel_vaes_avx2, &sf_kernel_aesni_avx2, &sf_kernel_aesni_sse,
#endif
#if SF_ARM
    &sf_kernel_neon_aes,
#endif
    &sf_kernel_table,
};
const int sf_kernel_count = (int)(sizeof sf_kernels / sizeof sf_kernels[0]);

const sf_kernel *sf_kernel_named(const char *name)
{
    for (int i = 0; i < sf_kernel_count; i++)
        if (strcmp(sf_kernels[i]->name, name) == 0)
            return sf_kernels[i];
    return NULL;
}

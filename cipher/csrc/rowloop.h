/*
 * The row loop of a vector kernel, included once by each k_*.c after it has defined
 *   SF_KERNEL_TARGET   the function attribute that enables its instruction set;
 *   SF_V               bytes per vector;
 *   SF_UNROLL          vectors per iteration of the main loop, default 2 (measured: the
 *                      GFNI kernels 10–30 % faster with 4 than with 1, the AES-NI ones,
 *                      already bound by their shuffles, the same within noise);
 *   sf_vec, kc         its vector type and its broadcast constants;
 *   kc_init(&k, c, rk, decrypt), ld(p), st(p, v), enc_block(&k, x, prev, key, cross) and
 *   dec_block(&k, c, prev, key, cross): one vector of the round (sf_core.c, pass_consts).
 * Full vectors are read in place (the rows are L >= SF_V bytes long then); the ragged end
 * of a row, and every row of a layout narrower than one vector, goes through buffers, so
 * any lane count works and the work never depends on the data.
 */

#ifndef SF_UNROLL
#define SF_UNROLL 2
#endif

#define SF_ROW(name, block, decrypt)                                                                          \
    SF_KERNEL_TARGET static void name(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross, \
                                      const uint8_t *lane_key, uint8_t rk, ptrdiff_t L, ptrdiff_t d,           \
                                      ptrdiff_t width, const sf_consts *c)                                     \
    {                                                                                                         \
        kc k;                                                                                                 \
        uint8_t tmp[SF_V];                                                                                    \
        kc_init(&k, c, rk, decrypt);                                                                          \
        ptrdiff_t j = 0;                                                                                      \
        for (; j + SF_UNROLL * SF_V <= width && j + d + SF_UNROLL * SF_V <= L; j += SF_UNROLL * SF_V) {       \
            sf_vec r[SF_UNROLL]; /* no wrap-around in these vectors: read cross in place */                   \
            for (int u = 0; u < SF_UNROLL; u++) {                                                             \
                ptrdiff_t o = j + u * SF_V;                                                                   \
                r[u] = block(&k, ld(in + o), ld(prev + o), ld(lane_key + o), ld(cross + o + d));              \
            }                                                                                                 \
            for (int u = 0; u < SF_UNROLL; u++)                                                               \
                st(out + j + u * SF_V, r[u]);                                                                 \
        }                                                                                                     \
        for (; j + SF_V <= width; j += SF_V) {                                                                \
            const uint8_t *cr = sf_rotated(cross, j + d, L, SF_V, tmp);                                      \
            st(out + j, block(&k, ld(in + j), ld(prev + j), ld(lane_key + j), ld(cr)));                       \
        }                                                                                                     \
        if (j < width) {                                                                                      \
            uint8_t a[SF_V], p[SF_V], kk[SF_V], x[SF_V];                                                      \
            ptrdiff_t n = width - j;                                                                          \
            sf_partial(a, p, kk, x, in, prev, cross, lane_key, j, n, SF_V, L, d);                             \
            st(tmp, block(&k, ld(a), ld(p), ld(kk), ld(x)));                                                  \
            memcpy(out + j, tmp, (size_t)n);                                                                  \
        }                                                                                                     \
    }

SF_ROW(enc_row, enc_block, 0)
SF_ROW(dec_row, dec_block, 1)

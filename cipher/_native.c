/*
 * cipher._native: C kernels of the ScanFort chaos cipher, version 1 (cipher/SPEC.md §1).
 *
 * The third backend next to the numba kernels (cipher/_kernels.py, cipher/_gfni.py) and the
 * numpy path (cipher/chaos.py); all three produce identical bytes. This module holds:
 *
 *   - the logistic-map byte sources: the scalar map of the S-box stream and the 256-lane
 *     byte stream (same bits as chaos._scalar_samples and _kernels._stream_py: strict
 *     IEEE-754 binary64, no contraction, no reassociation);
 *   - the S-box from its 34 samples (A1 = Lo·Up, c1, A2, c2; S(x) = A2·inv(A1·x ⊕ c1) ⊕ c2);
 *   - the three passes (forward, backward, tail) on the padded rows × lanes byte matrix and
 *     their inverses, with a portable table kernel and, on x86-64 CPUs with GFNI and
 *     AVX-512BW (checked at run time), a kernel that evaluates the round 64 lanes at a
 *     time with VGF2P8AFFINEQB / VGF2P8AFFINEINVQB.
 *
 * Buffers come in through the buffer protocol (numpy arrays, bytes, bytearray); every size
 * is checked before anything is written. The GIL is released around every loop.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <stdint.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "cipher._native must not be built with -ffast-math: the logistic maps need exact IEEE-754 doubles"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "cipher._native needs double arithmetic evaluated in double precision (SSE2, not x87)"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SF_GFNI_BUILT 1
#include <immintrin.h>
#define SF_GFNI_TARGET __attribute__((target("avx512f,avx512bw,gfni")))
#else
#define SF_GFNI_BUILT 0
#endif

#define SBOX_SAMPLES 34   /* A1 (8 + 8 samples), c1, A2 (8 + 8), c2 */
#define MAX_LANE_BITS 30  /* a sanity bound; the cipher uses at most 16 */
#define MAX_STREAM_LANES (1 << 20)

/* ------------------------------------------------------------------ GF(2^8), GF(2) matrices */

static uint8_t gf_inv[256]; /* inverse in GF(2^8) mod x^8+x^4+x^3+x+1, inv(0) = 0 */
static int cpu_gfni;        /* the CPU (and OS) support AVX-512F, AVX-512BW and GFNI */

static void gf_init(void)
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

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
    unsigned p = 0, x = a;
    while (b) {
        if (b & 1)
            p ^= x;
        x = (x << 1) ^ ((x & 0x80) ? 0x11B : 0);
        b >>= 1;
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

/* Inverse of an invertible matrix (the images of 0..255 are a permutation). */
static int mat_inverse(const uint8_t a[8], uint8_t out[8])
{
    uint8_t pre[256], seen[256], col[8];
    memset(seen, 0, sizeof seen);
    for (unsigned x = 0; x < 256; x++) {
        uint8_t y = mat_apply(a, x);
        if (seen[y])
            return -1;
        seen[y] = 1;
        pre[y] = (uint8_t)x;
    }
    for (int b = 0; b < 8; b++)
        col[b] = pre[1u << b];
    mat_from_columns(col, out);
    return 0;
}

/* The matrix of multiplication by g in GF(2^8) (linear over GF(2)). */
static void mul_matrix(uint8_t g, uint8_t rows[8])
{
    uint8_t col[8];
    for (int b = 0; b < 8; b++)
        col[b] = gf_mul(g, (uint8_t)(1u << b));
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
            if ((lo[i] >> t) & 1u)
                acc ^= up[t];
        out[i] = (uint8_t)acc;
    }
}

typedef struct {
    uint8_t a1[8], a2[8];
    uint8_t c1, c2;
} sbox_def;

static void sbox_from_samples(const uint8_t *s, sbox_def *d)
{
    lu_matrix(s + 0, s + 8, d->a1);
    d->c1 = s[16];
    lu_matrix(s + 17, s + 25, d->a2);
    d->c2 = s[33];
}

static uint8_t sbox_eval(const sbox_def *d, unsigned x)
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

/* ------------------------------------------------------------------ logistic maps */

/* floor(x * quant) mod 256. q = x * quant is exact (quant is a power of two in the cipher);
 * q = 256·hi + lo with hi = floor(q / 256) and lo in [0, 256) both exact, and the
 * conversions stay in int32, which SSE2 vectorises. In range because the arguments are
 * checked (0 <= x0 <= 1, 0 <= r <= 4, quant <= 2^32): then every step keeps x in [0, 1]
 * (fl(r·x) <= 4x and fl(1 - x) rounds up by at most 2^-54 only where 4x(1 - x) is
 * below 1 by more than that), so 0 <= q <= 2^32. */
static uint8_t sample(double x, double quant)
{
    double q = x * quant;
    int32_t hi = (int32_t)(q * (1.0 / 256.0));
    int32_t lo = (int32_t)(q - (double)hi * 256.0);
    return (uint8_t)lo;
}

static double step_map(double r, double x)
{
    double a = r * x;
    double b = 1.0 - x;
    return a * b;
}

static void scalar_fill(double x0, double r, Py_ssize_t transient, double quant, uint8_t *out,
                        Py_ssize_t count)
{
    double x = x0;
    for (Py_ssize_t t = 0; t < transient; t++)
        x = step_map(r, x);
    for (Py_ssize_t i = 0; i < count; i++) {
        x = step_map(r, x);
        out[i] = sample(x, quant);
    }
}

static void stream_fill(double x0, double r, Py_ssize_t lanes, double step, Py_ssize_t transient,
                        double quant, double *x, uint8_t *out, Py_ssize_t count)
{
    for (Py_ssize_t j = 0; j < lanes; j++) {
        double off = (double)j * step;
        x[j] = x0 + off;
    }
    for (Py_ssize_t t = 0; t < transient; t++)
        for (Py_ssize_t j = 0; j < lanes; j++)
            x[j] = step_map(r, x[j]);
    for (Py_ssize_t t = 0; t < count; t += lanes) {
        Py_ssize_t n = count - t < lanes ? count - t : lanes;
        for (Py_ssize_t j = 0; j < lanes; j++) /* every lane steps, as in the reference */
            x[j] = step_map(r, x[j]);
        for (Py_ssize_t j = 0; j < n; j++)
            out[t + j] = sample(x[j], quant);
    }
}

static int check_map_args(double x0, double r, double quant)
{
    if (!(x0 >= 0.0 && x0 <= 1.0) || !(r >= 0.0 && r <= 4.0) || !(quant >= 1.0 && quant <= 4294967296.0)) {
        PyErr_SetString(PyExc_ValueError, "logistic map needs 0 <= x0 <= 1, 0 <= r <= 4, 1 <= quant <= 2^32");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(scalar_samples_doc,
"scalar_samples(x0, r, count, transient, quant) -> bytes\n\n"
"count samples (uint64(x*quant) mod 256) of one logistic map after transient discarded steps.");

static PyObject *py_scalar_samples(PyObject *self, PyObject *args)
{
    double x0, r, quant;
    Py_ssize_t count, transient;
    (void)self;
    if (!PyArg_ParseTuple(args, "ddnnd:scalar_samples", &x0, &r, &count, &transient, &quant))
        return NULL;
    if (check_map_args(x0, r, quant) < 0)
        return NULL;
    if (count < 0 || transient < 0) {
        PyErr_SetString(PyExc_ValueError, "count and transient must be >= 0");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, count);
    if (out == NULL)
        return NULL;
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    scalar_fill(x0, r, transient, quant, dst, count);
    Py_END_ALLOW_THREADS
    return out;
}

PyDoc_STRVAR(stream_samples_doc,
"stream_samples(x0, r, count, lanes, step, transient, quant) -> bytes\n\n"
"count bytes from `lanes` logistic maps started at x0 + j*step and iterated together;\n"
"after `transient` discarded steps each step yields one sample per lane, lane 0 first.");

static PyObject *py_stream_samples(PyObject *self, PyObject *args)
{
    double x0, r, step, quant;
    Py_ssize_t count, lanes, transient;
    (void)self;
    if (!PyArg_ParseTuple(args, "ddnndnd:stream_samples", &x0, &r, &count, &lanes, &step, &transient, &quant))
        return NULL;
    if (check_map_args(x0, r, quant) < 0)
        return NULL;
    if (count < 0 || transient < 0 || lanes < 1 || lanes > MAX_STREAM_LANES) {
        PyErr_SetString(PyExc_ValueError, "need count >= 0, transient >= 0 and 1 <= lanes <= 2^20");
        return NULL;
    }
    if (!(step >= 0.0) || !(x0 + (double)(lanes - 1) * step <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "lane seeds x0 + j*step must stay in [0, 1]");
        return NULL;
    }
    double *x = PyMem_Malloc((size_t)lanes * sizeof(double));
    if (x == NULL)
        return PyErr_NoMemory();
    PyObject *out = PyBytes_FromStringAndSize(NULL, count);
    if (out == NULL) {
        PyMem_Free(x);
        return NULL;
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    stream_fill(x0, r, lanes, step, transient, quant, x, dst, count);
    Py_END_ALLOW_THREADS
    PyMem_Free(x);
    return out;
}

PyDoc_STRVAR(distinct_doc, "distinct(buf) -> int\n\nNumber of distinct byte values in a buffer.");

static PyObject *py_distinct(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    uint8_t seen[256];
    int n = 0;
    (void)self;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    memset(seen, 0, sizeof seen);
    const uint8_t *p = b.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < b.len; i++)
        seen[p[i]] = 1;
    for (int v = 0; v < 256; v++)
        n += seen[v];
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(sbox_doc,
"sbox(samples) -> (S, S_inv)\n\n"
"The S-box and its inverse (256 bytes each) from the 34 used samples of the S-box stream.");

static PyObject *py_sbox(PyObject *self, PyObject *args)
{
    Py_buffer smp;
    sbox_def d;
    uint8_t s[256], inv[256];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*:sbox", &smp))
        return NULL;
    if (smp.len != SBOX_SAMPLES) {
        PyBuffer_Release(&smp);
        PyErr_Format(PyExc_ValueError, "S-box needs %d samples, got %zd", SBOX_SAMPLES, smp.len);
        return NULL;
    }
    sbox_from_samples(smp.buf, &d);
    PyBuffer_Release(&smp);
    for (unsigned x = 0; x < 256; x++) {
        s[x] = sbox_eval(&d, x);
        inv[s[x]] = (uint8_t)x;
    }
    return Py_BuildValue("(y#y#)", (const char *)s, (Py_ssize_t)256, (const char *)inv, (Py_ssize_t)256);
}

/* ------------------------------------------------------------------ the passes */

/* One pass's constants: tables for the table kernel, matrix operands for the GFNI one. */
typedef struct {
    const uint8_t *tab;  /* encrypt: S[~v] (XNOR folded); decrypt: S^-1 */
    const uint8_t *mul;  /* multiplication by g */
    uint64_t q1, q2, qg; /* GFNI: first affine, affine-inverse, multiplier */
    uint8_t b1, b2;      /* GFNI: constants of the two S-box halves */
} pass_consts;

/* One round over a row: reads the row from `in`, writes it to `out` (the same row of the
 * matrix, or the caller's input when the first pass also copies it into the matrix). */
typedef void (*row_fn)(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                       const uint8_t *lane_key, uint8_t rk, Py_ssize_t L, Py_ssize_t d, Py_ssize_t width,
                       const pass_consts *c);

/* The table kernels work in chunks: the XORs in loops the compiler vectorises, the table
 * lookups in plain byte loops. GCC would "vectorise" those with emulated gathers, which
 * is slower than scalar code (measured: decryption 2x slower), so it is told not to. */
#define CHUNK 256
#if defined(__GNUC__) && !defined(__clang__)
#define SF_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define SF_NO_VECTORIZE
#endif

/* out[t] = tab1[a[t]] + tab2[b[t]] (mod 256) for t < n. */
SF_NO_VECTORIZE
static void lookup_add(uint8_t *out, const uint8_t *tab1, const uint8_t *a, const uint8_t *tab2, const uint8_t *b,
                       Py_ssize_t n)
{
    for (Py_ssize_t t = 0; t < n; t++)
        out[t] = (uint8_t)(tab1[a[t]] + tab2[b[t]]);
}

/* out[t] = tab1[a[t] - tab2[b[t]]] (mod 256) for t < n. */
SF_NO_VECTORIZE
static void lookup_sub(uint8_t *out, const uint8_t *tab1, const uint8_t *a, const uint8_t *tab2, const uint8_t *b,
                       Py_ssize_t n)
{
    for (Py_ssize_t t = 0; t < n; t++)
        out[t] = tab1[(uint8_t)(a[t] - tab2[b[t]])];
}

/* Table kernel, one row: out[j] = S[~(in[j] ⊕ K[j] ⊕ W ⊕ prev[j])] + g·cross[(j + d) mod L]. */
static void row_enc_table(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                          const uint8_t *lane_key, uint8_t rk, Py_ssize_t L, Py_ssize_t d, Py_ssize_t width,
                          const pass_consts *c)
{
    uint8_t v[CHUNK];
    for (Py_ssize_t j0 = 0; j0 < width; j0 += CHUNK) {
        Py_ssize_t n = width - j0 < CHUNK ? width - j0 : CHUNK;
        for (Py_ssize_t t = 0; t < n; t++)
            v[t] = (uint8_t)(in[j0 + t] ^ lane_key[j0 + t] ^ prev[j0 + t] ^ rk);
        /* lanes j < L - d take cross[j + d], the others cross[j + d - L] */
        Py_ssize_t split = L - d - j0;
        split = split < 0 ? 0 : (split > n ? n : split);
        if (split > 0)
            lookup_add(out + j0, c->tab, v, c->mul, cross + j0 + d, split);
        if (split < n)
            lookup_add(out + j0 + split, c->tab, v + split, c->mul, cross + j0 + split + d - L, n - split);
    }
}

/* Inverse round: out[j] = ~(S^-1[in[j] - g·cross[(j + d) mod L]] ⊕ prev[j]) ⊕ K[j] ⊕ W. */
static void row_dec_table(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                          const uint8_t *lane_key, uint8_t rk, Py_ssize_t L, Py_ssize_t d, Py_ssize_t width,
                          const pass_consts *c)
{
    uint8_t w = (uint8_t)(rk ^ 0xFFu); /* the XNOR's complement folded into the row key */
    uint8_t v[CHUNK];
    for (Py_ssize_t j0 = 0; j0 < width; j0 += CHUNK) {
        Py_ssize_t n = width - j0 < CHUNK ? width - j0 : CHUNK;
        Py_ssize_t split = L - d - j0;
        split = split < 0 ? 0 : (split > n ? n : split);
        if (split > 0)
            lookup_sub(v, c->tab, in + j0, c->mul, cross + j0 + d, split);
        if (split < n)
            lookup_sub(v + split, c->tab, in + j0 + split, c->mul, cross + j0 + split + d - L, n - split);
        for (Py_ssize_t t = 0; t < n; t++)
            out[j0 + t] = (uint8_t)(v[t] ^ prev[j0 + t] ^ lane_key[j0 + t] ^ w);
    }
}

#if SF_GFNI_BUILT
/* 64 bytes of cross[(jj + t) mod L], t = 0..63 (L is a multiple of 64). */
static const uint8_t *rotated(const uint8_t *cross, Py_ssize_t jj, Py_ssize_t L, uint8_t tmp[64])
{
    if (jj + 64 <= L)
        return cross + jj;
    Py_ssize_t n1 = L - jj;
    memcpy(tmp, cross + jj, (size_t)n1);
    memcpy(tmp + n1, cross, (size_t)(64 - n1));
    return tmp;
}

/* GFNI kernel, one row (L a multiple of 64): S(v) = A2·inv(A1·v ⊕ c1) ⊕ c2 is one affine
 * and one affine-inverse instruction, with ~ folded into the first constant
 * (b1 = A1·0xFF ⊕ c1); g·x is one more affine. A partial row is written with a mask. */
SF_GFNI_TARGET
static void row_enc_gfni(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                         const uint8_t *lane_key, uint8_t rk, Py_ssize_t L, Py_ssize_t d, Py_ssize_t width,
                         const pass_consts *c)
{
    const __m512i a1 = _mm512_set1_epi64((long long)c->q1);
    const __m512i a2 = _mm512_set1_epi64((long long)c->q2);
    const __m512i mg = _mm512_set1_epi64((long long)c->qg);
    const __m512i k1 = _mm512_set1_epi8((char)c->b1);
    const __m512i k2 = _mm512_set1_epi8((char)c->b2);
    const __m512i w = _mm512_set1_epi8((char)rk);
    uint8_t tmp[64];
    for (Py_ssize_t j = 0; j < width; j += 64) {
        Py_ssize_t jj = j + d;
        if (jj >= L)
            jj -= L;
        __m512i rot = _mm512_loadu_si512((const void *)rotated(cross, jj, L, tmp));
        __m512i v = _mm512_loadu_si512((const void *)(in + j));
        v = _mm512_xor_si512(v, _mm512_loadu_si512((const void *)(prev + j)));
        v = _mm512_xor_si512(v, _mm512_loadu_si512((const void *)(lane_key + j)));
        v = _mm512_xor_si512(v, w);
        __m512i y = _mm512_xor_si512(_mm512_gf2p8affine_epi64_epi8(v, a1, 0), k1);
        __m512i s = _mm512_xor_si512(_mm512_gf2p8affineinv_epi64_epi8(y, a2, 0), k2);
        __m512i res = _mm512_add_epi8(s, _mm512_gf2p8affine_epi64_epi8(rot, mg, 0));
        if (j + 64 <= width)
            _mm512_storeu_si512((void *)(out + j), res);
        else
            _mm512_mask_storeu_epi8((void *)(out + j), (__mmask64)((UINT64_C(1) << (width - j)) - 1), res);
    }
}

/* Inverse: S^-1(y) = A1^-1·inv(A2^-1·y ⊕ b2) ⊕ b1 with b2 = A2^-1·c2, b1 = A1^-1·c1. */
SF_GFNI_TARGET
static void row_dec_gfni(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                         const uint8_t *lane_key, uint8_t rk, Py_ssize_t L, Py_ssize_t d, Py_ssize_t width,
                         const pass_consts *c)
{
    const __m512i a2i = _mm512_set1_epi64((long long)c->q2);
    const __m512i a1i = _mm512_set1_epi64((long long)c->q1);
    const __m512i mg = _mm512_set1_epi64((long long)c->qg);
    const __m512i k2 = _mm512_set1_epi8((char)c->b2);
    const __m512i k1w = _mm512_set1_epi8((char)(c->b1 ^ rk ^ 0xFFu));
    uint8_t tmp[64];
    for (Py_ssize_t j = 0; j < width; j += 64) {
        Py_ssize_t jj = j + d;
        if (jj >= L)
            jj -= L;
        __m512i rot = _mm512_loadu_si512((const void *)rotated(cross, jj, L, tmp));
        __m512i g = _mm512_gf2p8affine_epi64_epi8(rot, mg, 0);
        __m512i y = _mm512_sub_epi8(_mm512_loadu_si512((const void *)(in + j)), g);
        __m512i t = _mm512_xor_si512(_mm512_gf2p8affine_epi64_epi8(y, a2i, 0), k2);
        __m512i u = _mm512_xor_si512(_mm512_gf2p8affineinv_epi64_epi8(t, a1i, 0), k1w);
        u = _mm512_xor_si512(u, _mm512_loadu_si512((const void *)(prev + j)));
        u = _mm512_xor_si512(u, _mm512_loadu_si512((const void *)(lane_key + j)));
        if (j + 64 <= width)
            _mm512_storeu_si512((void *)(out + j), u);
        else
            _mm512_mask_storeu_epi8((void *)(out + j), (__mmask64)((UINT64_C(1) << (width - j)) - 1), u);
    }
}
#endif

typedef struct {
    uint8_t *m;
    Py_ssize_t R, L, last, t0;
    int k;
    const uint8_t *iv_f, *key_f, *iv_b, *key_b, *row_f, *row_b;
    /* The caller's input (n = (R-1)·L + last bytes), or NULL when m already holds it. The
     * first pass that reads every row takes rows below src_rows from here (one pass over
     * memory instead of a copy and a pass); all other reads are from m. */
    const uint8_t *src;
    Py_ssize_t src_rows;
} job;

static Py_ssize_t shift_of(const job *jb, Py_ssize_t i)
{
    return jb->k > 0 ? (Py_ssize_t)1 << (i % jb->k) : 0;
}

/* Row i as it was before the current pass: from the caller's input or the matrix. */
static const uint8_t *unread_row(const job *jb, Py_ssize_t i)
{
    return i < jb->src_rows ? jb->src + i * jb->L : jb->m + i * jb->L;
}

/* Copy rows [from, R) of the input into the matrix, padding lanes of the last row zero. */
static void copy_rows(const job *jb, Py_ssize_t from)
{
    Py_ssize_t L = jb->L, n = (jb->R - 1) * L + jb->last;
    memmove(jb->m + from * L, jb->src + from * L, (size_t)(n - from * L)); /* src may be m */
    memset(jb->m + n, 0, (size_t)(L - jb->last));
}

/* One encryption pass (same semantics as _kernels._pass_py): rows first, first+step, ...
 * up to (not including) stop. The predecessor of the first row is the matrix row before it
 * when chain_from_matrix (tail pass), else iv. One lane (L = 1): the multiplier takes the
 * row two steps back in processing order, iv standing in for rows before the first. In a
 * backward pass only the `last` lanes of row R-1 are written. */
static void enc_pass(const job *jb, Py_ssize_t first, Py_ssize_t stop, Py_ssize_t step, const uint8_t *iv,
                     const uint8_t *lane_key, const uint8_t *row_key, int chain_from_matrix, row_fn fn,
                     const pass_consts *c)
{
    uint8_t *m = jb->m;
    Py_ssize_t L = jb->L, R = jb->R;
    for (Py_ssize_t i = first; step > 0 ? i < stop : i > stop; i += step) {
        const uint8_t *prev = (chain_from_matrix || i != first) ? m + (i - step) * L : iv;
        const uint8_t *cross = prev;
        if (L == 1) {
            Py_ssize_t i2 = i - 2 * step;
            if (chain_from_matrix)
                cross = i2 >= 0 ? m + i2 : iv;
            else
                cross = (i2 - first) * step >= 0 ? m + i2 : iv;
        }
        Py_ssize_t width = (i == R - 1 && step < 0) ? jb->last : L;
        fn(m + i * L, unread_row(jb, i), prev, cross, lane_key, row_key[i], L, shift_of(jb, i), width, c);
    }
}

/* Inverse of one pass (same semantics as _kernels._unpass_py): rows visited so that each
 * predecessor (row i + chain) is still ciphertext; row iv_row takes iv as predecessor. */
static void dec_pass(const job *jb, Py_ssize_t first, Py_ssize_t stop, Py_ssize_t step, Py_ssize_t chain,
                     const uint8_t *iv, const uint8_t *lane_key, const uint8_t *row_key, Py_ssize_t iv_row,
                     row_fn fn, const pass_consts *c)
{
    Py_ssize_t L = jb->L, R = jb->R;
    for (Py_ssize_t i = first; step > 0 ? i < stop : i > stop; i += step) {
        const uint8_t *prev = i == iv_row ? iv : unread_row(jb, i + chain);
        const uint8_t *cross = prev;
        if (L == 1) {
            Py_ssize_t i2 = i + 2 * chain;
            cross = (i2 >= 0 && i2 < R) ? unread_row(jb, i2) : iv;
        }
        fn(jb->m + i * L, unread_row(jb, i), prev, cross, lane_key, row_key[i], L, shift_of(jb, i), L, c);
    }
}

static void reset_padding(const job *jb)
{
    Py_ssize_t R = jb->R, L = jb->L, last = jb->last;
    memcpy(jb->m + (R - 1) * L + last, jb->iv_b + last, (size_t)(L - last));
}

static void encrypt_job(job *jb, const sbox_def *sd, uint8_t g_f, uint8_t g_b, int gfni)
{
    pass_consts cf, cb;
    uint8_t s_xnor[256], mul_f[256], mul_b[256];
    row_fn fn = row_enc_table;
    memset(&cf, 0, sizeof cf);
#if SF_GFNI_BUILT
    if (gfni) {
        uint8_t mf[8], mb[8];
        mul_matrix(g_f, mf);
        mul_matrix(g_b, mb);
        cf.q1 = mat_qword(sd->a1);
        cf.q2 = mat_qword(sd->a2);
        cf.b1 = (uint8_t)(mat_apply(sd->a1, 0xFF) ^ sd->c1);
        cf.b2 = sd->c2;
        cb = cf;
        cf.qg = mat_qword(mf);
        cb.qg = mat_qword(mb);
        fn = row_enc_gfni;
    } else
#endif
    {
        (void)gfni;
        for (unsigned v = 0; v < 256; v++) {
            s_xnor[v] = sbox_eval(sd, v ^ 0xFFu);
            mul_f[v] = gf_mul(g_f, (uint8_t)v);
            mul_b[v] = gf_mul(g_b, (uint8_t)v);
        }
        cf.tab = s_xnor;
        cb = cf;
        cf.mul = mul_f;
        cb.mul = mul_b;
    }
    Py_ssize_t R = jb->R;
    if (jb->src != NULL) { /* the forward pass reads full rows from the input */
        copy_rows(jb, R - 1);
        jb->src_rows = R - 1;
    }
    enc_pass(jb, 0, R, 1, jb->iv_f, jb->key_f, jb->row_f, 0, fn, &cf);
    jb->src_rows = 0;
    reset_padding(jb);
    enc_pass(jb, R - 1, -1, -1, jb->iv_b, jb->key_b, jb->row_b, 0, fn, &cb);
    enc_pass(jb, jb->t0, R, 1, jb->iv_f, jb->key_f, jb->row_f, 1, fn, &cf);
}

static void decrypt_job(job *jb, const sbox_def *sd, uint8_t g_f, uint8_t g_b, int gfni)
{
    pass_consts cf, cb;
    uint8_t inv_s[256], mul_f[256], mul_b[256];
    row_fn fn = row_dec_table;
    memset(&cf, 0, sizeof cf);
#if SF_GFNI_BUILT
    if (gfni) {
        uint8_t a1i[8], a2i[8], mf[8], mb[8];
        mat_inverse(sd->a1, a1i); /* L·U with unit diagonals: always invertible */
        mat_inverse(sd->a2, a2i);
        mul_matrix(g_f, mf);
        mul_matrix(g_b, mb);
        cf.q1 = mat_qword(a1i);
        cf.q2 = mat_qword(a2i);
        cf.b1 = mat_apply(a1i, sd->c1);
        cf.b2 = mat_apply(a2i, sd->c2);
        cb = cf;
        cf.qg = mat_qword(mf);
        cb.qg = mat_qword(mb);
        fn = row_dec_gfni;
    } else
#endif
    {
        (void)gfni;
        for (unsigned v = 0; v < 256; v++) {
            inv_s[sbox_eval(sd, v)] = (uint8_t)v;
            mul_f[v] = gf_mul(g_f, (uint8_t)v);
            mul_b[v] = gf_mul(g_b, (uint8_t)v);
        }
        cf.tab = inv_s;
        cb = cf;
        cf.mul = mul_f;
        cb.mul = mul_b;
    }
    Py_ssize_t R = jb->R, t0 = jb->t0;
    /* the tail undo needs rows t0-2 .. R-1 (t0-2: the one-lane cross row) in the matrix;
     * the backward undo reads the rows below from the input */
    Py_ssize_t tail_from = t0 >= 2 ? t0 - 2 : 0;
    if (jb->src != NULL)
        copy_rows(jb, tail_from);
    dec_pass(jb, R - 1, t0 - 1, -1, -1, jb->iv_f, jb->key_f, jb->row_f, -1, fn, &cf);
    reset_padding(jb);
    if (jb->src != NULL)
        jb->src_rows = tail_from;
    dec_pass(jb, 0, R, 1, 1, jb->iv_b, jb->key_b, jb->row_b, R - 1, fn, &cb);
    jb->src_rows = 0;
    dec_pass(jb, R - 1, -1, -1, -1, jb->iv_f, jb->key_f, jb->row_f, 0, fn, &cf);
}

static const char *kernel_name(int gfni)
{
    return gfni ? "gfni" : "table";
}

static PyObject *run_cipher(PyObject *args, PyObject *kwargs, int forward)
{
    static char *kwlist[] = {"m", "st", "sbox_samples", "g_f", "g_b", "lane_bits", "last", "tail_start", "gfni", "src", NULL};
    Py_buffer mb, sb, xb, srcb;
    int g_f, g_b, k, gfni_req = -1, have_src = 0;
    Py_ssize_t last, t0;
    PyObject *src = Py_None, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, forward ? "w*y*y*iiinn|iO:encrypt" : "w*y*y*iiinn|iO:decrypt", kwlist,
                                     &mb, &sb, &xb, &g_f, &g_b, &k, &last, &t0, &gfni_req, &src))
        return NULL;
    if (k < 0 || k > MAX_LANE_BITS) {
        PyErr_Format(PyExc_ValueError, "lane_bits must be in [0, %d], got %d", MAX_LANE_BITS, k);
        goto done;
    }
    Py_ssize_t L = (Py_ssize_t)1 << k;
    if (mb.len <= 0 || mb.len % L != 0) {
        PyErr_Format(PyExc_ValueError, "matrix of %zd bytes is not a positive number of rows of %zd lanes", mb.len, L);
        goto done;
    }
    Py_ssize_t R = mb.len / L;
    if (last < 1 || last > L) {
        PyErr_Format(PyExc_ValueError, "last must be in [1, %zd], got %zd", L, last);
        goto done;
    }
    if (t0 < 1 || t0 > R) {
        PyErr_Format(PyExc_ValueError, "tail_start must be in [1, %zd], got %zd", R, t0);
        goto done;
    }
    if (sb.len != 4 * L + 2 * R) {
        PyErr_Format(PyExc_ValueError, "stream must hold 4L + 2R = %zd bytes, got %zd", 4 * L + 2 * R, sb.len);
        goto done;
    }
    if (xb.len != SBOX_SAMPLES) {
        PyErr_Format(PyExc_ValueError, "S-box needs %d samples, got %zd", SBOX_SAMPLES, xb.len);
        goto done;
    }
    if (g_f < 0 || g_f > 255 || g_b < 0 || g_b > 255) {
        PyErr_SetString(PyExc_ValueError, "g_f and g_b must be bytes (0..255)");
        goto done;
    }
    if (gfni_req < -1 || gfni_req > 1) {
        PyErr_SetString(PyExc_ValueError, "gfni must be -1 (if the CPU has it), 0 (table kernel) or 1 (required)");
        goto done;
    }
    if (src != Py_None) {
        if (PyObject_GetBuffer(src, &srcb, PyBUF_SIMPLE) < 0)
            goto done;
        have_src = 1;
        if (srcb.len != (R - 1) * L + last) {
            PyErr_Format(PyExc_ValueError, "src must hold (R-1)*L + last = %zd bytes, got %zd", (R - 1) * L + last, srcb.len);
            goto done;
        }
    }
    if (gfni_req == 1 && !cpu_gfni) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU or build has no GFNI + AVX-512BW kernel");
        goto done;
    }
    /* the GFNI kernel works on whole 64-lane blocks; narrower layouts use the tables */
    int gfni = gfni_req != 0 && cpu_gfni && L >= 64;
    sbox_def sd;
    sbox_from_samples(xb.buf, &sd);
    const uint8_t *st = sb.buf;
    job jb = {mb.buf, R, L, last, t0, k, st, st + L, st + 2 * L, st + 3 * L, st + 4 * L, st + 4 * L + R,
              have_src ? (const uint8_t *)srcb.buf : NULL, 0};
    Py_BEGIN_ALLOW_THREADS
    if (forward)
        encrypt_job(&jb, &sd, (uint8_t)g_f, (uint8_t)g_b, gfni);
    else
        decrypt_job(&jb, &sd, (uint8_t)g_f, (uint8_t)g_b, gfni);
    Py_END_ALLOW_THREADS
    result = PyUnicode_FromString(kernel_name(gfni));
done:
    PyBuffer_Release(&mb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&xb);
    if (have_src)
        PyBuffer_Release(&srcb);
    return result;
}

PyDoc_STRVAR(encrypt_doc,
"encrypt(m, st, sbox_samples, g_f, g_b, lane_bits, last, tail_start, gfni=-1, src=None) -> str\n\n"
"Encrypt the padded rows x lanes byte matrix m in place (forward, backward and tail passes);\n"
"with src (the (R-1)*L + last input bytes), m need not be initialised: the input is read\n"
"from src and the matrix (zero padding included) written by the first pass.\n"
"st: the 4L + 2R used samples of the byte stream (IVF, KF, IVB, KB, WF, WB); sbox_samples:\n"
"the 34 used samples of the S-box stream; g_f, g_b: the multipliers; L = 2^lane_bits,\n"
"R = len(m) / L. gfni: -1 = GFNI kernel if the CPU has it, 0 = table kernel, 1 = GFNI or\n"
"RuntimeError. Returns the kernel that ran ('gfni' or 'table'; layouts under 64 lanes\n"
"always use the tables).");

static PyObject *py_encrypt(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return run_cipher(args, kwargs, 1);
}

PyDoc_STRVAR(decrypt_doc,
"decrypt(m, st, sbox_samples, g_f, g_b, lane_bits, last, tail_start, gfni=-1, src=None) -> str\n\n"
"Exact inverse of encrypt on the padded matrix (tail, backward, forward undone); src as for\n"
"encrypt.");

static PyObject *py_decrypt(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    return run_cipher(args, kwargs, 0);
}

static PyMethodDef methods[] = {
    {"scalar_samples", py_scalar_samples, METH_VARARGS, scalar_samples_doc},
    {"stream_samples", py_stream_samples, METH_VARARGS, stream_samples_doc},
    {"distinct", py_distinct, METH_O, distinct_doc},
    {"sbox", py_sbox, METH_VARARGS, sbox_doc},
    {"encrypt", (PyCFunction)(void (*)(void))py_encrypt, METH_VARARGS | METH_KEYWORDS, encrypt_doc},
    {"decrypt", (PyCFunction)(void (*)(void))py_decrypt, METH_VARARGS | METH_KEYWORDS, decrypt_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "cipher._native",
    "C kernels of the ScanFort chaos cipher v1 (see cipher/_native.c and cipher/SPEC.md).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    gf_init();
#if SF_GFNI_BUILT
    __builtin_cpu_init();
    cpu_gfni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("gfni");
#else
    cpu_gfni = 0;
#endif
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    PyObject *flag = PyBool_FromLong(cpu_gfni);
    if (PyModule_AddObject(mod, "GFNI", flag) < 0) {
        Py_DECREF(flag);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

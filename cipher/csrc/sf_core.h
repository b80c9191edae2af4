/*
 * The C core of the ScanFort chaos cipher, version 1 (cipher/SPEC.md §1): no Python here,
 * so the same files build the extension cipher._native (module.c) and the stand-alone
 * kernel driver the tests run under qemu-aarch64 (tests/native/kernel_driver.c).
 *
 *   sf_core.c      GF(2^8), GF(2) matrices, the S-box, the per-pass constants, the three
 *                  passes and their inverses, the kernel list;
 *   sf_maps.c      the logistic maps and the health check's count (exact IEEE doubles);
 *   k_table.c      the portable kernel: 256-entry tables (any C99 compiler);
 *   k_aesni_sse.c, k_aesni_avx2.c, k_vaes_avx2.c (with k_aesni.h): AES SubBytes between
 *                  two affine maps done with PSHUFB nibble lookups: SSSE3, AVX2, AVX2 + VAES;
 *   k_gfni_avx2.c, k_gfni_avx512.c (with k_gfni.h): GF2P8AFFINEQB / GF2P8AFFINEINVQB;
 *   k_neon.c       ARMv8 AESE + TBL;
 *   rowloop.h      the row loop every vector kernel shares (full vectors, then the ragged
 *                  end or a narrow row through small buffers).
 *
 * A kernel computes one row of a pass. Every kernel but the table kernel is constant time:
 * no memory access and no branch depends on a key-derived byte or on the data.
 */
#ifndef SF_CORE_H
#define SF_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(__cplusplus) && !defined(inline)
#define inline __inline /* MSVC's C mode: the portable core and table kernel build there */
#endif

#define SF_SBOX_SAMPLES 34 /* A1 (8 + 8 samples), c1, A2 (8 + 8), c2 */
#define SF_MAX_LANE_BITS 30 /* a sanity bound; the cipher uses at most 16 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SF_X86 1
#else
#define SF_X86 0
#endif
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define SF_ARM 1
#else
#define SF_ARM 0
#endif

/* The S-box S(x) = A2·inv(A1·x ⊕ c1) ⊕ c2 (SPEC §1.4); matrices as 8 row bytes. */
typedef struct {
    uint8_t a1[8], a2[8];
    uint8_t c1, c2;
} sf_sbox;

/* One pass's constants, filled for the kernel that runs (see sf_kernel.needs). */
typedef struct {
    /* table kernel: encrypt S[~v] (XNOR folded), decrypt S^-1; multiplication by g */
    uint8_t tab[256], mul[256];
    /* nibble kernels (AES-NI, NEON): the affine map before SubBytes, the one after it and
     * the multiplication by g, each as f(x) = lo[x & 15] ⊕ hi[x >> 4] */
    uint8_t in_lo[16], in_hi[16], out_lo[16], out_hi[16], mul_lo[16], mul_hi[16];
    /* GFNI kernels: matrix operands and the constants of the two S-box halves */
    uint64_t q1, q2, qg;
    uint8_t b1, b2;
} sf_consts;

/* One row of a round: reads the row from `in`, writes `width` lanes to `out` (the same
 * row of the matrix, or the caller's input when the first pass copies it in). */
typedef void (*sf_row_fn)(uint8_t *out, const uint8_t *in, const uint8_t *prev, const uint8_t *cross,
                          const uint8_t *lane_key, uint8_t rk, ptrdiff_t L, ptrdiff_t d, ptrdiff_t width,
                          const sf_consts *c);

enum { SF_NEEDS_TABLES = 1, SF_NEEDS_NIBBLES = 2, SF_NEEDS_QWORDS = 4 };

typedef struct {
    const char *name;
    int needs;         /* which sf_consts fields the kernel reads */
    int constant_time; /* no secret-indexed memory access */
    int (*cpu_ok)(void);
    sf_row_fn enc, dec;
} sf_kernel;

/* The padded R × L byte matrix and the per-image parameters of one call. */
typedef struct {
    uint8_t *m;
    ptrdiff_t R, L, last, t0;
    int k;
    const uint8_t *iv_f, *key_f, *iv_b, *key_b, *row_f, *row_b;
    /* The caller's input (n = (R-1)·L + last bytes), or NULL when m already holds it. The
     * first pass that reads every row takes rows below src_rows from here (one pass over
     * memory instead of a copy and a pass); all other reads are from m. */
    const uint8_t *src;
    ptrdiff_t src_rows;
} sf_job;

/* Kernels built into this binary, fastest first; the table kernel is last. */
extern const sf_kernel *const sf_kernels[];
extern const int sf_kernel_count;

void sf_init(void);                                  /* once per process, before anything else */
const sf_kernel *sf_kernel_named(const char *name);  /* NULL: not built */
uint8_t sf_gf_mul(uint8_t a, uint8_t b);             /* constant time */
void sf_sbox_from_samples(const uint8_t *samples, sf_sbox *d);
uint8_t sf_sbox_eval(const sf_sbox *d, unsigned x);  /* table lookup: not constant time */
void sf_scalar_fill(double x0, double r, ptrdiff_t transient, double quant, uint8_t *out, ptrdiff_t count);
void sf_stream_fill(double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient, double quant,
                    double *x, uint8_t *out, ptrdiff_t count);
/* The byte stream with one instruction set (tests compare them): -1 if the CPU lacks it. */
enum { SF_ISA_GENERIC = 0, SF_ISA_AVX2 = 1, SF_ISA_AVX512 = 2 };
int sf_stream_fill_isa(int isa, double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient,
                       double quant, double *x, uint8_t *out, ptrdiff_t count);
int sf_distinct(const uint8_t *p, ptrdiff_t n);      /* constant-time count of distinct bytes */
void sf_encrypt(sf_job *jb, const sf_sbox *sd, uint8_t g_f, uint8_t g_b, const sf_kernel *kn);
void sf_decrypt(sf_job *jb, const sf_sbox *sd, uint8_t g_f, uint8_t g_b, const sf_kernel *kn);

/* The v bytes cross[(jj + t) mod L], t < v, for a vector kernel with L >= v: a pointer
 * into the row, or `tmp` where the window wraps around the row's end. */
static inline const uint8_t *sf_rotated(const uint8_t *cross, ptrdiff_t jj, ptrdiff_t L, ptrdiff_t v,
                                        uint8_t *tmp)
{
    if (jj >= L)
        jj -= L;
    if (jj + v <= L)
        return cross + jj;
    ptrdiff_t n1 = L - jj;
    memcpy(tmp, cross + jj, (size_t)n1);
    memcpy(tmp + n1, cross, (size_t)(v - n1));
    return tmp;
}

/* The ragged end of a row (lanes j .. width-1, fewer than a vector) in buffers of v bytes:
 * in, prev and the lane key copied, cross rotated lane by lane. Positions are public. */
static inline void sf_partial(uint8_t *a, uint8_t *p, uint8_t *k, uint8_t *x, const uint8_t *in,
                              const uint8_t *prev, const uint8_t *cross, const uint8_t *lane_key,
                              ptrdiff_t j, ptrdiff_t n, ptrdiff_t v, ptrdiff_t L, ptrdiff_t d)
{
    memset(a, 0, (size_t)v);
    memset(p, 0, (size_t)v);
    memset(k, 0, (size_t)v);
    memset(x, 0, (size_t)v);
    memcpy(a, in + j, (size_t)n);
    memcpy(p, prev + j, (size_t)n);
    memcpy(k, lane_key + j, (size_t)n);
    for (ptrdiff_t t = 0; t < n; t++) {
        ptrdiff_t s = j + t + d;
        x[t] = cross[s >= L ? s - L : s];
    }
}

#endif

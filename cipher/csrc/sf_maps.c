/*
 * The logistic maps of the chaos cipher (cipher/SPEC.md §1.3): the scalar map of the S-box
 * stream, the 256-lane byte stream (one source compiled per instruction set) and the
 * health check's count of distinct values; same bits as cipher/_reference.py.
 */
#include "sf_core.h"

#include <float.h>

#if defined(__FAST_MATH__)
#error "the chaos cipher must not be built with -ffast-math: the logistic maps need exact IEEE-754 doubles"
#endif
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "the chaos cipher needs double arithmetic evaluated in double precision (SSE2, not x87)"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------------ logistic maps */

/* floor(x * quant) mod 256. q = x * quant is exact (quant is a power of two in the cipher);
 * q = 256·hi + lo with hi = floor(q / 256) and lo in [0, 256) both exact, and the
 * conversions stay in int32, which SSE2 vectorises. In range because the callers check
 * the arguments (0 <= x0 <= 1, 0 <= r <= 4, quant <= 2^32): then every step keeps x in
 * [0, 1] (fl(r·x) <= 4x and fl(1 - x) rounds up by at most 2^-54 only where 4x(1 - x) is
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

void sf_scalar_fill(double x0, double r, ptrdiff_t transient, double quant, uint8_t *out, ptrdiff_t count)
{
    double x = x0;
    for (ptrdiff_t t = 0; t < transient; t++)
        x = step_map(r, x);
    for (ptrdiff_t i = 0; i < count; i++) {
        x = step_map(r, x);
        out[i] = sample(x, quant);
    }
}

/* The body of the byte stream, inlined into one function per instruction set below: the
 * same IEEE-754 operations in the same order (no FMA: -ffp-contract=off, and no target
 * enables it), so every version yields the same bits; wider registers step more lanes at
 * once (about 1000 steps of 256 lanes for a radiograph's 262 KB of stream). */
static inline void stream_body(double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient, double quant,
                               double *x, uint8_t *out, ptrdiff_t count)
{
    for (ptrdiff_t j = 0; j < lanes; j++) {
        double off = (double)j * step;
        x[j] = x0 + off;
    }
    for (ptrdiff_t t = 0; t < transient; t++)
        for (ptrdiff_t j = 0; j < lanes; j++)
            x[j] = step_map(r, x[j]);
    for (ptrdiff_t t = 0; t < count; t += lanes) {
        ptrdiff_t n = count - t < lanes ? count - t : lanes;
        for (ptrdiff_t j = 0; j < lanes; j++) /* every lane steps, as in the reference */
            x[j] = step_map(r, x[j]);
        for (ptrdiff_t j = 0; j < n; j++)
            out[t + j] = sample(x[j], quant);
    }
}

static void stream_generic(double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient, double quant,
                           double *x, uint8_t *out, ptrdiff_t count)
{
    stream_body(x0, r, lanes, step, transient, quant, x, out, count);
}

#if SF_X86
__attribute__((target("avx2"))) static void stream_avx2(double x0, double r, ptrdiff_t lanes, double step,
                                                        ptrdiff_t transient, double quant, double *x, uint8_t *out,
                                                        ptrdiff_t count)
{
    stream_body(x0, r, lanes, step, transient, quant, x, out, count);
}

__attribute__((target("avx512f,avx512bw"))) static void stream_avx512(double x0, double r, ptrdiff_t lanes,
                                                                      double step, ptrdiff_t transient, double quant,
                                                                      double *x, uint8_t *out, ptrdiff_t count)
{
    stream_body(x0, r, lanes, step, transient, quant, x, out, count);
}
#endif

int sf_stream_fill_isa(int isa, double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient,
                       double quant, double *x, uint8_t *out, ptrdiff_t count)
{
    switch (isa) {
    case SF_ISA_GENERIC:
        stream_generic(x0, r, lanes, step, transient, quant, x, out, count);
        return 0;
#if SF_X86
    case SF_ISA_AVX2:
        if (!__builtin_cpu_supports("avx2"))
            return -1;
        stream_avx2(x0, r, lanes, step, transient, quant, x, out, count);
        return 0;
    case SF_ISA_AVX512:
        if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")))
            return -1;
        stream_avx512(x0, r, lanes, step, transient, quant, x, out, count);
        return 0;
#endif
    default:
        return -1;
    }
}

void sf_stream_fill(double x0, double r, ptrdiff_t lanes, double step, ptrdiff_t transient, double quant,
                    double *x, uint8_t *out, ptrdiff_t count)
{
    for (int isa = SF_ISA_AVX512; isa > SF_ISA_GENERIC; isa--) /* the widest this CPU has */
        if (sf_stream_fill_isa(isa, x0, r, lanes, step, transient, quant, x, out, count) == 0)
            return;
    stream_generic(x0, r, lanes, step, transient, quant, x, out, count);
}

/* The health check's count of distinct values, on a 256-bit set held in four words that
 * are all touched for every byte (no memory access indexed by a sample). */
int sf_distinct(const uint8_t *p, ptrdiff_t n)
{
    uint64_t set[4] = {0, 0, 0, 0};
    for (ptrdiff_t i = 0; i < n; i++) {
        unsigned v = p[i];
        uint64_t bit = (uint64_t)1 << (v & 63);
        for (unsigned w = 0; w < 4; w++)
            set[w] |= bit & (0 - (uint64_t)((v >> 6) == w));
    }
    int count = 0;
    for (int w = 0; w < 4; w++)
        for (int b = 0; b < 64; b++)
            count += (int)((set[w] >> b) & 1);
    return count;
}


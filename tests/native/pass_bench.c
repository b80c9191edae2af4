/*
 * Bounds of the chaos cipher's passes on this CPU (bench/bench_cipher_bounds.py builds and
 * runs it; x86-64 only): per AES-NI kernel, the cost of one round per 32 bytes on rows
 * that stay in L1, one pass over a radiograph-sized matrix (275 rows of 65536 lanes, in
 * place), a pass that only loads the same four operands and stores (the memory floor of a
 * pass), and sf_encrypt / sf_decrypt on the whole matrix. Minimum of repeats, in TSC
 * cycles or milliseconds; the input is synthetic (no key schedule: the constants are
 * zero, which costs the same as any other).
 */
#define _GNU_SOURCE
#include "sf_core.h"

#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

#define REPS 15

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The memory traffic of a round without its arithmetic: four loads, one store per vector. */
__attribute__((target("avx2"))) static void loads_and_stores(uint8_t *out, const uint8_t *in, const uint8_t *prev,
                                                            const uint8_t *key, ptrdiff_t L, ptrdiff_t d)
{
    for (ptrdiff_t j = 0; j + 32 <= L; j += 32) {
        ptrdiff_t o = j + d + 32 <= L ? j + d : j;
        __m256i a = _mm256_xor_si256(_mm256_loadu_si256((const void *)(in + j)), _mm256_loadu_si256((const void *)(prev + j)));
        __m256i b = _mm256_xor_si256(_mm256_loadu_si256((const void *)(key + j)), _mm256_loadu_si256((const void *)(prev + o)));
        _mm256_storeu_si256((void *)(out + j), _mm256_xor_si256(a, b));
    }
}

int main(void)
{
    sf_init();
    __builtin_cpu_init();
    const int k = 16;
    const ptrdiff_t L = (ptrdiff_t)1 << k, R = 275, n = 18000000, last = n - (R - 1) * L, t0 = R - (k + 2);
    const ptrdiff_t SL = 4096; /* an L1-resident row */
    uint8_t *m = aligned_alloc(64, (size_t)(R * L)), *src = aligned_alloc(64, (size_t)(R * L));
    uint8_t *st = aligned_alloc(64, (size_t)(4 * L + 2 * R + 64)), *small = aligned_alloc(64, (size_t)(5 * SL));
    if (!m || !src || !st || !small)
        return 1;
    for (ptrdiff_t i = 0; i < R * L; i++)
        m[i] = src[i] = (uint8_t)(i * 7 + 3);
    for (ptrdiff_t i = 0; i < 4 * L + 2 * R; i++)
        st[i] = (uint8_t)(i * 13 + 5);
    for (ptrdiff_t i = 0; i < 5 * SL; i++)
        small[i] = (uint8_t)(i * 5 + 1);
    uint8_t smp[SF_SBOX_SAMPLES];
    for (int i = 0; i < SF_SBOX_SAMPLES; i++)
        smp[i] = (uint8_t)(i * 37 + 11);
    sf_sbox sd;
    sf_sbox_from_samples(smp, &sd);
    sf_consts c;
    memset(&c, 0, sizeof c);
    double mem = 1e9;
    for (int r = 0; r < REPS; r++) {
        double t = now();
        for (ptrdiff_t i = 1; i < R; i++)
            loads_and_stores(m + i * L, m + i * L, m + (i - 1) * L, st + L, L, (ptrdiff_t)1 << (i % k));
        t = now() - t;
        mem = t < mem ? t : mem;
    }
    printf("loads+stores only, one pass in place over %ld x %ld bytes: %.3f ms\n", (long)R, (long)L, mem * 1e3);
    const char *names[] = {"vaes-avx2", "aesni-avx2", "aesni-sse"};
    for (int q = 0; q < 3; q++) {
        const sf_kernel *kn = sf_kernel_named(names[q]);
        if (kn == NULL || !kn->cpu_ok())
            continue;
        double l1e = 1e30, l1d = 1e30, pass = 1e9, enc = 1e9, dec = 1e9;
        long iters = 2048;
        for (int r = 0; r < REPS; r++) {
            unsigned long long c0 = __rdtsc();
            for (long i = 0; i < iters; i++) {
                ptrdiff_t a = 1 + i % 3;
                kn->enc(small + a * SL, small + a * SL, small + (a - 1) * SL, small + (a - 1) * SL, small + 4 * SL, 1, SL,
                        64, SL, &c);
            }
            double e = (double)(__rdtsc() - c0) / ((double)iters * (double)SL / 32);
            l1e = e < l1e ? e : l1e;
            c0 = __rdtsc();
            for (long i = 0; i < iters; i++) {
                ptrdiff_t a = 1 + i % 3;
                kn->dec(small + a * SL, small + a * SL, small + (a - 1) * SL, small + (a - 1) * SL, small + 4 * SL, 1, SL,
                        64, SL, &c);
            }
            e = (double)(__rdtsc() - c0) / ((double)iters * (double)SL / 32);
            l1d = e < l1d ? e : l1d;
            double t = now();
            for (ptrdiff_t i = 1; i < R; i++)
                kn->enc(m + i * L, m + i * L, m + (i - 1) * L, m + (i - 1) * L, st + L, 1, L, (ptrdiff_t)1 << (i % k), L, &c);
            t = now() - t;
            pass = t < pass ? t : pass;
            sf_job je = {m, R, L, last, t0, k, st, st + L, st + 2 * L, st + 3 * L, st + 4 * L, st + 4 * L + R, src, 0};
            t = now();
            sf_encrypt(&je, &sd, 3, 5, kn);
            t = now() - t;
            enc = t < enc ? t : enc;
            sf_job jd = {m, R, L, last, t0, k, st, st + L, st + 2 * L, st + 3 * L, st + 4 * L, st + 4 * L + R, src, 0};
            t = now();
            sf_decrypt(&jd, &sd, 3, 5, kn);
            t = now() - t;
            dec = t < dec ? t : dec;
        }
        printf("%s: L1 rows %.2f (encrypt) %.2f (decrypt) TSC cycles per 32 B; one pass %.3f ms; "
               "sf_encrypt %.3f ms, sf_decrypt %.3f ms\n",
               names[q], l1e, l1d, pass * 1e3, enc * 1e3, dec * 1e3);
    }
    return 0;
}

/*
 * A stand-alone driver of the cipher's C core (cipher/csrc), for checking a kernel on a
 * CPU the test machine only emulates (the NEON kernel under qemu-aarch64; see
 * tests/test_neon_kernel.py). No Python: it links sf_core.c, sf_maps.c, k_table.c and the
 * kernel.
 *
 *   kernel_driver KERNEL jobs       read jobs from stdin, write each ciphertext to stdout
 *   kernel_driver KERNEL random N   N random layouts and parameters, KERNEL against the
 *                                   table kernel both ways; prints "ok N"
 *   kernel_driver - maps N          N random logistic-map seeds: the byte stream of every
 *                                   instruction set this CPU has against the generic C
 *                                   one; prints "ok N ISAS"
 *   kernel_driver KERNEL ct         under valgrind (built with -DSF_CT_CHECK): every secret
 *                                   input (stream, S-box samples, multipliers, data, map
 *                                   seeds) is marked undefined, then the setup, the maps,
 *                                   the health check's count and KERNEL's passes run both
 *                                   ways; memcheck reports any branch or memory address
 *                                   that depends on them (tests/test_constant_time.py)
 *
 * A job (little-endian): "SFJ1", u32 lane_bits, last, tail_start, rows, g_f, g_b, then the
 * 4L + 2R stream bytes, the 34 S-box samples and the n = (rows-1)·L + last input bytes.
 * Every job is also decrypted and encrypted with the table kernel; a mismatch exits 2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sf_core.h"

#if defined(SF_CT_CHECK)
#include <valgrind/memcheck.h>
#define SECRET(p, n) VALGRIND_MAKE_MEM_UNDEFINED((p), (n))
#else
#define SECRET(p, n) ((void)(p), (void)(n))
#endif

static void die(int code, const char *msg)
{
    fprintf(stderr, "kernel_driver: %s\n", msg);
    exit(code);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        die(1, "out of memory");
    return p;
}

static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void job_init(sf_job *jb, uint8_t *m, ptrdiff_t R, int k, ptrdiff_t last, ptrdiff_t t0, const uint8_t *st,
                     const uint8_t *src)
{
    ptrdiff_t L = (ptrdiff_t)1 << k;
    sf_job j = {m, R, L, last, t0, k, st, st + L, st + 2 * L, st + 3 * L, st + 4 * L, st + 4 * L + R, src, 0};
    *jb = j;
}

/* Encrypt `in` with kn and the table kernel, decrypt with kn; 0 when all agree. */
static int check(const sf_kernel *kn, int k, ptrdiff_t R, ptrdiff_t last, ptrdiff_t t0, const uint8_t *st,
                 const uint8_t *smp, uint8_t g_f, uint8_t g_b, const uint8_t *in, uint8_t *ct_out)
{
    ptrdiff_t L = (ptrdiff_t)1 << k, n = (R - 1) * L + last;
    const sf_kernel *table = sf_kernel_named("table");
    uint8_t *m = xmalloc((size_t)(R * L)), *t = xmalloc((size_t)(R * L)), *back = xmalloc((size_t)(R * L));
    sf_sbox sd;
    sf_job jb;
    sf_sbox_from_samples(smp, &sd);
    job_init(&jb, m, R, k, last, t0, st, in);
    sf_encrypt(&jb, &sd, g_f, g_b, kn);
    job_init(&jb, t, R, k, last, t0, st, in);
    sf_encrypt(&jb, &sd, g_f, g_b, table);
    int bad = memcmp(m, t, (size_t)n) != 0;
    job_init(&jb, back, R, k, last, t0, st, m);
    sf_decrypt(&jb, &sd, g_f, g_b, kn);
    bad |= (memcmp(back, in, (size_t)n) != 0) << 1;
    if (ct_out != NULL)
        memcpy(ct_out, m, (size_t)n);
    free(m);
    free(t);
    free(back);
    return bad;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t next(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Du;
}

static void fill(uint8_t *p, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        p[i] = (uint8_t)(next() >> 56);
}

static int run_random(const sf_kernel *kn, long count)
{
    for (long c = 0; c < count; c++) {
        int k = (int)(next() % 17); /* 1 … 65536 lanes */
        ptrdiff_t L = (ptrdiff_t)1 << k;
        ptrdiff_t R = 1 + (ptrdiff_t)(next() % (k >= 12 ? 4 : 80));
        ptrdiff_t last = 1 + (ptrdiff_t)(next() % (uint64_t)L);
        ptrdiff_t t0 = R - (k + 2) > 1 ? R - (k + 2) : 1;
        ptrdiff_t n = (R - 1) * L + last;
        uint8_t *st = xmalloc((size_t)(4 * L + 2 * R)), *in = xmalloc((size_t)n), smp[SF_SBOX_SAMPLES];
        fill(st, 4 * L + 2 * R);
        fill(in, n);
        fill(smp, SF_SBOX_SAMPLES);
        uint8_t g_f = (uint8_t)(2 + next() % 254), g_b = (uint8_t)(2 + next() % 254);
        int bad = check(kn, k, R, last, t0, st, smp, g_f, g_b, in, NULL);
        free(st);
        free(in);
        if (bad) {
            fprintf(stderr, "kernel_driver: %s differs (code %d) at k=%d R=%td last=%td\n", kn->name, bad, k, R, last);
            return 2;
        }
    }
    printf("ok %ld\n", count);
    return 0;
}

/* Layouts: one lane, a narrow row, ragged rows of every vector width, a wide layout. */
static int run_ct(const sf_kernel *kn)
{
    static const int layouts[][3] = {{0, 5, 1}, {3, 9, 5}, {5, 70, 17}, {6, 66, 63}, {7, 65, 100}, {12, 20, 4000}};
    for (size_t c = 0; c < sizeof layouts / sizeof layouts[0]; c++) {
        int k = layouts[c][0];
        ptrdiff_t L = (ptrdiff_t)1 << k, R = layouts[c][1], last = layouts[c][2];
        ptrdiff_t t0 = R - (k + 2) > 1 ? R - (k + 2) : 1, n = (R - 1) * L + last;
        uint8_t *st = xmalloc((size_t)(4 * L + 2 * R)), *in = xmalloc((size_t)n), smp[SF_SBOX_SAMPLES];
        uint8_t *m = xmalloc((size_t)(R * L)), *back = xmalloc((size_t)(R * L));
        fill(st, 4 * L + 2 * R);
        fill(in, n);
        fill(smp, SF_SBOX_SAMPLES);
        uint8_t g[2] = {(uint8_t)(2 + next() % 254), (uint8_t)(2 + next() % 254)};
        SECRET(st, (size_t)(4 * L + 2 * R));
        SECRET(in, (size_t)n);
        SECRET(smp, sizeof smp);
        SECRET(g, sizeof g);
        sf_sbox sd;
        sf_job jb;
        sf_sbox_from_samples(smp, &sd);
        job_init(&jb, m, R, k, last, t0, st, in);
        sf_encrypt(&jb, &sd, g[0], g[1], kn);
        job_init(&jb, back, R, k, last, t0, st, m);
        sf_decrypt(&jb, &sd, g[0], g[1], kn);
        free(st);
        free(in);
        free(m);
        free(back);
    }
    /* the logistic maps and the health check's count, on secret seeds */
    double seed[2] = {0.3, 3.995}, lanes[256];
    uint8_t out[600];
    SECRET(seed, sizeof seed);
    sf_scalar_fill(seed[0], seed[1], 1000, 4294967296.0, out, 300);
    sf_stream_fill(seed[0], seed[1], 256, 1.0 / 4294967296.0, 64, 4294967296.0, lanes, out, 600);
    volatile int distinct = sf_distinct(out, 600);
    (void)distinct;
    printf("ran %s\n", kn->name);
    return 0;
}

static int run_maps(long count)
{
    double x[256];
    uint8_t *want = xmalloc(6000), *got = xmalloc(6000);
    int isas = 1;
    for (long c = 0; c < count; c++) {
        double x0 = 0.0625 + 0.875 * (double)(next() >> 11) * (1.0 / 9007199254740992.0);
        double r = 3.99 + 0.0099 * (double)(next() >> 11) * (1.0 / 9007199254740992.0);
        ptrdiff_t n = (ptrdiff_t)(next() % 6000);
        sf_stream_fill_isa(SF_ISA_GENERIC, x0, r, 256, 1.0 / 4294967296.0, 64, 4294967296.0, x, want, n);
        isas = 1;
        for (int isa = SF_ISA_GENERIC + 1; isa <= SF_ISA_AVX512; isa++) {
            if (sf_stream_fill_isa(isa, x0, r, 256, 1.0 / 4294967296.0, 64, 4294967296.0, x, got, n) != 0)
                continue;
            isas++;
            if (memcmp(want, got, (size_t)n) != 0) {
                fprintf(stderr, "kernel_driver: stream of ISA %d differs at x0=%.17g r=%.17g\n", isa, x0, r);
                return 2;
            }
        }
    }
    printf("ok %ld %d\n", count, isas);
    free(want);
    free(got);
    return 0;
}

static int read_exact(uint8_t *p, size_t n)
{
    return fread(p, 1, n, stdin) == n;
}

static int run_jobs(const sf_kernel *kn)
{
    uint8_t hdr[28];
    while (read_exact(hdr, 4)) {
        if (memcmp(hdr, "SFJ1", 4) != 0 || !read_exact(hdr + 4, 24))
            die(1, "bad job header");
        uint32_t k = u32(hdr + 4), last = u32(hdr + 8), t0 = u32(hdr + 12), R = u32(hdr + 16);
        uint32_t g_f = u32(hdr + 20), g_b = u32(hdr + 24);
        if (k > 16 || R < 1 || last < 1 || last > (1u << k) || t0 < 1 || t0 > R || g_f > 255 || g_b > 255)
            die(1, "job out of range");
        ptrdiff_t L = (ptrdiff_t)1 << k, n = ((ptrdiff_t)R - 1) * L + (ptrdiff_t)last;
        uint8_t *st = xmalloc((size_t)(4 * L + 2 * (ptrdiff_t)R)), *in = xmalloc((size_t)n), *ct = xmalloc((size_t)n);
        uint8_t smp[SF_SBOX_SAMPLES];
        if (!read_exact(st, (size_t)(4 * L + 2 * (ptrdiff_t)R)) || !read_exact(smp, sizeof smp) || !read_exact(in, (size_t)n))
            die(1, "truncated job");
        int bad = check(kn, (int)k, R, last, t0, st, smp, (uint8_t)g_f, (uint8_t)g_b, in, ct);
        if (bad) {
            fprintf(stderr, "kernel_driver: %s differs (code %d) on a job with k=%u R=%u\n", kn->name, bad, k, R);
            return 2;
        }
        fwrite(ct, 1, (size_t)n, stdout);
        free(st);
        free(in);
        free(ct);
    }
    return 0;
}

int main(int argc, char **argv)
{
    sf_init();
    if (argc < 3)
        die(1, "usage: kernel_driver KERNEL jobs | random N | ct");
    if (strcmp(argv[1], "-") == 0 && strcmp(argv[2], "maps") == 0 && argc == 4)
        return run_maps(strtol(argv[3], NULL, 10));
    const sf_kernel *kn = sf_kernel_named(argv[1]);
    if (kn == NULL)
        die(1, "kernel not built into this driver");
    if (!kn->cpu_ok())
        die(3, "this CPU cannot run the kernel");
    if (strcmp(argv[2], "random") == 0 && argc == 4)
        return run_random(kn, strtol(argv[3], NULL, 10));
    if (strcmp(argv[2], "jobs") == 0)
        return run_jobs(kn);
    if (strcmp(argv[2], "ct") == 0)
        return run_ct(kn);
    die(1, "usage: kernel_driver KERNEL jobs | random N | ct");
    return 1;
}

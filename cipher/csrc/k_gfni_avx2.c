/* The GFNI kernel on 256-bit registers (VEX-encoded GF2P8AFFINEQB: GFNI + AVX2 without
 * AVX-512, e.g. Alder Lake and later client cores, Tremont/Gracemont Atoms). */
#include "sf_core.h"

#if SF_X86
#include <immintrin.h>

#define SF_KERNEL_TARGET __attribute__((target("avx2,gfni")))
#define SF_UNROLL 4
#define SF_V 32
typedef __m256i sf_vec;

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { _mm256_storeu_si256((__m256i *)(void *)p, v); }
SF_KERNEL_TARGET static inline sf_vec vset1_8(uint8_t b) { return _mm256_set1_epi8((char)b); }
SF_KERNEL_TARGET static inline sf_vec vset1_64(uint64_t q) { return _mm256_set1_epi64x((long long)q); }
#define vxor _mm256_xor_si256
#define vadd _mm256_add_epi8
#define vsub _mm256_sub_epi8
#define vaff(x, q) _mm256_gf2p8affine_epi64_epi8((x), (q), 0)
#define vaffinv(x, q) _mm256_gf2p8affineinv_epi64_epi8((x), (q), 0)

#include "k_gfni.h"

static int cpu_ok(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("gfni");
}

const sf_kernel sf_kernel_gfni_avx2 = {"gfni-avx2", SF_NEEDS_QWORDS, 1, cpu_ok, enc_row, dec_row};
#endif

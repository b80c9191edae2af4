/* The GFNI kernel on 512-bit registers (GFNI + AVX-512BW: Ice Lake, Zen 4 and later). */
#include "sf_core.h"

#if SF_X86
#include <immintrin.h>

#define SF_KERNEL_TARGET __attribute__((target("avx512f,avx512bw,gfni")))
#define SF_UNROLL 4
#define SF_V 64
typedef __m512i sf_vec;

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return _mm512_loadu_si512((const void *)p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { _mm512_storeu_si512((void *)p, v); }
SF_KERNEL_TARGET static inline sf_vec vset1_8(uint8_t b) { return _mm512_set1_epi8((char)b); }
SF_KERNEL_TARGET static inline sf_vec vset1_64(uint64_t q) { return _mm512_set1_epi64((long long)q); }
#define vxor _mm512_xor_si512
#define vadd _mm512_add_epi8
#define vsub _mm512_sub_epi8
#define vaff(x, q) _mm512_gf2p8affine_epi64_epi8((x), (q), 0)
#define vaffinv(x, q) _mm512_gf2p8affineinv_epi64_epi8((x), (q), 0)

#include "k_gfni.h"

static int cpu_ok(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("gfni");
}

const sf_kernel sf_kernel_gfni_avx512 = {"gfni-avx512", SF_NEEDS_QWORDS, 1, cpu_ok, enc_row, dec_row};
#endif

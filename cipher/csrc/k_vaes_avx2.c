/* The AES-NI kernel with VAES: one VAESENCLAST on 256 bits (Ice Lake, Zen 3 and later). */
#include "sf_core.h"

#if SF_X86
#include <immintrin.h>

#define SF_KERNEL_TARGET __attribute__((target("avx2,aes,vaes")))
#define SF_V 32
typedef __m256i sf_vec;

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { _mm256_storeu_si256((__m256i *)(void *)p, v); }
SF_KERNEL_TARGET static inline sf_vec vbcast16(const uint8_t *p)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
}
#define vxor _mm256_xor_si256
#define vand _mm256_and_si256
#define vadd _mm256_add_epi8
#define vsub _mm256_sub_epi8
#define vsrl4(x) _mm256_srli_epi16((x), 4)
#define vshuf _mm256_shuffle_epi8
#define vsub_bytes(y) _mm256_aesenclast_epi128((y), _mm256_setzero_si256())

#include "k_aesni.h"

static int cpu_ok(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vaes");
}

const sf_kernel sf_kernel_vaes_avx2 = {"vaes-avx2", SF_NEEDS_NIBBLES, 1, cpu_ok, enc_row, dec_row};
#endif

/* The AES-NI kernel on 256-bit registers (AVX2 + AES-NI, no VAES: Haswell 2013 and later,
 * Zen 1/2): PSHUFB on 32 bytes, AESENCLAST on each 128-bit half. */
#include "sf_core.h"

#if SF_X86
#include <immintrin.h>

#define SF_KERNEL_TARGET __attribute__((target("avx2,aes")))
#define SF_V 32
typedef __m256i sf_vec;

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { _mm256_storeu_si256((__m256i *)(void *)p, v); }
SF_KERNEL_TARGET static inline sf_vec vbcast16(const uint8_t *p)
{
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
}
SF_KERNEL_TARGET static inline sf_vec vsub_bytes(sf_vec y)
{
    __m128i lo = _mm_aesenclast_si128(_mm256_castsi256_si128(y), _mm_setzero_si128());
    __m128i hi = _mm_aesenclast_si128(_mm256_extracti128_si256(y, 1), _mm_setzero_si128());
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
#define vxor _mm256_xor_si256
#define vand _mm256_and_si256
#define vadd _mm256_add_epi8
#define vsub _mm256_sub_epi8
#define vsrl4(x) _mm256_srli_epi16((x), 4)
#define vshuf _mm256_shuffle_epi8

#include "k_aesni.h"

static int cpu_ok(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("aes");
}

const sf_kernel sf_kernel_aesni_avx2 = {"aesni-avx2", SF_NEEDS_NIBBLES, 1, cpu_ok, enc_row, dec_row};
#endif

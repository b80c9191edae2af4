/* The AES-NI kernel on 128-bit registers (SSSE3 + AES-NI: every x86-64 CPU since 2010). */
#include "sf_core.h"

#if SF_X86
#include <immintrin.h>

#define SF_KERNEL_TARGET __attribute__((target("ssse3,aes")))
#define SF_V 16
typedef __m128i sf_vec;

SF_KERNEL_TARGET static inline sf_vec ld(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }
SF_KERNEL_TARGET static inline void st(uint8_t *p, sf_vec v) { _mm_storeu_si128((__m128i *)(void *)p, v); }
SF_KERNEL_TARGET static inline sf_vec vbcast16(const uint8_t *p) { return ld(p); }
#define vxor _mm_xor_si128
#define vand _mm_and_si128
#define vadd _mm_add_epi8
#define vsub _mm_sub_epi8
#define vsrl4(x) _mm_srli_epi16((x), 4)
#define vshuf _mm_shuffle_epi8
#define vsub_bytes(y) _mm_aesenclast_si128((y), _mm_setzero_si128())

#include "k_aesni.h"

static int cpu_ok(void)
{
    return __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("aes");
}

const sf_kernel sf_kernel_aesni_sse = {"aesni-sse", SF_NEEDS_NIBBLES, 1, cpu_ok, enc_row, dec_row};
#endif

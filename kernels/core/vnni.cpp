// AVX-512 VNNI build of the SIMD block kernels (simd_body.inc): vpdpbusd on 256-bit vectors (EVEX,
// AVX512VL) does the u8 x s8 products and their int32 accumulation in one instruction, without the
// int16 intermediate of vpmaddubsw. Chosen at run time on CPUs that have AVX512-VNNI/VL/BW; the
// results are identical to the AVX2 and scalar paths (integer sums are exact in all of them).
#include <algorithm>
#include <cstring>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ZEROP_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

namespace zerop {

bool cpu_has_vnni() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  }();
  return ok;
}

namespace detail {
namespace {

// Integer product of R activation rows with NC nibble-packed weight rows over chunks [c0, c1).
template <int R, bool kSingle, int NC>
ZEROP_VNNI inline void accumulate(const int8_t* a, int64_t lda, const uint8_t* w, int64_t ldw,
                                  int64_t c0, int64_t c1, __m256i (*acc)[NC]) {
  const __m256i m0f = _mm256_set1_epi8(0x0F);
  const __m256i m08 = _mm256_set1_epi8(0x08);
  for (int64_t c = c0; c < c1; ++c) {
    __m256i ae[R], ao[R];
    for (int r = 0; r < R; ++r) {
      ae[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + c * kChunk));
      ao[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + c * kChunk + 32));
    }
    const bool line = (c & 1) == 0;  // two chunks per 64-byte line: one prefetch per line
    for (int j = 0; j < NC; ++j) {
      // the same bytes two blocks of NC weight rows ahead, into L2: hides DRAM latency when the
      // weights do not fit the caches (into L1 it ties up the few L1 miss buffers and halves
      // the DRAM rate; see BENCHMARKS.md)
      if (line)
        _mm_prefetch(reinterpret_cast<const char*>(w + (j + 2 * NC) * ldw + c * kChunkBytes),
                     _MM_HINT_T1);
      // (nibble & 0xF) ^ 8 turns a two's-complement int4 w into w + 8 (0..15): one vpternlogd,
      // whose table 0x6A is (a & b) ^ c
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw + c * kChunkBytes));
      const __m256i lo = _mm256_ternarylogic_epi32(v, m0f, m08, 0x6A);
      const __m256i hi = _mm256_ternarylogic_epi32(_mm256_srli_epi16(v, 4), m0f, m08, 0x6A);
      for (int r = 0; r < R; ++r)
        acc[r][j] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc[r][j], lo, ae[r]), hi, ao[r]);
    }
  }
}

// acc[i] += the sum of the four u8 x s8 products in 32-bit lane i.
ZEROP_VNNI inline __m256i dot4(__m256i acc, __m256i w, __m256i a) {
  return _mm256_dpbusd_epi32(acc, w, a);
}

ZEROP_VNNI inline __m256i dot8(__m256i acc, __m256i w0, __m256i a0, __m256i w1, __m256i a1) {
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, w0, a0), w1, a1);
}

}  // namespace

#define ZEROP_TARGET ZEROP_VNNI
#define ZEROP_BLOCK_FN block_vnni
#define ZEROP_CONV_FN conv_block_vnni
#include "simd_body.inc"
#undef ZEROP_TARGET
#undef ZEROP_BLOCK_FN
#undef ZEROP_CONV_FN

}  // namespace detail
}  // namespace zerop

#else  // not x86

namespace zerop {
bool cpu_has_vnni() { return false; }
namespace detail {
void block_vnni(int rows, const BlockArgs& b) { block_scalar(rows, b); }
void conv_block_vnni(int64_t rows, const ConvBlockArgs& b) { conv_block_scalar(rows, b); }
}  // namespace detail
}  // namespace zerop

#endif

// AVX2 implementation of the integer inner loops. Only these functions carry the avx2/fma target
// attribute, so the library still loads on CPUs without AVX2 (the dispatcher never calls them
// there).
//
// Inner product trick: weight nibbles are used offset by +8 (0..15, unsigned: an xor and a mask
// away from the packed byte) as the unsigned operand of vpmaddubsw, activations (-128..127) as the
// signed one:
//   sum a*w = sum a*(w+8) - 8*sum a,
// and the 8*sum a term (`corr`) is computed once per row. A vpmaddubsw pair is at most
// 2*15*128 = 3840 in magnitude and at most four of them are added in int16 (15360 < 32767): no
// saturation.
#include <algorithm>
#include <cstring>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ZEROP_AVX2 __attribute__((target("avx2,fma")))

namespace zerop {

bool cpu_has_avx2() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

namespace detail {
namespace {

// Integer product of R activation rows with NC weight rows over chunks [c0, c1) of one group,
// added to acc. Pairs of chunks are summed in int16 before widening (4 * 3840 < 32767).
template <int R, bool kSingle, int NC>
ZEROP_AVX2 inline void accumulate(const int8_t* a, int64_t lda, const uint8_t* w, int64_t ldw,
                                  int64_t c0, int64_t c1, __m256i (*acc)[NC]) {
  const __m256i m0f = _mm256_set1_epi8(0x0F);
  const __m256i m88 = _mm256_set1_epi8(static_cast<char>(0x88));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t c = c0; c < c1;) {
    const int steps = (!kSingle && c + 2 <= c1) ? 2 : 1;
    __m256i ae[R][2], ao[R][2];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < steps; ++u) {
        const int8_t* ar = a + r * lda + (c + u) * kChunk;
        ae[r][u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar));
        ao[r][u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + 32));
      }
    for (int j = 0; j < NC; ++j) {
      __m256i p[R];
      for (int r = 0; r < R; ++r) p[r] = _mm256_setzero_si256();
      for (int u = 0; u < steps; ++u) {
        if (u == 0 && (c & 1) == 0)  // two blocks of NC rows ahead, into L2, once per line
          _mm_prefetch(reinterpret_cast<const char*>(w + (j + 2 * NC) * ldw + c * kChunkBytes),
                       _MM_HINT_T1);
        // nibble ^ 8 turns a two's-complement int4 w into w + 8 (0..15), both nibbles at once
        const __m256i v = _mm256_xor_si256(
            _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(w + j * ldw + (c + u) * kChunkBytes)),
            m88);
        const __m256i lo = _mm256_and_si256(v, m0f);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f);
        for (int r = 0; r < R; ++r)
          p[r] = _mm256_add_epi16(p[r], _mm256_add_epi16(_mm256_maddubs_epi16(lo, ae[r][u]),
                                                         _mm256_maddubs_epi16(hi, ao[r][u])));
      }
      for (int r = 0; r < R; ++r)
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(p[r], ones));
    }
    c += steps;
  }
}

// acc[i] += the sum of the four u8 x s8 products in 32-bit lane i (pairs stay below 2 * 15 * 128).
ZEROP_AVX2 inline __m256i dot4(__m256i acc, __m256i w, __m256i a) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)));
}

// Two pairs summed in int16 before widening (2 * 3840 < 32767).
ZEROP_AVX2 inline __m256i dot8(__m256i acc, __m256i w0, __m256i a0, __m256i w1, __m256i a1) {
  const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// Sums of 8-byte runs of int8 values, as 4 int64 lanes (bytes biased to unsigned and corrected).
ZEROP_AVX2 inline __m256i sad_sum(__m256i v) {
  return _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))),
                         _mm256_setzero_si256());
}

}  // namespace

#define ZEROP_TARGET ZEROP_AVX2
#define ZEROP_BLOCK_FN block_avx2
#define ZEROP_CONV_FN conv_block_avx2
#define ZEROP_GEMV_FN gemv_avx2
#include "simd_body.inc"
#undef ZEROP_TARGET
#undef ZEROP_BLOCK_FN
#undef ZEROP_CONV_FN
#undef ZEROP_GEMV_FN

ZEROP_AVX2 void group_sums_avx2(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr) {
  std::fill(corr, corr + gm.groups, 0);
  for (int64_t c = 0; c < kc; ++c) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c * kChunk));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c * kChunk + 32));
    const __m256i t = _mm256_add_epi64(sad_sum(v0), sad_sum(v1));
    const int64_t lo = _mm256_extract_epi64(t, 0) + _mm256_extract_epi64(t, 1) - 128 * 32;
    const int64_t hi = _mm256_extract_epi64(t, 2) + _mm256_extract_epi64(t, 3) - 128 * 32;
    if (gm.group_chunks == 0) {
      corr[2 * c] += static_cast<int32_t>(8 * lo);
      if (2 * c + 1 < gm.groups) corr[2 * c + 1] += static_cast<int32_t>(8 * hi);
    } else {
      corr[c / gm.group_chunks] += static_cast<int32_t>(8 * (lo + hi));
    }
  }
}

ZEROP_AVX2 void quantize_avx2(const float* x, int64_t n, float s, int8_t* q) {
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i v[4];
    for (int u = 0; u < 4; ++u) {
      __m256 f = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * u), vs);
      f = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v[u] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, lo), hi));
    }
    const __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(p, order));
  }
  quantize_scalar(x + i, n - i, s, q + i);
}

ZEROP_AVX2 uint64_t read_sum_avx2(const uint8_t* p, size_t words) {
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                    _mm256_setzero_si256()};
  size_t w = 0;
  for (; w + 16 <= words; w += 16)
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm256_add_epi64(
          acc[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + (w + 4 * j) * 8)));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]),
                                      _mm256_add_epi64(acc[2], acc[3])));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + read_sum_scalar(p + w * 8, words - w);
}

ZEROP_AVX2 float absmax_avx2(const float* x, int64_t n) {
  const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float r = absmax_scalar(x + i, n - i);
  for (float v : lanes) r = std::max(r, v);
  return r;
}

}  // namespace detail
}  // namespace zerop

#else  // not x86: the "AVX2" entry points fall back to the scalar code

namespace zerop {
bool cpu_has_avx2() { return false; }
namespace detail {
void block_avx2(int rows, const BlockArgs& b) { block_scalar(rows, b); }
void conv_block_avx2(int64_t rows, const ConvBlockArgs& b) { conv_block_scalar(rows, b); }
int64_t gemv_avx2(const GemvArgs& g) { return g.n0; }
void group_sums_avx2(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr) {
  group_sums_scalar(a, kc, gm, corr);
}
void quantize_avx2(const float* x, int64_t n, float s, int8_t* q) { quantize_scalar(x, n, s, q); }
float absmax_avx2(const float* x, int64_t n) { return absmax_scalar(x, n); }
uint64_t read_sum_avx2(const uint8_t* p, size_t words) { return read_sum_scalar(p, words); }
}  // namespace detail
}  // namespace zerop

#endif

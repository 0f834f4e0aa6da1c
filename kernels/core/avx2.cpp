// AVX2 implementation of the integer inner loops. Only these functions carry the avx2/fma target
// attribute, so the library still loads on CPUs without AVX2 (the dispatcher never calls them there).
//
// Inner product trick: weight nibbles are used offset by +8 (0..15, unsigned: an xor and a mask away
// from the packed byte) as the unsigned operand of vpmaddubsw, activations (-128..127) as the signed one:
//   sum a*w = sum a*(w+8) - 8*sum a,
// and the 8*sum a term (`corr`) is computed once per row. A vpmaddubsw pair is at most
// 2*15*128 = 3840 in magnitude and at most four of them are added in int16 (15360 < 32767): no
// saturation.
#include <algorithm>

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

// [sum over the low 128 bits of acc[j] for j=0..3 | the same for the high 128 bits].
ZEROP_AVX2 inline __m256i reduce4(const __m256i* acc) {
  return _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
}

// Integer product of R activation rows with kNr weight rows over chunks [c0, c1) of one group,
// added to acc. Pairs of chunks are summed in int16 before widening (4 * 3840 < 32767).
template <int R, bool kSingle>
ZEROP_AVX2 inline void accumulate(const int8_t* a, int64_t lda, const uint8_t* w, int64_t ldw,
                                  int64_t c0, int64_t c1, __m256i (*acc)[kNr]) {
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
    for (int j = 0; j < kNr; ++j) {
      __m256i p[R];
      for (int r = 0; r < R; ++r) p[r] = _mm256_setzero_si256();
      for (int u = 0; u < steps; ++u) {
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

// Hands the group sums s4 (4 columns, corr already subtracted) of row r, group g to the output:
// stored as integers, or scaled and added to the row's float accumulator in group order.
ZEROP_AVX2 inline void emit(const BlockArgs& b, int r, int64_t g, __m128i s4, __m128* y) {
  if (!b.sc) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(b.out + r * b.ldout + g * kNr), s4);
    return;
  }
  if (b.cw) s4 = _mm_sub_epi32(s4, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.cw + g * kNr)));
  y[r] = _mm_add_ps(y[r], _mm_mul_ps(_mm_cvtepi32_ps(s4), _mm_loadu_ps(b.sc + g * b.ldsc)));
}

template <int R>
ZEROP_AVX2 void block_rows(const BlockArgs& b) {
  // Locals, so that the stores below cannot be assumed to alias them.
  const int8_t* const a = b.a;
  const uint8_t* const w = b.w;
  const int64_t lda = b.lda, ldw = b.ldw, kc = b.kc, gc = b.gm.group_chunks, groups = b.gm.groups;
  __m256i acc[R][kNr];
  __m128 y[R];
  for (int r = 0; r < R; ++r) y[r] = _mm_setzero_ps();
  auto reset = [&acc]() ZEROP_AVX2 {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kNr; ++j) acc[r][j] = _mm256_setzero_si256();
  };
  if (gc == 0) {  // groups of 32: the two 128-bit halves are groups 2c and 2c+1
    for (int64_t c = 0; c < kc; ++c) {
      reset();
      accumulate<R, true>(a, lda, w, ldw, c, c + 1, acc);
      for (int r = 0; r < R; ++r) {
        const int32_t* cr = b.corr + r * b.ldcorr;
        const __m256i s = reduce4(acc[r]);
        emit(b, r, 2 * c, _mm_sub_epi32(_mm256_castsi256_si128(s), _mm_set1_epi32(cr[2 * c])), y);
        if (2 * c + 1 < groups) {
          const __m128i hi = _mm256_extracti128_si256(s, 1);
          emit(b, r, 2 * c + 1, _mm_sub_epi32(hi, _mm_set1_epi32(cr[2 * c + 1])), y);
        }
      }
    }
  } else {
    for (int64_t g = 0, c0 = 0; c0 < kc; ++g, c0 += gc) {
      reset();
      accumulate<R, false>(a, lda, w, ldw, c0, std::min(kc, c0 + gc), acc);
      for (int r = 0; r < R; ++r) {
        const __m256i s = reduce4(acc[r]);
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        emit(b, r, g, _mm_sub_epi32(s4, _mm_set1_epi32(b.corr[r * b.ldcorr + g])), y);
      }
    }
  }
  if (b.sc)
    for (int r = 0; r < R; ++r) _mm_storeu_ps(b.yacc + r * kNr, y[r]);
}

// Sums of 8-byte runs of int8 values, as 4 int64 lanes (bytes biased to unsigned and corrected).
ZEROP_AVX2 inline __m256i sad_sum(__m256i v) {
  return _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))),
                         _mm256_setzero_si256());
}

}  // namespace

ZEROP_AVX2 void block_avx2(int rows, const BlockArgs& b) {
  if (rows == 2) {
    block_rows<2>(b);
  } else {
    block_rows<1>(b);
  }
}

namespace {

// [sum of acc[0], ..., sum of acc[7]]: eight horizontal sums in one vector.
ZEROP_AVX2 inline __m256i reduce8(const __m256i* acc) {
  const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]),
                                       _mm256_hadd_epi32(acc[2], acc[3]));
  const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[4], acc[5]),
                                       _mm256_hadd_epi32(acc[6], acc[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                          _mm256_permute2x128_si256(h0, h1, 0x31));
}

// Eight gathered rows (consecutive output pixels) against one weight column n; only the first
// `valid` rows are stored. The eight results of a column are contiguous in the NCHW output.
ZEROP_AVX2 __attribute__((always_inline)) inline void conv_rows8(const ConvBlockArgs& b, int64_t r0, int64_t valid, int64_t n) {
  constexpr int R = 8;
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t ldw = b.kc * kChunk;
  __m256i acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
  const int8_t* a = b.a + r0 * b.lda;
  const uint8_t* w = b.w + n * ldw;
  const int64_t full = b.k / kChunk * kChunk;  // chunks past `full` hold at most K % 64 values
  for (int64_t c = 0; c < full; c += kChunk) {
    const __m256i wl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c));
    const __m256i wh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c + 32));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* ar = a + r * b.lda + c;
      const __m256i p = _mm256_add_epi16(
          _mm256_maddubs_epi16(wl, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar))),
          _mm256_maddubs_epi16(wh, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + 32))));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
    }
  }
  if (full < ldw && b.k - full <= 32) {  // a last half chunk: its upper 32 values are padding
    const __m256i wl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + full));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* ar = a + r * b.lda + full;
      const __m256i p =
          _mm256_maddubs_epi16(wl, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar)));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
    }
  } else if (full < ldw) {
    const __m256i wl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + full));
    const __m256i wh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + full + 32));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* ar = a + r * b.lda + full;
      const __m256i p = _mm256_add_epi16(
          _mm256_maddubs_epi16(wl, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar))),
          _mm256_maddubs_epi16(wh, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + 32))));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
    }
  }
  __m256i s = _mm256_sub_epi32(reduce8(acc),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.corr + r0)));
  if (b.cw) s = _mm256_sub_epi32(s, _mm256_set1_epi32(b.cw[n]));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(b.sc[n])),
                           _mm256_set1_ps(b.rs));
  if (b.bias) y = _mm256_add_ps(y, _mm256_set1_ps(b.bias[n]));
  float* out = b.y + r0 + n * b.y_col;
  if (valid == R) {
    _mm256_storeu_ps(out, y);
  } else {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), lane);
    _mm256_maskstore_ps(out, mask, y);
  }
}

}  // namespace

// Rows are processed eight at a time: the caller's buffers hold whole groups of eight rows.
ZEROP_AVX2 void conv_block_avx2(int64_t rows, const ConvBlockArgs& b) {
  for (int64_t r = 0; r < rows; r += 8)
    for (int64_t n = 0; n < b.n_real; ++n) conv_rows8(b, r, std::min<int64_t>(8, rows - r), n);
}

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
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(p, order));
  }
  quantize_scalar(x + i, n - i, s, q + i);
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
void group_sums_avx2(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr) {
  group_sums_scalar(a, kc, gm, corr);
}
void quantize_avx2(const float* x, int64_t n, float s, int8_t* q) { quantize_scalar(x, n, s, q); }
float absmax_avx2(const float* x, int64_t n) { return absmax_scalar(x, n); }
}  // namespace detail
}  // namespace zerop

#endif

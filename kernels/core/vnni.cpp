// AVX-512 VNNI build of the SIMD block kernels (simd_body.inc): vpdpbusd on 256-bit vectors (EVEX,
// AVX512VL) does the u8 x s8 products and their int32 accumulation in one instruction, without the
// int16 intermediate of vpmaddubsw. Chosen at run time on CPUs that have AVX512-VNNI/VL/BW; the
// results are identical to the AVX2 and scalar paths (integer sums are exact in all of them).
#include <algorithm>
#include <cstring>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 headers start several intrinsics (512-bit set1, broadcast, extract) from an
// "undefined" vector that -Wall then reports as maybe used uninitialized once inlined here; those
// lanes are always overwritten (a false positive of the headers, not of this file).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

// Chunks [c0, c1) of R activation rows against NC nibble-packed weight rows. Low nibbles become
// (v & 0xF) ^ 8 = w + 8 (0..15), one vpternlogd (table 0x6A is (a & b) ^ c), and go into lo[].
// High nibbles: with kShiftHi, shifted down and treated the same, into hi[] (which may be lo);
// without, used in place as (v & 0xF0) ^ 0x80 = 16 * (w + 8) (0..240), one instruction less, and
// the caller divides hi[] by 16 (exactly: every term is a multiple of 16).
template <int R, int NC, bool kShiftHi>
ZEROP_VNNI inline void chunk_products(const int8_t* a, int64_t lda, const uint8_t* w, int64_t ldw,
                                      int64_t c0, int64_t c1, __m256i (*lo)[NC],
                                      __m256i (*hi)[NC]) {
  const __m256i m0f = _mm256_set1_epi8(0x0F), m08 = _mm256_set1_epi8(0x08);
  const __m256i mf0 = _mm256_set1_epi8(static_cast<char>(0xF0));
  const __m256i m80 = _mm256_set1_epi8(static_cast<char>(0x80));
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
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * ldw + c * kChunkBytes));
      const __m256i l = _mm256_ternarylogic_epi32(v, m0f, m08, 0x6A);
      const __m256i h = kShiftHi ? _mm256_ternarylogic_epi32(_mm256_srli_epi16(v, 4), m0f, m08, 0x6A)
                                 : _mm256_ternarylogic_epi32(v, mf0, m80, 0x6A);
      for (int r = 0; r < R; ++r) {
        lo[r][j] = _mm256_dpbusd_epi32(lo[r][j], l, ae[r]);
        hi[r][j] = _mm256_dpbusd_epi32(hi[r][j], h, ao[r]);
      }
    }
  }
}

// acc + the two 256-bit halves of v.
ZEROP_VNNI inline __m256i fold(__m256i acc, __m512i v) {
  return _mm256_add_epi32(
      acc, _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

// The 512-bit and 256-bit forms of the values the GEMV step needs.
template <bool k512>
struct VecOf {
  using type = __m256i;
};
template <>
struct VecOf<true> {
  using type = __m512i;
};
template <bool k512>
using Vec = typename VecOf<k512>::type;
template <bool k512>
ZEROP_VNNI inline Vec<k512> splat8(char v) {
  if constexpr (k512)
    return _mm512_set1_epi8(v);
  else
    return _mm256_set1_epi8(v);
}

// chunk_products<1, 8, kShiftHi> (one row against 8 weight rows: the GEMV path) with every step
// written as instructions and the 16 accumulators as named variables (with kShiftHi, hi[] gets
// the shifted high nibbles, w + 8, and the caller adds it to lo[]). From the intrinsics GCC 12
// copies the accumulators to scratch registers and back around the destructive vpternlogd (16-18
// vmovdqa per 16 vpdpbusd); with arrays in the asm operands it keeps them on the stack.
// Each step loads its weight bytes once and copies the register for the second vpternlogd
// (a register move, resolved at rename): two loads of the same bytes measured 2-8 % slower
// (docs/experiments.md, "Kernels").
// k512: each step takes two chunks (64 bytes of each weight row, one load) on 512-bit vectors,
// the two chunks' activations side by side, and [c0, c1) must hold an even number of chunks.
// Zen 4 splits every 512-bit operation in two, so the arithmetic costs the same; what it saves
// is half of the loads and instructions, and the hot GEMV ran 1.1-1.3x faster.
template <bool kShiftHi, bool k512>
ZEROP_VNNI __attribute__((always_inline)) inline void wide_products(
    const int8_t* a, const uint8_t* w, int64_t ldw, int64_t c0, int64_t c1, __m256i (*lo)[8],
    __m256i (*hi)[8]) {
  using V = Vec<k512>;
  const V m0f = splat8<k512>(0x0F), m08 = splat8<k512>(0x08);
  const V mf0 = splat8<k512>(static_cast<char>(0xF0));
  const V m80 = splat8<k512>(static_cast<char>(0x80));
  V l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7;
  if constexpr (k512) {  // 512-bit sums start at 0 and are folded into lo/hi at the end
    l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = _mm512_setzero_si512();
    h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = _mm512_setzero_si512();
  } else {
    l0 = lo[0][0], l1 = lo[0][1], l2 = lo[0][2], l3 = lo[0][3], l4 = lo[0][4], l5 = lo[0][5];
    l6 = lo[0][6], l7 = lo[0][7];
    h0 = hi[0][0], h1 = hi[0][1], h2 = hi[0][2], h3 = hi[0][3], h4 = hi[0][4], h5 = hi[0][5];
    h6 = hi[0][6], h7 = hi[0][7];
  }
  constexpr int64_t kStep = k512 ? 2 : 1;
  for (int64_t c = c0; c < c1; c += kStep) {
    const int8_t* ac = a + c * kChunk;
    V ae, ao;
    if constexpr (k512) {  // [chunk c | chunk c + 1] of the even and of the odd activations
      const __m256i* p = reinterpret_cast<const __m256i*>(ac);  // 32-byte units
      ae = _mm512_mask_broadcast_i64x4(_mm512_broadcast_i64x4(_mm256_loadu_si256(p)), 0xF0,
                                       _mm256_loadu_si256(p + 2));
      ao = _mm512_mask_broadcast_i64x4(_mm512_broadcast_i64x4(_mm256_loadu_si256(p + 1)), 0xF0,
                                       _mm256_loadu_si256(p + 3));
    } else {
      ae = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ac));
      ao = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ac + 32));
    }
    const uint8_t* wc = w + c * kChunkBytes;
    if (k512 || (c & 1) == 0)  // one L2 prefetch per line, two blocks ahead (see chunk_products)
      for (int j = 0; j < 8; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wc + (j + 16) * ldw), _MM_HINT_T1);
// Low nibbles: (v & 0xF) ^ 8. High: shifted down and treated alike, or in place (see above).
#define ZEROP_SHIFT_HI                          \
  "vmovdqu32 %[wp], %[tl]\n\t"                 \
  "vpsrlw $4, %[tl], %[th]\n\t"                \
  "vpternlogd $0x6a, %[m08], %[m0f], %[tl]\n\t" \
  "vpternlogd $0x6a, %[m08], %[m0f], %[th]\n\t"
#define ZEROP_IN_PLACE_HI                       \
  "vmovdqu32 %[wp], %[th]\n\t"                 \
  "vmovdqa32 %[th], %[tl]\n\t"                 \
  "vpternlogd $0x6a, %[m08], %[m0f], %[tl]\n\t" \
  "vpternlogd $0x6a, %[m80], %[mf0], %[th]\n\t"
#define ZEROP_WIDE_ASM(NIBBLES, J, L, H)                                                  \
  do {                                                                                     \
    V tl, th;                                                                              \
    asm(NIBBLES "vpdpbusd %[ae], %[tl], %[acl]\n\t"                                        \
                "vpdpbusd %[ao], %[th], %[ach]"                                            \
        : [acl] "+v"(L), [ach] "+v"(H), [tl] "=&v"(tl), [th] "=&v"(th)                     \
        : [wp] "m"(*reinterpret_cast<const V*>(wc + (J) * ldw)), [m0f] "v"(m0f),           \
          [m08] "v"(m08), [mf0] "v"(mf0), [m80] "v"(m80), [ae] "v"(ae), [ao] "v"(ao));      \
  } while (0)
#define ZEROP_WIDE_STEP(J, L, H)                    \
  do {                                              \
    if constexpr (kShiftHi)                         \
      ZEROP_WIDE_ASM(ZEROP_SHIFT_HI, J, L, H);      \
    else                                            \
      ZEROP_WIDE_ASM(ZEROP_IN_PLACE_HI, J, L, H);   \
  } while (0)
    ZEROP_WIDE_STEP(0, l0, h0);
    ZEROP_WIDE_STEP(1, l1, h1);
    ZEROP_WIDE_STEP(2, l2, h2);
    ZEROP_WIDE_STEP(3, l3, h3);
    ZEROP_WIDE_STEP(4, l4, h4);
    ZEROP_WIDE_STEP(5, l5, h5);
    ZEROP_WIDE_STEP(6, l6, h6);
    ZEROP_WIDE_STEP(7, l7, h7);
#undef ZEROP_WIDE_STEP
#undef ZEROP_WIDE_ASM
#undef ZEROP_IN_PLACE_HI
#undef ZEROP_SHIFT_HI
  }
  if constexpr (k512) {
    lo[0][0] = fold(lo[0][0], l0), lo[0][1] = fold(lo[0][1], l1), lo[0][2] = fold(lo[0][2], l2);
    lo[0][3] = fold(lo[0][3], l3), lo[0][4] = fold(lo[0][4], l4), lo[0][5] = fold(lo[0][5], l5);
    lo[0][6] = fold(lo[0][6], l6), lo[0][7] = fold(lo[0][7], l7);
    hi[0][0] = fold(hi[0][0], h0), hi[0][1] = fold(hi[0][1], h1), hi[0][2] = fold(hi[0][2], h2);
    hi[0][3] = fold(hi[0][3], h3), hi[0][4] = fold(hi[0][4], h4), hi[0][5] = fold(hi[0][5], h5);
    hi[0][6] = fold(hi[0][6], h6), hi[0][7] = fold(hi[0][7], h7);
  } else {
    lo[0][0] = l0, lo[0][1] = l1, lo[0][2] = l2, lo[0][3] = l3;
    lo[0][4] = l4, lo[0][5] = l5, lo[0][6] = l6, lo[0][7] = l7;
    hi[0][0] = h0, hi[0][1] = h1, hi[0][2] = h2, hi[0][3] = h3;
    hi[0][4] = h4, hi[0][5] = h5, hi[0][6] = h6, hi[0][7] = h7;
  }
}

// wide_products with the high nibbles in place over [c0, c1): pairs of chunks on 512-bit
// vectors, an odd last one on 256.
ZEROP_VNNI __attribute__((always_inline)) inline void wide_range(
    const int8_t* a, const uint8_t* w, int64_t ldw, int64_t c0, int64_t c1, __m256i (*lo)[8],
    __m256i (*hi)[8]) {
  const int64_t mid = c0 + ((c1 - c0) & ~int64_t{1});
  if (mid > c0) wide_products<false, true>(a, w, ldw, c0, mid, lo, hi);
  if (mid < c1) wide_products<false, false>(a, w, ldw, mid, c1, lo, hi);
}

// Integer product of R activation rows with NC nibble-packed weight rows over chunks [c0, c1).
// Long ranges keep the high nibbles in place (chunk_products) in extra accumulators, which the
// 32 vector registers of AVX-512VL hold; short ones (groups of <= 256) shift, since there the
// set-up of the extra accumulators costs more than the shift saves.
// Inlined into its callers (with the 512-bit loop it grew past GCC's limit, and a call per group
// made groups of 128 1.3x slower).
template <int R, bool kSingle, int NC>
ZEROP_VNNI __attribute__((always_inline)) inline void accumulate(
    const int8_t* a, int64_t lda, const uint8_t* w, int64_t ldw, int64_t c0, int64_t c1,
    __m256i (*acc)[NC]) {
  if (c1 - c0 <= 4) {
    if constexpr (R == 1 && NC == 8) {
      __m256i hi[1][8];
      for (int j = 0; j < 8; ++j) hi[0][j] = _mm256_setzero_si256();
      // 256 bits only: folding 512-bit sums per group cost more than it saved
      wide_products<true, false>(a, w, ldw, c0, c1, acc, hi);
      for (int j = 0; j < 8; ++j) acc[0][j] = _mm256_add_epi32(acc[0][j], hi[0][j]);
    } else {
      chunk_products<R, NC, true>(a, lda, w, ldw, c0, c1, acc, acc);
    }
    return;
  }
  // A 32-bit lane of hi gains at most 4 * 240 * 128 per chunk: flush it well before 2^31.
  constexpr int64_t kFlush = 16384;
  for (int64_t s0 = c0; s0 < c1; s0 += kFlush) {
    __m256i hi[R][NC];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NC; ++j) hi[r][j] = _mm256_setzero_si256();
    if constexpr (R == 1 && NC == 8)
      wide_range(a, w, ldw, s0, std::min(c1, s0 + kFlush), acc, hi);
    else
      chunk_products<R, NC, false>(a, lda, w, ldw, s0, std::min(c1, s0 + kFlush), acc, hi);
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NC; ++j)
        acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_srai_epi32(hi[r][j], 4));
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
#define ZEROP_GEMV_FN gemv_vnni
#include "simd_body.inc"
#undef ZEROP_TARGET
#undef ZEROP_BLOCK_FN
#undef ZEROP_CONV_FN
#undef ZEROP_GEMV_FN

}  // namespace detail
}  // namespace zerop

#else  // not x86

namespace zerop {
bool cpu_has_vnni() { return false; }
namespace detail {
void block_vnni(int rows, const BlockArgs& b) { block_scalar(rows, b); }
void conv_block_vnni(int64_t rows, const ConvBlockArgs& b) { conv_block_scalar(rows, b); }
int64_t gemv_vnni(const GemvArgs& g) { return g.n0; }
}  // namespace detail
}  // namespace zerop

#endif

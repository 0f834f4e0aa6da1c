// Portable reference implementation of the integer inner loops, plus the shared float epilogue.
// Every SIMD path is tested against these functions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "internal.h"

namespace zerop {
namespace detail {

namespace {
inline int32_t low_nibble(uint8_t b) { return static_cast<int32_t>((b & 0x0F) ^ 0x08) - 8; }
inline int32_t high_nibble(uint8_t b) { return static_cast<int32_t>((b >> 4) ^ 0x08) - 8; }
}  // namespace

void block_scalar(int rows, const BlockArgs& b) {
  if (b.wide) {  // two blocks of kNr columns, one after the other
    BlockArgs half = b;
    half.wide = false;
    block_scalar(1, half);
    half.w = b.w + kNr * b.ldw;
    half.sc = b.sc + kNr;
    half.yacc = b.yacc + kNr;
    block_scalar(1, half);
    return;
  }
  const int64_t ld = (b.gm.groups + 1) * kNr;
  static thread_local std::vector<int32_t> buf;
  buf.resize(static_cast<size_t>(ld));
  for (int r = 0; r < rows; ++r) {
    int32_t* o = b.sc ? buf.data() : b.out + r * b.ldout;
    std::fill(o, o + ld, 0);
    const int8_t* ar = b.a + r * b.lda;
    for (int j = 0; j < kNr; ++j) {
      const uint8_t* wr = b.w + j * b.ldw;
      for (int64_t c = 0; c < b.kc; ++c) {
        for (int64_t i = 0; i < kChunkBytes; ++i) {
          const uint8_t byte = wr[c * kChunkBytes + i];
          const int32_t lo = low_nibble(byte) * ar[c * kChunk + i];
          const int32_t hi = high_nibble(byte) * ar[c * kChunk + 32 + i];
          o[group_of(b.gm, c, i) * kNr + j] += lo + hi;
        }
      }
    }
    if (!b.sc) continue;
    for (int j = 0; j < kNr; ++j) {
      float y = 0.0f;
      for (int64_t g = 0; g < b.gm.groups; ++g) {
        const int32_t v = o[g * kNr + j] - (b.cw ? b.cw[g * kNr + j] : 0);
        const float p = static_cast<float>(v) * b.sc[g * b.ldsc + j];
        y = y + p;
      }
      b.yacc[r * kNr + j] = y;
    }
  }
}

void conv_block_scalar(int64_t rows, const ConvBlockArgs& b) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* ar = b.a + r * b.lda;
    for (int64_t n = 0; n < b.n_real; ++n) {
      int32_t s = 0;
      for (int64_t k = 0; k < 4 * b.k4; ++k)
        s += (static_cast<int32_t>(b.w[((k / 4) * b.n_pad + n) * 4 + k % 4]) - 8) * ar[k];
      b.y[r + n * b.y_col] = conv_value(s, b.cw ? b.cw[n] : 0, b.sc[n], b.rs, b.bias, n);
    }
  }
}

void group_sums_scalar(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr) {
  std::fill(corr, corr + gm.groups, 0);
  for (int64_t c = 0; c < kc; ++c) {
    for (int64_t p = 0; p < kChunk; ++p) {
      const int64_t g = group_of(gm, c, p & 31);
      if (g < gm.groups) corr[g] += 8 * a[c * kChunk + p];
    }
  }
}

void quantize_scalar(const float* x, int64_t n, float s, int8_t* q) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::nearbyint(x[i] / s);  // default rounding mode: half to even
    q[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
  }
}

float absmax_scalar(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

void epilogue(const float* yacc, float rs, const float* bias, float out[kNr]) {
  for (int j = 0; j < kNr; ++j) {
    float y = yacc[j] * rs;
    if (bias) y = y + bias[j];
    out[j] = y;
  }
}

const Kernels& kernels_for(Impl impl) {
  static const Kernels scalar{block_scalar,      nullptr,         conv_block_scalar,
                              group_sums_scalar, quantize_scalar, absmax_scalar};
  static const Kernels avx2{block_avx2,      gemv_avx2,     conv_block_avx2,
                            group_sums_avx2, quantize_avx2, absmax_avx2};
  static const Kernels vnni{block_vnni,      gemv_vnni,     conv_block_vnni,
                            group_sums_avx2, quantize_avx2, absmax_avx2};
  if (impl == Impl::kScalar || !cpu_has_avx2()) return scalar;
  if (impl == Impl::kAvx2 || !cpu_has_vnni()) return avx2;
  return vnni;
}

uint64_t read_sum_scalar(const uint8_t* p, size_t words) {
  uint64_t acc[4] = {0, 0, 0, 0};
  for (size_t w = 0; w + 4 <= words; w += 4) {
    uint64_t v[4];
    std::memcpy(v, p + w * 8, sizeof(v));
    for (int j = 0; j < 4; ++j) acc[j] += v[j];
  }
  return acc[0] + acc[1] + acc[2] + acc[3];
}

}  // namespace detail

uint64_t read_probe(const uint8_t* buf, size_t nbytes, int threads) {
  const int t = resolve_threads(threads);
  const size_t words = nbytes / sizeof(uint64_t);
  std::vector<uint64_t> sums(static_cast<size_t>(t), 0);
  detail::parallel_for(t, t, [&](int64_t i) {
    const size_t lo = words * static_cast<size_t>(i) / static_cast<size_t>(t);
    const size_t hi = words * static_cast<size_t>(i + 1) / static_cast<size_t>(t);
    sums[static_cast<size_t>(i)] = cpu_has_avx2() ? detail::read_sum_avx2(buf + lo * 8, hi - lo)
                                                   : detail::read_sum_scalar(buf + lo * 8, hi - lo);
  });
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  return total;
}

}  // namespace zerop

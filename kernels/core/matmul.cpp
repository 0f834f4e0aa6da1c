// Drivers of the int4 matrix product: activation preparation, blocking and threading.
#include <algorithm>
#include <cstring>
#include <vector>

#include "internal.h"

namespace zerop {
namespace detail {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Copies up to kNr weight rows into `buf` (kc*32 bytes each, zero padded) for tails and odd K.
const uint8_t* weight_block(const WeightSpec& ws, int64_t nb, int cols, std::vector<uint8_t>& buf,
                            int64_t* ldw) {
  const int64_t row = ws.kc * kChunkBytes;
  if (cols == kNr && ws.row_bytes == row) {
    *ldw = ws.ldw;
    return ws.packed + nb * ws.ldw;
  }
  buf.assign(static_cast<size_t>(kNr * row), 0);
  for (int j = 0; j < cols; ++j)
    std::memcpy(buf.data() + j * row, ws.packed + (nb + j) * ws.ldw,
                static_cast<size_t>(ws.row_bytes));
  *ldw = row;
  return buf.data();
}

struct Scratch {
  std::vector<uint8_t> wbuf;
  std::vector<int32_t> wsum, cw;
  std::vector<float> sc;
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}


// One row against 2 * kNr columns starting at nb, weights read in place (GEMV fast path).
void wide_block(const Kernels& kn, const WeightSpec& ws, const int8_t* a, const int32_t* corr,
                float rs, int64_t nb, float* y, int64_t y_col) {
  // The [G, N] scale table is read 8 columns (32 bytes) per group row, a row of N floats apart:
  // a stride the hardware prefetcher does not follow. Fetch the lines of the block after next
  // (one 64-byte line serves two blocks) into L2 while this one runs.
  if (ws.gm.groups > 1 && (nb / (2 * kNr)) % 2 == 0 && nb + 4 * kNr < ws.n) {
    const float* next = ws.scales + nb + 4 * kNr;
    for (int64_t g = 0; g < ws.gm.groups; ++g)
      __builtin_prefetch(next + g * ws.ld_scales, 0, 2);
  }
  float yacc[2 * kNr];
  const BlockArgs ba{a, ws.kc * kChunk, ws.packed + nb * ws.ldw, ws.ldw, ws.kc, ws.gm, corr,
                     ws.gm.groups, nullptr, 0, ws.scales + nb, ws.ld_scales, nullptr, yacc, true};
  kn.block(1, ba);
  for (int h = 0; h < 2; ++h) {
    float res[kNr];
    epilogue(yacc + h * kNr, rs, ws.bias ? ws.bias + nb + h * kNr : nullptr, res);
    for (int j = 0; j < kNr; ++j) y[(h * kNr + j) * y_col] = res[j];
  }
}

}  // namespace

void gemm_rows(const Kernels& kn, const WeightSpec& ws, int64_t rows, const int8_t* a, int64_t lda,
               const int32_t* corr, const float* rs, int64_t n0, int64_t n1, float* y,
               int64_t y_row, int64_t y_col, const int8_t* ones, const int32_t* ones_corr) {
  Scratch& s = scratch();
  const int64_t groups = ws.gm.groups;
  const int64_t ldout = (groups + 1) * kNr;
  s.sc.resize(static_cast<size_t>(std::max<int64_t>(groups, 1) * kNr));
  const bool in_place = ws.row_bytes == ws.kc * kChunkBytes;
  if (rows == 1 && ws.a_offset == 0 && in_place && y_col == 1 && kn.gemv)
    n0 = kn.gemv({a, corr, rs[0], ws.packed, ws.ldw, ws.kc, ws.gm, ws.scales, ws.ld_scales,
                  ws.bias, y, n0, n1});
  for (int64_t nb = n0; nb < n1; nb += kNr) {
    if (rows == 1 && ws.a_offset == 0 && in_place && nb + 2 * kNr <= n1) {
      wide_block(kn, ws, a, corr, rs[0], nb, y + nb * y_col, y_col);
      nb += kNr;
      continue;
    }
    const int cols = static_cast<int>(std::min<int64_t>(kNr, n1 - nb));
    int64_t ldw = 0;
    const uint8_t* w = weight_block(ws, nb, cols, s.wbuf, &ldw);
    const float* sc = ws.scales + nb;  // [G, ld_scales]: 4 columns are contiguous
    int64_t ldsc = ws.ld_scales;
    if (cols < kNr) {
      for (int64_t g = 0; g < groups; ++g)
        for (int j = 0; j < kNr; ++j)
          s.sc[g * kNr + j] = j < cols ? ws.scales[g * ws.ld_scales + nb + j] : 0.0f;
      sc = s.sc.data();
      ldsc = kNr;
    }
    float bias[kNr] = {0, 0, 0, 0};
    if (ws.bias)
      for (int j = 0; j < cols; ++j) bias[j] = ws.bias[nb + j];
    BlockArgs ba{nullptr, lda, w, ldw, ws.kc, ws.gm, nullptr, groups, nullptr, ldout,
                 nullptr, ldsc, nullptr, nullptr, false};
    if (ws.a_offset != 0) {  // c * sum_k w: the ones row times the weights
      s.wsum.resize(static_cast<size_t>(ldout));
      s.cw.resize(static_cast<size_t>(ldout));
      ba.a = ones;
      ba.corr = ones_corr;
      ba.out = s.wsum.data();
      kn.block(1, ba);
      for (int64_t i = 0; i < groups * kNr; ++i) s.cw[i] = ws.a_offset * s.wsum[i];
      ba.cw = s.cw.data();
    }
    ba.sc = sc;
    float yacc[2 * kNr];
    ba.yacc = yacc;
    for (int64_t r = 0; r < rows; r += 2) {
      const int rr = static_cast<int>(std::min<int64_t>(2, rows - r));
      ba.a = a + r * lda;
      ba.corr = corr + r * groups;
      kn.block(rr, ba);
      for (int i = 0; i < rr; ++i) {
        float res[kNr];
        epilogue(yacc + i * kNr, rs[r + i], ws.bias ? bias : nullptr, res);
        float* yr = y + (r + i) * y_row + nb * y_col;
        for (int j = 0; j < cols; ++j) yr[j * y_col] = res[j];
      }
    }
  }
}

GroupMode group_mode(int64_t k, int64_t group_size) {
  const int64_t kc = std::max<int64_t>(1, ceil_div(k, kChunk));
  if (group_size == 0) return {1, kc};
  if (group_size == 32) return {ceil_div(k, 32), 0};
  return {ceil_div(k, group_size), group_size / kChunk};
}

namespace {

// Position of k in the chunk layout that pairs with ONNX packing (element 2i low nibble).
inline int64_t onnx_pos(int64_t k) {
  const int64_t j = k % kChunk;
  return (k - j) + (j & 1) * 32 + j / 2;
}

// Fills one activation row (chunk layout) and its scale; `prep(row, q_natural, &scale)`.
template <typename Prep>
void matmul_driver(Prep prep, int32_t a_offset, int64_t m, int64_t k, const uint8_t* packed,
                   int64_t n, const float* scales, int64_t group_size, const float* bias, float* y,
                   int threads, Impl impl) {
  const Kernels& kn = kernels_for(impl);
  // Waking helper threads costs tens of microseconds: small products run on the caller alone.
  const int t = m * n * k < kMinParallelMacs ? 1 : resolve_threads(threads);
  const GroupMode gm = group_mode(k, group_size);
  const int64_t kc = std::max<int64_t>(1, ceil_div(k, kChunk));
  const int64_t lda = kc * kChunk;
  std::vector<int8_t> a(static_cast<size_t>(std::max<int64_t>(m, 1) * lda), 0);
  std::vector<int32_t> corr(static_cast<size_t>(std::max<int64_t>(m, 1) * gm.groups + 1), 0);
  std::vector<float> rs(static_cast<size_t>(std::max<int64_t>(m, 1)), 1.0f);
  const int64_t prep_tasks = std::min<int64_t>(m, 4 * t);
  parallel_for(prep_tasks, t, [&](int64_t task) {
    std::vector<int8_t> q(static_cast<size_t>(lda), 0);  // natural order, zero padded to lda
    for (int64_t r = m * task / prep_tasks; r < m * (task + 1) / prep_tasks; ++r) {
      prep(r, q.data(), &rs[r], kn);
      int8_t* dst = a.data() + r * lda;
      for (int64_t c = 0; c < lda; c += kChunk)  // the chunk layout: even k first, then odd k
        for (int64_t j = 0; j < 32; ++j) {
          dst[c + j] = q[c + 2 * j];
          dst[c + 32 + j] = q[c + 2 * j + 1];
        }
      kn.group_sums(dst, kc, gm, corr.data() + r * gm.groups);
    }
  });
  std::vector<int8_t> ones;  // only an activation offset needs sum_k w
  std::vector<int32_t> ones_corr;
  if (a_offset != 0) {
    ones.assign(static_cast<size_t>(lda), 0);
    for (int64_t i = 0; i < k; ++i) ones[onnx_pos(i)] = 1;
    ones_corr.assign(static_cast<size_t>(gm.groups + 1), 0);
    kn.group_sums(ones.data(), kc, gm, ones_corr.data());
  }

  const WeightSpec ws{packed, ceil_div(k, 2), ceil_div(k, 2), n, k, kc, gm, scales, n, bias,
                      a_offset};
  const int64_t nblocks = ceil_div(n, kNr);
  const int64_t mb = std::max<int64_t>(2, std::min<int64_t>(256, (65536 / lda) & ~int64_t{1}));
  const int64_t mblocks = ceil_div(m, mb);
  if (nblocks >= 4 * t || mblocks < t) {  // split the columns: each weight block is read once
    const int64_t tasks = std::min<int64_t>(nblocks, 8 * t);
    parallel_for(tasks, t, [&](int64_t task) {
      const int64_t b0 = nblocks * task / tasks, b1 = nblocks * (task + 1) / tasks;
      for (int64_t r0 = 0; r0 < m; r0 += mb) {
        gemm_rows(kn, ws, std::min(mb, m - r0), a.data() + r0 * lda, lda,
                  corr.data() + r0 * gm.groups, rs.data() + r0, b0 * kNr, std::min(n, b1 * kNr),
                  y + r0 * n, n, 1, ones.data(), ones_corr.data());
      }
    });
  } else {  // split the rows
    parallel_for(mblocks, t, [&](int64_t task) {
      const int64_t r0 = task * mb, r1 = std::min(m, r0 + mb);
      gemm_rows(kn, ws, r1 - r0, a.data() + r0 * lda, lda, corr.data() + r0 * gm.groups,
                rs.data() + r0, 0, n, y + r0 * n, n, 1, ones.data(), ones_corr.data());
    });
  }
}

}  // namespace
}  // namespace detail

void matmul_int4_f32(const float* x, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                     const float* scales, int64_t group_size, const float* bias, float* y,
                     int threads, Impl impl) {
  auto prep = [&](int64_t r, int8_t* q, float* s, const detail::Kernels& kn) {
    const float* xr = x + r * k;
    *s = detail::row_scale(kn.absmax(xr, k));
    kn.quantize(xr, k, *s, q);
  };
  detail::matmul_driver(prep, 0, m, k, packed, n, scales, group_size, bias, y, threads, impl);
}

void matmul_int4_q8(const void* xq, bool is_unsigned, float x_scale, int32_t zero_point, int64_t m,
                    int64_t k, const uint8_t* packed, int64_t n, const float* scales,
                    int64_t group_size, const float* bias, float* y, int threads, Impl impl) {
  // uint8 values v become v - 128 (int8) with the zero point moved by the same amount.
  const int32_t shift = is_unsigned ? 128 : 0;
  auto prep = [&](int64_t r, int8_t* q, float* s, const detail::Kernels&) {
    *s = x_scale;
    if (is_unsigned) {
      const uint8_t* src = static_cast<const uint8_t*>(xq) + r * k;
      for (int64_t i = 0; i < k; ++i)
        q[i] = static_cast<int8_t>(static_cast<int32_t>(src[i]) - 128);
    } else {
      std::memcpy(q, static_cast<const int8_t*>(xq) + r * k, static_cast<size_t>(k));
    }
  };
  detail::matmul_driver(prep, zero_point - shift, m, k, packed, n, scales, group_size, bias, y,
                        threads, impl);
}

}  // namespace zerop

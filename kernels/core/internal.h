// Internal pieces shared by the drivers and the two implementations (scalar, AVX2).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "int4_kernels.h"

namespace zerop {
namespace detail {

constexpr int64_t kChunk = 64;      // K values per chunk: 32 packed bytes
constexpr int64_t kChunkBytes = 32;
constexpr int kNr = 4;              // output columns per weight block
constexpr int64_t kMinParallelMacs = int64_t{1} << 20;  // smaller products stay single-threaded

// Activations of a block of rows in "chunk layout": for chunk c and byte i (0..31) the value paired
// with the low nibble of weight byte c*32+i sits at c*64+i, the one paired with the high nibble at
// c*64+32+i. Padding is 0.
struct GroupMode {
  int64_t groups;        // G
  int64_t group_chunks;  // chunks per group; 0 = groups of 32 (two per chunk, one per 16 bytes)
};

// The group of byte `i` (0..31) of chunk `c`.
inline int64_t group_of(const GroupMode& gm, int64_t c, int64_t i) {
  return gm.group_chunks == 0 ? 2 * c + (i >= 16 ? 1 : 0) : c / gm.group_chunks;
}

// One block product: up to 2 activation rows against kNr weight rows.
// a: rows of kc*64 int8 in chunk layout (stride lda); w: kNr rows of kc*32 packed bytes
// (stride ldw);
// corr[r][g] = 8 * sum_{k in g} a[r][k] (stride ldcorr; the AVX2 path needs it).
// With S[r][g][j] = sum_{k in g} a[r][k] * w[j][k] (exact, int32):
//   sc == nullptr: out[r][g][j] = S (out rows of (G + 1) * kNr int32, stride ldout);
//   otherwise:     yacc[r][j] = sum over g in order of float(S - cw[g][j]) * sc[g][j]
//                  (sc: G rows of kNr floats, stride ldsc; cw: G x kNr int32 or null),
//                  the float steps of quant/primitives.py:matmul_int4_reference.
struct BlockArgs {
  const int8_t* a;
  int64_t lda;
  const uint8_t* w;
  int64_t ldw;
  int64_t kc;
  GroupMode gm;
  const int32_t* corr;
  int64_t ldcorr;
  int32_t* out;
  int64_t ldout;
  const float* sc;
  int64_t ldsc;
  const int32_t* cw;
  float* yacc;
  // wide: one row against 2 * kNr weight rows (float mode, cw == null); sc and yacc then cover
  // 2 * kNr columns. Two independent float chains hide the latency of the in-order group sums.
  bool wide;
};
using BlockFn = void (*)(int rows, const BlockArgs& b);

// The GEMV path of one activation row: columns [n0, n1) eight at a time,
// y[n] = (sum over g in order of float(S_gn - corr[g]) * sc[g][n]) * rs (+ bias[n]), the float
// steps of block + epilogue. Returns the first column not done (n1 - n0 rounded down to a
// multiple of 8).
struct GemvArgs {
  const int8_t* a;      // kc*64 int8 in chunk layout
  const int32_t* corr;  // [G]: 8 * the row's sum in each group
  float rs;
  const uint8_t* w;  // weight row n at w + n * ldw
  int64_t ldw, kc;
  GroupMode gm;
  const float* sc;  // [G, ldsc]
  int64_t ldsc;
  const float* bias;  // [n1] or null
  float* y;           // [n1], contiguous
  int64_t n0, n1;
};
using GemvFn = int64_t (*)(const GemvArgs& g);
int64_t gemv_avx2(const GemvArgs& g);
int64_t gemv_vnni(const GemvArgs& g);

void block_scalar(int rows, const BlockArgs& b);
void block_avx2(int rows, const BlockArgs& b);
void block_vnni(int rows, const BlockArgs& b);

// corr[g] = 8 * sum of a row's values in each group (a row of kc*64 int8 in chunk layout).
void group_sums_scalar(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr);
void group_sums_avx2(const int8_t* a, int64_t kc, const GroupMode& gm, int32_t* corr);

// Symmetric int8 quantization of n floats with scale s: q = clip(rint(x / s), -127, 127).
void quantize_scalar(const float* x, int64_t n, float s, int8_t* q);
void quantize_avx2(const float* x, int64_t n, float s, int8_t* q);
float absmax_scalar(const float* x, int64_t n);
float absmax_avx2(const float* x, int64_t n);

// Convolution block: `rows` gathered rows (natural K order, int8, zero padded to a multiple of 4)
// against all columns of weights expanded to bytes w + 8 in "quad" layout [k4][n_pad][4]: the four
// values k = 4q..4q+3 of column n sit at (q * n_pad + n) * 4, so one 32-byte load holds a quad of
// 8 columns (n_pad is a multiple of kConvCols). The SIMD paths multiply it with the row's quad
// broadcast (outer-product form: no horizontal sums).
// y[r + n * y_col] = (float(S - cw[n]) * sc[n]) * rs + bias[n] for n < n_real, S exact as above.
constexpr int64_t kConvCols = 8;
struct ConvBlockArgs {
  const int8_t* a;
  int64_t lda;
  const int32_t* corr;  // [rows]: 8 * sum of the row (SIMD paths)
  const uint8_t* w;
  int64_t k4;  // quads of K
  int64_t n_pad, n_real;
  const int32_t* cw;  // [n_pad] c * sum_k w, or null
  const float* sc;    // [n_pad]
  const float* bias;  // [n_pad] or null
  float rs;
  float* y;
  int64_t y_col;
};
using ConvBlockFn = void (*)(int64_t rows, const ConvBlockArgs& b);
void conv_block_scalar(int64_t rows, const ConvBlockArgs& b);
void conv_block_avx2(int64_t rows, const ConvBlockArgs& b);
void conv_block_vnni(int64_t rows, const ConvBlockArgs& b);

// The conv epilogue of one value (the float steps of the matmul path with one group).
inline float conv_value(int32_t s, int32_t cw, float sc, float rs, const float* bias, int64_t n) {
  float y = static_cast<float>(s - cw) * sc;
  y = y * rs;
  if (bias) y = y + bias[n];
  return y;
}

// Sum of `words` 64-bit words (a read-bandwidth probe: every byte is loaded once).
uint64_t read_sum_scalar(const uint8_t* p, size_t words);
uint64_t read_sum_avx2(const uint8_t* p, size_t words);

// Depthwise convolutions (groups == C_in == C_out) take a direct path on the NCHW int8 input
// (values xor `flip`, real value (x - a_offset) * img_scale[b]); see depthwise.cpp.
bool is_depthwise(const ConvShape& s);
void depthwise_direct(const int8_t* x, uint8_t flip, const float* img_scale, int32_t a_offset,
                      const ConvShape& s, const uint8_t* packed, const float* scales,
                      const float* bias, float* y, int threads);

struct Kernels {
  BlockFn block;
  GemvFn gemv;  // null: the block path does every column
  ConvBlockFn conv_block;
  void (*group_sums)(const int8_t*, int64_t, const GroupMode&, int32_t*);
  void (*quantize)(const float*, int64_t, float, int8_t*);
  float (*absmax)(const float*, int64_t);
};
const Kernels& kernels_for(Impl impl);

// The activation scale rule: max|x| / 127, or 1 for an all-zero row.
inline float row_scale(float amax) { return amax > 0.0f ? amax / 127.0f : 1.0f; }

// Last float steps of one row and kNr columns: y_j = yacc_j * row_scale (+ bias_j).
void epilogue(const float* yacc, float rs, const float* bias, float out[kNr]);

// Runs fn(task) for task in [0, n_tasks) on `threads` threads (the caller is one of them).
void parallel_for(int64_t n_tasks, int threads, const std::function<void(int64_t)>& fn);

// Whether an elementwise kernel asked for `impl` runs its AVX2 path here.
inline bool use_avx2(Impl impl) { return impl != Impl::kScalar && cpu_has_avx2(); }

// Elements per task of the elementwise training kernels (lsq.cpp, clamp.cpp, feature_mse.cpp);
// partial sums are kept per block, so that a sum does not depend on the thread count.
constexpr int64_t kElementBlock = int64_t{1} << 15;

// Runs body(begin, end, block) over blocks of kElementBlock elements, `threads` contiguous runs
// of blocks, the caller taking part.
template <typename Body>
void over_blocks(int64_t n, int threads, const Body& body) {
  const int64_t blocks = (n + kElementBlock - 1) / kElementBlock;
  const int64_t tasks = std::min<int64_t>(blocks, resolve_threads(threads));
  parallel_for(tasks, static_cast<int>(tasks), [&](int64_t t) {
    for (int64_t b = blocks * t / tasks; b < blocks * (t + 1) / tasks; ++b) {
      body(b * kElementBlock, std::min(n, (b + 1) * kElementBlock), b);
    }
  });
}

// Weights and epilogue constants of one matrix product; the activations come per block.
struct WeightSpec {
  const uint8_t* packed;   // rows of `row_bytes` bytes, stride `ldw`
  int64_t ldw, row_bytes;
  int64_t n, k, kc;
  GroupMode gm;
  const float* scales;     // [G, ld_scales]
  int64_t ld_scales;
  const float* bias;       // [n] or null
  int32_t a_offset;        // c: real activation = a - c
};

// Computes a block of rows (already in chunk layout, with corr) against all columns [n0, n1) of ws
// and writes y[r * y_row + n * y_col] for r < rows.
// `ones`/`ones_corr`: a row holding 1 at every real k (chunk layout) and its group sums; used to
// compute c * sum_k w when the activation offset c is not 0.
void gemm_rows(const Kernels& kn, const WeightSpec& ws, int64_t rows, const int8_t* a, int64_t lda,
               const int32_t* corr, const float* rs, int64_t n0, int64_t n1, float* y,
               int64_t y_row, int64_t y_col, const int8_t* ones, const int32_t* ones_corr);

// Groups of a K-long reduction: group_size 0 (one group), 32, or a multiple of 64.
GroupMode group_mode(int64_t k, int64_t group_size);

}  // namespace detail
}  // namespace zerop

// Fused LSQ fake-quantization of a dense float32 tensor with one step size (the activation
// quantizers of fine-tuning): one pass forward, one pass backward, instead of the dozen tensor
// passes of the same arithmetic in torch. The float steps are those of
// quant/primitives.py:_LsqFakeQuant, so the forward output is bit for bit torch's.
#include <immintrin.h>

#include <cmath>
#include <vector>

#include "int4_kernels.h"
#include "internal.h"

namespace zerop {
namespace {

// v = x / s (+ z); q = clamp(round_half_even(v), qmin, qmax); NaN stays NaN like torch.clamp.
struct Grid {
  float s, z, qmin, qmax;
  bool has_z;
};

inline float level(const Grid& g, float x, float* v_out) {
  float v = x / g.s;
  if (g.has_z) v = v + g.z;
  float q = std::nearbyint(v);
  q = std::isnan(q) ? q : std::fmin(std::fmax(q, g.qmin), g.qmax);
  *v_out = v;
  return q;
}

void forward_scalar(const Grid& g, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v;
    float q = level(g, x[i], &v);
    if (g.has_z) q = q - g.z;
    y[i] = q * g.s;
  }
}

double backward_scalar(const Grid& g, const float* x, const float* gr, float* gx, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    float v;
    float q = level(g, x[i], &v);
    const bool inside = v >= g.qmin && v <= g.qmax;
    if (g.has_z) {
      q = q - g.z;
      v = v - g.z;
    }
    gx[i] = gr[i] * (inside ? 1.0f : 0.0f);
    acc += static_cast<double>(gr[i] * (inside ? q - v : q));
  }
  return acc;
}

__attribute__((target("avx2"))) inline __m256 level8(const Grid& g, __m256 x, __m256* v_out) {
  __m256 v = _mm256_div_ps(x, _mm256_set1_ps(g.s));
  if (g.has_z) v = _mm256_add_ps(v, _mm256_set1_ps(g.z));
  __m256 q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // max/min return their second operand when one is NaN: a NaN level stays NaN
  q = _mm256_max_ps(_mm256_set1_ps(g.qmin), q);
  q = _mm256_min_ps(_mm256_set1_ps(g.qmax), q);
  *v_out = v;
  return q;
}

__attribute__((target("avx2"))) void forward_avx2(const Grid& g, const float* x, float* y,
                                                  int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    __m256 q = level8(g, _mm256_loadu_ps(x + i), &v);
    if (g.has_z) q = _mm256_sub_ps(q, _mm256_set1_ps(g.z));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(q, _mm256_set1_ps(g.s)));
  }
  forward_scalar(g, x + i, y + i, n - i);
}

__attribute__((target("avx2"))) double backward_avx2(const Grid& g, const float* x,
                                                     const float* gr, float* gx, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v;
    __m256 q = level8(g, _mm256_loadu_ps(x + i), &v);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(g.qmin), _CMP_GE_OQ),
                                        _mm256_cmp_ps(v, _mm256_set1_ps(g.qmax), _CMP_LE_OQ));
    if (g.has_z) {
      q = _mm256_sub_ps(q, _mm256_set1_ps(g.z));
      v = _mm256_sub_ps(v, _mm256_set1_ps(g.z));
    }
    const __m256 gv = _mm256_loadu_ps(gr + i);
    _mm256_storeu_ps(gx + i, _mm256_mul_ps(gv, _mm256_and_ps(inside, one)));
    const __m256 ds = _mm256_blendv_ps(q, _mm256_sub_ps(q, v), inside);
    const __m256 p = _mm256_mul_ps(gv, ds);
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + backward_scalar(g, x + i, gr + i, gx + i, n - i);
}

}  // namespace

void lsq_forward(const float* x, int64_t n, float s, float z, bool has_z, float qmin, float qmax,
                 float* y, int threads, Impl impl) {
  const Grid g{s, z, qmin, qmax, has_z};
  const bool simd = detail::use_avx2(impl);
  detail::over_blocks(n, threads, [&](int64_t b, int64_t e, int64_t) {
    simd ? forward_avx2(g, x + b, y + b, e - b) : forward_scalar(g, x + b, y + b, e - b);
  });
}

double lsq_backward(const float* x, const float* grad, int64_t n, float s, float z, bool has_z,
                    float qmin, float qmax, float* grad_x, int threads, Impl impl) {
  const Grid g{s, z, qmin, qmax, has_z};
  const bool simd = detail::use_avx2(impl);
  std::vector<double> partial((n + detail::kElementBlock - 1) / detail::kElementBlock, 0.0);
  detail::over_blocks(n, threads, [&](int64_t b, int64_t e, int64_t blk) {
    partial[blk] = simd ? backward_avx2(g, x + b, grad + b, grad_x + b, e - b)
                        : backward_scalar(g, x + b, grad + b, grad_x + b, e - b);
  });
  double total = 0.0;  // in block order: the same sum whatever the thread count
  for (double p : partial) total += p;
  return total;
}

}  // namespace zerop

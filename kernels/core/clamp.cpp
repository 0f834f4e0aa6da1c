// The backward of clamping a dense float32 tensor by two numbers (ReLU6 as Clip) in one pass,
// with the gradient torch gives for clamping by tensors (load/convert/convert_clip.py:_NumberClamp):
// grad inside (lo, hi), half of it on a bound, 0 outside; a NaN input passes its gradient.
#include <immintrin.h>

#include "int4_kernels.h"
#include "internal.h"

namespace zerop {
namespace {

void clamp_backward_scalar(const float* x, const float* g, float lo, float hi, float* out,
                           int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (v == lo || v == hi) {
      out[i] = g[i] * 0.5f;
    } else {
      out[i] = (v < lo || v > hi) ? 0.0f : g[i];
    }
  }
}

__attribute__((target("avx2"))) void clamp_backward_avx2(const float* x, const float* g, float lo,
                                                         float hi, float* out, int64_t n) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), half = _mm256_set1_ps(0.5f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i), gv = _mm256_loadu_ps(g + i);
    const __m256 outside = _mm256_or_ps(_mm256_cmp_ps(v, vlo, _CMP_LT_OQ),
                                        _mm256_cmp_ps(v, vhi, _CMP_GT_OQ));
    const __m256 tie = _mm256_or_ps(_mm256_cmp_ps(v, vlo, _CMP_EQ_OQ),
                                    _mm256_cmp_ps(v, vhi, _CMP_EQ_OQ));
    __m256 r = _mm256_andnot_ps(outside, gv);
    r = _mm256_blendv_ps(r, _mm256_mul_ps(gv, half), tie);
    _mm256_storeu_ps(out + i, r);
  }
  clamp_backward_scalar(x + i, g + i, lo, hi, out + i, n - i);
}

}  // namespace

void clamp_backward(const float* x, const float* grad, int64_t n, float lo, float hi,
                    float* grad_x, int threads, Impl impl) {
  const bool simd = detail::use_avx2(impl);
  detail::over_blocks(n, threads, [&](int64_t b, int64_t e, int64_t) {
    simd ? clamp_backward_avx2(x + b, grad + b, lo, hi, grad_x + b, e - b)
         : clamp_backward_scalar(x + b, grad + b, lo, hi, grad_x + b, e - b);
  });
}

}  // namespace zerop

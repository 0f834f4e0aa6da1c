// The feature loss of fine-tuning (quant/distill.py:FeatureTaps) in two passes over a pair of
// layer outputs instead of about seven: per image, sum((s - t)^2) and sum(t^2) in one pass
// forward, grad_s = coef[image] * (s - t) in one pass backward. Both tensors hold `images`
// runs of `per_image` values in the same memory order (NCHW or channels_last: an image's values
// are contiguous in both). Sums are in double, in fixed blocks, so they do not depend on the
// thread count.
#include <immintrin.h>

#include <vector>

#include "int4_kernels.h"
#include "internal.h"

namespace zerop {
namespace {

struct Sums {
  double err = 0.0, tsq = 0.0;
};

Sums sums_scalar(const float* s, const float* t, int64_t n) {
  Sums r;
  for (int64_t i = 0; i < n; ++i) {
    const float d = s[i] - t[i];
    r.err += static_cast<double>(d * d);
    r.tsq += static_cast<double>(t[i] * t[i]);
  }
  return r;
}

__attribute__((target("avx2"))) inline __m256d widen_add(__m256d acc, __m128 v) {
  return _mm256_add_pd(acc, _mm256_cvtps_pd(v));
}

__attribute__((target("avx2"))) Sums sums_avx2(const float* s, const float* t, int64_t n) {
  __m256d e0 = _mm256_setzero_pd(), e1 = _mm256_setzero_pd();
  __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 tv = _mm256_loadu_ps(t + i);
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(s + i), tv);
    const __m256 dd = _mm256_mul_ps(d, d), tt = _mm256_mul_ps(tv, tv);
    e0 = widen_add(e0, _mm256_castps256_ps128(dd));
    e1 = widen_add(e1, _mm256_extractf128_ps(dd, 1));
    q0 = widen_add(q0, _mm256_castps256_ps128(tt));
    q1 = widen_add(q1, _mm256_extractf128_ps(tt, 1));
  }
  alignas(32) double le[4], lq[4];
  _mm256_store_pd(le, _mm256_add_pd(e0, e1));
  _mm256_store_pd(lq, _mm256_add_pd(q0, q1));
  Sums r = sums_scalar(s + i, t + i, n - i);
  r.err += le[0] + le[1] + le[2] + le[3];
  r.tsq += lq[0] + lq[1] + lq[2] + lq[3];
  return r;
}

void grad_scalar(const float* s, const float* t, float c, float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = c * (s[i] - t[i]);
}

__attribute__((target("avx2"))) void grad_avx2(const float* s, const float* t, float c, float* g,
                                               int64_t n) {
  const __m256 vc = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(s + i), _mm256_loadu_ps(t + i));
    _mm256_storeu_ps(g + i, _mm256_mul_ps(vc, d));
  }
  grad_scalar(s + i, t + i, c, g + i, n - i);
}

// Runs body(image, begin, end, block) over blocks of at most kElementBlock values that never
// straddle two images (block counts from 0 over all images), `threads` contiguous runs of blocks.
template <typename Body>
void over_image_blocks(int64_t images, int64_t per_image, int threads, const Body& body) {
  const int64_t per = (per_image + detail::kElementBlock - 1) / detail::kElementBlock;
  const int64_t blocks = images * per;
  const int64_t tasks = std::min<int64_t>(blocks, resolve_threads(threads));
  detail::parallel_for(tasks, static_cast<int>(tasks), [&](int64_t task) {
    for (int64_t j = blocks * task / tasks; j < blocks * (task + 1) / tasks; ++j) {
      const int64_t img = j / per, k = j % per;
      const int64_t b = k * detail::kElementBlock;
      body(img, img * per_image + b, img * per_image + std::min(per_image, b + detail::kElementBlock),
           j);
    }
  });
}

}  // namespace

void feature_mse_forward(const float* s, const float* t, int64_t images, int64_t per_image,
                         double* err, double* tsq, int threads, Impl impl) {
  if (images <= 0 || per_image <= 0) return;
  const bool simd = detail::use_avx2(impl);
  const int64_t per = (per_image + detail::kElementBlock - 1) / detail::kElementBlock;
  std::vector<Sums> partial(static_cast<size_t>(images * per));
  over_image_blocks(images, per_image, threads, [&](int64_t, int64_t b, int64_t e, int64_t j) {
    partial[j] = simd ? sums_avx2(s + b, t + b, e - b) : sums_scalar(s + b, t + b, e - b);
  });
  for (int64_t img = 0; img < images; ++img) {  // in block order
    double a = 0.0, q = 0.0;
    for (int64_t k = 0; k < per; ++k) {
      a += partial[img * per + k].err;
      q += partial[img * per + k].tsq;
    }
    err[img] = a;
    tsq[img] = q;
  }
}

void feature_mse_backward(const float* s, const float* t, int64_t images, int64_t per_image,
                          const float* coef, float* grad_s, int threads, Impl impl) {
  if (images <= 0 || per_image <= 0) return;
  const bool simd = detail::use_avx2(impl);
  over_image_blocks(images, per_image, threads, [&](int64_t img, int64_t b, int64_t e, int64_t) {
    simd ? grad_avx2(s + b, t + b, coef[img], grad_s + b, e - b)
         : grad_scalar(s + b, t + b, coef[img], grad_s + b, e - b);
  });
}

}  // namespace zerop

// 2-D convolution (NCHW) on top of the int4 block product: the input is quantized per image to
// int8 NHWC once, then each block of output pixels is gathered (im2col, K ordered kh, kw, c_in so
// that every tap is one contiguous copy) and multiplied with the repacked weights.
#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "internal.h"

namespace zerop {

int64_t conv_out_h(const ConvShape& s) {
  return (s.h + s.pad_top + s.pad_bottom - s.dil_h * (s.kh - 1) - 1) / s.stride_h + 1;
}

int64_t conv_out_w(const ConvShape& s) {
  return (s.w + s.pad_left + s.pad_right - s.dil_w * (s.kw - 1) - 1) / s.stride_w + 1;
}

namespace detail {
namespace {

constexpr int64_t kRowsPerBlock = 64;

inline int32_t nibble(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k / 2];
  return static_cast<int32_t>(((k & 1) ? (b >> 4) : (b & 0x0F)) ^ 0x08) - 8;
}

// Weights [C_out, (c_in, kh, kw)] in ONNX packing -> bytes w + 8 in the quad layout of
// ConvBlockArgs, one [k4][n_pad][4] block per group, K running (kh, kw, c_in) like the gathered
// rows; padding (k >= K, columns >= C_out / groups) is w = 0. wsum: sum_k w per padded column.
std::vector<uint8_t> expand_weights(const ConvShape& s, const uint8_t* packed, int64_t k4,
                                    int64_t n_pad, std::vector<int32_t>* wsum) {
  const int64_t cg = s.c_in / s.groups, og = s.c_out / s.groups, taps = s.kh * s.kw;
  const int64_t k = cg * taps, src_row = (k + 1) / 2, per_group = k4 * n_pad * 4;
  std::vector<uint8_t> out(static_cast<size_t>(s.groups * per_group), 8);
  wsum->assign(static_cast<size_t>(s.groups * n_pad), 0);
  for (int64_t co = 0; co < s.c_out; ++co) {
    const int64_t g = co / og, n = co % og;
    const uint8_t* src = packed + co * src_row;
    uint8_t* dst = out.data() + g * per_group;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t ci = 0; ci < cg; ++ci) {
        const int64_t p = t * cg + ci;  // position in the gathered row
        const int32_t v = nibble(src, ci * taps + t);
        dst[((p / 4) * n_pad + n) * 4 + p % 4] = static_cast<uint8_t>(v + 8);
        (*wsum)[static_cast<size_t>(g * n_pad + n)] += v;
      }
    }
  }
  return out;
}

// The repacked weights of one layer. Repacking costs about as much as a whole batch-1 call of a
// small layer (ResNet-20's 64 -> 64 3x3 conv: 37 k scattered nibbles, some 60 us against 13 us
// for onnxruntime's int8 conv), so the last layers' repacked weights are kept, keyed by the
// packed buffer's address and shape and checked against a copy of its bytes: a buffer that was
// changed or freed and reused is repacked again, never served stale.
struct ExpandedWeights {
  const uint8_t* src;
  int64_t c_out, c_in, groups, kh, kw, k4, n_pad;
  std::vector<uint8_t> packed;  // the bytes they were made from
  std::vector<uint8_t> w;
  std::vector<int32_t> wsum;
};

constexpr size_t kCacheEntries = 128;
constexpr size_t kCacheBytes = size_t{256} << 20;

std::shared_ptr<const ExpandedWeights> expanded_weights(const ConvShape& s, const uint8_t* packed,
                                                        int64_t k4, int64_t n_pad) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const ExpandedWeights>> cache;  // most recent last
  const int64_t k = (s.c_in / s.groups) * s.kh * s.kw;
  const size_t bytes = static_cast<size_t>(s.c_out * ((k + 1) / 2));
  auto same_shape = [&](const ExpandedWeights& e) {
    return e.src == packed && e.c_out == s.c_out && e.c_in == s.c_in && e.groups == s.groups &&
           e.kh == s.kh && e.kw == s.kw && e.k4 == k4 && e.n_pad == n_pad;
  };
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = cache.size(); i-- > 0;) {
      if (!same_shape(*cache[i])) continue;
      auto hit = cache[i];
      cache.erase(cache.begin() + static_cast<std::ptrdiff_t>(i));
      if (std::memcmp(hit->packed.data(), packed, bytes) != 0) break;  // stale: rebuild below
      cache.push_back(hit);
      return hit;
    }
  }
  auto e = std::make_shared<ExpandedWeights>();
  *e = ExpandedWeights{packed, s.c_out, s.c_in, s.groups, s.kh, s.kw, k4, n_pad, {}, {}, {}};
  e->packed.assign(packed, packed + bytes);
  e->w = expand_weights(s, packed, k4, n_pad, &e->wsum);
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_back(e);
  size_t total = 0;
  for (const auto& c : cache) total += c->packed.size() + c->w.size();
  while (cache.size() > kCacheEntries || (total > kCacheBytes && cache.size() > 1)) {
    total -= cache.front()->packed.size() + cache.front()->w.size();
    cache.erase(cache.begin());
  }
  return e;
}

struct ConvPlan {
  const ConvShape* s;
  int64_t oh, ow, cg, og, k, kc, lda;
};

template <int64_t kBytes>
inline void copy_tap(int8_t* dst, const int8_t* src, int64_t n) {
  if (kBytes > 0) {
    std::memcpy(dst, src, static_cast<size_t>(kBytes));  // a fixed size: inlined moves
  } else {
    std::memcpy(dst, src, static_cast<size_t>(n));
  }
}

// Gathers output pixels [p0, p0 + rows) of image b, group g into `a` (K order kh, kw, c_in) and
// sets corr[r] = 8 * (sum of row r) from the per-pixel channel sums `psum` ([b][pixel][group]).
// Bytes [K, lda) of every row must already be 0.
template <int64_t kBytes>
void im2col(const ConvPlan& pl, const int8_t* xn, const int32_t* psum, int64_t b, int64_t g,
            int64_t p0, int64_t rows, int8_t pad, int8_t* a, int32_t* corr) {
  const ConvShape& s = *pl.s;
  const int8_t* img = xn + b * s.h * s.w * s.c_in + g * pl.cg;
  const int32_t* ps = psum + b * s.h * s.w * s.groups + g;
  const int64_t run = s.kw * pl.cg;
  const int32_t pad_sum = pad * static_cast<int32_t>(pl.cg);
  // kW = 3, no dilation, one group: a row's three taps are one contiguous NHWC run
  const bool run3 = s.kw == 3 && s.dil_w == 1 && s.groups == 1;
  int64_t oy = p0 / pl.ow, ox = p0 % pl.ow;  // advanced per row: no divisions in the loop
  for (int64_t r = 0; r < rows; ++r, ox = (ox + 1 == pl.ow) ? (++oy, 0) : ox + 1) {
    const int64_t ix0 = ox * s.stride_w - s.pad_left;
    const bool cols_ok = ix0 >= 0 && ix0 + (s.kw - 1) * s.dil_w < s.w;
    int8_t* dst = a + r * pl.lda;
    int32_t sum = 0;
    for (int64_t ky = 0; ky < s.kh; ++ky) {
      const int64_t iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
      if (iy < 0 || iy >= s.h) {
        std::memset(dst, pad, static_cast<size_t>(run));
        sum += static_cast<int32_t>(s.kw) * pad_sum;
        dst += run;
        continue;
      }
      const int8_t* srow = img + iy * s.w * s.c_in;
      const int32_t* prow = ps + iy * s.w * s.groups;
      if (kBytes > 0 && run3 && cols_ok) {  // three adjacent taps: one fixed-size copy
        copy_tap<3 * kBytes>(dst, srow + ix0 * s.c_in, 0);
        sum += prow[ix0] + prow[ix0 + 1] + prow[ix0 + 2];
        dst += run;
        continue;
      }
      for (int64_t kx = 0; kx < s.kw; ++kx, dst += pl.cg) {
        const int64_t ix = ix0 + kx * s.dil_w;
        if (cols_ok || (ix >= 0 && ix < s.w)) {
          copy_tap<kBytes>(dst, srow + ix * s.c_in, pl.cg);
          sum += prow[ix * s.groups];
        } else {
          std::memset(dst, pad, static_cast<size_t>(pl.cg));
          sum += pad_sum;
        }
      }
    }
    corr[r] = 8 * sum;
  }
}

using Im2colFn = void (*)(const ConvPlan&, const int8_t*, const int32_t*, int64_t, int64_t,
                          int64_t, int64_t, int8_t, int8_t*, int32_t*);

Im2colFn pick_im2col(int64_t cg) {
  switch (cg) {
    case 1: return im2col<1>;
    case 2: return im2col<2>;
    case 3: return im2col<3>;
    case 4: return im2col<4>;
    case 8: return im2col<8>;
    case 16: return im2col<16>;
    case 32: return im2col<32>;
    case 64: return im2col<64>;
    default: return im2col<0>;
  }
}

#if defined(__SSE2__)
// 16x16 byte transpose (SSE2): out row j = column j of the 16 input rows.
void transpose16(const int8_t* src, int64_t lds, int8_t* dst, int64_t ldd, uint8_t flip) {
  const __m128i f = _mm_set1_epi8(static_cast<char>(flip));
  __m128i r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * lds)), f);
  for (int k = 0; k < 8; ++k) {
    t[k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
    t[k + 8] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
  }
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k) {
      r[k + 8 * h] = _mm_unpacklo_epi16(t[8 * h + 2 * k], t[8 * h + 2 * k + 1]);
      r[k + 4 + 8 * h] = _mm_unpackhi_epi16(t[8 * h + 2 * k], t[8 * h + 2 * k + 1]);
    }
  for (int q = 0; q < 4; ++q) {
    const __m128i clo = _mm_unpacklo_epi32(r[4 * q], r[4 * q + 1]);
    const __m128i chi = _mm_unpackhi_epi32(r[4 * q], r[4 * q + 1]);
    const __m128i dlo = _mm_unpacklo_epi32(r[4 * q + 2], r[4 * q + 3]);
    const __m128i dhi = _mm_unpackhi_epi32(r[4 * q + 2], r[4 * q + 3]);
    const __m128i out[4] = {_mm_unpacklo_epi64(clo, dlo), _mm_unpackhi_epi64(clo, dlo),
                            _mm_unpacklo_epi64(chi, dhi), _mm_unpackhi_epi64(chi, dhi)};
    for (int e = 0; e < 4; ++e)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (4 * q + e) * ldd), out[e]);
  }
}
#endif

}  // namespace

// One image [C][HW] (bytes xor `flip`) -> [HW][C] int8, and its per-pixel group sums.
void to_nhwc(const int8_t* src, int64_t c, int64_t hw, int64_t groups, uint8_t flip, int8_t* dst,
             int32_t* psum) {
  int64_t c0 = 0;
#if defined(__SSE2__)
  for (; c0 + 16 <= c; c0 += 16) {
    int64_t p0 = 0;
    for (; p0 + 16 <= hw; p0 += 16) transpose16(src + c0 * hw + p0, hw, dst + p0 * c + c0, c, flip);
    for (; p0 < hw; ++p0)
      for (int64_t i = c0; i < c0 + 16; ++i)
        dst[p0 * c + i] = static_cast<int8_t>(static_cast<uint8_t>(src[i * hw + p0]) ^ flip);
  }
#endif
  for (; c0 < c; ++c0)
    for (int64_t p = 0; p < hw; ++p)
      dst[p * c + c0] = static_cast<int8_t>(static_cast<uint8_t>(src[c0 * hw + p]) ^ flip);
  const int64_t cg = c / groups;
  for (int64_t p = 0; p < hw; ++p)
    for (int64_t g = 0; g < groups; ++g) {
      int32_t sum = 0;
      for (int64_t i = 0; i < cg; ++i) sum += dst[p * c + g * cg + i];
      psum[p * groups + g] = sum;
    }
}

namespace {

// xn: int8 NHWC input, real value (xn - a_offset) * img_scale[b].
void conv_driver(const int8_t* xn, const int32_t* psum, const float* img_scale, int32_t a_offset,
                 const ConvShape& s, const uint8_t* packed, const float* scales, const float* bias,
                 float* y, int t, const Kernels& kn) {
  ConvPlan pl{&s, conv_out_h(s), conv_out_w(s), s.c_in / s.groups, s.c_out / s.groups, 0, 0, 0};
  pl.k = pl.cg * s.kh * s.kw;
  pl.kc = std::max<int64_t>(1, (pl.k + kChunk - 1) / kChunk);
  pl.lda = pl.kc * kChunk;
  const int64_t n_pad = (pl.og + kConvCols - 1) / kConvCols * kConvCols;
  const int64_t k4 = (pl.k + 3) / 4;
  const std::shared_ptr<const ExpandedWeights> ew = expanded_weights(s, packed, k4, n_pad);
  const std::vector<uint8_t>& wx = ew->w;
  std::vector<int32_t> cw(ew->wsum);
  for (int32_t& v : cw) v *= a_offset;
  std::vector<float> sc(static_cast<size_t>(s.groups * n_pad), 0.0f);
  std::vector<float> bs(static_cast<size_t>(s.groups * n_pad), 0.0f);
  for (int64_t co = 0; co < s.c_out; ++co) {
    sc[(co / pl.og) * n_pad + co % pl.og] = scales[co];
    if (bias) bs[(co / pl.og) * n_pad + co % pl.og] = bias[co];
  }
  const Im2colFn gather = pick_im2col(pl.cg);
  const int64_t pixels = pl.oh * pl.ow;
  const int64_t pblocks = (pixels + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_for(s.batch * s.groups * pblocks, t, [&](int64_t task) {
    const int64_t b = task / (s.groups * pblocks), g = (task / pblocks) % s.groups;
    const int64_t p0 = (task % pblocks) * kRowsPerBlock;
    const int64_t rows = std::min(kRowsPerBlock, pixels - p0);
    static thread_local std::vector<int8_t> a;
    static thread_local std::vector<int32_t> corr;
    static thread_local int64_t a_k = -1;
    if (a_k != pl.k || a.size() != static_cast<size_t>(kRowsPerBlock * pl.lda)) {
      a.assign(static_cast<size_t>(kRowsPerBlock * pl.lda), 0);  // row tails stay zero
      a_k = pl.k;
    }
    corr.resize(static_cast<size_t>(kRowsPerBlock), 0);  // whole groups of 8 rows
    gather(pl, xn, psum, b, g, p0, rows, static_cast<int8_t>(a_offset), a.data(), corr.data());
    const ConvBlockArgs cb{a.data(), pl.lda, corr.data(), wx.data() + g * k4 * n_pad * 4, k4,
                           n_pad, pl.og, a_offset ? cw.data() + g * n_pad : nullptr,
                           sc.data() + g * n_pad, bias ? bs.data() + g * n_pad : nullptr,
                           img_scale[b], y + (b * s.c_out + g * pl.og) * pixels + p0, pixels};
    kn.conv_block(rows, cb);
  });
}

}  // namespace
}  // namespace detail

void conv2d_int4_f32(const float* x, const ConvShape& s, const uint8_t* packed,
                     const float* scales, const float* bias, float* y, int threads, Impl impl) {
  const detail::Kernels& kn = detail::kernels_for(impl);
  const int64_t macs = s.batch * s.c_out * conv_out_h(s) * conv_out_w(s) * s.kh * s.kw *
                       (s.c_in / s.groups);
  const int t = macs < detail::kMinParallelMacs ? 1 : resolve_threads(threads);
  const int64_t chw = s.c_in * s.h * s.w, hw = s.h * s.w;
  std::vector<int8_t> xn(static_cast<size_t>(s.batch * chw));
  std::vector<float> img_scale(static_cast<size_t>(s.batch));
  if (detail::is_depthwise(s)) {  // per-image quantization, then the direct path on NCHW planes
    detail::parallel_for(s.batch, t, [&](int64_t b) {
      img_scale[b] = detail::row_scale(kn.absmax(x + b * chw, chw));
      kn.quantize(x + b * chw, chw, img_scale[b], xn.data() + b * chw);
    });
    detail::depthwise_direct(xn.data(), 0, img_scale.data(), 0, s, packed, scales, bias, y, t);
    return;
  }
  std::vector<int32_t> psum(static_cast<size_t>(s.batch * hw * s.groups));
  detail::parallel_for(s.batch, t, [&](int64_t b) {
    std::vector<int8_t> q(static_cast<size_t>(chw));
    img_scale[b] = detail::row_scale(kn.absmax(x + b * chw, chw));
    kn.quantize(x + b * chw, chw, img_scale[b], q.data());
    detail::to_nhwc(q.data(), s.c_in, hw, s.groups, 0, xn.data() + b * chw,
                    psum.data() + b * hw * s.groups);
  });
  detail::conv_driver(xn.data(), psum.data(), img_scale.data(), 0, s, packed, scales, bias, y, t,
                      kn);
}

void conv2d_int4_q8(const void* xq, bool is_unsigned, float x_scale, int32_t zero_point,
                    const ConvShape& s, const uint8_t* packed, const float* scales,
                    const float* bias, float* y, int threads, Impl impl) {
  const detail::Kernels& kn = detail::kernels_for(impl);
  const int64_t macs = s.batch * s.c_out * conv_out_h(s) * conv_out_w(s) * s.kh * s.kw *
                       (s.c_in / s.groups);
  const int t = macs < detail::kMinParallelMacs ? 1 : resolve_threads(threads);
  const int64_t chw = s.c_in * s.h * s.w, hw = s.h * s.w;
  const uint8_t flip = is_unsigned ? 0x80 : 0x00;  // uint8 v -> int8 v - 128
  const int32_t offset = is_unsigned ? zero_point - 128 : zero_point;
  std::vector<float> img_scale(static_cast<size_t>(s.batch), x_scale);
  if (detail::is_depthwise(s)) {
    detail::depthwise_direct(static_cast<const int8_t*>(xq), flip, img_scale.data(), offset, s,
                             packed, scales, bias, y, t);
    return;
  }
  std::vector<int8_t> xn(static_cast<size_t>(s.batch * chw));
  std::vector<int32_t> psum(static_cast<size_t>(s.batch * hw * s.groups));
  detail::parallel_for(s.batch, t, [&](int64_t b) {
    detail::to_nhwc(static_cast<const int8_t*>(xq) + b * chw, s.c_in, hw, s.groups, flip,
                    xn.data() + b * chw, psum.data() + b * hw * s.groups);
  });
  detail::conv_driver(xn.data(), psum.data(), img_scale.data(), offset, s, packed, scales, bias, y,
                      t, kn);
}

}  // namespace zerop

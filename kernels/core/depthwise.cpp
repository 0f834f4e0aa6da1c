// Depthwise convolution (groups == C_in == C_out) computed directly on the NCHW int8 planes:
// each output plane is a small 2-D correlation of one input plane, so the general gather-and-
// multiply path (one 1-column product per channel) would waste almost all of its work. Plain C++
// that the compiler vectorizes: along the output row when rows are 16 or more wide, across the
// channels (one image at a time, channels innermost) when they are narrower. Every Impl runs it,
// and the integer sums and float steps are those of the general path, so all give the same bits.
#include <algorithm>
#include <vector>

#include "internal.h"

namespace zerop {
namespace detail {

bool is_depthwise(const ConvShape& s) {
  return s.groups > 1 && s.groups == s.c_in && s.c_out == s.groups;
}

namespace {

// One output row: acc[ox] = sum over taps of w * plane (int16 is exact for up to 16 taps:
// |w * (x - a_offset)| <= 8 * 255, and 16 * 2040 < 32767; int32 otherwise).
template <typename Acc>
void depthwise_row(const int16_t* plane, int64_t pw, const int32_t* wc, const ConvShape& s,
                   int64_t oy, int64_t ow, Acc* acc) {
  std::fill(acc, acc + ow, Acc{0});
  for (int64_t ky = 0; ky < s.kh; ++ky) {
    const int16_t* row = plane + (oy * s.stride_h + ky * s.dil_h) * pw;
    for (int64_t kx = 0; kx < s.kw; ++kx) {
      const Acc wv = static_cast<Acc>(wc[ky * s.kw + kx]);
      const int16_t* r = row + kx * s.dil_w;
      if (s.stride_w == 1) {
        for (int64_t ox = 0; ox < ow; ++ox) acc[ox] = static_cast<Acc>(acc[ox] + wv * r[ox]);
      } else {
        for (int64_t ox = 0; ox < ow; ++ox)
          acc[ox] = static_cast<Acc>(acc[ox] + wv * r[ox * s.stride_w]);
      }
    }
  }
}

// Channels innermost: the compiler vectorizes across the channels instead of along output rows
// (on ShuffleNetV2's 4x4 to 16x16 planes the row form spent its time in loop overhead, 4-10x
// slower than onnxruntime fp32; on EfficientNet-Lite0's 5x5 and stride-2 layers, whose rows are
// strided or take int32 sums, 10-25x slower than onnxruntime's int8 kernel). Same integer sums,
// same float steps, so the same bits. An image is padded once (pad_rows, by input rows) and its
// output rows are computed in ranges (out_rows), so that one image can use several threads.

// Input rows [iy0, iy1) of one image into xp [ph][pw][c] as int16 (x - a_offset); the padding
// rows and columns hold 0 (the real value 0) and are written by the ranges that own them.
void pad_rows(const int8_t* x, uint8_t flip, int32_t a_offset, const ConvShape& s, int64_t iy0,
              int64_t iy1, int16_t* xp) {
  const int64_t pw = s.w + s.pad_left + s.pad_right, c_n = s.c_in, hw = s.h * s.w;
  const int64_t ph = s.h + s.pad_top + s.pad_bottom;
  if (iy0 == 0) std::fill(xp, xp + s.pad_top * pw * c_n, int16_t{0});
  if (iy1 == s.h) std::fill(xp + (s.pad_top + s.h) * pw * c_n, xp + ph * pw * c_n, int16_t{0});
  for (int64_t iy = iy0; iy < iy1; ++iy) {  // channels innermost: contiguous stores
    int16_t* row = xp + (iy + s.pad_top) * pw * c_n;
    std::fill(row, row + s.pad_left * c_n, int16_t{0});
    std::fill(row + (s.pad_left + s.w) * c_n, row + pw * c_n, int16_t{0});
    for (int64_t ix = 0; ix < s.w; ++ix) {
      const int8_t* src = x + iy * s.w + ix;
      int16_t* dst = row + (ix + s.pad_left) * c_n;
      for (int64_t c = 0; c < c_n; ++c) {
        const int32_t v = static_cast<int8_t>(static_cast<uint8_t>(src[c * hw]) ^ flip);
        dst[c] = static_cast<int16_t>(v - a_offset);
      }
    }
  }
}

// One output pixel's channels [c0, c0 + n) (n <= kMaxBlock; kBlock when the size is fixed, so
// that the sums stay in registers across the taps) into o[c0..].
constexpr int64_t kBlock = 32;

template <typename Acc, int64_t kN>
inline void pixel_channels(const int16_t* xp0, int64_t pw, const ConvShape& s, const int16_t* wt,
                           const float* scales, const float* bias, float rs, int64_t c0,
                           int64_t n, float* o) {
  const int64_t c_n = s.c_in;
  Acc a[kBlock] = {};
  const int64_t cnt = kN > 0 ? kN : n;
  for (int64_t ky = 0; ky < s.kh; ++ky)
    for (int64_t kx = 0; kx < s.kw; ++kx) {
      const int16_t* xv = xp0 + (ky * s.dil_h * pw + kx * s.dil_w) * c_n + c0;
      const int16_t* wv = wt + (ky * s.kw + kx) * c_n + c0;
      for (int64_t c = 0; c < cnt; ++c) a[c] = static_cast<Acc>(a[c] + wv[c] * xv[c]);
    }
  for (int64_t c = 0; c < cnt; ++c)
    o[c0 + c] = conv_value(a[c], 0, scales[c0 + c], rs, bias, c0 + c);
}

// Output rows [oy0, oy1) of one image from its padded form. wt: the weights as [tap][channel].
// Compiled for AVX2 and for plain x86-64 (chosen when the module loads): the module itself is
// built without -mavx2, and integer sums and unfused float steps give the same bits either way.
template <typename Acc>
__attribute__((target_clones("avx2", "default"))) void out_rows(
    const int16_t* xp, float rs, const ConvShape& s, const int16_t* wt, const float* scales,
    const float* bias, int64_t oy0, int64_t oy1, float* y) {
  const int64_t oh = conv_out_h(s), ow = conv_out_w(s), c_n = s.c_in;
  const int64_t pw = s.w + s.pad_left + s.pad_right;
  static thread_local std::vector<float> out;
  out.resize(static_cast<size_t>((oy1 - oy0) * ow * c_n));  // [pixel][channel], then NCHW
  for (int64_t oy = oy0; oy < oy1; ++oy)
    for (int64_t ox = 0; ox < ow; ++ox) {
      float* const o = out.data() + ((oy - oy0) * ow + ox) * c_n;
      const int16_t* xp0 = xp + (oy * s.stride_h * pw + ox * s.stride_w) * c_n;
      int64_t c0 = 0;
      for (; c0 + kBlock <= c_n; c0 += kBlock)
        pixel_channels<Acc, kBlock>(xp0, pw, s, wt, scales, bias, rs, c0, kBlock, o);
      if (c0 < c_n) pixel_channels<Acc, 0>(xp0, pw, s, wt, scales, bias, rs, c0, c_n - c0, o);
    }
  const int64_t p0 = oy0 * ow, pixels = (oy1 - oy0) * ow;
  for (int64_t c = 0; c < c_n; ++c)  // contiguous stores, strided loads
    for (int64_t p = 0; p < pixels; ++p) y[c * oh * ow + p0 + p] = out[p * c_n + c];
}

void depthwise_nhwc(const int8_t* x, uint8_t flip, const float* img_scale, int32_t a_offset,
                    const ConvShape& s, const int16_t* wt, const float* scales, const float* bias,
                    float* y, int threads) {
  const int64_t oh = conv_out_h(s), ow = conv_out_w(s), c_n = s.c_in;
  const int64_t plane = (s.h + s.pad_top + s.pad_bottom) * (s.w + s.pad_left + s.pad_right) * c_n;
  auto rows = [&](const int16_t* xp, int64_t b, int64_t oy0, int64_t oy1) {
    float* yb = y + b * c_n * oh * ow;
    if (s.kh * s.kw <= 16)
      out_rows<int16_t>(xp, img_scale[b], s, wt, scales, bias, oy0, oy1, yb);
    else
      out_rows<int32_t>(xp, img_scale[b], s, wt, scales, bias, oy0, oy1, yb);
  };
  if (s.batch >= threads) {  // a task per image
    parallel_for(s.batch, threads, [&](int64_t b) {
      static thread_local std::vector<int16_t> xp;
      xp.resize(static_cast<size_t>(plane));
      pad_rows(x + b * c_n * s.h * s.w, flip, a_offset, s, 0, s.h, xp.data());
      rows(xp.data(), b, 0, oh);
    });
    return;
  }
  // Fewer images than threads: each image's rows are split between the threads.
  std::vector<int16_t> xp(static_cast<size_t>(plane));
  const int64_t in_chunks = std::min<int64_t>(s.h, 4 * threads);
  const int64_t out_chunks = std::min<int64_t>(oh, 4 * threads);
  for (int64_t b = 0; b < s.batch; ++b) {
    parallel_for(in_chunks, threads, [&](int64_t t) {
      pad_rows(x + b * c_n * s.h * s.w, flip, a_offset, s, s.h * t / in_chunks,
               s.h * (t + 1) / in_chunks, xp.data());
    });
    parallel_for(out_chunks, threads, [&](int64_t t) {
      rows(xp.data(), b, oh * t / out_chunks, oh * (t + 1) / out_chunks);
    });
  }
}

}  // namespace

void depthwise_direct(const int8_t* x, uint8_t flip, const float* img_scale, int32_t a_offset,
                      const ConvShape& s, const uint8_t* packed, const float* scales,
                      const float* bias, float* y, int threads) {
  const int64_t oh = conv_out_h(s), ow = conv_out_w(s), taps = s.kh * s.kw, c_n = s.c_in;
  const int64_t ph = s.h + s.pad_top + s.pad_bottom, pw = s.w + s.pad_left + s.pad_right;
  std::vector<int32_t> w(static_cast<size_t>(c_n * taps));
  for (int64_t c = 0; c < c_n; ++c)
    for (int64_t k = 0; k < taps; ++k) {
      const uint8_t byte = packed[c * ((taps + 1) / 2) + k / 2];
      w[c * taps + k] = static_cast<int32_t>(((k & 1) ? (byte >> 4) : (byte & 0x0F)) ^ 0x08) - 8;
    }
  // Channels innermost for narrow rows, and for more than 16 taps (the row form then sums in
  // int32, 2-3x slower on Lite0's 5x5 layers); the row form for wide rows of up to 16 taps,
  // where the padding transposes of the channels-innermost form cost more than they save.
  if (ow < 16 || taps > 16) {
    std::vector<int16_t> wt(static_cast<size_t>(taps * c_n));  // [tap][channel], once per call
    for (int64_t c = 0; c < c_n; ++c)
      for (int64_t k = 0; k < taps; ++k) wt[k * c_n + c] = static_cast<int16_t>(w[c * taps + k]);
    depthwise_nhwc(x, flip, img_scale, a_offset, s, wt.data(), scales, bias, y, threads);
    return;
  }
  // Several channels per task, so that small planes do not drown in per-task overhead.
  const int64_t per_task = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, oh * ow));
  const int64_t chunks = (c_n + per_task - 1) / per_task;
  parallel_for(s.batch * chunks, threads, [&](int64_t task) {
    const int64_t b = task / chunks, c0 = (task % chunks) * per_task;
    static thread_local std::vector<int16_t> plane;
    static thread_local std::vector<int32_t> acc;
    static thread_local std::vector<int16_t> acc16;
    plane.assign(static_cast<size_t>(ph * pw), 0);  // the padding holds the real value 0
    acc.resize(static_cast<size_t>(ow));
    acc16.resize(static_cast<size_t>(ow));
    for (int64_t c = c0; c < std::min(c_n, c0 + per_task); ++c) {
      const int8_t* src = x + (b * c_n + c) * s.h * s.w;
      for (int64_t iy = 0; iy < s.h; ++iy) {  // the plane as int16 (x - a_offset)
        int16_t* dst = plane.data() + (iy + s.pad_top) * pw + s.pad_left;
        for (int64_t ix = 0; ix < s.w; ++ix) {
          const int32_t v = static_cast<int8_t>(static_cast<uint8_t>(src[iy * s.w + ix]) ^ flip);
          dst[ix] = static_cast<int16_t>(v - a_offset);
        }
      }
      const int32_t* wc = w.data() + c * taps;
      float* out = y + (b * c_n + c) * oh * ow;
      const float sc = scales[c], rs = img_scale[b];
      for (int64_t oy = 0; oy < oh; ++oy) {
        if (taps <= 16) {
          depthwise_row(plane.data(), pw, wc, s, oy, ow, acc16.data());
          for (int64_t ox = 0; ox < ow; ++ox)
            out[oy * ow + ox] = conv_value(acc16[ox], 0, sc, rs, bias, c);
        } else {
          depthwise_row(plane.data(), pw, wc, s, oy, ow, acc.data());
          for (int64_t ox = 0; ox < ow; ++ox)
            out[oy * ow + ox] = conv_value(acc[ox], 0, sc, rs, bias, c);
        }
      }
    }
  });
}

}  // namespace detail
}  // namespace zerop

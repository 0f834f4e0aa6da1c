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

// Small planes (output rows under 16 wide): one image at a time with the channels innermost, so
// that the compiler vectorizes across channels instead of along rows of a few pixels. On
// ShuffleNetV2's 4x4 to 16x16 planes the row form spent its time in loop overhead (4-10x slower
// than onnxruntime fp32). Same integer sums, same float steps, so the same bits.
// wt: the weights as [tap][channel].
template <typename Acc>
void depthwise_image_nhwc(const int8_t* x, uint8_t flip, float rs, int32_t a_offset,
                          const ConvShape& s, const int16_t* wt, const float* scales,
                          const float* bias, float* y) {
  const int64_t oh = conv_out_h(s), ow = conv_out_w(s), c_n = s.c_in;
  const int64_t ph = s.h + s.pad_top + s.pad_bottom, pw = s.w + s.pad_left + s.pad_right;
  static thread_local std::vector<int16_t> xp;
  static thread_local std::vector<Acc> acc;
  static thread_local std::vector<float> out;
  xp.assign(static_cast<size_t>(ph * pw * c_n), 0);  // the padding holds the real value 0
  const int64_t hw = s.h * s.w;
  for (int64_t iy = 0; iy < s.h; ++iy)  // channels innermost: contiguous stores, strided loads
    for (int64_t ix = 0; ix < s.w; ++ix) {
      const int8_t* src = x + iy * s.w + ix;
      int16_t* dst = xp.data() + ((iy + s.pad_top) * pw + ix + s.pad_left) * c_n;
      for (int64_t c = 0; c < c_n; ++c) {
        const int32_t v = static_cast<int8_t>(static_cast<uint8_t>(src[c * hw]) ^ flip);
        dst[c] = static_cast<int16_t>(v - a_offset);
      }
    }
  acc.resize(static_cast<size_t>(c_n));
  out.resize(static_cast<size_t>(oh * ow * c_n));  // [pixel][channel], then NCHW at the end
  Acc* const a = acc.data();
  for (int64_t oy = 0; oy < oh; ++oy)
    for (int64_t ox = 0; ox < ow; ++ox) {
      float* const o = out.data() + (oy * ow + ox) * c_n;
      std::fill(a, a + c_n, Acc{0});
      for (int64_t ky = 0; ky < s.kh; ++ky)
        for (int64_t kx = 0; kx < s.kw; ++kx) {
          const int16_t* xv = xp.data() + ((oy * s.stride_h + ky * s.dil_h) * pw +
                                           ox * s.stride_w + kx * s.dil_w) * c_n;
          const int16_t* wv = wt + (ky * s.kw + kx) * c_n;
          for (int64_t c = 0; c < c_n; ++c) a[c] = static_cast<Acc>(a[c] + wv[c] * xv[c]);
        }
      for (int64_t c = 0; c < c_n; ++c) o[c] = conv_value(a[c], 0, scales[c], rs, bias, c);
    }
  for (int64_t c = 0; c < c_n; ++c)  // contiguous stores, strided loads
    for (int64_t p = 0; p < oh * ow; ++p) y[c * oh * ow + p] = out[p * c_n + c];
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
  if (ow < 16 && oh * ow <= 4096) {  // small planes: a task per image, channels innermost
    std::vector<int16_t> wt(static_cast<size_t>(taps * c_n));  // [tap][channel], once per call
    for (int64_t c = 0; c < c_n; ++c)
      for (int64_t k = 0; k < taps; ++k) wt[k * c_n + c] = static_cast<int16_t>(w[c * taps + k]);
    parallel_for(s.batch, threads, [&](int64_t b) {
      const int8_t* xb = x + b * c_n * s.h * s.w;
      float* yb = y + b * c_n * oh * ow;
      if (taps <= 16)
        depthwise_image_nhwc<int16_t>(xb, flip, img_scale[b], a_offset, s, wt.data(), scales,
                                      bias, yb);
      else
        depthwise_image_nhwc<int32_t>(xb, flip, img_scale[b], a_offset, s, wt.data(), scales,
                                      bias, yb);
    });
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

// 2-D convolution (NCHW) on top of the int4 block product: the input is quantized per image to
// int8 NHWC once, then each block of output pixels is gathered (im2col, K ordered kh, kw, c_in so
// that every tap is one contiguous copy) and multiplied with the repacked weights.
#include <algorithm>
#include <cstring>
#include <vector>

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

// Weights [C_out, (c_in, kh, kw)] in ONNX packing -> [C_out, kc*32] where K runs (kh, kw, c_in) and
// byte i of chunk c holds k = 64c + i (low nibble) and k = 64c + 32 + i (high nibble).
std::vector<uint8_t> repack_weights(const ConvShape& s, const uint8_t* packed, int64_t kc) {
  const int64_t cg = s.c_in / s.groups, taps = s.kh * s.kw, k = cg * taps;
  const int64_t src_row = (k + 1) / 2, dst_row = kc * kChunkBytes;
  std::vector<uint8_t> out(static_cast<size_t>(s.c_out * dst_row), 0);
  for (int64_t co = 0; co < s.c_out; ++co) {
    const uint8_t* src = packed + co * src_row;
    uint8_t* dst = out.data() + co * dst_row;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t ci = 0; ci < cg; ++ci) {
        const int64_t p = t * cg + ci;  // position in the gathered row
        const uint8_t v = static_cast<uint8_t>(nibble(src, ci * taps + t) & 0x0F);
        const int64_t i = p % kChunk;
        uint8_t& b = dst[(p / kChunk) * kChunkBytes + (i & 31)];
        b = static_cast<uint8_t>(b | (i < 32 ? v : v << 4));
      }
    }
  }
  return out;
}

struct ConvPlan {
  const ConvShape* s;
  int64_t oh, ow, cg, og, k, kc, lda;
};

// Gathers output pixels [p0, p0 + rows) of image b, group g into `a` (chunk layout = natural here).
void im2col(const ConvPlan& pl, const int8_t* xn, int64_t b, int64_t g, int64_t p0, int64_t rows,
            int8_t pad, int8_t* a) {
  const ConvShape& s = *pl.s;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = p0 + r, oy = p / pl.ow, ox = p % pl.ow;
    int8_t* dst = a + r * pl.lda;
    for (int64_t ky = 0; ky < s.kh; ++ky) {
      const int64_t iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
      for (int64_t kx = 0; kx < s.kw; ++kx, dst += pl.cg) {
        const int64_t ix = ox * s.stride_w - s.pad_left + kx * s.dil_w;
        if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) {
          std::memset(dst, pad, static_cast<size_t>(pl.cg));
        } else {
          std::memcpy(dst, xn + ((b * s.h + iy) * s.w + ix) * s.c_in + g * pl.cg,
                      static_cast<size_t>(pl.cg));
        }
      }
    }
    std::memset(dst, 0, static_cast<size_t>(pl.lda - pl.k));
  }
}

// xn: int8 NHWC input, real value (xn - a_offset) * img_scale[b].
void conv_driver(const int8_t* xn, const float* img_scale, int32_t a_offset, const ConvShape& s,
                 const uint8_t* packed, const float* scales, const float* bias, float* y, int t,
                 const Kernels& kn) {
  ConvPlan pl{&s, conv_out_h(s), conv_out_w(s), s.c_in / s.groups, s.c_out / s.groups, 0, 0, 0};
  pl.k = pl.cg * s.kh * s.kw;
  pl.kc = std::max<int64_t>(1, (pl.k + kChunk - 1) / kChunk);
  pl.lda = pl.kc * kChunk;
  const GroupMode gm{1, pl.kc};
  const std::vector<uint8_t> wp = repack_weights(s, packed, pl.kc);
  std::vector<int8_t> ones(static_cast<size_t>(pl.lda), 0);
  std::fill(ones.begin(), ones.begin() + pl.k, int8_t{1});
  int32_t ones_corr[2] = {0, 0};
  kn.group_sums(ones.data(), pl.kc, gm, ones_corr);

  const int64_t pixels = pl.oh * pl.ow;
  const int64_t pblocks = (pixels + kRowsPerBlock - 1) / kRowsPerBlock;
  parallel_for(s.batch * s.groups * pblocks, t, [&](int64_t task) {
    const int64_t b = task / (s.groups * pblocks), g = (task / pblocks) % s.groups;
    const int64_t p0 = (task % pblocks) * kRowsPerBlock;
    const int64_t rows = std::min(kRowsPerBlock, pixels - p0);
    static thread_local std::vector<int8_t> a;
    static thread_local std::vector<int32_t> corr;
    a.resize(static_cast<size_t>(kRowsPerBlock * pl.lda));
    corr.resize(static_cast<size_t>(kRowsPerBlock + 1));
    im2col(pl, xn, b, g, p0, rows, static_cast<int8_t>(a_offset), a.data());
    for (int64_t r = 0; r < rows; ++r) kn.group_sums(a.data() + r * pl.lda, pl.kc, gm, &corr[r]);
    float rsv[kRowsPerBlock];
    std::fill(rsv, rsv + rows, img_scale[b]);
    const WeightSpec ws{wp.data() + g * pl.og * pl.kc * kChunkBytes, pl.kc * kChunkBytes,
                        pl.kc * kChunkBytes, pl.og, pl.k, pl.kc, gm, scales + g * pl.og,
                        s.c_out, bias ? bias + g * pl.og : nullptr, a_offset};
    float* yb = y + (b * s.c_out + g * pl.og) * pixels + p0;
    gemm_rows(kn, ws, rows, a.data(), pl.lda, corr.data(), rsv, 0, pl.og, yb, 1, pixels,
              ones.data(), ones_corr);
  });
}

}  // namespace
}  // namespace detail

void conv2d_int4_f32(const float* x, const ConvShape& s, const uint8_t* packed,
                     const float* scales, const float* bias, float* y, int threads, Impl impl) {
  const detail::Kernels& kn = detail::kernels_for(impl);
  const int t = resolve_threads(threads);
  const int64_t chw = s.c_in * s.h * s.w, hw = s.h * s.w;
  std::vector<int8_t> xn(static_cast<size_t>(s.batch * chw));
  std::vector<float> img_scale(static_cast<size_t>(s.batch));
  detail::parallel_for(s.batch, t, [&](int64_t b) {
    std::vector<int8_t> q(static_cast<size_t>(chw));
    img_scale[b] = detail::row_scale(kn.absmax(x + b * chw, chw));
    kn.quantize(x + b * chw, chw, img_scale[b], q.data());
    int8_t* dst = xn.data() + b * chw;
    for (int64_t c = 0; c < s.c_in; ++c)
      for (int64_t p = 0; p < hw; ++p) dst[p * s.c_in + c] = q[c * hw + p];
  });
  detail::conv_driver(xn.data(), img_scale.data(), 0, s, packed, scales, bias, y, t, kn);
}

void conv2d_int4_q8(const void* xq, bool is_unsigned, float x_scale, int32_t zero_point,
                    const ConvShape& s, const uint8_t* packed, const float* scales,
                    const float* bias, float* y, int threads, Impl impl) {
  const detail::Kernels& kn = detail::kernels_for(impl);
  const int t = resolve_threads(threads);
  const int64_t chw = s.c_in * s.h * s.w, hw = s.h * s.w;
  const uint8_t flip = is_unsigned ? 0x80 : 0x00;  // uint8 v -> int8 v - 128
  std::vector<int8_t> xn(static_cast<size_t>(s.batch * chw));
  std::vector<float> img_scale(static_cast<size_t>(s.batch), x_scale);
  detail::parallel_for(s.batch, t, [&](int64_t b) {
    const uint8_t* src = static_cast<const uint8_t*>(xq) + b * chw;
    int8_t* dst = xn.data() + b * chw;
    for (int64_t c = 0; c < s.c_in; ++c)
      for (int64_t p = 0; p < hw; ++p)
        dst[p * s.c_in + c] = static_cast<int8_t>(src[c * hw + p] ^ flip);
  });
  const int32_t offset = is_unsigned ? zero_point - 128 : zero_point;
  detail::conv_driver(xn.data(), img_scale.data(), offset, s, packed, scales, bias, y, t, kn);
}

}  // namespace zerop

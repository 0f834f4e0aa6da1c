// Public C++ API of the packed-int4 kernels (plain C++17, raw pointers, no Python or torch).
//
// Integer formats follow DESIGN.md ("Integer formats", "Kernel API"):
//   * weights: int4 values -8..7, two per byte, element 2i in the low nibble (ONNX INT4 packing),
//     row n of `packed` holds output channel n and has ceil(K / 2) bytes;
//   * scales: float32 [N] (group_size == 0) or [ceil(K / group_size), N];
//   * fp32 activations are quantized per row to symmetric int8:
//     s = max|x| / 127 (1 for an all-zero row), q = clip(rint(x / s), -127, 127);
//   * y[m, n] = s_m * sum_g scales[g, n] * sum_{k in g} q[m, k] * w[n, k] + bias[n], the inner
//     sums exact in int32, the float steps in the same order as
//     quant/primitives.py:matmul_int4_reference.
#pragma once

#include <cstddef>
#include <cstdint>

namespace zerop {

// Which implementation runs the integer inner loops. kAuto picks the fastest the CPU runs:
// AVX512-VNNI (256-bit vpdpbusd), else AVX2 + FMA, else the portable scalar code. A path the CPU
// lacks falls back to the next one down.
enum class Impl : int { kAuto = 0, kScalar = 1, kAvx2 = 2, kVnni = 3 };

// True when this CPU can run the AVX2 path (checked at run time, once).
bool cpu_has_avx2();

// True when this CPU can run the AVX512-VNNI path (AVX512 VNNI, VL and BW; checked once).
bool cpu_has_vnni();

// The number of worker threads a call with `threads` uses (0 = all cores).
int resolve_threads(int threads);

// Y[M, N] = rowquant(X[M, K]) * W^T with int4 weights; y is float32 [M, N], bias may be null.
// group_size: 0 (per output channel) or a power of two >= 32.
void matmul_int4_f32(const float* x, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                     const float* scales, int64_t group_size, const float* bias, float* y,
                     int threads, Impl impl);

// Same product for activations already quantized per tensor (as a QDQ graph defines them):
// real value = (xq - zero_point) * x_scale, xq uint8 (is_unsigned) or int8, [M, K].
void matmul_int4_q8(const void* xq, bool is_unsigned, float x_scale, int32_t zero_point, int64_t m,
                    int64_t k, const uint8_t* packed, int64_t n, const float* scales,
                    int64_t group_size, const float* bias, float* y, int threads, Impl impl);

// A 2-D convolution, NCHW, with weights W[C_out, C_in / groups, kH, kW] flattened to
// [C_out, (C_in / groups) * kH * kW] and packed like the matmul weights; per-channel scales
// [C_out].
struct ConvShape {
  int64_t batch, c_in, h, w;
  int64_t c_out, kh, kw;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t dil_h, dil_w;
  int64_t groups;
};

int64_t conv_out_h(const ConvShape& s);
int64_t conv_out_w(const ConvShape& s);

// fp32 input: each image is quantized to symmetric int8 with s_b = max|x[b]| / 127 (1 if all zero).
// y is float32 [batch, c_out, out_h, out_w].
void conv2d_int4_f32(const float* x, const ConvShape& shape, const uint8_t* packed,
                     const float* scales, const float* bias, float* y, int threads, Impl impl);

// Pre-quantized input, real value = (xq - zero_point) * x_scale; padding holds the real value 0.
void conv2d_int4_q8(const void* xq, bool is_unsigned, float x_scale, int32_t zero_point,
                    const ConvShape& shape, const uint8_t* packed, const float* scales,
                    const float* bias, float* y, int threads, Impl impl);

// Fused LSQ fake-quantization of n dense float32 values with one step size s (and, when has_z, an
// integer-valued zero point z), the float steps of quant/primitives.py:_LsqFakeQuant:
//   v = x / s (+ z), q = clamp(round_half_even(v), qmin, qmax), y = (q - z) * s.
void lsq_forward(const float* x, int64_t n, float s, float z, bool has_z, float qmin, float qmax,
                 float* y, int threads, Impl impl);

// Its backward from the saved input: grad_x = grad where qmin <= v <= qmax, else 0; returns
// sum(grad * (inside ? (q - z) - (v - z) : q - z)) in double, summed in fixed blocks so that the
// result does not depend on the thread count (the step size's gradient before LSQ's scale).
double lsq_backward(const float* x, const float* grad, int64_t n, float s, float z, bool has_z,
                    float qmin, float qmax, float* grad_x, int threads, Impl impl);

// The backward of clamp(x, lo, hi) by numbers for n dense float32 values, in one pass: grad_x =
// grad where lo < x < hi, grad / 2 where x is lo or hi, 0 outside, grad for a NaN x (torch's
// gradient of clamping by tensors).
void clamp_backward(const float* x, const float* grad, int64_t n, float lo, float hi,
                    float* grad_x, int threads, Impl impl);

// The feature loss's sums for `images` runs of `per_image` dense float32 values of a student
// output s and a teacher output t in the same memory order: err[i] = sum((s - t)^2) and
// tsq[i] = sum(t^2) over image i, in double, summed in fixed blocks (independent of threads).
void feature_mse_forward(const float* s, const float* t, int64_t images, int64_t per_image,
                         double* err, double* tsq, int threads, Impl impl);

// Its gradient with respect to s: grad_s = coef[i] * (s - t) over image i.
void feature_mse_backward(const float* s, const float* t, int64_t images, int64_t per_image,
                          const float* coef, float* grad_s, int threads, Impl impl);

// Reads `nbytes` of `buf` with `threads` threads and returns a checksum: a probe of the read
// bandwidth the benchmarks compare against.
uint64_t read_probe(const uint8_t* buf, size_t nbytes, int threads);

}  // namespace zerop

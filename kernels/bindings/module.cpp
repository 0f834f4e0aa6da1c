// zerop_deploy._kernels: thin pybind11 bindings over kernels/core. The Python side
// (zerop_deploy/kernels.py) validates shapes, dtypes and contiguity; these functions only check
// what would otherwise read out of bounds, and release the GIL while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "int4_kernels.h"

namespace py = pybind11;

namespace {

using F32 = py::array_t<float, py::array::c_style>;
using U8 = py::array_t<uint8_t, py::array::c_style>;

zerop::Impl impl_from(const std::string& name) {
  if (name == "auto") return zerop::Impl::kAuto;
  if (name == "scalar") return zerop::Impl::kScalar;
  if (name == "avx2") return zerop::Impl::kAvx2;
  if (name == "avx512vnni") return zerop::Impl::kVnni;
  throw std::invalid_argument("impl must be 'auto', 'scalar', 'avx2' or 'avx512vnni', got '" +
                              name + "'");
}

const float* opt_ptr(const py::object& a) {
  return a.is_none() ? nullptr : a.cast<F32>().data();
}

void matmul_f32(F32 x, U8 packed, F32 scales, py::object bias, int64_t group_size, F32 y,
                int threads, const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  const float* b = opt_ptr(bias);
  const int64_t m = x.shape(0), k = x.shape(1), n = packed.shape(0);
  const float *xp = x.data(), *sp = scales.data();
  const uint8_t* wp = packed.data();
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  zerop::matmul_int4_f32(xp, m, k, wp, n, sp, group_size, b, yp, threads, im);
}

// A Python int (not bool, not a numpy scalar) as int64, or false.
bool exact_int(py::handle h, int64_t* v) {
  if (!PyLong_CheckExact(h.ptr())) return false;
  int overflow = 0;
  *v = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  return overflow == 0 && !(*v == -1 && PyErr_Occurred());
}

// zerop_deploy.kernels.matmul_int4's common case in one call: every argument is checked here,
// cheaply and without conversions, and the product is returned. None means that something is off
// (or that ZEROP_KERNELS_IMPL picks an implementation); the Python side then runs its own checks,
// which name the argument. Saves about 3 us a call, 3 % of a 4096 x 4096 GEMV.
py::object matmul_f32_fast(py::handle x, py::handle packed, py::handle scales, py::handle bias,
                           py::handle group_size, py::handle threads) {
  const char* env = std::getenv("ZEROP_KERNELS_IMPL");
  if (env && *env && std::strcmp(env, "auto") != 0) return py::none();
  int64_t g = 0, t = 0;
  if (!exact_int(group_size, &g) || !exact_int(threads, &t)) return py::none();
  if (t < 0 || t > INT32_MAX || (g != 0 && (g < 32 || (g != 32 && g % 64 != 0))))
    return py::none();
  if (!py::isinstance<F32>(x) || !py::isinstance<U8>(packed) || !py::isinstance<F32>(scales))
    return py::none();
  const auto xa = py::reinterpret_borrow<py::array>(x);
  const auto pa = py::reinterpret_borrow<py::array>(packed);
  const auto sa = py::reinterpret_borrow<py::array>(scales);
  if (xa.ndim() != 2 || pa.ndim() != 2) return py::none();
  const int64_t m = xa.shape(0), k = xa.shape(1), n = pa.shape(0);
  if (pa.shape(1) != (k + 1) / 2) return py::none();
  if (g == 0 ? (sa.ndim() != 1 || sa.shape(0) != n)
             : (sa.ndim() != 2 || sa.shape(0) != (k + g - 1) / g || sa.shape(1) != n))
    return py::none();
  const float* b = nullptr;
  if (!bias.is_none()) {
    if (!py::isinstance<F32>(bias)) return py::none();
    const auto ba = py::reinterpret_borrow<py::array>(bias);
    if (ba.ndim() != 1 || ba.shape(0) != n) return py::none();
    b = static_cast<const float*>(ba.data());
  }
  F32 y({m, n});
  const float* xp = static_cast<const float*>(xa.data());
  const float* sp = static_cast<const float*>(sa.data());
  const auto* wp = static_cast<const uint8_t*>(pa.data());
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    zerop::matmul_int4_f32(xp, m, k, wp, n, sp, g, b, yp, static_cast<int>(t), zerop::Impl::kAuto);
  }
  return std::move(y);
}

void matmul_q8(py::array xq, bool is_unsigned, float x_scale, int32_t zero_point, U8 packed,
               F32 scales, py::object bias, int64_t group_size, F32 y, int threads,
               const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  const float* b = opt_ptr(bias);
  const int64_t m = xq.shape(0), k = xq.shape(1), n = packed.shape(0);
  const void* xp = xq.data();
  const float* sp = scales.data();
  const uint8_t* wp = packed.data();
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  zerop::matmul_int4_q8(xp, is_unsigned, x_scale, zero_point, m, k, wp, n, sp, group_size, b, yp,
                        threads, im);
}

zerop::ConvShape conv_shape(const py::tuple& t) {
  if (t.size() != 16) throw std::invalid_argument("conv shape tuple needs 16 integers");
  int64_t v[16];
  for (size_t i = 0; i < 16; ++i) v[i] = t[i].cast<int64_t>();
  return {v[0], v[1], v[2],  v[3],  v[4],  v[5],  v[6],  v[7],
          v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]};
}

void conv_f32(F32 x, py::tuple shape, U8 packed, F32 scales, py::object bias, F32 y, int threads,
              const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  const zerop::ConvShape s = conv_shape(shape);
  const float* b = opt_ptr(bias);
  const float *xp = x.data(), *sp = scales.data();
  const uint8_t* wp = packed.data();
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  zerop::conv2d_int4_f32(xp, s, wp, sp, b, yp, threads, im);
}

void conv_q8(py::array xq, bool is_unsigned, float x_scale, int32_t zero_point, py::tuple shape,
             U8 packed, F32 scales, py::object bias, F32 y, int threads, const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  const zerop::ConvShape s = conv_shape(shape);
  const float* b = opt_ptr(bias);
  const void* xp = xq.data();
  const float* sp = scales.data();
  const uint8_t* wp = packed.data();
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  zerop::conv2d_int4_q8(xp, is_unsigned, x_scale, zero_point, s, wp, sp, b, yp, threads, im);
}

// The flat views of quant/primitives.py's LSQ quantizer (dense float32 tensors of one size).
void lsq_forward(F32 x, float s, float z, bool has_z, float qmin, float qmax, F32 y, int threads,
                 const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  if (x.size() != y.size()) throw std::invalid_argument("lsq_forward: x and y differ in size");
  const float* xp = x.data();
  float* yp = y.mutable_data();
  const int64_t n = x.size();
  py::gil_scoped_release release;
  zerop::lsq_forward(xp, n, s, z, has_z, qmin, qmax, yp, threads, im);
}

double lsq_backward(F32 x, F32 grad, float s, float z, bool has_z, float qmin, float qmax,
                    F32 grad_x, int threads, const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  if (x.size() != grad.size() || x.size() != grad_x.size()) {
    throw std::invalid_argument("lsq_backward: x, grad and grad_x differ in size");
  }
  const float *xp = x.data(), *gp = grad.data();
  float* op = grad_x.mutable_data();
  const int64_t n = x.size();
  py::gil_scoped_release release;
  return zerop::lsq_backward(xp, gp, n, s, z, has_z, qmin, qmax, op, threads, im);
}

void clamp_backward(F32 x, F32 grad, float lo, float hi, F32 grad_x, int threads,
                    const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  if (x.size() != grad.size() || x.size() != grad_x.size()) {
    throw std::invalid_argument("clamp_backward: x, grad and grad_x differ in size");
  }
  const float *xp = x.data(), *gp = grad.data();
  float* op = grad_x.mutable_data();
  const int64_t n = x.size();
  py::gil_scoped_release release;
  zerop::clamp_backward(xp, gp, n, lo, hi, op, threads, im);
}

void feature_mse_forward(F32 s, F32 t, int64_t images, py::array_t<double> err,
                         py::array_t<double> tsq, int threads, const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  if (s.size() != t.size() || images <= 0 || s.size() % images != 0 || err.size() != images ||
      tsq.size() != images) {
    throw std::invalid_argument("feature_mse_forward: sizes do not match");
  }
  const float *sp = s.data(), *tp = t.data();
  double *ep = err.mutable_data(), *qp = tsq.mutable_data();
  const int64_t per = s.size() / images;
  py::gil_scoped_release release;
  zerop::feature_mse_forward(sp, tp, images, per, ep, qp, threads, im);
}

void feature_mse_backward(F32 s, F32 t, int64_t images, F32 coef, F32 grad_s, int threads,
                          const std::string& impl) {
  const zerop::Impl im = impl_from(impl);
  if (s.size() != t.size() || s.size() != grad_s.size() || images <= 0 ||
      s.size() % images != 0 || coef.size() != images) {
    throw std::invalid_argument("feature_mse_backward: sizes do not match");
  }
  const float *sp = s.data(), *tp = t.data(), *cp = coef.data();
  float* gp = grad_s.mutable_data();
  const int64_t per = s.size() / images;
  py::gil_scoped_release release;
  zerop::feature_mse_backward(sp, tp, images, per, cp, gp, threads, im);
}

uint64_t read_probe(U8 buf, int threads) {
  const uint8_t* p = buf.data();
  const size_t n = static_cast<size_t>(buf.size());
  py::gil_scoped_release release;
  return zerop::read_probe(p, n, threads);
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "Native packed-int4 kernels (see zerop_deploy.kernels for the documented API).";
  m.def("cpu_has_avx2", &zerop::cpu_has_avx2);
  m.def("cpu_has_vnni", &zerop::cpu_has_vnni);
  m.def("resolve_threads", &zerop::resolve_threads);
  m.def("matmul_f32", &matmul_f32);
  m.def("matmul_f32_fast", &matmul_f32_fast);
  m.def("matmul_q8", &matmul_q8);
  m.def("conv_f32", &conv_f32);
  m.def("conv_q8", &conv_q8);
  m.def("read_probe", &read_probe);
  m.def("lsq_forward", &lsq_forward);
  m.def("lsq_backward", &lsq_backward);
  m.def("clamp_backward", &clamp_backward);
  m.def("feature_mse_forward", &feature_mse_forward);
  m.def("feature_mse_backward", &feature_mse_backward);
}

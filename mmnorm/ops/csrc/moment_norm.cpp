// Row kernels of mmnorm's moment normalization (CPU, float and double).
//
// Every op works on a dense (R, M) tensor whose rows are the (sample,
// channel) slices of the input, with one small per-row vector per
// coefficient. Each op reads the big tensor(s) once; see
// mmnorm/ops/moment_norm.py for how they are combined.
//
//   row_moments(x)                -> (mean, var)   biased variance
//   row_affine(x, s, a, b)        -> (x - s) * a + b
//   row_grad_sums(dy, x, s)       -> (sum dy, sum dy * (x - s))
//   row_grad_input(dy, x, s, a, b, c) -> dy * a + (x - s) * b + c
//
// and, on the small (N, C) statistics, the mixing of Switchable
// Normalization and its backward (sn_mix_forward, sn_mix_backward). The
// layers call the last section's ops: the whole layer as a forward and a
// backward device op built from the above, and switchable_norm, which ties
// them together with a C++ autograd node.
//
// Sums are accumulated in vector registers of the input type over short
// blocks and folded into double after each block, so float32 rows of any
// length keep about float precision. The moments are taken around a shift
// (the first element of the row), so a row whose mean is hundreds of
// standard deviations away from zero keeps its variance.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/irange.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include "once_differentiable.h"
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

// Elements summed in vector registers before folding into double.
constexpr int64_t kBlock = 512;
// Aim for at least this many elements per parallel task.
constexpr int64_t kGrainElems = 16384;

int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(cols, 1));
}

// Sum of the lanes (a few partial sums, added in their own type).
template <typename scalar_t>
double fold(const at::vec::Vectorized<scalar_t>& v) {
  return static_cast<double>(at::vec::vec_reduce_all<scalar_t>(
      [](const at::vec::Vectorized<scalar_t>& a,
         const at::vec::Vectorized<scalar_t>& b) { return a + b; },
      v));
}

// var_out gets the biased variance times var_factor (cols / (cols - 1) for
// the unbiased one).
template <typename scalar_t>
void moments_kernel(const scalar_t* x, int64_t rows, int64_t cols,
                    double var_factor, scalar_t* mean_out,
                    scalar_t* var_out) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      const scalar_t* p = x + r * cols;
      // Moments around the row's first element: within a few standard
      // deviations of the mean, so the sums below stay small.
      const scalar_t shift = p[0];
      const double shift_d = static_cast<double>(shift);
      const Vec vshift(shift);
      double s1 = 0.0, s2 = 0.0;
      int64_t i = 0;
      while (i < cols) {
        const int64_t stop = std::min(cols, i + kBlock);
        Vec a1(0), b1(0), a2(0), b2(0);
        for (; i + 2 * V <= stop; i += 2 * V) {
          const Vec d0 = Vec::loadu(p + i) - vshift;
          const Vec d1 = Vec::loadu(p + i + V) - vshift;
          a1 = a1 + d0;
          b1 = b1 + d1;
          a2 = at::vec::fmadd(d0, d0, a2);
          b2 = at::vec::fmadd(d1, d1, b2);
        }
        for (; i + V <= stop; i += V) {
          const Vec d0 = Vec::loadu(p + i) - vshift;
          a1 = a1 + d0;
          a2 = at::vec::fmadd(d0, d0, a2);
        }
        if (i < stop) {  // the row's last, partial vector; other lanes 0
          const int64_t rest = stop - i;
          const Vec d0 =
              Vec::set(Vec(0), Vec::loadu(p + i, rest) - vshift, rest);
          a1 = a1 + d0;
          a2 = at::vec::fmadd(d0, d0, a2);
          i = stop;
        }
        s1 += fold<scalar_t>(a1 + b1);
        s2 += fold<scalar_t>(a2 + b2);
      }
      const double m1 = s1 / cols;
      const double var = std::max(s2 / cols - m1 * m1, 0.0);
      mean_out[r] = static_cast<scalar_t>(shift_d + m1);
      var_out[r] = static_cast<scalar_t>(var * var_factor);
    }
  });
}

template <typename scalar_t>
void affine_kernel(const scalar_t* x, int64_t rows, int64_t cols,
                   const scalar_t* s, const scalar_t* a, const scalar_t* b,
                   scalar_t* y) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      const scalar_t* p = x + r * cols;
      scalar_t* q = y + r * cols;
      const Vec vs(s[r]), va(a[r]), vb(b[r]);
      int64_t i = 0;
      for (; i + V <= cols; i += V) {
        at::vec::fmadd(Vec::loadu(p + i) - vs, va, vb).store(q + i);
      }
      if (i < cols) {
        const int64_t rest = cols - i;
        at::vec::fmadd(Vec::loadu(p + i, rest) - vs, va, vb).store(q + i, rest);
      }
    }
  });
}

template <typename scalar_t>
void grad_sums_kernel(const scalar_t* dy, const scalar_t* x, int64_t rows,
                      int64_t cols, const scalar_t* s, scalar_t* sum_dy,
                      scalar_t* sum_dy_x) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      const scalar_t* g = dy + r * cols;
      const scalar_t* p = x + r * cols;
      const Vec vs(s[r]);
      double t1 = 0.0, t2 = 0.0;
      int64_t i = 0;
      while (i < cols) {
        const int64_t stop = std::min(cols, i + kBlock);
        Vec a1(0), b1(0), a2(0), b2(0);
        for (; i + 2 * V <= stop; i += 2 * V) {
          const Vec g0 = Vec::loadu(g + i);
          const Vec g1 = Vec::loadu(g + i + V);
          a1 = a1 + g0;
          b1 = b1 + g1;
          a2 = at::vec::fmadd(g0, Vec::loadu(p + i) - vs, a2);
          b2 = at::vec::fmadd(g1, Vec::loadu(p + i + V) - vs, b2);
        }
        for (; i + V <= stop; i += V) {
          const Vec g0 = Vec::loadu(g + i);
          a1 = a1 + g0;
          a2 = at::vec::fmadd(g0, Vec::loadu(p + i) - vs, a2);
        }
        if (i < stop) {  // partial vector: dy's other lanes load as 0
          const int64_t rest = stop - i;
          const Vec g0 = Vec::loadu(g + i, rest);
          a1 = a1 + g0;
          a2 = at::vec::fmadd(g0, Vec::loadu(p + i, rest) - vs, a2);
          i = stop;
        }
        t1 += fold<scalar_t>(a1 + b1);
        t2 += fold<scalar_t>(a2 + b2);
      }
      sum_dy[r] = static_cast<scalar_t>(t1);
      sum_dy_x[r] = static_cast<scalar_t>(t2);
    }
  });
}

template <typename scalar_t>
void grad_input_kernel(const scalar_t* dy, const scalar_t* x, int64_t rows,
                       int64_t cols, const scalar_t* s, const scalar_t* a,
                       const scalar_t* b, const scalar_t* c, scalar_t* dx) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      const scalar_t* g = dy + r * cols;
      const scalar_t* p = x + r * cols;
      scalar_t* q = dx + r * cols;
      const Vec vs(s[r]), va(a[r]), vb(b[r]), vc(c[r]);
      int64_t i = 0;
      for (; i + V <= cols; i += V) {
        const Vec t = at::vec::fmadd(Vec::loadu(p + i) - vs, vb, vc);
        at::vec::fmadd(Vec::loadu(g + i), va, t).store(q + i);
      }
      if (i < cols) {
        const int64_t rest = cols - i;
        const Vec t = at::vec::fmadd(Vec::loadu(p + i, rest) - vs, vb, vc);
        at::vec::fmadd(Vec::loadu(g + i, rest), va, t).store(q + i, rest);
      }
    }
  });
}

void check_rows(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "mmnorm row kernels: ", name,
              " must be on the CPU");
  TORCH_CHECK(t.dim() == 2, "mmnorm row kernels: ", name,
              " must be (R, M), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "mmnorm row kernels: ", name,
              " must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "mmnorm row kernels: ", name, " must be float32 or float64, got ",
              t.scalar_type());
}

void check_coef(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() &&
                  t.size(0) == like.size(0) &&
                  t.scalar_type() == like.scalar_type(),
              "mmnorm row kernels: ", name,
              " must be a contiguous CPU vector of ", like.size(0), " ",
              like.scalar_type(), " values");
}

void check_same(const Tensor& t, const Tensor& like, const char* name) {
  check_rows(t, name);
  TORCH_CHECK(t.sizes() == like.sizes() &&
                  t.scalar_type() == like.scalar_type(),
              "mmnorm row kernels: ", name, " must match x");
}

double bessel(int64_t count) {
  return count > 1 ? static_cast<double>(count) / (count - 1) : 1.0;
}

// Mean and variance of each row; the variance is unbiased if asked (0 for
// rows of one element).
std::tuple<Tensor, Tensor> moments(const Tensor& x, bool unbiased) {
  check_rows(x, "x");
  TORCH_CHECK(x.size(1) > 0, "mmnorm row_moments: rows must not be empty");
  Tensor mean = at::empty({x.size(0)}, x.options());
  Tensor var = at::empty({x.size(0)}, x.options());
  const double factor = unbiased ? bessel(x.size(1)) : 1.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmnorm_row_moments", [&] {
    moments_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), x.size(0),
                             x.size(1), factor,
                             mean.mutable_data_ptr<scalar_t>(),
                             var.mutable_data_ptr<scalar_t>());
  });
  return {mean, var};
}

std::tuple<Tensor, Tensor> row_moments(const Tensor& x) {
  return moments(x, false);
}

Tensor row_affine(const Tensor& x, const Tensor& s, const Tensor& a,
                  const Tensor& b) {
  check_rows(x, "x");
  check_coef(s, x, "s");
  check_coef(a, x, "a");
  check_coef(b, x, "b");
  Tensor y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmnorm_row_affine", [&] {
    affine_kernel<scalar_t>(
        x.const_data_ptr<scalar_t>(), x.size(0), x.size(1),
        s.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
        b.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<Tensor, Tensor> row_grad_sums(const Tensor& dy, const Tensor& x,
                                         const Tensor& s) {
  check_rows(x, "x");
  check_same(dy, x, "dy");
  check_coef(s, x, "s");
  Tensor sum_dy = at::empty({x.size(0)}, x.options());
  Tensor sum_dy_x = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmnorm_row_grad_sums", [&] {
    grad_sums_kernel<scalar_t>(
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        x.size(0), x.size(1), s.const_data_ptr<scalar_t>(),
        sum_dy.mutable_data_ptr<scalar_t>(),
        sum_dy_x.mutable_data_ptr<scalar_t>());
  });
  return {sum_dy, sum_dy_x};
}

Tensor row_grad_input(const Tensor& dy, const Tensor& x, const Tensor& s,
                      const Tensor& a, const Tensor& b, const Tensor& c) {
  check_rows(x, "x");
  check_same(dy, x, "dy");
  check_coef(s, x, "s");
  check_coef(a, x, "a");
  check_coef(b, x, "b");
  check_coef(c, x, "c");
  Tensor dx = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mmnorm_row_grad_input", [&] {
    grad_input_kernel<scalar_t>(
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        x.size(0), x.size(1), s.const_data_ptr<scalar_t>(),
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        c.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}


// ---------------------------------------------------------------------------
// The small (N, C) part of Switchable Normalization, in double: mixing the
// IN, LN and BN statistics into per-row coefficients of the affine map, and
// back-propagating through that map. Mirrors SwitchableMix in
// mmnorm/ops/switchable.py (which documents the formulas) so that a layer
// runs three ops per direction instead of dozens of small tensor ops.

// std::vector<double> whose plain size constructor and resize() leave the
// values uninitialized: every such buffer below is written in full before it
// is read, and zero-filling them cost more than the arithmetic.
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using Doubles = std::vector<double, UninitializedAllocator<double>>;

// Element-wise conversions between small tensors and double vectors,
// without intermediate tensors (each op call costs microseconds here).
bool is_exact(const at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble;
}

Doubles to_vector(const Tensor& t) {
  const Tensor d =
      is_exact(t.scalar_type()) ? t.contiguous() : t.to(at::kDouble);
  Doubles out(d.numel());
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "mmnorm_to_vector", [&] {
    const scalar_t* p = d.const_data_ptr<scalar_t>();
    for (const auto i : c10::irange(d.numel())) {
      out[i] = static_cast<double>(p[i]);
    }
  });
  return out;
}

Doubles optional_vector(const std::optional<Tensor>& t,
                                    int64_t size, double fill) {
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->numel() == size, "mmnorm mix: expected ", size,
                " values, got ", t->numel());
    return to_vector(*t);
  }
  return Doubles(size, fill);
}

Tensor from_vector(const Doubles& v, at::IntArrayRef sizes,
                   const at::TensorOptions& options) {
  const auto type = c10::typeMetaToScalarType(options.dtype());
  Tensor out = at::empty(sizes, options.dtype(is_exact(type) ? type
                                                             : at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "mmnorm_from_vector", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    for (const auto i : c10::irange(out.numel())) {
      p[i] = static_cast<scalar_t>(v[i]);
    }
  });
  return is_exact(type) ? out : out.to(type);
}

// Everything the forward mix derives from the IN moments. The loops below
// run along channels (contiguous) without dependencies between lanes, or as
// `omp simd` reductions, so that they vectorize.
struct Mixed {
  int64_t n = 0, c = 0;
  Doubles mean_in, var_in;  // (N, C), unbiased variance
  Doubles mean_ln, var_ln;  // (N,), var_ln before clamping
  Doubles mean_bn, var_bn;  // (C,), var_bn before clamping
  Doubles mw, vw;           // (3,)
  // mean_in - mean, (N, C). The weights sum to one (softmax, sparsestmax
  // or one-hot), so this is sum_k w_k (mean_in - mean_k): a common offset
  // of the input cancels exactly instead of leaving the rounding error of
  // the weights' sum times the mean (which 1 / sqrt(eps) would amplify
  // for constant input).
  Doubles mean_gap, rstd;
};

Mixed mix_statistics(const Tensor& mean_in, const Tensor& var_in,
                     const Tensor& mean_weight, const Tensor& var_weight,
                     const std::optional<Tensor>& running_mean,
                     const std::optional<Tensor>& running_var, double eps,
                     bool flat) {
  TORCH_CHECK(mean_in.dim() == 2 && var_in.sizes() == mean_in.sizes(),
              "mmnorm mix: mean_in and var_in must be (N, C)");
  TORCH_CHECK(mean_weight.numel() == 3 && var_weight.numel() == 3,
              "mmnorm mix: weights must have 3 entries");
  Mixed s;
  const int64_t n = s.n = mean_in.size(0);
  const int64_t c = s.c = mean_in.size(1);
  s.mean_in = to_vector(mean_in);
  s.var_in = to_vector(var_in);
  s.mw = to_vector(mean_weight);
  s.vw = to_vector(var_weight);
  const double* __restrict mi = s.mean_in.data();
  const double* __restrict vi = s.var_in.data();
  const double inv_c = 1.0 / c, inv_n = 1.0 / n;

  const double bessel_c = flat ? bessel(c) : 1.0;
  s.mean_ln.assign(n, 0.0);
  s.var_ln.assign(n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const double* __restrict m_row = mi + i * c;
    const double* __restrict v_row = vi + i * c;
    double m = 0.0, v = 0.0, d2 = 0.0;
#pragma omp simd reduction(+ : m, v)
    for (int64_t j = 0; j < c; ++j) {
      m += m_row[j];
      v += v_row[j];
    }
    m *= inv_c;
#pragma omp simd reduction(+ : d2)
    for (int64_t j = 0; j < c; ++j) {
      const double d = m_row[j] - m;
      d2 += d * d;
    }
    s.mean_ln[i] = m;
    s.var_ln[i] = (v * inv_c + d2 * inv_c) * bessel_c;
  }

  const bool use_batch = !(running_mean.has_value() && running_mean->defined());
  if (use_batch) {
    const double bessel_n = flat ? bessel(n) : 1.0;
    s.mean_bn.assign(c, 0.0);
    s.var_bn.assign(c, 0.0);
    double* __restrict mb = s.mean_bn.data();
    double* __restrict vb = s.var_bn.data();
    for (int64_t i = 0; i < n; ++i) {
      const double* __restrict m_row = mi + i * c;
      const double* __restrict v_row = vi + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        mb[j] += m_row[j];
        vb[j] += v_row[j];
      }
    }
    Doubles d2(c, 0.0);
    double* __restrict d2p = d2.data();
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      mb[j] *= inv_n;
    }
    for (int64_t i = 0; i < n; ++i) {
      const double* __restrict m_row = mi + i * c;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        const double d = m_row[j] - mb[j];
        d2p[j] += d * d;
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      vb[j] = (vb[j] * inv_n + d2p[j] * inv_n) * bessel_n;
    }
  } else {
    s.mean_bn = optional_vector(running_mean, c, 0.0);
    s.var_bn = optional_vector(running_var, c, 1.0);
  }

  s.mean_gap.resize(n * c);
  s.rstd.resize(n * c);
  const double* __restrict mb = s.mean_bn.data();
  const double* __restrict vb = s.var_bn.data();
  const double mw1 = s.mw[1], mw2 = s.mw[2];
  const double vw0 = s.vw[0], vw1 = s.vw[1], vw2 = s.vw[2];
  // Without an IN part the variance is one per row (LN only, e.g. a
  // fixed SSN layer) or one per channel (BN only): fewer square roots.
  const bool ln_var_only = vw0 == 0.0 && vw2 == 0.0;
  Doubles rstd_bn;
  if (vw0 == 0.0 && vw1 == 0.0) {
    rstd_bn.resize(c);
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const double var_bn = vb[j] > 0.0 ? vb[j] : 0.0;
      rstd_bn[j] = 1.0 / std::sqrt(vw2 * var_bn + eps);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const double mean_ln = s.mean_ln[i];
    const double var_ln = std::max(s.var_ln[i], 0.0);
    const double* __restrict m_row = mi + i * c;
    const double* __restrict v_row = vi + i * c;
    double* __restrict gap = s.mean_gap.data() + i * c;
    double* __restrict rstd = s.rstd.data() + i * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      gap[j] = mw1 * (m_row[j] - mean_ln) + mw2 * (m_row[j] - mb[j]);
    }
    if (ln_var_only) {
      std::fill(rstd, rstd + c, 1.0 / std::sqrt(vw1 * var_ln + eps));
    } else if (!rstd_bn.empty()) {
      std::copy(rstd_bn.begin(), rstd_bn.end(), rstd);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        const double var_bn = vb[j] > 0.0 ? vb[j] : 0.0;
        const double var = vw0 * v_row[j] + vw1 * var_ln + vw2 * var_bn;
        rstd[j] = 1.0 / std::sqrt(var + eps);
      }
    }
  }
  return s;
}

// -> (scale, offset) per row, for y = (x - mean_in) * scale + offset, and
// this batch's BN statistics (mean_bn, var_bn) (the running ones if given).
std::tuple<Tensor, Tensor, Tensor, Tensor> sn_mix_forward(
    const Tensor& mean_in, const Tensor& var_in, const Tensor& mean_weight,
    const Tensor& var_weight, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    double eps, bool flat) {
  const Mixed s = mix_statistics(mean_in, var_in, mean_weight, var_weight,
                                 running_mean, running_var, eps, flat);
  const int64_t n = s.n, c = s.c;
  const Doubles wv = optional_vector(weight, c, 1.0);
  const Doubles bv = optional_vector(bias, c, 0.0);
  Doubles scale(n * c), offset(n * c);
  const double* __restrict w = wv.data();
  const double* __restrict b = bv.data();
  for (int64_t i = 0; i < n; ++i) {
    const double* __restrict gap = s.mean_gap.data() + i * c;
    const double* __restrict rstd = s.rstd.data() + i * c;
    double* __restrict sc = scale.data() + i * c;
    double* __restrict off = offset.data() + i * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      sc[j] = rstd[j] * w[j];
      off[j] = gap[j] * sc[j] + b[j];
    }
  }
  const auto options = mean_in.options();
  return {from_vector(scale, {n * c}, options),
          from_vector(offset, {n * c}, options),
          from_vector(s.mean_bn, {c}, options),
          from_vector(s.var_bn, {c}, options)};
}

// Given per-row sum(dy) and sum(dy * (x - mean_in)) -> the coefficients of
// dx = dy * a + (x - mean_in) * b + c per row, and the gradients of weight,
// bias, mean_weight and var_weight.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
sn_mix_backward(const Tensor& sum_dy, const Tensor& sum_dy_xc,
                const Tensor& mean_in, const Tensor& var_in,
                const Tensor& mean_weight, const Tensor& var_weight,
                const std::optional<Tensor>& running_mean,
                const std::optional<Tensor>& running_var,
                const std::optional<Tensor>& weight,
                const std::optional<Tensor>& bias, double eps, bool flat,
                int64_t count) {
  const Mixed s = mix_statistics(mean_in, var_in, mean_weight, var_weight,
                                 running_mean, running_var, eps, flat);
  const int64_t n = s.n, c = s.c;
  TORCH_CHECK(sum_dy.numel() == n * c && sum_dy_xc.numel() == n * c,
              "mmnorm mix: expected ", n * c, " row sums");
  const bool has_weight = weight.has_value() && weight->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  const bool use_batch = !(running_mean.has_value() && running_mean->defined());
  const Doubles wv = optional_vector(weight, c, 1.0);
  const Doubles g1v = to_vector(sum_dy);
  const Doubles g2v = to_vector(sum_dy_xc);
  const double* __restrict w = wv.data();
  const double* __restrict mi = s.mean_in.data();
  const double* __restrict vi = s.var_in.data();
  const double* __restrict mb = s.mean_bn.data();
  const double* __restrict vb = s.var_bn.data();

  // The affine map: y = (x - mean) * rstd * weight + bias.
  Doubles scale(n * c), grad_mean(n * c), grad_var(n * c);
  Doubles grad_w(c, 0.0), grad_b(c, 0.0);
  double* __restrict gw = grad_w.data();
  double* __restrict gb = grad_b.data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t o = i * c;
    const double* __restrict g1 = g1v.data() + o;
    const double* __restrict g2 = g2v.data() + o;
    const double* __restrict gap = s.mean_gap.data() + o;
    const double* __restrict rstd = s.rstd.data() + o;
    double* __restrict sc = scale.data() + o;
    double* __restrict gm = grad_mean.data() + o;
    double* __restrict gv = grad_var.data() + o;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      sc[j] = rstd[j] * w[j];
      gm[j] = -sc[j] * g1[j];
      // sum(dy * (x - mean)) = sum(dy * (x - mean_in))
      //                        + (mean_in - mean) * sum(dy)
      const double g_scale = g2[j] + gap[j] * g1[j];
      gw[j] += g_scale * rstd[j];
      gb[j] += g1[j];
      gv[j] = g_scale * w[j] * (-0.5) * rstd[j] * rstd[j] * rstd[j];
    }
  }

  // Through the mix: its weights, then the LN and BN statistics.
  double gmw0 = 0, gmw1 = 0, gmw2 = 0, gvw0 = 0, gvw1 = 0, gvw2 = 0;
  Doubles sum_gm_n(n, 0.0), sum_gv_n(n, 0.0);
  Doubles sum_gm_c(c, 0.0), sum_gv_c(c, 0.0);
  double* __restrict gm_c = sum_gm_c.data();
  double* __restrict gv_c = sum_gv_c.data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t o = i * c;
    const double* __restrict gm = grad_mean.data() + o;
    const double* __restrict gv = grad_var.data() + o;
    const double* __restrict m_row = mi + o;
    const double* __restrict v_row = vi + o;
    double gm_n = 0, gv_n = 0, a0 = 0, a2 = 0, b0 = 0, b2 = 0;
#pragma omp simd reduction(+ : gm_n, gv_n, a0, a2, b0, b2)
    for (int64_t j = 0; j < c; ++j) {
      a0 += gm[j] * m_row[j];
      a2 += gm[j] * mb[j];
      b0 += gv[j] * v_row[j];
      b2 += gv[j] * (vb[j] > 0.0 ? vb[j] : 0.0);
      gm_n += gm[j];
      gv_n += gv[j];
      gm_c[j] += gm[j];
      gv_c[j] += gv[j];
    }
    gmw0 += a0;
    gmw1 += gm_n * s.mean_ln[i];
    gmw2 += a2;
    gvw0 += b0;
    gvw1 += gv_n * std::max(s.var_ln[i], 0.0);
    gvw2 += b2;
    sum_gm_n[i] = gm_n;
    sum_gv_n[i] = gv_n;
  }
  Doubles g_mean_bn(c, 0.0), g_var_bn(c, 0.0);
  double* __restrict gmb = g_mean_bn.data();
  double* __restrict gvb = g_var_bn.data();
  if (use_batch) {
    const double bessel_n = flat ? bessel(n) : 1.0;
    const double fm = s.mw[2] / n, fv = s.vw[2] * bessel_n / n;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      gmb[j] = fm * gm_c[j];
      gvb[j] = vb[j] > 0 ? fv * gv_c[j] : 0.0;
    }
  }
  const double bessel_c = flat ? bessel(c) : 1.0;
  const double var_factor = 2.0 / std::max<int64_t>(count - 1, 1);
  const double inv_c = 1.0 / c, inv_count = 1.0 / count;
  const double mw0 = s.mw[0], vw0 = s.vw[0];
  Doubles coef_b(n * c), coef_c(n * c);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t o = i * c;
    const double g_mean_ln = s.mw[1] * sum_gm_n[i];
    const double g_var_ln =
        s.var_ln[i] > 0 ? s.vw[1] * sum_gv_n[i] * bessel_c : 0.0;
    const double mean_ln = s.mean_ln[i];
    const double* __restrict gm = grad_mean.data() + o;
    const double* __restrict gv = grad_var.data() + o;
    const double* __restrict m_row = mi + o;
    double* __restrict cb = coef_b.data() + o;
    double* __restrict cc = coef_c.data() + o;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      const double g_mean_in =
          mw0 * gm[j] +
          (g_mean_ln + 2.0 * g_var_ln * (m_row[j] - mean_ln)) * inv_c +
          gmb[j] + 2.0 * (m_row[j] - mb[j]) * gvb[j];
      const double g_var_in = vw0 * gv[j] + g_var_ln * inv_c + gvb[j];
      cb[j] = g_var_in * var_factor;
      cc[j] = g_mean_in * inv_count;
    }
  }
  const auto options = mean_in.options();
  const auto param_options = mean_weight.options();
  const Doubles grad_mw = {gmw0, gmw1, gmw2};
  const Doubles grad_vw = {gvw0, gvw1, gvw2};
  // Without weight or bias their gradients are returned but unused.
  const Tensor grad_weight = from_vector(
      grad_w, {c}, has_weight ? weight->options() : param_options);
  const Tensor grad_bias =
      from_vector(grad_b, {c}, has_bias ? bias->options() : param_options);
  return {from_vector(scale, {n * c}, options),
          from_vector(coef_b, {n * c}, options),
          from_vector(coef_c, {n * c}, options),
          grad_weight,
          grad_bias,
          from_vector(grad_mw, {3}, param_options),
          from_vector(grad_vw, {3}, param_options)};
}

// ---------------------------------------------------------------------------
// The whole layer, as three ops:
//
//   switchable_norm_forward(x (N, C, *), weight?, bias?, mean_weight (3,),
//       var_weight (3,), running_mean?, running_var?, eps, flat)
//       -> (y (N, C, *), mean_in (N, C), var_in (N, C), mean_bn (C,),
//           var_bn (C,))
//   switchable_norm_backward(grad_y, x, mean_in, var_in, weight?, bias?,
//       mean_weight, var_weight, running_mean?, running_var?, eps, flat,
//       input_grad)
//       -> (grad_x, grad_weight, grad_bias, grad_mean_weight,
//           grad_var_weight); grad_x is empty (0,) unless input_grad, and
//           grad_weight / grad_bias are empty without weight / bias.
//   switchable_norm(x, weight?, bias?, mean_param, var_param, available?,
//       choices?, running_mean?, running_var?, eps, flat)
//       -> (y, mean_bn, var_bn)
//       with `available` ((3,) bool) the params are lambdas and the weights
//       their softmax over the available branches; without it the params
//       are the weights. `choices` ((2,) long, [mean, var]): a row whose
//       entry is >= 0 uses the one-hot of that branch, and its param gets an
//       exactly-zero gradient (SSN's frozen choices, read on the device).
//
// The first two are device ops: their CPU kernels are here, their CUDA
// (Triton) and fake kernels are registered from Python
// (mmnorm/ops/library.py). switchable_norm ties them together with a C++
// autograd node under the Autograd key, so that eager training costs one
// call from Python per direction and no Python autograd work, while
// torch.compile traces the two device ops through the node (as it does for
// torchvision's roi_align).

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The (N * C, M) rows of x (N, C, *) in its statistics dtype (float32 for
// half and bfloat16 input, as the composed path).
Tensor stat_rows(const Tensor& x) {
  const auto type = is_exact(x.scalar_type()) ? x.scalar_type() : at::kFloat;
  const int64_t rows = x.size(0) * x.size(1);
  return x.to(type).reshape({rows, x.numel() / rows}).contiguous();
}

void check_norm_input(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 2 && x.numel() > 0 &&
                  at::isFloatingType(x.scalar_type()),
              "mmnorm switchable_norm: x must be a non-empty floating point "
              "CPU tensor of shape (N, C, *), got ", x.sizes(), " ",
              x.scalar_type(), " on ", x.device());
}

struct NormForward {
  Tensor y, mean_bn, var_bn, mean_in, var_in;
};

NormForward norm_forward(const Tensor& x, const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias,
                         const Tensor& mean_weight, const Tensor& var_weight,
                         const std::optional<Tensor>& running_mean,
                         const std::optional<Tensor>& running_var, double eps,
                         bool flat) {
  check_norm_input(x);
  const int64_t n = x.size(0), c = x.size(1);
  const Tensor rows = stat_rows(x);
  auto [mean_r, var_r] = moments(rows, /*unbiased=*/true);
  NormForward out;
  out.mean_in = mean_r.view({n, c});
  out.var_in = var_r.view({n, c});
  auto [scale, offset, mean_bn, var_bn] =
      sn_mix_forward(out.mean_in, out.var_in, mean_weight, var_weight,
                     running_mean, running_var, weight, bias, eps, flat);
  out.y = row_affine(rows, mean_r, scale, offset).view(x.sizes());
  if (out.y.scalar_type() != x.scalar_type()) {
    out.y = out.y.to(x.scalar_type());
  }
  out.mean_bn = mean_bn;
  out.var_bn = var_bn;
  return out;
}

Tensor or_undefined(const std::optional<Tensor>& t) {
  return t.has_value() ? *t : Tensor();
}

std::optional<Tensor> if_defined(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

ForwardResult switchable_norm_forward(
    const Tensor& x, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_weight,
    const Tensor& var_weight, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat) {
  NormForward out = norm_forward(x, weight, bias, mean_weight, var_weight,
                                 running_mean, running_var, eps, flat);
  return {out.y, out.mean_in, out.var_in, out.mean_bn, out.var_bn};
}

using BackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

BackwardResult switchable_norm_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean_in,
    const Tensor& var_in, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_weight,
    const Tensor& var_weight, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat,
    bool input_grad) {
  check_norm_input(x);
  const Tensor rows = stat_rows(x);
  const int64_t m = rows.size(1);
  // dense rows: autograd may hand over an expanded (stride-0) gradient
  const Tensor dy_rows =
      grad_y.to(rows.scalar_type()).reshape(rows.sizes()).contiguous();
  const Tensor mean_flat = mean_in.reshape({rows.size(0)});
  auto [dy_sum, dy_xc] = row_grad_sums(dy_rows, rows, mean_flat);
  auto [coef_dy, coef_x, coef_one, grad_weight, grad_bias, grad_mean_w,
        grad_var_w] =
      sn_mix_backward(dy_sum, dy_xc, mean_in, var_in, mean_weight,
                      var_weight, running_mean, running_var, weight, bias,
                      eps, flat, m);
  Tensor grad_x;
  if (input_grad) {
    grad_x = row_grad_input(dy_rows, rows, mean_flat, coef_dy, coef_x,
                            coef_one)
                 .view(x.sizes());
    if (grad_x.scalar_type() != x.scalar_type()) {
      grad_x = grad_x.to(x.scalar_type());
    }
  } else {
    grad_x = at::empty({0}, x.options());
  }
  if (!weight.has_value()) {
    grad_weight = at::empty({0}, mean_weight.options());
  }
  if (!bias.has_value()) {
    grad_bias = at::empty({0}, mean_weight.options());
  }
  return {grad_x, grad_weight, grad_bias, grad_mean_w, grad_var_w};
}

// Calls through the dispatcher, so that the CUDA, fake and tracing kernels
// registered for the device ops are used.
ForwardResult call_forward(
    const Tensor& x, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_weight,
    const Tensor& var_weight, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mmnorm::switchable_norm_forward", "")
                       .typed<decltype(switchable_norm_forward)>();
  return op.call(x, weight, bias, mean_weight, var_weight, running_mean,
                 running_var, eps, flat);
}

BackwardResult call_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean_in,
    const Tensor& var_in, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_weight,
    const Tensor& var_weight, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat,
    bool input_grad) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mmnorm::switchable_norm_backward", "")
          .typed<decltype(switchable_norm_backward)>();
  return op.call(grad_y, x, mean_in, var_in, weight, bias, mean_weight,
                 var_weight, running_mean, running_var, eps, flat,
                 input_grad);
}

// Row `row` (0: means, 1: variances) of the (3,) mixing weights, in tensor
// ops only, so that fake tensors trace through: the softmax of the lambda
// over the available branches (0 elsewhere), or the param itself without
// `available`; where `choices[row]` >= 0 (a frozen SSN choice), the one-hot
// of that branch instead.
Tensor mixing_weights(const Tensor& param,
                      const std::optional<Tensor>& available,
                      const std::optional<Tensor>& choices, int64_t row) {
  Tensor weights =
      available.has_value()
          ? param.masked_fill(available->logical_not(), -INFINITY).softmax(0)
          : param;
  if (!choices.has_value()) {
    return weights;
  }
  const Tensor choice = choices->select(0, row);
  const Tensor one_hot = at::arange(weights.size(0), choice.options())
                             .eq(choice)
                             .to(weights.scalar_type());
  return at::where(choice.ge(0), one_hot, weights);
}

// The lambda gradient of a frozen row is exactly 0 (also where the incoming
// gradient is inf or NaN): the lambda stays in the graph, unused.
Tensor frozen_rows_zero(const Tensor& grad,
                        const std::optional<Tensor>& choices, int64_t row) {
  if (!choices.has_value()) {
    return grad;
  }
  return grad.masked_fill(choices->select(0, row).ge(0), 0.0);
}

class SwitchableNormFunction
    : public torch::autograd::Function<SwitchableNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x,
                               const std::optional<Tensor>& weight,
                               const std::optional<Tensor>& bias,
                               const Tensor& mean_param,
                               const Tensor& var_param,
                               const std::optional<Tensor>& available,
                               const std::optional<Tensor>& choices,
                               const std::optional<Tensor>& running_mean,
                               const std::optional<Tensor>& running_var,
                               double eps, bool flat) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const Tensor mean_weight =
        mixing_weights(mean_param, available, choices, 0);
    const Tensor var_weight =
        mixing_weights(var_param, available, choices, 1);
    auto [y, mean_in, var_in, mean_bn, var_bn] =
        call_forward(x, weight, bias, mean_weight, var_weight, running_mean,
                     running_var, eps, flat);
    // The only large tensor saved is the input itself.
    ctx->save_for_backward({x, mean_in, var_in, or_undefined(weight),
                            or_undefined(bias), mean_weight, var_weight,
                            or_undefined(running_mean),
                            or_undefined(running_var),
                            or_undefined(choices)});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["flat"] = flat;
    ctx->saved_data["from_lambdas"] = available.has_value();
    ctx->mark_non_differentiable({mean_bn, var_bn});
    return {y, mean_bn, var_bn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return mmnorm::once_differentiable(
        "mmnorm switchable_norm: second derivatives are not implemented "
        "(SN/SSN layers are differentiable once)",
        [&] { return first_order_backward(ctx, grads); });
  }

 private:
  static variable_list first_order_backward(AutogradContext* ctx,
                                            const variable_list& grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& x = saved[0];
    const auto weight = if_defined(saved[3]);
    const auto bias = if_defined(saved[4]);
    const Tensor& mean_weight = saved[5];
    const Tensor& var_weight = saved[6];
    const Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(x);
    auto [grad_x, grad_weight, grad_bias, grad_mean_w, grad_var_w] =
        call_backward(grad_y, x, saved[1], saved[2], weight, bias,
                      mean_weight, var_weight, if_defined(saved[7]),
                      if_defined(saved[8]),
                      ctx->saved_data["eps"].toDouble(),
                      ctx->saved_data["flat"].toBool(),
                      ctx->needs_input_grad(0));
    if (ctx->saved_data["from_lambdas"].toBool()) {
      // softmax backward; unavailable branches have weight 0, so 0 here
      grad_mean_w = mean_weight.mul(
          grad_mean_w.sub(mean_weight.mul(grad_mean_w).sum()));
      grad_var_w =
          var_weight.mul(grad_var_w.sub(var_weight.mul(grad_var_w).sum()));
    }
    const auto choices = if_defined(saved[9]);
    grad_mean_w = frozen_rows_zero(grad_mean_w, choices, 0);
    grad_var_w = frozen_rows_zero(grad_var_w, choices, 1);
    return {ctx->needs_input_grad(0) ? grad_x : Tensor(),
            weight ? grad_weight : Tensor(),
            bias ? grad_bias : Tensor(),
            grad_mean_w,
            grad_var_w,
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> switchable_norm_autograd(
    const Tensor& x, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_param,
    const Tensor& var_param, const std::optional<Tensor>& available,
    const std::optional<Tensor>& choices,
    const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat) {
  const variable_list out = SwitchableNormFunction::apply(
      x, weight, bias, mean_param, var_param, available, choices,
      running_mean, running_var, eps, flat);
  return {out[0], out[1], out[2]};
}

// Below autograd (inference mode, or a trace after the autograd node):
// the forward op alone.
std::tuple<Tensor, Tensor, Tensor> switchable_norm_inference(
    const Tensor& x, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& bias, const Tensor& mean_param,
    const Tensor& var_param, const std::optional<Tensor>& available,
    const std::optional<Tensor>& choices,
    const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, double eps, bool flat) {
  auto [y, mean_in, var_in, mean_bn, var_bn] = call_forward(
      x, weight, bias, mixing_weights(mean_param, available, choices, 0),
      mixing_weights(var_param, available, choices, 1), running_mean,
      running_var, eps, flat);
  return {y, mean_bn, var_bn};
}

}  // namespace

TORCH_LIBRARY(mmnorm, m) {
  m.def("row_moments(Tensor x) -> (Tensor, Tensor)");
  m.def("row_affine(Tensor x, Tensor s, Tensor a, Tensor b) -> Tensor");
  m.def("row_grad_sums(Tensor dy, Tensor x, Tensor s) -> (Tensor, Tensor)");
  m.def(
      "row_grad_input(Tensor dy, Tensor x, Tensor s, Tensor a, Tensor b, "
      "Tensor c) -> Tensor");
  m.def(
      "sn_mix_forward(Tensor mean_in, Tensor var_in, Tensor mean_weight, "
      "Tensor var_weight, Tensor? running_mean, Tensor? running_var, "
      "Tensor? weight, Tensor? bias, float eps, bool flat) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "sn_mix_backward(Tensor sum_dy, Tensor sum_dy_xc, Tensor mean_in, "
      "Tensor var_in, Tensor mean_weight, Tensor var_weight, "
      "Tensor? running_mean, Tensor? running_var, Tensor? weight, "
      "Tensor? bias, float eps, bool flat, int count) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "switchable_norm_forward(Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean_weight, Tensor var_weight, Tensor? running_mean, "
      "Tensor? running_var, float eps, bool flat) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "switchable_norm_backward(Tensor grad_y, Tensor x, Tensor mean_in, "
      "Tensor var_in, Tensor? weight, Tensor? bias, Tensor mean_weight, "
      "Tensor var_weight, Tensor? running_mean, Tensor? running_var, "
      "float eps, bool flat, bool input_grad) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "switchable_norm(Tensor x, Tensor? weight, Tensor? bias, "
      "Tensor mean_param, Tensor var_param, Tensor? available, "
      "Tensor? choices, Tensor? running_mean, Tensor? running_var, "
      "float eps, bool flat) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmnorm, CPU, m) {
  m.impl("row_moments", row_moments);
  m.impl("row_affine", row_affine);
  m.impl("row_grad_sums", row_grad_sums);
  m.impl("row_grad_input", row_grad_input);
  m.impl("sn_mix_forward", sn_mix_forward);
  m.impl("sn_mix_backward", sn_mix_backward);
  m.impl("switchable_norm_forward", switchable_norm_forward);
  m.impl("switchable_norm_backward", switchable_norm_backward);
}

TORCH_LIBRARY_IMPL(mmnorm, Autograd, m) {
  m.impl("switchable_norm", switchable_norm_autograd);
}

TORCH_LIBRARY_IMPL(mmnorm, CompositeExplicitAutograd, m) {
  m.impl("switchable_norm", switchable_norm_inference);
}

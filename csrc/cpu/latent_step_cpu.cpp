// CPU kernel of lli_fast::latent_step (semantics: lli_fast/reference/latent_step.py).
//
// Rows are independent, so the batch is split over threads by rows (small batches stay on the
// calling thread); a row (D elements) is processed by one thread in two passes that stay in
// L1/L2: a reduction pass over the gradient (sum of squares for clipping, and an exact finiteness
// test), then the update pass, vectorised over D with `omp simd` (Adam in blocks of kChunk, so
// that the square roots can be taken a vector at a time). Arbitrary strides are supported without
// copies: the unit-stride instantiation is the fast path, the strided one is exact. The scalar
// math is shared with the CUDA kernel (common/latent_step_math.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

// The extension is compiled for the x86-64 baseline (SSE2). On x86-64 the unit-stride loops are
// also compiled for AVX2 and picked at run time, with Adam written in AVX2 intrinsics: Adam's
// two divides and square root per element bound the loop (even at (4096, 512) on one core), and
// AVX2 doubles their width. FMA is never used, so every element-wise operation rounds as in the
// baseline build; only the summation order of the clipping norm follows the vector width.
#if defined(__x86_64__) && defined(__GNUC__)
#define LLI_AVX2_DISPATCH 1
#include <immintrin.h>
#endif

#include "common/latent_step_args.h"
#include "common/latent_step_math.h"

namespace lli_fast {
namespace {

namespace lsm = latent_step_math;

// Rows per thread chunk: parallelism pays only beyond ~32k elements of work per chunk; below
// that the whole batch runs on the calling thread (the (16, 100) latent batch of `invert`).
constexpr int64_t kGrainElements = 32768;

// Elements per Adam block (see step_rows): small enough for three T buffers to live in L1.
constexpr int64_t kChunk = 64;

enum class Update { kSgd, kSgdMomentum, kAdam };

enum class Isa { kBaseline, kAvx2 };

// IEEE square roots of n values. GCC vectorises std::sqrt only under -fno-math-errno (otherwise
// it keeps a scalar call that may set errno), so the vector forms are spelled out; they round
// exactly like std::sqrt. Other ISAs and the tails use std::sqrt.
inline void sqrt_block(const float* in, float* out, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(out + i, _mm_sqrt_ps(_mm_loadu_ps(in + i)));
#elif defined(__aarch64__) && defined(__ARM_NEON)
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vsqrtq_f32(vld1q_f32(in + i)));
#endif
  for (; i < n; ++i) out[i] = std::sqrt(in[i]);
}

inline void sqrt_block(const double* in, double* out, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i + 2 <= n; i += 2) _mm_storeu_pd(out + i, _mm_sqrt_pd(_mm_loadu_pd(in + i)));
#elif defined(__aarch64__) && defined(__ARM_NEON)
  for (; i + 2 <= n; i += 2) vst1q_f64(out + i, vsqrtq_f64(vld1q_f64(in + i)));
#endif
  for (; i < n; ++i) out[i] = std::sqrt(in[i]);
}

#ifdef LLI_AVX2_DISPATCH
// AVX2 lanes of float (8) or double (4). Only IEEE add/sub/mul/div/sqrt, never FMA, so each lane
// rounds exactly like the scalar code.
template <typename T>
struct Avx2;

template <>
struct Avx2<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  __attribute__((target("avx2"))) static V load(const float* p) { return _mm256_loadu_ps(p); }
  __attribute__((target("avx2"))) static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  __attribute__((target("avx2"))) static V set1(float x) { return _mm256_set1_ps(x); }
  __attribute__((target("avx2"))) static V add(V a, V b) { return _mm256_add_ps(a, b); }
  __attribute__((target("avx2"))) static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  __attribute__((target("avx2"))) static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  __attribute__((target("avx2"))) static V div(V a, V b) { return _mm256_div_ps(a, b); }
  __attribute__((target("avx2"))) static V sqrt(V a) { return _mm256_sqrt_ps(a); }
};

template <>
struct Avx2<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  __attribute__((target("avx2"))) static V load(const double* p) { return _mm256_loadu_pd(p); }
  __attribute__((target("avx2"))) static void store(double* p, V x) { _mm256_storeu_pd(p, x); }
  __attribute__((target("avx2"))) static V set1(double x) { return _mm256_set1_pd(x); }
  __attribute__((target("avx2"))) static V add(V a, V b) { return _mm256_add_pd(a, b); }
  __attribute__((target("avx2"))) static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  __attribute__((target("avx2"))) static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  __attribute__((target("avx2"))) static V div(V a, V b) { return _mm256_div_pd(a, b); }
  __attribute__((target("avx2"))) static V sqrt(V a) { return _mm256_sqrt_pd(a); }
};

// Adam over the leading multiple of kLanes elements of a unit-stride row in one pass, the same
// operations in the same order as lsm::adam_moments and lsm::adam_param. Returns how many
// elements it did; the caller finishes the row.
template <typename T>
__attribute__((target("avx2"))) int64_t adam_row_avx2(T* z, T* m, T* v, const T* g, int64_t D,
                                                      const lsm::StepConstants<T>& k, T clip,
                                                      T step_size, T bias2_sqrt) {
  using A = Avx2<T>;
  const auto beta1 = A::set1(k.beta1), one_minus_beta1 = A::set1(k.one_minus_beta1);
  const auto beta2 = A::set1(k.beta2), one_minus_beta2 = A::set1(k.one_minus_beta2);
  const auto eps = A::set1(k.eps), scale = A::set1(clip), size = A::set1(step_size);
  const auto b2 = A::set1(bias2_sqrt);
  int64_t d = 0;
  for (; d + A::kLanes <= D; d += A::kLanes) {
    const auto gd = A::mul(A::load(g + d), scale);
    const auto md = A::add(A::mul(beta1, A::load(m + d)), A::mul(one_minus_beta1, gd));
    const auto vd = A::add(A::mul(beta2, A::load(v + d)), A::mul(A::mul(one_minus_beta2, gd), gd));
    const auto denom = A::add(A::div(A::sqrt(vd), b2), eps);
    A::store(z + d, A::sub(A::load(z + d), A::mul(size, A::div(md, denom))));
    A::store(m + d, md);
    A::store(v + d, vd);
  }
  return d;
}
#endif

// Always inlined, so that the AVX2 entry point below compiles this body for AVX2.
template <typename scalar_t, Update kUpdate, bool kUnit, Isa kIsa>
__attribute__((always_inline)) inline void step_rows(const lsm::LatentStepArgs<scalar_t>& a,
                                                     int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  const lsm::StepConstants<T> k = lsm::step_constants<T>(a.beta1, a.beta2, a.eps);
  const int64_t D = a.D;
  // With kUnit the column strides are the constant 1, which is what lets the loops vectorise.
  const int64_t zc = kUnit ? 1 : a.z.col_stride;
  const int64_t gc = kUnit ? 1 : a.grad.col_stride;
  const int64_t mc = kUnit ? 1 : a.exp_avg.col_stride;
  const int64_t vc = kUnit ? 1 : a.exp_avg_sq.col_stride;

  for (int64_t b = begin; b < end; ++b) {
    scalar_t* __restrict__ z = a.z.data + b * a.z.row_stride;
    const scalar_t* __restrict__ g = a.grad.data + b * a.grad.row_stride;

    if (a.ring_slots != nullptr) {  // step 1: the pre-update row, for every row
      const int64_t slot = a.ring_slots[b * a.slot_stride];
      scalar_t* __restrict__ r = a.ring_z.data + slot * a.ring_z.row_stride;
      const int64_t rc = a.ring_z.col_stride;
      for (int64_t d = 0; d < D; ++d) r[d * rc] = z[d * zc];
    }

    // Step 2, the guard. Finiteness is exact and overflow-free: sum(g * 0) is 0 for a finite
    // row and NaN as soon as one element is inf or NaN (sum(g^2) could overflow to inf).
    bool ok = a.active[b * a.active_stride];
    if (ok && a.loss != nullptr) {
      ok = lsm::loss_allows_step(lsm::load_row_scalar(a.loss, b * a.loss_stride, a.loss_dtype),
                                 a.stop_loss);
    }
    T sum_sq = 0;
    if (ok) {
      T non_finite = 0;
#pragma omp simd reduction(+ : sum_sq, non_finite)
      for (int64_t d = 0; d < D; ++d) {
        const T gd = static_cast<T>(g[d * gc]);
        sum_sq += gd * gd;
        non_finite += gd * T(0);
      }
      ok = non_finite == T(0);
    }
    a.active[b * a.active_stride] = ok;
    if (!ok) continue;

    // Steps 3-5: clip, count, update.
    const int64_t t = a.step[b * a.step_stride] + 1;
    a.step[b * a.step_stride] = t;
    const double lr = lsm::load_row_scalar(a.lr, b * a.lr_stride, a.lr_dtype);
    const lsm::RowCoefficients<T> c =
        lsm::row_coefficients<T>(a.optimizer, t, lr, a.beta1, a.beta2, a.max_grad_norm, sum_sq);

    if constexpr (kUpdate == Update::kAdam) {
      scalar_t* __restrict__ m = a.exp_avg.data + b * a.exp_avg.row_stride;
      scalar_t* __restrict__ v = a.exp_avg_sq.data + b * a.exp_avg_sq.row_stride;
      // With AVX2 the row goes through one fused intrinsic pass. Otherwise (and for the tail)
      // blocks of kChunk: moments, then their square roots, then z; the new moments stay in the
      // compute type between the loops (the reference never rounds them before use).
      alignas(64) T m_new[kChunk];
      alignas(64) T v_new[kChunk];
      alignas(64) T root[kChunk];
      int64_t done = 0;
#ifdef LLI_AVX2_DISPATCH
      if constexpr (kIsa == Isa::kAvx2 && std::is_same_v<scalar_t, T>) {
        done = adam_row_avx2<T>(z, m, v, g, D, k, c.clip, c.step_size, c.bias2_sqrt);
      }
#endif
      for (int64_t d0 = done; d0 < D; d0 += kChunk) {
        const int64_t n = std::min(kChunk, D - d0);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const int64_t d = d0 + i;
          T md = static_cast<T>(m[d * mc]);
          T vd = static_cast<T>(v[d * vc]);
          lsm::adam_moments(md, vd, static_cast<T>(g[d * gc]) * c.clip, k);
          m[d * mc] = static_cast<scalar_t>(md);
          v[d * vc] = static_cast<scalar_t>(vd);
          m_new[i] = md;
          v_new[i] = vd;
        }
        sqrt_block(v_new, root, n);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const int64_t d = d0 + i;
          const T zd = lsm::adam_param(static_cast<T>(z[d * zc]), m_new[i], root[i], k.eps,
                                       c.step_size, c.bias2_sqrt);
          z[d * zc] = static_cast<scalar_t>(zd);
        }
      }
    } else if constexpr (kUpdate == Update::kSgdMomentum) {
      scalar_t* __restrict__ m = a.exp_avg.data + b * a.exp_avg.row_stride;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        T zd = static_cast<T>(z[d * zc]);
        T md = static_cast<T>(m[d * mc]);
        lsm::sgd_momentum_element(zd, md, static_cast<T>(g[d * gc]) * c.clip, k.beta1, c.first,
                                  c.lr);
        z[d * zc] = static_cast<scalar_t>(zd);
        m[d * mc] = static_cast<scalar_t>(md);
      }
    } else {
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        T zd = static_cast<T>(z[d * zc]);
        lsm::sgd_element(zd, static_cast<T>(g[d * gc]) * c.clip, c.lr);
        z[d * zc] = static_cast<scalar_t>(zd);
      }
    }
  }
}

#ifdef LLI_AVX2_DISPATCH
template <typename scalar_t, Update kUpdate>
__attribute__((target("avx2"))) void step_rows_avx2(const lsm::LatentStepArgs<scalar_t>& a,
                                                    int64_t begin, int64_t end) {
  step_rows<scalar_t, kUpdate, true, Isa::kAvx2>(a, begin, end);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename scalar_t, Update kUpdate>
void run_rows(const lsm::LatentStepArgs<scalar_t>& a, bool unit) {
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(a.D, 1));
  constexpr bool kVectorType =
      std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
#ifdef LLI_AVX2_DISPATCH
  const bool avx2 = kVectorType && unit && cpu_has_avx2();
#endif
  at::parallel_for(0, a.B, grain, [&](int64_t begin, int64_t end) {
#ifdef LLI_AVX2_DISPATCH
    if constexpr (kVectorType) {
      if (avx2) {
        step_rows_avx2<scalar_t, kUpdate>(a, begin, end);
        return;
      }
    }
#endif
    if (unit) {
      step_rows<scalar_t, kUpdate, true, Isa::kBaseline>(a, begin, end);
    } else {
      step_rows<scalar_t, kUpdate, false, Isa::kBaseline>(a, begin, end);
    }
  });
}

// Value checks that are free on the host, done before anything is written so that a rejected
// call leaves every argument untouched.
void check_cpu_values(const at::Tensor& lr, const c10::optional<at::Tensor>& ring_z,
                      const c10::optional<at::Tensor>& ring_slots) {
  const lsm::RowDtype lr_dtype = row_dtype(lr, "lr");
  const int64_t lr_stride = lr.dim() == 0 ? 0 : lr.stride(0);
  for (int64_t i = 0; i < lr.numel(); ++i) {
    const double rate = lsm::load_row_scalar(lr.data_ptr(), i * lr_stride, lr_dtype);
    TORCH_CHECK_VALUE(rate >= 0.0, "lli_fast: lr must be >= 0, got ", rate, " at index ", i);
  }
  if (!ring_slots.has_value()) return;
  const int64_t rows = ring_z->size(0);
  const int64_t* slots = ring_slots->data_ptr<int64_t>();
  const int64_t stride = ring_slots->stride(0);
  for (int64_t i = 0; i < ring_slots->numel(); ++i) {
    const int64_t slot = slots[i * stride];
    TORCH_CHECK_INDEX(slot >= 0 && slot < rows, "lli_fast: ring_slots[", i, "] = ", slot,
                      " is out of range for ring_z with ", rows, " rows");
  }
}

void latent_step_cpu(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& exp_avg,
                     const at::Tensor& exp_avg_sq, const at::Tensor& step,
                     const at::Tensor& active, const at::Tensor& lr,
                     const c10::optional<at::Tensor>& loss, int64_t optimizer, double beta1,
                     double beta2, double eps, double max_grad_norm, double stop_loss,
                     const c10::optional<at::Tensor>& ring_z,
                     const c10::optional<at::Tensor>& ring_slots) {
  check_latent_step_args(z, grad, exp_avg, exp_avg_sq, step, active, lr, loss, optimizer, beta1,
                         beta2, eps, max_grad_norm, stop_loss, ring_z, ring_slots);
  check_cpu_values(lr, ring_z, ring_slots);
  if (z.size(0) == 0) return;
  const bool with_m = uses_exp_avg(optimizer, beta1);
  const bool with_v = uses_exp_avg_sq(optimizer);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "latent_step_cpu",
                                  [&] {
    const auto a = pack_latent_step_args<scalar_t>(z, grad, exp_avg, exp_avg_sq, step, active, lr,
                                                   loss, optimizer, beta1, beta2, eps,
                                                   max_grad_norm, stop_loss, ring_z, ring_slots);
    // Rows of a 2-D tensor with one column have an arbitrary column stride; treat them as unit.
    auto unit_cols = [&](const auto& x) { return x.col_stride == 1 || a.D <= 1; };
    const bool unit = unit_cols(a.z) && unit_cols(a.grad) && (!with_m || unit_cols(a.exp_avg)) &&
                      (!with_v || unit_cols(a.exp_avg_sq));
    if (optimizer == lsm::kAdam) {
      run_rows<scalar_t, Update::kAdam>(a, unit);
    } else if (with_m) {
      run_rows<scalar_t, Update::kSgdMomentum>(a, unit);
    } else {
      run_rows<scalar_t, Update::kSgd>(a, unit);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lli_fast, CPU, m) {
  m.impl("latent_step", &latent_step_cpu);
}

}  // namespace lli_fast

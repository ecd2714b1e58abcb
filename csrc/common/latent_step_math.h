// Scalar math of the fused latent step (lli_fast::latent_step), shared by the CPU and CUDA
// kernels so both evaluate the reference's formulas in the same order and the same precision.
//
// T is the compute type: float for float/half/bfloat16 storage, double for double storage.
// Every expression mirrors lli_fast/reference/latent_step.py operation by operation, because
// rounding order matters: e.g. the Adam bias correction 1 - beta^t is ill-conditioned in float
// (beta2^t is within 1e-3 of 1), so it must be rounded exactly as the reference rounds it.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define LLI_HOST_DEVICE __host__ __device__
#else
#define LLI_HOST_DEVICE
#endif

namespace lli_fast {
namespace latent_step_math {

constexpr int kSGD = 0;
constexpr int kAdam = 1;

// Storage dtype of the small per-row tensors (lr, loss), read one element per row; a runtime
// switch there costs nothing and spares a kernel instantiation per dtype combination.
enum class RowDtype : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

LLI_HOST_DEVICE inline double load_row_scalar(const void* base, int64_t index, RowDtype dtype) {
  switch (dtype) {
    case RowDtype::kDouble:
      return static_cast<const double*>(base)[index];
    case RowDtype::kHalf:
      return static_cast<float>(static_cast<const c10::Half*>(base)[index]);
    case RowDtype::kBFloat16:
      return static_cast<float>(static_cast<const c10::BFloat16*>(base)[index]);
    case RowDtype::kFloat:
    default:
      return static_cast<const float*>(base)[index];
  }
}

// A (rows, cols) operand seen through raw strides.
template <typename scalar_t>
struct Matrix {
  scalar_t* data = nullptr;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

// Everything a kernel needs for one call, as plain pointers and strides (no host sync to build,
// passed by value to CUDA kernels). Operands an optimizer does not use are null.
template <typename scalar_t>
struct LatentStepArgs {
  Matrix<scalar_t> z, exp_avg, exp_avg_sq, ring_z;
  Matrix<const scalar_t> grad;
  int64_t* step = nullptr;
  int64_t step_stride = 0;
  bool* active = nullptr;
  int64_t active_stride = 0;
  const void* lr = nullptr;
  int64_t lr_stride = 0;  // 0 for one shared rate
  RowDtype lr_dtype = RowDtype::kFloat;
  const void* loss = nullptr;  // null when no loss is given
  int64_t loss_stride = 0;
  RowDtype loss_dtype = RowDtype::kFloat;
  const int64_t* ring_slots = nullptr;  // null when no ring write is requested
  int64_t slot_stride = 0;
  int64_t ring_rows = 0;
  int64_t B = 0;
  int64_t D = 0;
  int optimizer = kAdam;
  double beta1 = 0, beta2 = 0, eps = 0, max_grad_norm = 0, stop_loss = 0;
};

LLI_HOST_DEVICE inline bool is_finite(double x) {
#ifdef __CUDA_ARCH__
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}

LLI_HOST_DEVICE inline float sqrt_rn(float x) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(x);  // IEEE-rounded even if the file is built with -use_fast_math
#else
  return std::sqrt(x);
#endif
}

LLI_HOST_DEVICE inline double sqrt_rn(double x) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// Reference guard (step 2), loss terms: a row keeps stepping while its loss is finite and
// above stop_loss. Compared in double, as the reference casts the loss to float64.
LLI_HOST_DEVICE inline bool loss_allows_step(double loss, double stop_loss) {
  return is_finite(loss) && loss > stop_loss;
}

// 1 - beta^t in T, rounded like the reference's `1 - beta**t` on a T tensor: beta is rounded to
// T, the power is rounded to T once (computed in double, so it is the correctly rounded T value
// that a faithful powf returns too), and the subtraction is done in T (exact while beta^t >= 0.5).
template <typename T>
LLI_HOST_DEVICE inline T bias_correction(double beta, int64_t t) {
  const double beta_t = static_cast<double>(static_cast<T>(beta));
  return T(1) - static_cast<T>(::pow(beta_t, static_cast<double>(t)));
}

// Per-row constants of one step, computed once per row after the row's reductions.
template <typename T>
struct RowCoefficients {
  T clip;        // gradient scale min(1, max_norm / (||g||_2 + 1e-6)); exactly 1 when not clipping
  T lr;          // the row's learning rate (SGD)
  T step_size;   // Adam: lr / (1 - beta1^t)
  T bias2_sqrt;  // Adam: sqrt(1 - beta2^t)
  bool first;    // SGD: t == 1, so the momentum buffer starts at g (torch.optim.SGD)
};

// sum_sq is sum(g^2) of the unclipped row in T; t is the row's step count after the increment.
template <typename T>
LLI_HOST_DEVICE inline RowCoefficients<T> row_coefficients(int optimizer, int64_t t, double lr,
                                                           double beta1, double beta2,
                                                           double max_grad_norm, T sum_sq) {
  RowCoefficients<T> c;
  c.clip = T(1);
  if (max_grad_norm > 0) {
    // torch evaluates `max_norm / (norm + 1e-6)` as reciprocal(norm + 1e-6) * max_norm.
    const T inv = T(1) / (sqrt_rn(sum_sq) + static_cast<T>(1e-6));
    const T coef = inv * static_cast<T>(max_grad_norm);
    c.clip = coef < T(1) ? coef : T(1);
  }
  c.lr = static_cast<T>(lr);
  c.first = t == 1;
  if (optimizer == kAdam) {
    c.step_size = c.lr / bias_correction<T>(beta1, t);
    c.bias2_sqrt = sqrt_rn(bias_correction<T>(beta2, t));
  } else {
    c.step_size = c.lr;
    c.bias2_sqrt = T(1);
  }
  return c;
}

// Hyper-parameters rounded to T once per launch, as the reference's scalar-tensor products do.
template <typename T>
struct StepConstants {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
};

template <typename T>
LLI_HOST_DEVICE inline StepConstants<T> step_constants(double beta1, double beta2, double eps) {
  // 1 - beta is formed in double (Python floats) and rounded once, like `(1 - beta1) * g`.
  return {static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2),
          static_cast<T>(1.0 - beta2), static_cast<T>(eps)};
}

// Adam on one element (g already clipped), in two halves so that a CPU loop can take the square
// root of a whole block in between:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
//   z = z - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
template <typename T>
LLI_HOST_DEVICE inline void adam_moments(T& m, T& v, T g, const StepConstants<T>& k) {
  m = k.beta1 * m + k.one_minus_beta1 * g;
  v = k.beta2 * v + k.one_minus_beta2 * g * g;
}

template <typename T>
LLI_HOST_DEVICE inline T adam_param(T z, T m, T sqrt_v, T eps, T step_size, T bias2_sqrt) {
  const T denom = sqrt_v / bias2_sqrt + eps;
  return z - step_size * (m / denom);
}

template <typename T>
LLI_HOST_DEVICE inline void adam_element(T& z, T& m, T& v, T g, const StepConstants<T>& k,
                                         T step_size, T bias2_sqrt) {
  adam_moments(m, v, g, k);
  z = adam_param(z, m, sqrt_rn(v), k.eps, step_size, bias2_sqrt);
}

// SGD with momentum (dampening 0) on one element: buf = g at t == 1 else momentum buf + g;
// z = z - lr buf.
template <typename T>
LLI_HOST_DEVICE inline void sgd_momentum_element(T& z, T& buf, T g, T momentum, bool first,
                                                 T lr) {
  buf = first ? g : momentum * buf + g;
  z = z - lr * buf;
}

// Plain SGD (momentum 0): the momentum buffer is neither read nor written.
template <typename T>
LLI_HOST_DEVICE inline void sgd_element(T& z, T g, T lr) {
  z = z - lr * g;
}

}  // namespace latent_step_math
}  // namespace lli_fast

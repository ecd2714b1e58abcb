// Host side of lli_fast::latent_step shared by the CPU and CUDA kernels: argument validation
// and packing into the plain LatentStepArgs struct. Nothing here reads tensor values, so it never
// synchronises with a device; value checks (lr sign, ring slot range) are done where they are
// free (the CPU kernel, CUDA device asserts).
#pragma once

#include <ATen/MemoryOverlap.h>

#include <cmath>

#include "checks.h"
#include "common/latent_step_math.h"

namespace lli_fast {

inline latent_step_math::RowDtype row_dtype(const at::Tensor& t, const char* name) {
  using latent_step_math::RowDtype;
  switch (t.scalar_type()) {
    case at::kFloat:
      return RowDtype::kFloat;
    case at::kDouble:
      return RowDtype::kDouble;
    case at::kHalf:
      return RowDtype::kHalf;
    case at::kBFloat16:
      return RowDtype::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "lli_fast: ", name,
                       " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
  return RowDtype::kFloat;  // unreachable: the check above throws
}

// Which optional state tensors an optimizer reads: the momentum buffer unless plain SGD, the
// second moment only for Adam. Unused ones may be empty and are not validated.
inline bool uses_exp_avg(int64_t optimizer, double beta1) {
  return optimizer == latent_step_math::kAdam || beta1 != 0.0;
}
inline bool uses_exp_avg_sq(int64_t optimizer) {
  return optimizer == latent_step_math::kAdam;
}

// Named ValueErrors for aliased in-place arguments (at::assert_no_overlap names neither).
// args[i] is (tensor, name) in argument order, written[i] whether the kernel writes it; an
// undefined tensor is skipped. Overlap that ATen cannot decide cheaply (TooHard) is allowed, as
// at::assert_no_overlap does; the Python wrappers decide it exactly before calling the op.
inline void check_no_aliasing(const std::pair<const at::Tensor*, const char*>* args,
                              const bool* written, int n) {
  for (int i = 0; i < n; ++i) {
    const at::Tensor& a = *args[i].first;
    if (!a.defined()) continue;
    TORCH_CHECK_VALUE(!written[i] || at::has_internal_overlap(a) != at::MemOverlap::Yes,
                      "lli_fast: ", args[i].second,
                      " must not have internal overlap (expanded/stride-0 views cannot be "
                      "updated in place)");
    for (int j = 0; j < i; ++j) {
      const at::Tensor& b = *args[j].first;
      if (!b.defined() || !(written[i] || written[j])) continue;
      const auto status = at::get_overlap_status(a, b);
      TORCH_CHECK_VALUE(
          status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
          "lli_fast: ", args[i].second, " must not overlap ", args[j].second,
          " (they share memory)");
    }
  }
}

inline void check_vector(const at::Tensor& t, const char* name, int64_t B, at::ScalarType dtype,
                         const at::Tensor& z) {
  check_same_device(t, name, z, "z");
  check_dtype(t, name, dtype);
  check_shape(t, name, {B});
}

inline void check_latent_step_args(const at::Tensor& z, const at::Tensor& grad,
                                   const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                                   const at::Tensor& step, const at::Tensor& active,
                                   const at::Tensor& lr, const c10::optional<at::Tensor>& loss,
                                   int64_t optimizer, double beta1, double beta2, double eps,
                                   double max_grad_norm, double stop_loss,
                                   const c10::optional<at::Tensor>& ring_z,
                                   const c10::optional<at::Tensor>& ring_slots) {
  using latent_step_math::kAdam;
  using latent_step_math::kSGD;
  TORCH_CHECK_VALUE(optimizer == kSGD || optimizer == kAdam,
                    "lli_fast: optimizer must be 0 (sgd) or 1 (adam), got ", optimizer);
  if (optimizer == kAdam) {
    TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0,
                      "lli_fast: beta1 must be in [0, 1) for adam, got ", beta1);
    TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0,
                      "lli_fast: beta2 must be in [0, 1) for adam, got ", beta2);
    TORCH_CHECK_VALUE(eps >= 0.0 && std::isfinite(eps),
                      "lli_fast: eps must be finite and >= 0, got ", eps);
  } else {
    TORCH_CHECK_VALUE(beta1 >= 0.0 && std::isfinite(beta1),
                      "lli_fast: beta1 (sgd momentum) must be finite and >= 0, got ", beta1);
  }
  TORCH_CHECK_VALUE(max_grad_norm >= 0.0,
                    "lli_fast: max_grad_norm must be >= 0 (0 disables clipping), got ",
                    max_grad_norm);
  TORCH_CHECK_VALUE(!std::isnan(stop_loss), "lli_fast: stop_loss must not be NaN");

  check_dim(z, "z", 2);
  row_dtype(z, "z");  // the four dtypes the kernels are instantiated for
  const int64_t B = z.size(0);
  const int64_t D = z.size(1);
  check_same_device(grad, "grad", z, "z");
  check_same_dtype(grad, "grad", z, "z");
  check_shape(grad, "grad", {B, D});
  if (uses_exp_avg(optimizer, beta1)) {
    check_same_device(exp_avg, "exp_avg", z, "z");
    check_same_dtype(exp_avg, "exp_avg", z, "z");
    check_shape(exp_avg, "exp_avg", {B, D});
  }
  if (uses_exp_avg_sq(optimizer)) {
    check_same_device(exp_avg_sq, "exp_avg_sq", z, "z");
    check_same_dtype(exp_avg_sq, "exp_avg_sq", z, "z");
    check_shape(exp_avg_sq, "exp_avg_sq", {B, D});
  }
  check_vector(step, "step", B, at::kLong, z);
  check_vector(active, "active", B, at::kBool, z);

  check_same_device(lr, "lr", z, "z");
  row_dtype(lr, "lr");
  TORCH_CHECK_VALUE(lr.dim() <= 1 && (lr.numel() == 1 || lr.numel() == B),
                    "lli_fast: lr must have shape [1] or [", B, "] (one rate per row), got ",
                    lr.sizes());
  if (loss.has_value()) {
    check_same_device(*loss, "loss", z, "z");
    row_dtype(*loss, "loss");
    check_shape(*loss, "loss", {B});
  }

  TORCH_CHECK_VALUE(ring_z.has_value() == ring_slots.has_value(),
                    "lli_fast: ring_z and ring_slots must be given together, got ring_z ",
                    ring_z.has_value() ? "set" : "None", " and ring_slots ",
                    ring_slots.has_value() ? "set" : "None");
  if (ring_z.has_value()) {
    check_dim(*ring_z, "ring_z", 2);
    check_same_device(*ring_z, "ring_z", z, "z");
    check_same_dtype(*ring_z, "ring_z", z, "z");
    TORCH_CHECK_VALUE(ring_z->size(1) == D, "lli_fast: ring_z must have ", D,
                      " columns (the latent size of z), got shape ", ring_z->sizes());
    check_vector(*ring_slots, "ring_slots", B, at::kLong, z);
    TORCH_CHECK_VALUE(B == 0 || ring_z->size(0) > 0,
                      "lli_fast: ring_z has no rows to write ", B, " slots into");
  }

  // The kernels write through raw pointers: a written tensor must not overlap itself (an
  // expanded view) or any other argument (e.g. exp_avg passed as exp_avg_sq). Unused optimizer
  // state is neither read nor written. Mirrors lli_fast.ops.ring.check_no_overlap.
  const at::Tensor none;
  const std::pair<const at::Tensor*, const char*> args[] = {
      {&z, "z"},
      {&grad, "grad"},
      {uses_exp_avg(optimizer, beta1) ? &exp_avg : &none, "exp_avg"},
      {uses_exp_avg_sq(optimizer) ? &exp_avg_sq : &none, "exp_avg_sq"},
      {&step, "step"},
      {&active, "active"},
      {&lr, "lr"},
      {loss.has_value() ? &*loss : &none, "loss"},
      {ring_z.has_value() ? &*ring_z : &none, "ring_z"},
      {ring_slots.has_value() ? &*ring_slots : &none, "ring_slots"}};
  const bool written[] = {true, false, true, true, true, true, false, false, true, false};
  check_no_aliasing(args, written, 10);
}

template <typename scalar_t>
latent_step_math::Matrix<scalar_t> matrix_of(const at::Tensor& t, bool used) {
  if (!used) return {};
  return {t.data_ptr<scalar_t>(), t.stride(0), t.stride(1)};
}

// Pointers and strides of validated arguments (see check_latent_step_args).
template <typename scalar_t>
latent_step_math::LatentStepArgs<scalar_t> pack_latent_step_args(
    const at::Tensor& z, const at::Tensor& grad, const at::Tensor& exp_avg,
    const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& active,
    const at::Tensor& lr, const c10::optional<at::Tensor>& loss, int64_t optimizer, double beta1,
    double beta2, double eps, double max_grad_norm, double stop_loss,
    const c10::optional<at::Tensor>& ring_z, const c10::optional<at::Tensor>& ring_slots) {
  latent_step_math::LatentStepArgs<scalar_t> a;
  a.z = matrix_of<scalar_t>(z, true);
  a.grad = {grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1)};
  a.exp_avg = matrix_of<scalar_t>(exp_avg, uses_exp_avg(optimizer, beta1));
  a.exp_avg_sq = matrix_of<scalar_t>(exp_avg_sq, uses_exp_avg_sq(optimizer));
  a.step = step.data_ptr<int64_t>();
  a.step_stride = step.stride(0);
  a.active = active.data_ptr<bool>();
  a.active_stride = active.stride(0);
  a.lr = lr.data_ptr();
  a.lr_stride = lr.numel() == 1 ? 0 : lr.stride(0);
  a.lr_dtype = row_dtype(lr, "lr");
  if (loss.has_value()) {
    a.loss = loss->data_ptr();
    a.loss_stride = loss->stride(0);
    a.loss_dtype = row_dtype(*loss, "loss");
  }
  if (ring_z.has_value()) {
    a.ring_z = matrix_of<scalar_t>(*ring_z, true);
    a.ring_slots = ring_slots->data_ptr<int64_t>();
    a.slot_stride = ring_slots->stride(0);
    a.ring_rows = ring_z->size(0);
  }
  a.B = z.size(0);
  a.D = z.size(1);
  a.optimizer = static_cast<int>(optimizer);
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.max_grad_norm = max_grad_norm;
  a.stop_loss = stop_loss;
  return a;
}

}  // namespace lli_fast

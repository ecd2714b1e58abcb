// Ring replay buffer: the index math shared by the CPU and CUDA kernels (host + device inline
// functions, so both sides compute bit-identical slots and rows) and the argument checks both
// dispatch keys run before touching memory. Semantics: lli_fast/reference/ring.py.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include <ATen/MemoryOverlap.h>

#include "checks.h"

#ifndef LLI_FAST_HOST_DEVICE
#ifdef __CUDACC__
#define LLI_FAST_HOST_DEVICE __host__ __device__
#else
#define LLI_FAST_HOST_DEVICE
#endif
#endif

namespace lli_fast {
namespace ring {

// Floor modulo: a cursor corrupted to a negative head still maps into [0, capacity), so no kernel
// can write outside the ring whatever the cursor holds (the device cannot raise without a sync).
LLI_FAST_HOST_DEVICE inline int64_t wrap_head(int64_t head, int64_t capacity) {
  const int64_t m = head % capacity;
  return m < 0 ? m + capacity : m;
}

LLI_FAST_HOST_DEVICE inline int64_t clamp_count(int64_t count, int64_t capacity) {
  return count < 0 ? 0 : (count > capacity ? capacity : count);
}

// row = min(floor(u * count), count - 1), and 0 for u <= 0, NaN u or an empty ring. The product
// is taken in double: a float32 u times any count below 2^29 is exact there, so every backend
// floors the same value (float32 rounding could push u * count across an integer).
LLI_FAST_HOST_DEVICE inline int64_t sample_row(float u, int64_t count) {
  const double x = floor(static_cast<double>(u) * static_cast<double>(count));
  if (!(x > 0.0)) return 0;  // also NaN, and count == 0 (x is 0 or NaN then)
  if (x > static_cast<double>(count - 1)) return count - 1;
  return static_cast<int64_t>(x);
}

// Copies go by element size: pushing and gathering rows never does arithmetic on them, so
// float16/bfloat16/float32/float64 share three instantiations instead of four dtype dispatches.
template <typename F>
inline void dispatch_by_element_size(const at::Tensor& t, const char* name, F&& f) {
  switch (t.element_size()) {
    case 2:
      f(uint16_t{});
      break;
    case 4:
      f(uint32_t{});
      break;
    case 8:
      f(uint64_t{});
      break;
    default:
      TORCH_CHECK_TYPE(false, "lli_fast: ", name, " must be float16, bfloat16, float32 or float64, ",
                       "got ", t.scalar_type());
  }
}

// The ring's own tensors. Returns {capacity, latent_dim}. The ring is written in place through
// raw pointers, so it must be contiguous (a copy would silently drop the writes).
inline std::pair<int64_t, int64_t> check_ring(const at::Tensor& ring_z, const at::Tensor& ring_target,
                                              const at::Tensor& ring_step,
                                              const at::Tensor& ring_loss,
                                              const at::Tensor& cursor) {
  check_dim(ring_z, "ring_z", 2);
  check_floating(ring_z, "ring_z");
  const int64_t capacity = ring_z.size(0);
  const int64_t dim = ring_z.size(1);
  TORCH_CHECK_VALUE(capacity > 0, "lli_fast: ring_z must have at least one row (capacity > 0), ",
                    "got shape ", ring_z.sizes());
  check_shape(ring_target, "ring_target", {capacity});
  check_shape(ring_step, "ring_step", {capacity});
  check_shape(ring_loss, "ring_loss", {capacity});
  check_shape(cursor, "cursor", {2});
  check_dtype(ring_target, "ring_target", at::kLong);
  check_dtype(ring_step, "ring_step", at::kLong);
  check_dtype(ring_loss, "ring_loss", at::kFloat);
  check_dtype(cursor, "cursor", at::kLong);
  check_same_device(ring_target, "ring_target", ring_z, "ring_z");
  check_same_device(ring_step, "ring_step", ring_z, "ring_z");
  check_same_device(ring_loss, "ring_loss", ring_z, "ring_z");
  check_same_device(cursor, "cursor", ring_z, "ring_z");
  check_contiguous(ring_z, "ring_z");
  check_contiguous(ring_target, "ring_target");
  check_contiguous(ring_step, "ring_step");
  check_contiguous(ring_loss, "ring_loss");
  check_contiguous(cursor, "cursor");
  return {capacity, dim};
}

// The pushed columns (any strides). Returns B.
inline int64_t check_push(const at::Tensor& ring_z, const at::Tensor& ring_target,
                          const at::Tensor& ring_step, const at::Tensor& ring_loss,
                          const at::Tensor& cursor, const std::optional<at::Tensor>& z,
                          const at::Tensor& target, const at::Tensor& step,
                          const at::Tensor& loss) {
  const auto [capacity, dim] = check_ring(ring_z, ring_target, ring_step, ring_loss, cursor);
  check_dim(target, "target", 1);
  const int64_t batch = target.size(0);
  check_shape(step, "step", {batch});
  check_shape(loss, "loss", {batch});
  check_dtype(target, "target", at::kLong);
  check_dtype(step, "step", at::kLong);
  check_dtype(loss, "loss", at::kFloat);
  check_same_device(target, "target", ring_z, "ring_z");
  check_same_device(step, "step", ring_z, "ring_z");
  check_same_device(loss, "loss", ring_z, "ring_z");
  if (z.has_value()) {
    check_shape(*z, "z", {batch, dim});
    check_same_dtype(*z, "z", ring_z, "ring_z");
    check_same_device(*z, "z", ring_z, "ring_z");
  } else {
    // latent_step wrote the rows at slots head .. head + B - 1; with B > capacity two of them
    // would have shared a slot, so which one the ring holds would be undefined.
    TORCH_CHECK_VALUE(batch <= capacity, "lli_fast: z=None (rows already written by latent_step) ",
                      "needs B <= capacity ", capacity, ", got B = ", batch);
  }
  // The ring is written in place: it must share no memory with the pushed columns (and its
  // own tensors none with each other). Mirrors lli_fast.ops.ring.check_push_overlap.
  const at::Tensor none;
  const at::Tensor* args[] = {&ring_z, &ring_target, &ring_step, &ring_loss, &cursor,
                              z.has_value() ? &*z : &none, &target, &step, &loss};
  const char* names[] = {"ring_z", "ring_target", "ring_step", "ring_loss", "cursor",
                         "z", "target", "step", "loss"};
  for (int i = 1; i < 9; ++i) {
    if (!args[i]->defined()) continue;
    for (int j = 0; j < i && j < 5; ++j) {  // pairs with at least one ring tensor
      const auto status = at::get_overlap_status(*args[i], *args[j]);
      TORCH_CHECK_VALUE(
          status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
          "lli_fast: ", names[i], " must not overlap ", names[j], " (they share memory)");
    }
  }
  return batch;
}

inline int64_t check_sample(const at::Tensor& ring_z, const at::Tensor& ring_target,
                            const at::Tensor& ring_step, const at::Tensor& ring_loss,
                            const at::Tensor& cursor, const at::Tensor& uniform) {
  check_ring(ring_z, ring_target, ring_step, ring_loss, cursor);
  check_dim(uniform, "uniform", 1);
  check_dtype(uniform, "uniform", at::kFloat);
  check_same_device(uniform, "uniform", ring_z, "ring_z");
  return uniform.size(0);
}

}  // namespace ring
}  // namespace lli_fast

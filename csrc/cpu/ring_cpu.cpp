// CPU kernels of the ring replay buffer ops (schemas in csrc/lli_fast.cpp, semantics in
// lli_fast/reference/ring.py): one pass over the kept rows writes every column, then the cursor.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "common/ring.h"

namespace lli_fast {
namespace {

// Rows per parallel chunk: ~1 MiB per thread. A typical push or sample (256 rows of D <= 512,
// <= 0.5 MiB) then runs on the calling thread: one core copies that in tens of microseconds,
// less than waking the OpenMP pool costs, and on a busy machine a parallel region can wait a
// whole scheduler quantum (milliseconds) for a descheduled worker. Bulk loads still split.
int64_t rows_per_chunk(int64_t dim, int64_t element_size) {
  const int64_t row_bytes = std::max<int64_t>(1, dim * element_size) + 24;  // + metadata columns
  return std::max<int64_t>(1, (int64_t{1} << 20) / row_bytes);
}

constexpr int64_t kPrefetchAhead = 4;

// Hint the cache lines of [p, p + bytes) into L1; a no-op where the builtin is missing.
inline void prefetch_lines(const void* p, int64_t bytes) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
#else
  (void)p;
  (void)bytes;
#endif
}

// dst[0:dim] = src[0:dim * stride : stride]; a plain memcpy for the common dense case.
template <typename T>
inline void copy_row(T* dst, const T* src, int64_t dim, int64_t stride) {
  if (stride == 1) {
    std::memcpy(dst, src, static_cast<size_t>(dim) * sizeof(T));
  } else {
    for (int64_t d = 0; d < dim; ++d) dst[d] = src[d * stride];
  }
}

void ring_push_cpu(const at::Tensor& ring_z, const at::Tensor& ring_target,
                   const at::Tensor& ring_step, const at::Tensor& ring_loss,
                   const at::Tensor& cursor, const std::optional<at::Tensor>& z,
                   const at::Tensor& target, const at::Tensor& step, const at::Tensor& loss) {
  const int64_t batch = ring::check_push(ring_z, ring_target, ring_step, ring_loss, cursor, z,
                                         target, step, loss);
  if (batch == 0) return;
  const int64_t capacity = ring_z.size(0);
  const int64_t dim = ring_z.size(1);
  int64_t* cur = cursor.data_ptr<int64_t>();
  const int64_t head = ring::wrap_head(cur[0], capacity);
  const int64_t count = ring::clamp_count(cur[1], capacity);
  // Rows before `first` would be overwritten later in this same push (B > capacity).
  const int64_t first = std::max<int64_t>(0, batch - capacity);

  int64_t* out_target = ring_target.data_ptr<int64_t>();
  int64_t* out_step = ring_step.data_ptr<int64_t>();
  float* out_loss = ring_loss.data_ptr<float>();
  const int64_t* in_target = target.const_data_ptr<int64_t>();
  const int64_t* in_step = step.const_data_ptr<int64_t>();
  const float* in_loss = loss.const_data_ptr<float>();
  const int64_t st = target.stride(0), ss = step.stride(0), sl = loss.stride(0);

  ring::dispatch_by_element_size(ring_z, "ring_z", [&](auto tag) {
    using T = decltype(tag);
    T* out_z = static_cast<T*>(ring_z.data_ptr());
    const T* in_z = z.has_value() ? static_cast<const T*>(z->const_data_ptr()) : nullptr;
    const int64_t z_s0 = z.has_value() ? z->stride(0) : 0;
    const int64_t z_s1 = z.has_value() ? z->stride(1) : 0;
    at::parallel_for(first, batch, rows_per_chunk(dim, sizeof(T)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t slot = (head + i) % capacity;
        if (in_z != nullptr) copy_row(out_z + slot * dim, in_z + i * z_s0, dim, z_s1);
        out_target[slot] = in_target[i * st];
        out_step[slot] = in_step[i * ss];
        out_loss[slot] = in_loss[i * sl];
      }
    });
  });
  cur[0] = (head + batch) % capacity;
  cur[1] = std::min(count + batch, capacity);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ring_sample_cpu(
    const at::Tensor& ring_z, const at::Tensor& ring_target, const at::Tensor& ring_step,
    const at::Tensor& ring_loss, const at::Tensor& cursor, const at::Tensor& uniform) {
  const int64_t n = ring::check_sample(ring_z, ring_target, ring_step, ring_loss, cursor, uniform);
  const int64_t capacity = ring_z.size(0);
  const int64_t dim = ring_z.size(1);
  at::Tensor z = at::empty({n, dim}, ring_z.options());
  at::Tensor target = at::empty({n}, ring_target.options());
  at::Tensor step = at::empty({n}, ring_step.options());
  at::Tensor loss = at::empty({n}, ring_loss.options());
  if (n == 0) return {z, target, step, loss};

  const int64_t count = ring::clamp_count(cursor.const_data_ptr<int64_t>()[1], capacity);
  const float* u = uniform.const_data_ptr<float>();
  const int64_t su = uniform.stride(0);
  const int64_t* in_target = ring_target.const_data_ptr<int64_t>();
  const int64_t* in_step = ring_step.const_data_ptr<int64_t>();
  const float* in_loss = ring_loss.const_data_ptr<float>();
  int64_t* out_target = target.data_ptr<int64_t>();
  int64_t* out_step = step.data_ptr<int64_t>();
  float* out_loss = loss.data_ptr<float>();

  ring::dispatch_by_element_size(ring_z, "ring_z", [&](auto tag) {
    using T = decltype(tag);
    const T* in_z = static_cast<const T*>(ring_z.const_data_ptr());
    T* out_z = static_cast<T*>(z.data_ptr());
    // Drawn rows are scattered over a ring far larger than the caches, so the gather is bound by
    // memory latency, not bandwidth: prefetching the rows kPrefetchAhead draws ahead keeps
    // several misses in flight instead of one.
    const auto prefetch = [&](int64_t j) {
      const int64_t row = ring::sample_row(u[j * su], count);
      prefetch_lines(in_z + row * dim, dim * static_cast<int64_t>(sizeof(T)));
      prefetch_lines(in_target + row, 8);
      prefetch_lines(in_step + row, 8);
      prefetch_lines(in_loss + row, 4);
    };
    at::parallel_for(0, n, rows_per_chunk(dim, sizeof(T)), [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < std::min(hi, lo + kPrefetchAhead); ++j) prefetch(j);
      for (int64_t j = lo; j < hi; ++j) {
        if (j + kPrefetchAhead < hi) prefetch(j + kPrefetchAhead);
        const int64_t row = ring::sample_row(u[j * su], count);
        copy_row(out_z + j * dim, in_z + row * dim, dim, 1);
        out_target[j] = in_target[row];
        out_step[j] = in_step[row];
        out_loss[j] = in_loss[row];
      }
    });
  });
  return {z, target, step, loss};
}

}  // namespace
}  // namespace lli_fast

TORCH_LIBRARY_IMPL(lli_fast, CPU, m) {
  m.impl("ring_push", &lli_fast::ring_push_cpu);
  m.impl("ring_sample", &lli_fast::ring_sample_cpu);
}

// CPU kernels of the ring replay buffer ops (schemas in csrc/lli_fast.cpp, semantics in
// lli_fast/reference/ring.py): one pass over the kept rows writes every column, then the cursor.
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "checks.h"
#include "common/ring.h"

namespace lli_fast {
namespace {

// Rows per parallel chunk: ~256 KiB per thread. A small push or sample (B = 16 rows of D = 100)
// runs on the calling thread: waking the OpenMP pool costs more than copying it. From 512 KiB
// (256 rows of D = 512) the work splits: a gather of rows scattered over a ring far larger than
// the caches is bound by memory latency, and a second thread doubles the misses in flight
// (measured on the 2-core VM: 256 x 512 float32 gather 105 -> 58 us).
#ifndef LLI_FAST_CHUNK_KIB
#define LLI_FAST_CHUNK_KIB 64
#endif
int64_t rows_per_chunk(int64_t dim, int64_t element_size) {
  const int64_t row_bytes = std::max<int64_t>(1, dim * element_size) + 24;  // + metadata columns
  return std::max<int64_t>(1, (int64_t{LLI_FAST_CHUNK_KIB} << 10) / row_bytes);
}

// How far ahead the gather prefetches, in bytes of rows: enough lines in flight to cover the
// memory latency without overrunning the fill buffers (tuned on the 2-core VM, D = 100 and 512).
#ifndef LLI_FAST_PREFETCH_BYTES
#define LLI_FAST_PREFETCH_BYTES 8192
#endif
inline int64_t prefetch_rows_ahead(int64_t row_bytes) {
  return std::clamp<int64_t>(LLI_FAST_PREFETCH_BYTES / std::max<int64_t>(1, row_bytes), 1, 16);
}

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

// dst[0:bytes] = src[0:bytes] with non-temporal stores for every whole cache line of dst (plain
// stores for the partial lines at either end). A pushed row is read back only when a later
// sample happens to draw it, so writing it through the cache would evict data in use and first
// cost a read-for-ownership of every line (measured: 256 x 512 float32 push 30 -> 20 us). The
// caller issues store_fence() before the rows may be read by another thread.
inline void stream_copy(void* dst, const void* src, int64_t bytes) {
#if defined(__SSE2__)
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  const int64_t lead = std::min<int64_t>(bytes, (64 - reinterpret_cast<uintptr_t>(d) % 64) % 64);
  std::memcpy(d, s, static_cast<size_t>(lead));
  d += lead;
  s += lead;
  bytes -= lead;
  const int64_t body = bytes / 64 * 64;
  for (int64_t off = 0; off < body; off += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + off),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + off)));
  }
  std::memcpy(d + body, s + body, static_cast<size_t>(bytes - body));
#else
  std::memcpy(dst, src, static_cast<size_t>(bytes));
#endif
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
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
    // Dense z (the usual case): consecutive rows land in consecutive slots, so a chunk of rows
    // is one or two (at the wrap) contiguous byte ranges of the ring, streamed as such.
    const bool dense = in_z != nullptr && z_s1 == 1 && (z_s0 == dim || batch == 1);
    const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
    at::parallel_for(first, batch, rows_per_chunk(dim, sizeof(T)), [&](int64_t lo, int64_t hi) {
      if (dense) {
        for (int64_t i = lo; i < hi;) {
          const int64_t slot = (head + i) % capacity;
          const int64_t run = std::min(hi - i, capacity - slot);
          stream_copy(out_z + slot * dim, in_z + i * z_s0, run * row_bytes);
          i += run;
        }
        store_fence();  // this thread's streamed rows are visible before it returns
      }
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t slot = (head + i) % capacity;
        if (in_z != nullptr && !dense) copy_row(out_z + slot * dim, in_z + i * z_s0, dim, z_s1);
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
    // memory latency, not bandwidth: prefetching the rows a few draws ahead keeps
    // several misses in flight instead of one.
    const auto prefetch = [&](int64_t j) {
      const int64_t row = ring::sample_row(u[j * su], count);
      prefetch_lines(in_z + row * dim, dim * static_cast<int64_t>(sizeof(T)));
      prefetch_lines(in_target + row, 8);
      prefetch_lines(in_step + row, 8);
      prefetch_lines(in_loss + row, 4);
    };
    at::parallel_for(0, n, rows_per_chunk(dim, sizeof(T)), [&](int64_t lo, int64_t hi) {
      const int64_t ahead = prefetch_rows_ahead(dim * static_cast<int64_t>(sizeof(T)));
      for (int64_t j = lo; j < std::min(hi, lo + ahead); ++j) prefetch(j);
      for (int64_t j = lo; j < hi; ++j) {
        if (j + ahead < hi) prefetch(j + ahead);
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

// CUDA kernels of the ring replay buffer ops (schemas in csrc/lli_fast.cpp, semantics in
// lli_fast/reference/ring.py).
//
// Nothing here reads the cursor on the host: the row kernels load head/count from device memory,
// and the push advances the cursor in a second one-thread kernel queued behind the first on the
// same stream. So a push or a sample never synchronises and can be captured in a CUDA graph
// (replays see the cursor the previous replay left). The host only knows B and the capacity.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "common/ring.h"

namespace lli_fast {
namespace {

// A block is kWarpsPerBlock rows; each row's columns are strided over one warp, so every copy is
// coalesced and a block moves 8 rows whatever D is. Metadata is written by lane 0 of the row.
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

int64_t blocks_for(int64_t rows) { return (rows + kWarpsPerBlock - 1) / kWarpsPerBlock; }

// Row i of the batch (i in [first, first + rows)) goes to slot (head + i) mod capacity.
template <typename T>
__global__ void ring_push_rows_kernel(T* __restrict__ ring_z, int64_t* __restrict__ ring_target,
                                      int64_t* __restrict__ ring_step,
                                      float* __restrict__ ring_loss,
                                      const int64_t* __restrict__ cursor, const T* __restrict__ z,
                                      int64_t z_s0, int64_t z_s1, const int64_t* target,
                                      int64_t target_s, const int64_t* step, int64_t step_s,
                                      const float* loss, int64_t loss_s, int64_t first,
                                      int64_t rows, int64_t capacity, int64_t dim) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (r >= rows) return;
  const int64_t i = first + r;
  const int64_t slot = (ring::wrap_head(cursor[0], capacity) + i) % capacity;
  if (z != nullptr) {
    const T* src = z + i * z_s0;
    T* dst = ring_z + slot * dim;
    for (int64_t d = threadIdx.x; d < dim; d += kWarp) dst[d] = src[d * z_s1];
  }
  if (threadIdx.x == 0) {
    ring_target[slot] = target[i * target_s];
    ring_step[slot] = step[i * step_s];
    ring_loss[slot] = loss[i * loss_s];
  }
}

// Runs after every row kernel block has read the old head (stream order), hence its own launch.
__global__ void ring_advance_cursor_kernel(int64_t* cursor, int64_t batch, int64_t capacity) {
  const int64_t head = ring::wrap_head(cursor[0], capacity);
  const int64_t count = ring::clamp_count(cursor[1], capacity);
  cursor[0] = (head + batch) % capacity;
  cursor[1] = count + batch < capacity ? count + batch : capacity;
}

template <typename T>
__global__ void ring_sample_kernel(const T* __restrict__ ring_z,
                                   const int64_t* __restrict__ ring_target,
                                   const int64_t* __restrict__ ring_step,
                                   const float* __restrict__ ring_loss,
                                   const int64_t* __restrict__ cursor, const float* uniform,
                                   int64_t uniform_s, T* __restrict__ out_z,
                                   int64_t* __restrict__ out_target,
                                   int64_t* __restrict__ out_step, float* __restrict__ out_loss,
                                   int64_t n, int64_t capacity, int64_t dim) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (j >= n) return;
  const int64_t row = ring::sample_row(uniform[j * uniform_s], ring::clamp_count(cursor[1], capacity));
  const T* src = ring_z + row * dim;
  T* dst = out_z + j * dim;
  for (int64_t d = threadIdx.x; d < dim; d += kWarp) dst[d] = src[d];
  if (threadIdx.x == 0) {
    out_target[j] = ring_target[row];
    out_step[j] = ring_step[row];
    out_loss[j] = ring_loss[row];
  }
}

void ring_push_cuda(const at::Tensor& ring_z, const at::Tensor& ring_target,
                    const at::Tensor& ring_step, const at::Tensor& ring_loss,
                    const at::Tensor& cursor, const std::optional<at::Tensor>& z,
                    const at::Tensor& target, const at::Tensor& step, const at::Tensor& loss) {
  const int64_t batch = ring::check_push(ring_z, ring_target, ring_step, ring_loss, cursor, z,
                                         target, step, loss);
  if (batch == 0) return;
  const c10::cuda::CUDAGuard guard(ring_z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t capacity = ring_z.size(0);
  const int64_t dim = ring_z.size(1);
  const int64_t first = std::max<int64_t>(0, batch - capacity);
  const int64_t rows = batch - first;
  const dim3 block(kWarp, kWarpsPerBlock);

  ring::dispatch_by_element_size(ring_z, "ring_z", [&](auto tag) {
    using T = decltype(tag);
    const T* in_z = z.has_value() ? static_cast<const T*>(z->const_data_ptr()) : nullptr;
    ring_push_rows_kernel<T><<<blocks_for(rows), block, 0, stream>>>(
        static_cast<T*>(ring_z.data_ptr()), ring_target.data_ptr<int64_t>(),
        ring_step.data_ptr<int64_t>(), ring_loss.data_ptr<float>(),
        cursor.const_data_ptr<int64_t>(), in_z, z.has_value() ? z->stride(0) : 0,
        z.has_value() ? z->stride(1) : 0, target.const_data_ptr<int64_t>(), target.stride(0),
        step.const_data_ptr<int64_t>(), step.stride(0), loss.const_data_ptr<float>(),
        loss.stride(0), first, rows, capacity, dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  ring_advance_cursor_kernel<<<1, 1, 0, stream>>>(cursor.data_ptr<int64_t>(), batch, capacity);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ring_sample_cuda(
    const at::Tensor& ring_z, const at::Tensor& ring_target, const at::Tensor& ring_step,
    const at::Tensor& ring_loss, const at::Tensor& cursor, const at::Tensor& uniform) {
  const int64_t n = ring::check_sample(ring_z, ring_target, ring_step, ring_loss, cursor, uniform);
  const c10::cuda::CUDAGuard guard(ring_z.device());
  const int64_t capacity = ring_z.size(0);
  const int64_t dim = ring_z.size(1);
  at::Tensor z = at::empty({n, dim}, ring_z.options());
  at::Tensor target = at::empty({n}, ring_target.options());
  at::Tensor step = at::empty({n}, ring_step.options());
  at::Tensor loss = at::empty({n}, ring_loss.options());
  if (n == 0) return {z, target, step, loss};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 block(kWarp, kWarpsPerBlock);

  ring::dispatch_by_element_size(ring_z, "ring_z", [&](auto tag) {
    using T = decltype(tag);
    ring_sample_kernel<T><<<blocks_for(n), block, 0, stream>>>(
        static_cast<const T*>(ring_z.const_data_ptr()), ring_target.const_data_ptr<int64_t>(),
        ring_step.const_data_ptr<int64_t>(), ring_loss.const_data_ptr<float>(),
        cursor.const_data_ptr<int64_t>(), uniform.const_data_ptr<float>(), uniform.stride(0),
        static_cast<T*>(z.data_ptr()), target.data_ptr<int64_t>(), step.data_ptr<int64_t>(),
        loss.data_ptr<float>(), n, capacity, dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, target, step, loss};
}

}  // namespace
}  // namespace lli_fast

TORCH_LIBRARY_IMPL(lli_fast, CUDA, m) {
  m.impl("ring_push", &lli_fast::ring_push_cuda);
  m.impl("ring_sample", &lli_fast::ring_sample_cuda);
}

// CUDA kernel of lli_fast::latent_step (semantics: lli_fast/reference/latent_step.py).
//
// One launch on the current stream, no host synchronisation and no allocation, so a K-step
// inversion loop can be captured in a CUDA graph (lr, step, active, loss live on the device).
// A group of kGroup threads owns one row: a warp for latent-sized rows, the whole block for long
// rows. Pass 1 reduces sum(g^2) and an exact finiteness test over the row with warp shuffles
// (plus shared memory across warps); pass 2 updates the row. The row's gradient is re-read in
// pass 2 from L1/L2, so DRAM traffic stays at the floor: read z, g, m, v; write z, m, v.
// Loads and stores are 16-byte vectors when every operand is unit-stride and aligned.
// Numerics: the shared formulas of common/latent_step_math.h with IEEE division and square roots;
// nvcc's default --fmad=true may fuse a multiply-add, which moves a result by at most an ulp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/latent_step_args.h"
#include "common/latent_step_math.h"

namespace lli_fast {
namespace {

namespace lsm = latent_step_math;

constexpr int kBlockThreads = 256;
constexpr int kWarp = 32;
// Rows longer than this get a whole block each; shorter rows one warp each, 8 rows per block.
constexpr int64_t kBlockPerRowMinD = 4096;

enum class Update { kSgd, kSgdMomentum, kAdam };

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

// Elements d .. d + kVec - 1 of a row, in the compute type T. kVec == 1 honours the column
// stride; kVec > 1 is only instantiated for unit-stride, 16-byte aligned operands.
template <int kVec, typename T, typename scalar_t>
__device__ __forceinline__ void load(const scalar_t* row, int64_t d, int64_t col_stride,
                                     T (&out)[kVec]) {
  if constexpr (kVec == 1) {
    out[0] = static_cast<T>(row[d * col_stride]);
  } else {
    const Pack<scalar_t, kVec> p = *reinterpret_cast<const Pack<scalar_t, kVec>*>(row + d);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = static_cast<T>(p.v[i]);
  }
}

template <int kVec, typename T, typename scalar_t>
__device__ __forceinline__ void store(scalar_t* row, int64_t d, int64_t col_stride,
                                      const T (&in)[kVec]) {
  if constexpr (kVec == 1) {
    row[d * col_stride] = static_cast<scalar_t>(in[0]);
  } else {
    Pack<scalar_t, kVec> p;
#pragma unroll
    for (int i = 0; i < kVec; ++i) p.v[i] = static_cast<scalar_t>(in[i]);
    *reinterpret_cast<Pack<scalar_t, kVec>*>(row + d) = p;
  }
}

// Sum of (a, b) over the kGroup threads of a row; every thread of the group gets the result.
// The group is a warp (shuffles only) or the whole block (shuffles, then shared memory).
template <int kGroup, typename T>
__device__ __forceinline__ void group_sum(T& a, T& b) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    a += __shfl_xor_sync(0xffffffffu, a, offset);
    b += __shfl_xor_sync(0xffffffffu, b, offset);
  }
  if constexpr (kGroup == kWarp) {
    __syncwarp();  // shuffles do not order memory; callers rely on this being a barrier
  } else {
    constexpr int kWarps = kGroup / kWarp;
    __shared__ T partial[2][kWarps];
    const int warp = threadIdx.x / kWarp;
    if (threadIdx.x % kWarp == 0) {
      partial[0][warp] = a;
      partial[1][warp] = b;
    }
    __syncthreads();
    a = T(0);
    b = T(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      a += partial[0][w];
      b += partial[1][w];
    }
  }
}

template <typename scalar_t, Update kUpdate, int kGroup, int kVec>
__global__ void __launch_bounds__(kBlockThreads)
    latent_step_kernel(const lsm::LatentStepArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kBlockThreads / kGroup;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kGroup;
  // Uniform per group: whole warps leave together, and a block-wide group never has b >= B.
  if (b >= a.B) return;
  const int lane = threadIdx.x % kGroup;
  const int64_t D = a.D;
  scalar_t* z = a.z.data + b * a.z.row_stride;
  const scalar_t* g = a.grad.data + b * a.grad.row_stride;

  if (a.ring_slots != nullptr) {  // step 1: the pre-update row, for every row
    const int64_t slot = a.ring_slots[b * a.slot_stride];
    CUDA_KERNEL_ASSERT(slot >= 0 && slot < a.ring_rows);
    scalar_t* r = a.ring_z.data + slot * a.ring_z.row_stride;
    for (int64_t d = static_cast<int64_t>(lane) * kVec; d < D; d += kGroup * kVec) {
      T x[kVec];
      load<kVec>(static_cast<const scalar_t*>(z), d, a.z.col_stride, x);
      store<kVec>(r, d, a.ring_z.col_stride, x);
    }
  }

  // Every thread reads the row's state before the group reduction, and lane 0 writes it only
  // after, so no thread can observe its own row's update (the reduction is a barrier).
  bool ok = a.active[b * a.active_stride];
  const int64_t t = a.step[b * a.step_stride] + 1;
  if (ok && a.loss != nullptr) {
    ok = lsm::loss_allows_step(lsm::load_row_scalar(a.loss, b * a.loss_stride, a.loss_dtype),
                               a.stop_loss);
  }
  if (!ok) {  // uniform per group: every thread read the same active flag and loss
    if (lane == 0) a.active[b * a.active_stride] = false;
    return;
  }

  // Step 2: sum(g * 0) is 0 for a finite row and NaN as soon as one element is inf or NaN.
  T sum_sq = 0;
  T non_finite = 0;
  for (int64_t d = static_cast<int64_t>(lane) * kVec; d < D; d += kGroup * kVec) {
    T x[kVec];
    load<kVec>(g, d, a.grad.col_stride, x);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      sum_sq += x[i] * x[i];
      non_finite += x[i] * T(0);
    }
  }
  group_sum<kGroup>(sum_sq, non_finite);
  ok = non_finite == T(0);
  if (lane == 0) {
    a.active[b * a.active_stride] = ok;
    if (ok) a.step[b * a.step_stride] = t;
  }
  if (!ok) return;

  // Steps 3-5: clip, count, update.
  const double lr = lsm::load_row_scalar(a.lr, b * a.lr_stride, a.lr_dtype);
  const lsm::RowCoefficients<T> c =
      lsm::row_coefficients<T>(a.optimizer, t, lr, a.beta1, a.beta2, a.max_grad_norm, sum_sq);
  const lsm::StepConstants<T> k = lsm::step_constants<T>(a.beta1, a.beta2, a.eps);
  scalar_t* m = kUpdate == Update::kSgd ? nullptr : a.exp_avg.data + b * a.exp_avg.row_stride;
  scalar_t* v = kUpdate == Update::kAdam ? a.exp_avg_sq.data + b * a.exp_avg_sq.row_stride
                                         : nullptr;
  for (int64_t d = static_cast<int64_t>(lane) * kVec; d < D; d += kGroup * kVec) {
    T zx[kVec], gx[kVec];
    load<kVec>(static_cast<const scalar_t*>(z), d, a.z.col_stride, zx);
    load<kVec>(g, d, a.grad.col_stride, gx);
    if constexpr (kUpdate == Update::kAdam) {
      T mx[kVec], vx[kVec];
      load<kVec>(static_cast<const scalar_t*>(m), d, a.exp_avg.col_stride, mx);
      load<kVec>(static_cast<const scalar_t*>(v), d, a.exp_avg_sq.col_stride, vx);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        lsm::adam_element(zx[i], mx[i], vx[i], gx[i] * c.clip, k, c.step_size, c.bias2_sqrt);
      }
      store<kVec>(m, d, a.exp_avg.col_stride, mx);
      store<kVec>(v, d, a.exp_avg_sq.col_stride, vx);
    } else if constexpr (kUpdate == Update::kSgdMomentum) {
      T mx[kVec];
      load<kVec>(static_cast<const scalar_t*>(m), d, a.exp_avg.col_stride, mx);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        lsm::sgd_momentum_element(zx[i], mx[i], gx[i] * c.clip, k.beta1, c.first, c.lr);
      }
      store<kVec>(m, d, a.exp_avg.col_stride, mx);
    } else {
#pragma unroll
      for (int i = 0; i < kVec; ++i) lsm::sgd_element(zx[i], gx[i] * c.clip, c.lr);
    }
    store<kVec>(z, d, a.z.col_stride, zx);
  }
}

// Whether every operand the launch touches allows kVec-wide 16-byte accesses.
template <typename scalar_t>
bool vector_ok(const lsm::LatentStepArgs<scalar_t>& a, int vec) {
  if (a.D % vec != 0) return false;
  auto fits = [&](const auto& x) {
    if (x.data == nullptr) return true;
    const auto address = reinterpret_cast<uintptr_t>(x.data);
    return x.col_stride == 1 && x.row_stride % vec == 0 &&
           address % (sizeof(scalar_t) * vec) == 0;
  };
  return fits(a.z) && fits(a.grad) && fits(a.exp_avg) && fits(a.exp_avg_sq) && fits(a.ring_z);
}

template <typename scalar_t, Update kUpdate, int kGroup, int kVec>
void launch_kernel(const lsm::LatentStepArgs<scalar_t>& a, cudaStream_t stream) {
  constexpr int kRowsPerBlock = kBlockThreads / kGroup;
  const dim3 grid(static_cast<unsigned>((a.B + kRowsPerBlock - 1) / kRowsPerBlock));
  latent_step_kernel<scalar_t, kUpdate, kGroup, kVec><<<grid, kBlockThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Long rows get a block each, but only in the vectorised form: an unaligned or strided long row
// falls back to a warp per row, which is correct and keeps the instantiation count down.
template <typename scalar_t, Update kUpdate>
void launch(const lsm::LatentStepArgs<scalar_t>& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = vector_ok(a, kVec);
  if (vectorised && a.D >= kBlockPerRowMinD) {
    launch_kernel<scalar_t, kUpdate, kBlockThreads, kVec>(a, stream);
  } else if (vectorised) {
    launch_kernel<scalar_t, kUpdate, kWarp, kVec>(a, stream);
  } else {
    launch_kernel<scalar_t, kUpdate, kWarp, 1>(a, stream);
  }
}

void latent_step_cuda(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const at::Tensor& step,
                      const at::Tensor& active, const at::Tensor& lr,
                      const c10::optional<at::Tensor>& loss, int64_t optimizer, double beta1,
                      double beta2, double eps, double max_grad_norm, double stop_loss,
                      const c10::optional<at::Tensor>& ring_z,
                      const c10::optional<at::Tensor>& ring_slots) {
  check_latent_step_args(z, grad, exp_avg, exp_avg_sq, step, active, lr, loss, optimizer, beta1,
                         beta2, eps, max_grad_norm, stop_loss, ring_z, ring_slots);
  if (z.size(0) == 0) return;
  TORCH_CHECK_VALUE(z.size(0) <= static_cast<int64_t>(std::numeric_limits<int>::max()),
                    "lli_fast: z has ", z.size(0), " rows, more than one launch can cover");
  const c10::cuda::CUDAGuard guard(z.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "latent_step_cuda",
                                  [&] {
    const auto a = pack_latent_step_args<scalar_t>(z, grad, exp_avg, exp_avg_sq, step, active, lr,
                                                   loss, optimizer, beta1, beta2, eps,
                                                   max_grad_norm, stop_loss, ring_z, ring_slots);
    if (optimizer == lsm::kAdam) {
      launch<scalar_t, Update::kAdam>(a, stream);
    } else if (uses_exp_avg(optimizer, beta1)) {
      launch<scalar_t, Update::kSgdMomentum>(a, stream);
    } else {
      launch<scalar_t, Update::kSgd>(a, stream);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lli_fast, CUDA, m) {
  m.impl("latent_step", &latent_step_cuda);
}

}  // namespace lli_fast

// The contract of every lli_fast op: schemas are declared here, once. CPU and CUDA kernels
// register by dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu; the Triton kernels register
// as separate custom ops from Python (lli_fast/ops/).
#include <torch/extension.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

TORCH_LIBRARY(lli_fast, m) {
  // One optimizer step on every active row of a (B, D) latent batch, in place.
  //   optimizer: 0 = SGD with momentum beta1 (torch.optim.SGD numerics, dampening 0),
  //              1 = Adam with bias correction (torch.optim.Adam numerics).
  //   step (B,) int64: steps taken per row; incremented for rows that are updated.
  //   active (B,) bool: rows to update; cleared for rows whose loss is <= stop_loss (early stop)
  //              or whose loss or gradient is not finite (those rows are left unchanged).
  //   lr: (1,) or (B,) float32, on z's device (a tensor so CUDA graphs can replay new values).
  //   loss: optional (B,) per-row loss used by the early-stop and finiteness guards.
  //   max_grad_norm > 0 clips each row's gradient to that L2 norm (torch clip_grad_norm_ rule).
  //   ring_z / ring_slots: optional; when given, the pre-update row z_t is also written to
  //              ring_z[ring_slots[i]] in the same pass (slots must be distinct).
  m.def(
      "latent_step(Tensor(a!) z, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor(d!) step, Tensor(e!) active, Tensor lr, Tensor? loss, int optimizer, float beta1, "
      "float beta2, float eps, float max_grad_norm, float stop_loss, Tensor(f!)? ring_z, "
      "Tensor? ring_slots) -> ()");
  // Write B rows at the ring's head with wrap-around, overwriting the oldest rows; cursor (2,)
  // int64 = [head, count] lives on the ring's device and is advanced in place. When B exceeds the
  // capacity only the last `capacity` rows are kept. z may be None when its rows were already
  // written into ring_z by latent_step's fused ring write (slots head, head+1, ...).
  m.def(
      "ring_push(Tensor(a!) ring_z, Tensor(b!) ring_target, Tensor(c!) ring_step, "
      "Tensor(d!) ring_loss, Tensor(e!) cursor, Tensor? z, Tensor target, Tensor step, "
      "Tensor loss) -> ()");
  // Gather n rows drawn uniformly from the filled part: row = min(floor(u * count), count - 1)
  // for each u in `uniform` (n,) float32 in [0, 1).
  m.def(
      "ring_sample(Tensor ring_z, Tensor ring_target, Tensor ring_step, Tensor ring_loss, "
      "Tensor cursor, Tensor uniform) -> (Tensor, Tensor, Tensor, Tensor)");
}

static bool with_cuda() {
#ifdef LLI_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

static int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "lli_fast compiled kernels (ops are registered under torch.ops.lli_fast)";
  m.def("with_cuda", &with_cuda, "Whether the CUDA kernels were compiled into this build.");
  m.def("openmp_threads", &openmp_threads, "OpenMP threads the CPU kernels may use.");
}

// Argument checks whose messages name the argument, what was expected and what was given.
#pragma once
#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace lli_fast {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

// e.g. check_shape(grad, "grad", {B, D}) -> "lli_fast: grad must have shape [16, 100], got [16, 99]"
inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "lli_fast: ", name, " must have shape ", expected,
                    ", got ", t.sizes());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, "lli_fast: ", name, " must have dtype ",
                   expected, ", got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                             const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "lli_fast: ", name,
                   " must have the dtype of ", ref_name, " (", ref.scalar_type(), "), got ",
                   t.scalar_type());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "lli_fast: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "lli_fast: ", name, " must be on the device of ",
                    ref_name, " (", ref.device(), "), got ", t.device());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, "lli_fast: ", name, " must be ", dim, "-D, got ", t.dim(),
                    "-D with shape ", t.sizes());
}

// Kernels that write through raw pointers need the dense layout; name the tensor and its strides.
inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), "lli_fast: ", name, " must be contiguous, got strides ",
                    t.strides(), " for shape ", t.sizes());
}

}  // namespace lli_fast

#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc against torch's headers, so CUDA code cannot rot on
# machines without a GPU (nothing is linked or run). Needs nvcc (CUDA_HOME or /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
if [ ! -x "$NVCC" ]; then
  echo "check_cuda: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 1
fi
TORCH_DIR=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
PY_INC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
ABI=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for cu in csrc/cuda/*.cu; do
  if "$NVCC" -std=c++20 -O2 -c "$cu" -o "$out/$(basename "$cu").o" \
      -I csrc -I "$TORCH_DIR/include" -I "$TORCH_DIR/include/torch/csrc/api/include" \
      -I "$PY_INC" -DLLI_FAST_WITH_CUDA -DTORCH_EXTENSION_NAME=_C \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE \
      -D_GLIBCXX_USE_CXX11_ABI="$ABI" --expt-relaxed-constexpr \
      -gencode arch=compute_90,code=sm_90; then
    echo "check_cuda: ok   $cu"
  else
    echo "check_cuda: FAIL $cu"
    status=1
  fi
done
exit $status

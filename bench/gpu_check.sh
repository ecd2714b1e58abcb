#!/usr/bin/env bash
# One-shot check on a lent GPU machine (issue 3, item 5): report the machine, build the CUDA
# kernels, run the GPU tests, then the GPU benchmarks. Everything is written under $OUT (default
# ./gpu_out): summary.txt first, then one log per stage. Stage timeouts (seconds, overridable:
# BUILD_TIMEOUT=240, TEST_TIMEOUT=150, BENCH_TIMEOUT=150) bound a run to about 9 minutes; most of
# a healthy run is nvcc and first-time Triton/Inductor compiles.
#
#   bash bench/gpu_check.sh                 # from anywhere; runs in the repository root
#   OUT=/some/dir BENCHES="bench/bench_latent_step.py bench/bench_replay.py" bash bench/gpu_check.sh
#
# Exit status: 0 all stages passed, 2 no CUDA torch or no GPU, 3 build failed, 4 tests failed,
# 5 benchmarks failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${OUT:-./gpu_out}" && cd "${OUT:-./gpu_out}" && pwd)"
BENCHES="${BENCHES:-bench/bench_latent_step.py bench/bench_replay.py}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-240}"
TEST_TIMEOUT="${TEST_TIMEOUT:-150}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}"
cd "$ROOT"
: > "$OUT/summary.txt"
log() { echo "[gpu_check $(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
status=0

log "machine and toolchain"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
head -15 "$OUT/nvidia-smi.txt" | tee -a "$OUT/summary.txt"
python - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import os, sys
import torch
from torch.utils import cpp_extension
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch.version.cuda",
      torch.version.cuda, "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
print("CUDA_HOME", cpp_extension.CUDA_HOME, "| nproc", os.cpu_count())
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:  # report, do not fail: the Triton rows then skip
    print("triton unavailable:", exc)
EOF
if ! python -c 'import sys, torch; sys.exit(not (torch.version.cuda and torch.cuda.is_available()))'; then
  log "this torch has no CUDA or sees no GPU: the CUDA kernels cannot be built or run here"
  exit 2
fi

# Only the local architecture: building every architecture of the torch build takes far longer.
# build_ext --inplace needs neither network nor an editable install; ninja (if present) builds the
# sources in parallel.
ARCH="$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))')"
log "building lli_fast._C with CUDA for sm_${ARCH/./} (ninja: $(command -v ninja || echo none))"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" FORCE_CUDA=1 \
  timeout "$BUILD_TIMEOUT" python setup.py build_ext --inplace > "$OUT/build.log" 2>&1
rc=$?
log "build rc=$rc after $(( $(date +%s) - start )) s"
if [ $rc -ne 0 ]; then
  tail -40 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  exit 3
fi
# lli_fast.triton_kernels is the top-level triton_kernels/ mapped by the package install; without
# an install, a link in this (throwaway) checkout provides the same import name.
if ! python -c 'import lli_fast.triton_kernels' 2> /dev/null; then
  ln -s ../triton_kernels lli_fast/triton_kernels
  log "linked lli_fast/triton_kernels -> triton_kernels (package not installed)"
fi
python -c 'from lli_fast import _ext; print("compiled with CUDA:", _ext.C.with_cuda(),
  "| latent_step CUDA kernel:", _ext.has_kernel("latent_step", "CUDA"))' 2>&1 | tee -a "$OUT/summary.txt"

log "GPU tests (pytest -m gpu)"
timeout "$TEST_TIMEOUT" python -m pytest tests -m gpu -q -rs -p no:cacheprovider \
  --junitxml="$OUT/tests_gpu.xml" > "$OUT/tests_gpu.log" 2>&1
rc=$?
log "GPU tests rc=$rc: $(tail -1 "$OUT/tests_gpu.log")"
[ $rc -eq 0 ] || { grep -E "^(FAILED|ERROR)" "$OUT/tests_gpu.log" | head -20 | tee -a "$OUT/summary.txt"; status=4; }

log "GPU benchmarks: $BENCHES"
# shellcheck disable=SC2086  # BENCHES is a list of paths
timeout "$BENCH_TIMEOUT" python -m pytest $BENCHES --benchmark-only --gpu -m gpu -q -p no:cacheprovider \
  --benchmark-max-time=0.25 --benchmark-json="$OUT/bench_gpu.json" > "$OUT/bench_gpu.log" 2>&1
rc=$?
log "GPU benchmarks rc=$rc"
sed -n '/ratios (mean time/,/^$/p' "$OUT/bench_gpu.log" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { tail -20 "$OUT/bench_gpu.log" | tee -a "$OUT/summary.txt"; [ $status -ne 0 ] || status=5; }

log "done, status $status; logs in $OUT"
exit $status

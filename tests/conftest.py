"""Test configuration. TRITON_INTERPRET must be set before any Triton kernel module is imported,
so that on a machine without a GPU the Triton kernels run (and are tested) on CPU tensors."""

import os
import shutil
import subprocess


def _has_nvidia_gpu() -> bool:
    # Asks the driver tool, not torch, so no CUDA context is created at import time.
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


if "TRITON_INTERPRET" not in os.environ and not _has_nvidia_gpu():
    os.environ["TRITON_INTERPRET"] = "1"

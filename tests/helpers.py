"""Shared test helpers: which backends can run here, devices, and the one tolerance table."""

from __future__ import annotations

import pytest
import torch

from lli_fast import _ext, backends

# fp32/fp64: torch.testing defaults. Half types: a bound measured against float64 (see
# tests that use `half_error_bound`), so this table only names the defaults.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-7, "atol": 1e-7},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
}


def tol(dtype: torch.dtype) -> dict[str, float]:
    return TOLERANCES[dtype]


def cuda_kernel_built(op: str) -> bool:
    """GPU tests skip by asking whether the CUDA kernel was built (and a device exists)."""
    return _ext.has_kernel(op, "CUDA") and torch.cuda.is_available()


def devices_for(op: str) -> list:
    devs = ["cpu"]
    devs.append(
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not cuda_kernel_built(op), reason="CUDA kernel not built"),
        )
    )
    return devs


def backends_on(op: str, device: str) -> list[str]:
    """Every non-reference backend that can run `op` on `device` here."""
    return [b for b in backends.available(op, torch.device(device)) if b != "reference"]

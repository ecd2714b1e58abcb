"""Which backends exist for an op, why one cannot run, and the priority list per device.

`backend="auto"` picks by device: cuda -> triton -> reference on GPU tensors, cpp -> reference on
CPU tensors. The environment variable LLI_FAST_BACKEND or an explicit `backend=` forces one; a
forced backend that cannot run raises with every backend's reason (never a silent fallback).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from lli_fast import _ext

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpp", "reference")
AUTO_PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_not(backend: str, op: str, device: torch.device) -> str | None:
    """None if `backend` can run `op` on `device`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if _ext.C is None:
            return f"compiled extension not loaded ({_ext.LOAD_ERROR})"
        if device.type != "cpu":
            return f"the C++ CPU kernel runs on cpu tensors, got {device.type}"
        if not _ext.has_kernel(op, "CPU"):
            return f"no CPU kernel registered for lli_fast::{op}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the CUDA kernel runs on cuda tensors, got {device.type}"
        if _ext.C is None:
            return f"compiled extension not loaded ({_ext.LOAD_ERROR})"
        if not _ext.has_kernel(op, "CUDA"):
            return "the extension was built without CUDA (torch without CUDA or CUDA_HOME unset)"
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return (
            f"Triton needs cuda tensors, or TRITON_INTERPRET=1 for cpu tensors; got {device.type}"
        )
    return f"unknown backend {backend!r}; expected one of {BACKENDS} or 'auto'"


def choose(op: str, device: torch.device, backend: str | None = "auto") -> str:
    """The backend that runs `op` on `device`.

    `backend` is "auto" (or None), or one of BACKENDS. LLI_FAST_BACKEND overrides "auto".
    Raises ValueError for an unknown name and RuntimeError, listing every backend's reason, when a
    forced backend cannot run.
    """
    requested = backend if backend not in (None, "auto") else os.environ.get("LLI_FAST_BACKEND")
    if requested in (None, "", "auto"):
        for name in AUTO_PRIORITY.get(device.type, ("reference",)):
            if why_not(name, op, device) is None:
                return name
        return "reference"
    if requested not in BACKENDS:
        raise ValueError(
            f"lli_fast: backend must be 'auto' or one of {BACKENDS}, got {requested!r}"
        )
    reason = why_not(requested, op, device)
    if reason is None:
        return requested
    report = "; ".join(f"{b}: {why_not(b, op, device) or 'available'}" for b in BACKENDS)
    raise RuntimeError(
        f"lli_fast: backend {requested!r} cannot run {op} on {device}: {reason}. "
        f"All backends: {report}"
    )


def available(op: str, device: torch.device) -> list[str]:
    """Every backend that can run `op` on `device` right now."""
    return [b for b in BACKENDS if why_not(b, op, device) is None]

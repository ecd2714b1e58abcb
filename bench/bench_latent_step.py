"""The fused latent step: one Adam step on every row of a (B, D) float32 latent batch.

Providers, side by side in one run (one pytest-benchmark group per shape; the eager reference
is listed first, so the ratio table in bench/conftest.py reads "x faster than the reference"):
  reference-eager      latent_step_ref, the plain-PyTorch semantics (~25 ATen ops)
  torch.optim.Adam     torch.optim.Adam(foreach=True) stepping one (B, D) parameter (no guard,
                       no per-row state: the unfused baseline a user would write)
  reference-compiled   torch.compile(latent_step_ref), compiled once outside the timing
  lli_fast-cpp         lli_fast.ops.latent_step(backend="cpp"), the public wrapper (float lr)
  lli_fast-cuda/triton the GPU kernels (marker `gpu`; Triton's CPU interpreter is not timed)
  memory-floor-inplace the step's own traffic with no math: z += g, m *= 1, v *= 1 in place
                       (reads z, grad, m, v; writes z, m, v)
  memory-floor-copy    copy_ of 3.5 x B x D floats: the same 7 x B x D floats moved as one
                       out-of-place copy (pays write-allocate; larger footprint than the step)

    python -m pytest bench/bench_latent_step.py --benchmark-only -q
    python -m pytest bench/bench_latent_step.py --benchmark-only -q --gpu     # on a GPU machine

Targets (issue 3): cpp >= 3x the eager reference at (16, 100) and (256, 512), >= 1.5x
torch.optim.Adam(foreach=True) at (4096, 512), and within 1.3x of the memory floor there
(reported against both floors).
On a shared or loaded machine also run with OMP_NUM_THREADS=1: a parallel region stalls for a
scheduler quantum whenever one of its threads is descheduled. The C++ kernel runs on the calling
thread below 32k elements (so (16, 100) is single-threaded either way).
"""

from __future__ import annotations

import gc

import pytest
import torch

from lli_fast.ops.latent_step import latent_step
from lli_fast.reference.latent_step import ADAM, latent_step_ref

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
CPU_SHAPES = [(16, 100), (256, 512), (4096, 512)]
GPU_SHAPES = CPU_SHAPES + [(65536, 512)]


def _state(B: int, D: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = dict(
        z=torch.randn(B, D, generator=g),
        grad=torch.randn(B, D, generator=g),
        exp_avg=torch.zeros(B, D),
        exp_avg_sq=torch.zeros(B, D),
        step=torch.zeros(B, dtype=torch.int64),
        active=torch.ones(B, dtype=torch.bool),
        lr=torch.full((1,), LR),
    )
    return {k: v.to(device) for k, v in s.items()}


STATE = ("z", "grad", "exp_avg", "exp_avg_sq", "step", "active")


def _ref_args(s):
    # Adam, no loss, no clipping, no ring: the work every provider does.
    return (*[s[k] for k in STATE], s["lr"], None, ADAM, BETA1, BETA2, EPS, 0.0, float("-inf"))


def reference_eager(B, D, device):
    s = _state(B, D, device)
    return lambda: latent_step_ref(*_ref_args(s))


def reference_compiled(B, D, device):
    s = _state(B, D, device)
    compiled = torch.compile(latent_step_ref, fullgraph=True, dynamic=False)
    try:
        compiled(*_ref_args(s))  # compile outside the timing
    except Exception as exc:  # a missing compiler toolchain must not fail the whole suite
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {exc}"[:300])
    return lambda: compiled(*_ref_args(s))


def torch_optim_adam(B, D, device):
    s = _state(B, D, device)
    param = s["z"].clone().requires_grad_(True)
    param.grad = s["grad"]
    opt = torch.optim.Adam([param], lr=LR, betas=(BETA1, BETA2), eps=EPS, foreach=True)
    return opt.step


def lli_fast_backend(backend):
    def make(B, D, device):
        s = _state(B, D, device)
        args = [s[k] for k in STATE]
        hyper = dict(optimizer="adam", beta1=BETA1, beta2=BETA2, eps=EPS, backend=backend)
        return lambda: latent_step(*args, LR, **hyper)

    return make


def memory_floor_copy(B, D, device):
    # The step's bytes as one out-of-place copy: reads 3.5 x B x D floats, writes 3.5 x B x D.
    # Out of place it also pays write-allocate traffic and needs 7 x B x D floats of footprint
    # (the step needs 4), so it is not a lower bound once the step's tensors fit in the LLC.
    n = 7 * B * D // 2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def memory_floor_inplace(B, D, device):
    # The step's exact traffic on its own tensors, with no math: z += g; m *= 1; v *= 1 (reads
    # z, g, m, v once, writes z, m, v in place), in three streaming passes.
    s = _state(B, D, device)

    def touch():
        s["z"].add_(s["grad"])
        s["exp_avg"].mul_(1.0)
        s["exp_avg_sq"].mul_(1.0)

    return touch


PROVIDERS = {
    "reference-eager": reference_eager,
    "torch.optim.Adam-foreach": torch_optim_adam,
    "reference-compiled": reference_compiled,
    "lli_fast-cpp": lli_fast_backend("cpp"),
    "lli_fast-cuda": lli_fast_backend("cuda"),
    "lli_fast-triton": lli_fast_backend("triton"),
    "memory-floor-inplace": memory_floor_inplace,
    "memory-floor-copy": memory_floor_copy,
}
CPU_ONLY = {"lli_fast-cpp"}
GPU_ONLY = {"lli_fast-cuda", "lli_fast-triton"}


def _params() -> list:
    out = []
    for device, shapes in (("cpu", CPU_SHAPES), ("cuda", GPU_SHAPES)):
        for B, D in shapes:
            for name in PROVIDERS:
                if (device == "cpu" and name in GPU_ONLY) or (
                    device == "cuda" and name in CPU_ONLY
                ):
                    continue
                marks = []
                if device == "cuda":
                    marks = [
                        pytest.mark.gpu,
                        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
                    ]
                pid = f"{device}-{B}x{D}-{name}"
                out.append(pytest.param(device, B, D, name, marks=marks, id=pid))
    return out


@pytest.mark.parametrize("device, B, D, provider", _params())
def test_adam_latent_step(benchmark, device, B, D, provider):
    benchmark.group = f"latent_step adam {device} B={B} D={D}"
    moved = 7 * B * D * 4
    benchmark.extra_info.update(provider=provider, device=device, B=B, D=D, bytes_moved=moved)
    step_fn = PROVIDERS[provider](B, D, device)
    if device == "cuda":
        inner = step_fn

        def step_fn():  # time the work, not the launch queue
            inner()
            torch.cuda.synchronize()

    step_fn()  # warm up (allocator, Triton compile, lr cache)
    benchmark(step_fn)
    benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.mean / 1e9
    del step_fn
    gc.collect()

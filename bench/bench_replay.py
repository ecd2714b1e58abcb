"""Replay-buffer throughput: one push of 256 rows plus one sample of 256 rows, capacity 100,000.

Providers, side by side in one run (one pytest-benchmark group per latent size D):
  lli_fast-cpp         RingReplayBuffer on the C++ kernels (one fused kernel per op)
  lli_fast-reference   RingReplayBuffer on the plain-PyTorch reference ops
  torch-index_copy     the hand-written loop: index_copy_ per column, randint + index_select
  torchrl              torchrl.data.ReplayBuffer(LazyTensorStorage) with a TensorDict per batch
  memory-floor         not a buffer: copy_ of the 256 z rows + index_select of 256 z rows, the
                       bytes any buffer must move (torchrl / memory-floor bounds the possible
                       speed-up over torchrl on this machine)
GPU variants of each (marker `gpu`) run only where a GPU is present: `-m gpu` selects them.

    python -m pytest bench/bench_replay.py --benchmark-only -q
    python -m pytest bench/bench_replay.py --benchmark-only -q -m gpu      # on a GPU machine

On a shared or loaded machine also run it with OMP_NUM_THREADS=1: torch's parallel regions (used
by index_copy_, torchrl and the reference at these sizes) can stall for a scheduler quantum when a
worker thread is descheduled, which swamps the comparison; the C++ ring kernels stay on the calling
thread below 64 KiB per op (B = 256 rows of D = 100 already split), and split larger ops.

torchrl is a bench-only dependency (`pip install torchrl==0.14.1`); without it its rows skip.
Every provider's buffer is filled to capacity first, so sampling spans all 100,000 rows. The
torchrl TensorDict is built once outside the timed region (in its favour).
"""

from __future__ import annotations

import gc
import importlib.util

import pytest
import torch

from lli_fast.replay import RingReplayBuffer

CAPACITY = 100_000
BATCH = 256
DIMS = (100, 512)
HAS_TORCHRL = importlib.util.find_spec("torchrl") is not None


def _batch(dim: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(BATCH, dim, generator=g)
    target = torch.randint(0, 1000, (BATCH,), generator=g)
    step = torch.randint(0, 20, (BATCH,), generator=g)
    loss = torch.rand(BATCH, generator=g)
    return tuple(t.to(device) for t in (z, target, step, loss))


def _fill_chunks(dim: int, device: str):
    """Capacity rows in pushes of 10,000 (random z, so no provider gets a zero-page shortcut)."""
    z, target, step, loss = _batch(dim, device)
    reps = 10_000 // BATCH + 1
    for _ in range(CAPACITY // 10_000):
        yield (
            torch.randn(10_000, dim, device=device),
            target.repeat(reps)[:10_000],
            step.repeat(reps)[:10_000],
            loss.repeat(reps)[:10_000],
        )


def lli_fast_step(backend: str, dim: int, device: str):
    buf = RingReplayBuffer(CAPACITY, dim, device=device, seed=0, backend=backend)
    for chunk in _fill_chunks(dim, device):
        buf.push(*chunk)
    z, target, step, loss = _batch(dim, device)

    def step_fn():
        buf.push(z, target, step, loss)
        return buf.sample(BATCH)

    return step_fn


def index_copy_step(dim: int, device: str):
    """What one writes by hand: a host-side head, index_copy_ per column, index_select to sample."""
    cols = [
        torch.zeros(CAPACITY, dim, device=device),
        torch.zeros(CAPACITY, dtype=torch.int64, device=device),
        torch.zeros(CAPACITY, dtype=torch.int64, device=device),
        torch.zeros(CAPACITY, device=device),
    ]
    state = {"head": 0, "count": 0}
    offsets = torch.arange(BATCH, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def push(*batch):
        slots = (offsets[: batch[0].shape[0]] + state["head"]) % CAPACITY
        for col, values in zip(cols, batch, strict=True):
            col.index_copy_(0, slots, values)
        state["head"] = (state["head"] + batch[0].shape[0]) % CAPACITY
        state["count"] = min(state["count"] + batch[0].shape[0], CAPACITY)

    offsets_fill = torch.arange(10_000, device=device)
    for chunk in _fill_chunks(dim, device):
        slots = (offsets_fill + state["head"]) % CAPACITY
        for col, values in zip(cols, chunk, strict=True):
            col.index_copy_(0, slots, values)
        state["head"] = (state["head"] + 10_000) % CAPACITY
        state["count"] = min(state["count"] + 10_000, CAPACITY)
    batch = _batch(dim, device)

    def step_fn():
        push(*batch)
        rows = torch.randint(state["count"], (BATCH,), generator=gen, device=device)
        return [col.index_select(0, rows) for col in cols]

    return step_fn


def memory_floor_step(dim: int, device: str):
    """Not a buffer: the bytes any buffer must move, with nothing else. One contiguous copy_ of
    the 256 pushed z rows into a (capacity, D) tensor (no wrap-around, no index, step or loss
    columns) and one index_select of 256 random z rows from it. A provider cannot be faster than
    this by more than the machine's copy kernels can be beaten; torchrl's time over this one's
    bounds the speed-up any ring buffer can show against torchrl here."""
    ring = torch.randn(CAPACITY, dim, device=device)
    z = _batch(dim, device)[0]
    gen = torch.Generator(device=device).manual_seed(0)
    state = {"head": 0}

    def step_fn():
        head = state["head"]
        state["head"] = (head + BATCH) % (CAPACITY - BATCH)
        ring[head : head + BATCH].copy_(z)
        rows = torch.randint(CAPACITY, (BATCH,), generator=gen, device=device)
        return (ring.index_select(0, rows),)

    return step_fn


def torchrl_step(dim: int, device: str):
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, ReplayBuffer

    rb = ReplayBuffer(storage=LazyTensorStorage(CAPACITY, device=device), batch_size=BATCH)

    def as_td(z, target, step, loss):
        data = {"z": z, "target_index": target, "step": step, "loss": loss}
        return TensorDict(data, batch_size=[z.shape[0]], device=device)

    for chunk in _fill_chunks(dim, device):
        rb.extend(as_td(*chunk))
    td = as_td(*_batch(dim, device))

    def step_fn():
        rb.extend(td)
        return rb.sample()

    return step_fn


def _param(provider: str, device: str):
    marks = []
    if provider == "torchrl":
        marks.append(pytest.mark.skipif(not HAS_TORCHRL, reason="pip install torchrl==0.14.1"))
    if device == "cuda":
        marks.append(pytest.mark.gpu)
        marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))
    name = provider if device == "cpu" else f"{provider}-cuda"
    return pytest.param(provider, device, marks=marks, id=name)


CPU_PROVIDERS = (
    "lli_fast-cpp",
    "lli_fast-reference",
    "torch-index_copy",
    "torchrl",
    "memory-floor",
)
GPU_PROVIDERS = (
    "lli_fast-cuda",
    "lli_fast-triton",
    "lli_fast-reference",
    "torch-index_copy",
    "torchrl",
    "memory-floor",
)
PROVIDERS = [_param(p, "cpu") for p in CPU_PROVIDERS] + [_param(p, "cuda") for p in GPU_PROVIDERS]


def _make(provider: str, dim: int, device: str):
    if provider.startswith("lli_fast-"):
        return lli_fast_step(provider.removeprefix("lli_fast-"), dim, device)
    if provider == "torch-index_copy":
        return index_copy_step(dim, device)
    if provider == "memory-floor":
        return memory_floor_step(dim, device)
    return torchrl_step(dim, device)


@pytest.mark.parametrize("provider,device", PROVIDERS)
@pytest.mark.parametrize("dim", DIMS, ids=lambda d: f"D{d}")
def test_push_and_sample_256(benchmark, provider, device, dim):
    benchmark.group = f"push {BATCH} + sample {BATCH} rows, capacity {CAPACITY:,}, D={dim}"
    benchmark.extra_info.update(provider=provider, device=device, dim=dim)
    step_fn = _make(provider, dim, device)
    if device == "cuda":
        inner = step_fn

        def step_fn():  # time the work, not the launch queue
            out = inner()
            torch.cuda.synchronize()
            return out

    step_fn()  # warm up (allocator, Triton compile)
    out = benchmark(step_fn)
    z = out["z"] if hasattr(out, "keys") else out[0]  # torchrl returns a TensorDict
    assert z.shape == (BATCH, dim)
    del step_fn, out, z
    gc.collect()

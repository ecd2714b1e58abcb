"""Every backend of lli_fast::ring_push / ring_sample against the reference (copies are exact, so
comparisons are bit-for-bit), plus argument checks, opcheck, torch.compile and a CUDA graph."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import backends_on, cuda_kernel_built

from lli_fast.ops.ring import ring_push, ring_sample
from lli_fast.reference.ring import ring_push_ref, ring_sample_ref

NAMES = ("ring_z", "ring_target", "ring_step", "ring_loss", "cursor")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def cases(op: str, with_reference: bool = False) -> list:
    """(device, backend) pairs: every compiled/Triton backend that can run here; CUDA ones skip
    unless the CUDA kernel was built and a GPU is present."""
    out = []
    for device in ("cpu", "cuda"):
        marks = []
        if device == "cuda":
            marks = [
                pytest.mark.gpu,
                pytest.mark.skipif(not cuda_kernel_built(op), reason="no GPU"),
            ]
        names = backends_on(op, device) + (["reference"] if with_reference else [])
        out += [pytest.param(device, b, id=f"{device}-{b}", marks=marks) for b in names]
    return out


def make_ring(capacity, dim, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    ring = [
        torch.randn(capacity, dim, generator=g).to(dtype),
        torch.randint(-99, 0, (capacity,), generator=g),
        torch.randint(-99, 0, (capacity,), generator=g),
        torch.randn(capacity, generator=g),
        torch.zeros(2, dtype=torch.int64),
    ]
    return [t.to(device) for t in ring]


def make_batch(batch, dim, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    cols = [
        torch.randn(batch, dim, generator=g).to(dtype),
        torch.randint(0, 10**6, (batch,), generator=g),
        torch.randint(0, 10**6, (batch,), generator=g),
        torch.randn(batch, generator=g),
    ]
    return [t.to(device) for t in cols]


def clone(tensors):
    return [t.clone() for t in tensors]


def assert_same(got, want, names=NAMES):
    for g, w, name in zip(got, want, names, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g.cpu(), w.cpu()), f"{name} differs:\n{g}\nvs reference\n{w}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_push_matches_reference_over_several_laps(device, backend, dtype):
    # Batches of 1, exactly C and more than C, 7 laps of a ring whose D is not a power of two.
    ring = make_ring(7, 5, dtype, device)
    want = clone(ring)
    for i, batch in enumerate([3, 5, 1, 7, 10, 2, 15, 6]):
        cols = make_batch(batch, 5, dtype, device, seed=i)
        ring_push(*ring, *cols, backend=backend)
        ring_push_ref(*want, *cols)
        assert_same(ring, want)
    assert ring[4].tolist() == [49 % 7, 7]


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_push_of_257_rows_with_many_column_blocks(device, backend):
    # B = 257 spans several CPU chunks and Triton row blocks; D = 130 spans two column blocks.
    ring, want = make_ring(300, 130, device=device), make_ring(300, 130, device=device)
    for t in (ring[4], want[4]):
        t.copy_(torch.tensor([290, 300]))
    cols = make_batch(257, 130, device=device)
    ring_push(*ring, *cols, backend=backend)
    ring_push_ref(*want, *cols)
    assert_same(ring, want)


@pytest.mark.parametrize("dim", [16, 100, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_large_pushes_that_wrap_mid_chunk(device, backend, dtype, dim):
    # Big enough for the CPU kernel's parallel, streaming-store path (whole cache lines written
    # non-temporally, partial ones at row-run ends plainly), with wraps inside a thread's chunk;
    # rows of 16 float32 are exactly one cache line, 100 straddle lines, 512 span 32.
    ring, want = make_ring(509, dim, dtype, device), make_ring(509, dim, dtype, device)
    for i, batch in enumerate([300, 450, 1, 299, 509, 700]):
        cols = make_batch(batch, dim, dtype, device, seed=10 + i)
        ring_push(*ring, *cols, backend=backend)
        ring_push_ref(*want, *cols)
        assert_same(ring, want)


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_fused_path_equals_a_push_with_z(device, backend):
    # latent_step writes z at (head + i) % C; the push then writes only the metadata.
    fused, plain = make_ring(6, 3, device=device), make_ring(6, 3, device=device)
    for i, batch in enumerate([4, 6, 1, 5]):
        z, target, step, loss = make_batch(batch, 3, device=device, seed=i)
        slots = (fused[4][0] + torch.arange(batch, device=device)) % 6
        fused[0][slots] = z
        ring_push(*fused, None, target, step, loss, backend=backend)
        ring_push(*plain, z, target, step, loss, backend=backend)
        assert_same(fused, plain)


@pytest.mark.parametrize("device,backend", cases("ring_push", with_reference=True))
def test_fused_path_refuses_more_rows_than_capacity(device, backend):
    ring = make_ring(2, 3, device=device)
    _, target, step, loss = make_batch(3, 3, device=device)
    with pytest.raises(ValueError, match=r"B <= capacity 2, got B = 3"):
        ring_push(*ring, None, target, step, loss, backend=backend)


@pytest.mark.parametrize("device,backend", cases("ring_sample"))
def test_sample_matches_reference_and_reads_only_filled_rows(device, backend):
    ring = make_ring(13, 6, device=device)
    ring_push_ref(*ring, *make_batch(11, 6, device=device))  # 11 of 13 slots filled
    # 0.45454544 * 11 = 4.99999982 (row 4), but 5.0 if multiplied in float32 (row 5).
    edges = torch.tensor([0.0, 0.45454544, 0.4545455, 0.9999999, 1.0, 2.0, -0.5, math.nan])
    u = torch.cat([edges, torch.rand(300, generator=torch.Generator().manual_seed(3))])
    got = ring_sample(*ring, u.to(device), backend=backend)
    want = ring_sample_ref(*ring, u.to(device))
    assert_same(got, want, ("z", "target", "step", "loss"))
    assert got[1][1] == ring[1][4] and got[1][2] == ring[1][5]
    filled = set(ring[1][:11].tolist())
    assert set(got[1].tolist()) == filled  # every filled row drawn, no unfilled one


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", cases("ring_sample"))
def test_sample_of_a_wrapped_ring_matches_reference(device, backend, dtype):
    ring = make_ring(5, 3, dtype, device)
    ring_push_ref(*ring, *make_batch(12, 3, dtype, device))
    u = torch.rand(64, generator=torch.Generator().manual_seed(4)).to(device)
    assert_same(ring_sample(*ring, u, backend=backend), ring_sample_ref(*ring, u), NAMES[:4])


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_corrupted_cursor_and_empty_ring_behave_like_the_reference(device, backend):
    # Kernels cannot raise on the device: head is taken mod C and count clamped, never OOB.
    ring, want = make_ring(4, 2, device=device), make_ring(4, 2, device=device)
    for t in (ring[4], want[4]):
        t.copy_(torch.tensor([-5, 11]))
    cols = make_batch(3, 2, device=device)
    ring_push(*ring, *cols, backend=backend)
    ring_push_ref(*want, *cols)
    assert_same(ring, want)
    u = torch.tensor([0.1, 0.6, 0.99], device=device)
    ring[4].copy_(torch.tensor([0, 0]))  # empty ring: every draw reads slot 0
    assert ring_sample(*ring, u, backend=backend)[1].tolist() == [ring[1][0].item()] * 3


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_non_contiguous_inputs(device, backend):
    ring, want = make_ring(8, 6, device=device), make_ring(8, 6, device=device)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 5, generator=g).t().to(device)  # (5, 6), column-major
    target = torch.arange(10, device=device)[::2]  # stride 2
    step = torch.tensor(7, device=device).expand(5)  # stride 0
    loss = torch.randn(5, 2, generator=g).to(device)[:, 1]  # stride 2
    assert not any(t.is_contiguous() for t in (z, target, step, loss))
    ring_push(*ring, z, target, step, loss, backend=backend)
    ring_push_ref(*want, z.contiguous(), target.contiguous(), step.contiguous(), loss.contiguous())
    assert_same(ring, want)
    u = torch.rand(40, generator=g).to(device)[::2]
    assert_same(ring_sample(*ring, u, backend=backend), ring_sample_ref(*ring, u), NAMES[:4])


def _bad(index, make):
    return lambda ring, cols: (ring, cols[:index] + [make(cols[index])] + cols[index + 1 :])


def _bad_ring(index, make):
    return lambda ring, cols: (ring[:index] + [make(ring[index])] + ring[index + 1 :], cols)


BAD_PUSH = {
    "z latent size": (_bad(0, lambda z: z[:, :2]), ValueError, r"z must have shape \[3, 4\]"),
    "z dtype": (_bad(0, lambda z: z.double()), TypeError, "z must have the dtype of ring_z"),
    "target dtype": (_bad(1, lambda t: t.float()), TypeError, "target must have dtype"),
    "step rows": (_bad(2, lambda s: s[:2]), ValueError, r"step must have shape \[3\], got \[2\]"),
    "loss dtype": (_bad(3, lambda v: v.double()), TypeError, "loss must have dtype"),
    "loss 2-D": (_bad(3, lambda v: v[:, None]), ValueError, r"loss must have shape \[3\]"),
    "ring_loss dtype": (_bad_ring(3, lambda v: v.double()), TypeError, "ring_loss must have dtype"),
    "cursor dtype": (_bad_ring(4, lambda c: c.int()), TypeError, "cursor must have dtype"),
    "ring_z layout": (
        _bad_ring(0, lambda z: z.t().contiguous().t()),
        ValueError,
        "ring_z must be contiguous",
    ),
    "ring_target rows": (_bad_ring(1, lambda t: t[:4]), ValueError, "ring_target must have shape"),
    # Aliasing: the ring is written in place, so no pushed column may share its memory.
    "z is ring rows": (
        lambda ring, cols: (ring, [ring[0][1:4]] + cols[1:]),
        ValueError,
        "z must not overlap ring_z",
    ),
    "target is ring_step": (
        lambda ring, cols: (ring, [cols[0], ring[2][:3]] + cols[2:]),
        ValueError,
        "target must not overlap ring_step",
    ),
    "loss is ring_loss": (
        lambda ring, cols: (ring, cols[:3] + [ring[3][2:]]),
        ValueError,
        "loss must not overlap ring_loss",
    ),
    "cursor in ring_target": (
        lambda ring, cols: (ring[:4] + [ring[1][:2]], cols),
        ValueError,
        r"lli_fast: cursor must not overlap ring_target \(they share memory\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PUSH), ids=list(BAD_PUSH))
@pytest.mark.parametrize("device,backend", cases("ring_push", with_reference=True))
def test_invalid_push_arguments_are_named(device, backend, case):
    corrupt, exc, match = BAD_PUSH[case]
    ring, cols = corrupt(make_ring(5, 4, device=device), make_batch(3, 4, device=device))
    before = clone(ring)
    with pytest.raises(exc, match=match):
        ring_push(*ring, *cols, backend=backend)
    assert_same(ring, before)  # nothing written before the checks


@pytest.mark.parametrize("device,backend", cases("ring_sample", with_reference=True))
def test_invalid_sample_arguments_are_named(device, backend):
    ring = make_ring(5, 4, device=device)
    with pytest.raises(TypeError, match="uniform must have dtype"):
        ring_sample(*ring, torch.rand(3, dtype=torch.float64, device=device), backend=backend)
    with pytest.raises(ValueError, match="uniform must be 1-D"):
        ring_sample(*ring, torch.rand(3, 1, device=device), backend=backend)


def _compiled_op(backend: str, name: str):
    suffix = "_triton" if backend == "triton" else ""
    return getattr(torch.ops.lli_fast, name + suffix).default


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_opcheck(device, backend):
    ring = make_ring(4, 3, device=device)
    z, target, step, loss = make_batch(3, 3, device=device)
    push = _compiled_op(backend, "ring_push")
    torch.library.opcheck(push, (*clone(ring), z, target, step, loss))
    torch.library.opcheck(push, (*clone(ring), None, target, step, loss))
    ring_push_ref(*ring, z, target, step, loss)
    uniform = torch.rand(5, device=device)
    torch.library.opcheck(_compiled_op(backend, "ring_sample"), (*ring, uniform))


@pytest.mark.parametrize("device,backend", cases("ring_push"))
def test_torch_compile_fullgraph(device, backend):
    @torch.compile(fullgraph=True, dynamic=False)
    def push_then_sample(ring, z, target, step, loss, uniform):
        ring_push(*ring, z, target, step, loss, backend=backend)
        return ring_sample(*ring, uniform, backend=backend)

    ring, want = make_ring(5, 3, device=device), make_ring(5, 3, device=device)
    uniform = torch.rand(8, device=device)
    for seed in range(3):  # the cursor must advance across calls of the compiled graph
        cols = make_batch(2, 3, device=device, seed=seed)
        got = push_then_sample(ring, *cols, uniform)
        ring_push_ref(*want, *cols)
        assert_same(got, ring_sample_ref(*want, uniform), NAMES[:4])
    assert_same(ring, want)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.skipif(not cuda_kernel_built("ring_push"), reason="CUDA kernel not built / no GPU")
def test_cuda_graph_replays_advance_the_device_cursor(backend):
    ring, want = make_ring(5, 4, device="cuda"), make_ring(5, 4, device="cuda")
    cols = make_batch(3, 4, device="cuda")
    uniform = torch.rand(16, device="cuda")
    ring_push(*clone(ring), *cols, backend=backend)  # warm up (Triton compiles outside capture)
    ring_sample(*ring, uniform, backend=backend)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ring_push(*ring, *cols, backend=backend)
        out = ring_sample(*ring, uniform, backend=backend)
    ring_push_ref(*want, *cols)  # the capture itself ran nothing
    for _ in range(3):
        graph.replay()
        ring_push_ref(*want, *cols)
    torch.cuda.synchronize()
    assert_same(ring, want)
    assert_same(out, ring_sample_ref(*want, uniform), NAMES[:4])

"""Triton kernels of the ring replay buffer ops and their plain launchers.

Semantics: lli_fast/reference/ring.py. The launchers assume checked arguments (lli_fast.ops.ring
checks them). Like the CUDA kernels, nothing reads the cursor on the host: the row kernels load
head/count from device memory, and the push advances the cursor in a second one-program kernel
queued behind the rows on the same stream, so push and sample are sync-free and graph-capturable.
Run under TRITON_INTERPRET=1 on CPU tensors (set before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program moves a BLOCK_R x BLOCK_D tile per loop step; 16 rows keeps tiles at <= 2048 values
# (4 warps, no spills) and, in the interpreter, few programs (each runs as one numpy call).
BLOCK_R = 16
MAX_BLOCK_D = 128


@triton.jit
def _wrap_head(head, capacity):
    # Floor modulo whatever sign convention `%` has: a corrupted cursor still maps into the ring.
    return ((head % capacity) + capacity) % capacity


@triton.jit
def _ring_push_rows_kernel(
    ring_z,
    ring_target,
    ring_step,
    ring_loss,
    cursor,
    z,
    target,
    step,
    loss,
    z_s0,
    z_s1,
    target_s,
    step_s,
    loss_s,
    first,
    rows,
    capacity,
    dim,
    HAS_Z: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Batch row i in [first, first + rows) -> slot (head + i) mod capacity, every column."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = r < rows
    i = (first + r).to(tl.int64)
    slot = (_wrap_head(tl.load(cursor), capacity) + i) % capacity
    tl.store(ring_target + slot, tl.load(target + i * target_s, mask=row_ok), mask=row_ok)
    tl.store(ring_step + slot, tl.load(step + i * step_s, mask=row_ok), mask=row_ok)
    tl.store(ring_loss + slot, tl.load(loss + i * loss_s, mask=row_ok), mask=row_ok)
    if HAS_Z:
        for d0 in range(0, dim, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            ok = row_ok[:, None] & (cols < dim)[None, :]
            vals = tl.load(z + i[:, None] * z_s0 + cols[None, :] * z_s1, mask=ok)
            tl.store(ring_z + slot[:, None] * dim + cols[None, :], vals, mask=ok)


@triton.jit
def _ring_advance_cursor_kernel(cursor, batch, capacity):
    """head = (head + B) mod C, count = min(count + B, C); after every row program read head."""
    head = _wrap_head(tl.load(cursor), capacity)
    count = tl.minimum(tl.maximum(tl.load(cursor + 1), 0), capacity)
    tl.store(cursor, (head + batch) % capacity)
    tl.store(cursor + 1, tl.minimum(count + batch, capacity))


@triton.jit
def _ring_sample_kernel(
    ring_z,
    ring_target,
    ring_step,
    ring_loss,
    cursor,
    uniform,
    uniform_s,
    out_z,
    out_target,
    out_step,
    out_loss,
    n,
    capacity,
    dim,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Draw j -> row min(floor(u_j * count), count - 1) (0 for u <= 0 or NaN); copy that row."""
    j = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok_j = j < n
    j = j.to(tl.int64)
    count = tl.minimum(tl.maximum(tl.load(cursor + 1), 0), capacity)
    u = tl.load(uniform + j * uniform_s, mask=ok_j, other=0.0).to(tl.float64)
    # float64 makes u * count exact. Truncation equals floor once the value is clamped to
    # (0, count - 1]; non-positive and NaN values (x > 0 is False) become row 0.
    x = u * count.to(tl.float64)
    last = (count - 1).to(tl.float64)
    x = tl.where(x > last, last, x)
    row = tl.where(x > 0.0, x, 0.0).to(tl.int64)
    tl.store(out_target + j, tl.load(ring_target + row, mask=ok_j), mask=ok_j)
    tl.store(out_step + j, tl.load(ring_step + row, mask=ok_j), mask=ok_j)
    tl.store(out_loss + j, tl.load(ring_loss + row, mask=ok_j), mask=ok_j)
    for d0 in range(0, dim, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = ok_j[:, None] & (cols < dim)[None, :]
        vals = tl.load(ring_z + row[:, None] * dim + cols[None, :], mask=ok)
        tl.store(out_z + j[:, None] * dim + cols[None, :], vals, mask=ok)


def _block_d(dim: int) -> int:
    return min(MAX_BLOCK_D, triton.next_power_of_2(max(dim, 1)))


def launch_ring_push(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    z: torch.Tensor | None,
    target: torch.Tensor,
    step: torch.Tensor,
    loss: torch.Tensor,
) -> None:
    """Push B rows (shapes as lli_fast.reference.ring.ring_push_ref); mutates the ring in place."""
    capacity, dim = ring_z.shape
    batch = target.shape[0]
    if batch == 0:
        return
    first = max(0, batch - capacity)
    rows = batch - first
    has_z = z is not None
    # Without z the kernel never dereferences the pointer; ring_z stands in for a valid one.
    z_arg = z if has_z else ring_z
    _ring_push_rows_kernel[(triton.cdiv(rows, BLOCK_R),)](
        ring_z,
        ring_target,
        ring_step,
        ring_loss,
        cursor,
        z_arg,
        target,
        step,
        loss,
        z_arg.stride(0),
        z_arg.stride(1),
        target.stride(0),
        step.stride(0),
        loss.stride(0),
        first,
        rows,
        capacity,
        dim,
        HAS_Z=has_z,
        BLOCK_R=BLOCK_R,
        BLOCK_D=_block_d(dim),
    )
    _ring_advance_cursor_kernel[(1,)](cursor, batch, capacity)


def launch_ring_sample(
    ring_z: torch.Tensor,
    ring_target: torch.Tensor,
    ring_step: torch.Tensor,
    ring_loss: torch.Tensor,
    cursor: torch.Tensor,
    uniform: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather one row per draw of uniform (n,); returns (z (n, D), target, step, loss (n,))."""
    capacity, dim = ring_z.shape
    n = uniform.shape[0]
    out_z = ring_z.new_empty((n, dim))
    out_target = ring_target.new_empty((n,))
    out_step = ring_step.new_empty((n,))
    out_loss = ring_loss.new_empty((n,))
    if n > 0:
        _ring_sample_kernel[(triton.cdiv(n, BLOCK_R),)](
            ring_z,
            ring_target,
            ring_step,
            ring_loss,
            cursor,
            uniform,
            uniform.stride(0),
            out_z,
            out_target,
            out_step,
            out_loss,
            n,
            capacity,
            dim,
            BLOCK_R=BLOCK_R,
            BLOCK_D=_block_d(dim),
        )
    return out_z, out_target, out_step, out_loss

"""Triton kernel of the fused latent step (semantics: lli_fast/reference/latent_step.py).

A program updates a tile of rows of the (B, D) batch. Pass 1 reduces, per row, sum(g^2) (for
clipping) and sum(g * 0), which is 0 for a finite row and NaN as soon as one element is inf or
NaN, so finiteness is exact and cannot overflow. Pass 2 applies SGD(momentum) or Adam. Every
operand is addressed through its strides, so non-contiguous views need no copies.

Precision follows the reference: math in float32 for float32/float16/bfloat16 storage and in
float64 for float64; fp32 divisions and square roots are IEEE-rounded (`div_rn`, `sqrt_rn`), and
beta^t is formed in float64 and rounded once, because 1 - beta2^t is ill-conditioned in float32.
Hyper-parameters arrive as float64 scalars so float64 inputs get the exact Python values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SGD = 0
ADAM = 1


@triton.jit
def _div(a, b, F64: tl.constexpr):
    if F64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt(x, F64: tl.constexpr):
    if F64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _bias_correction(beta, t, CDT: tl.constexpr):
    # 1 - beta^t with beta rounded to the compute type first, as the reference's `beta1 ** t`.
    beta_c = beta.to(CDT).to(tl.float64)
    return 1 - tl.exp2(t * tl.log2(beta_c)).to(CDT)


@triton.jit
def _to_storage(x, DTYPE: tl.constexpr):
    if DTYPE == tl.bfloat16:
        # float32 -> bfloat16 rounded to nearest even in integer arithmetic: GPUs round this
        # conversion, the Triton interpreter truncates it; this form gives the GPU result in both.
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
        return tl.where(x == x, rounded.to(tl.bfloat16, bitcast=True), x.to(tl.bfloat16))
    else:
        return x.to(DTYPE)


@triton.jit
def _latent_step_kernel(
    z_ptr, g_ptr, m_ptr, v_ptr, step_ptr, active_ptr, lr_ptr, loss_ptr, ring_ptr, slot_ptr,
    B, D, ring_rows,
    z_rs, z_cs, g_rs, g_cs, m_rs, m_cs, v_rs, v_cs, r_rs, r_cs,
    step_s, active_s, lr_s, loss_s, slot_s,
    beta1_arg: tl.float64, beta2_arg: tl.float64, eps_arg: tl.float64, max_norm_arg: tl.float64,
    stop_loss_arg: tl.float64,
    OPTIMIZER: tl.constexpr, MOMENTUM: tl.constexpr, CLIP: tl.constexpr,
    HAS_LOSS: tl.constexpr, HAS_RING: tl.constexpr, F64: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    CDT: tl.constexpr = tl.float64 if F64 else tl.float32
    # Scalars are float64 tensors when compiled and Python floats when interpreted: tl.full
    # turns both into float64 values without rounding.
    beta1 = tl.full((), beta1_arg, tl.float64)
    beta2 = tl.full((), beta2_arg, tl.float64)
    stop_loss = tl.full((), stop_loss_arg, tl.float64)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    in_batch = rows < B
    cols = tl.arange(0, BLOCK_D)[None, :]
    z_row = z_ptr + rows[:, None] * z_rs
    g_row = g_ptr + rows[:, None] * g_rs
    # Element masks are `cols < limit` with a per-row limit, D or 0 for rows left alone.
    limit = tl.where(in_batch, D, 0)[:, None]

    if HAS_RING:  # step 1: the pre-update row, for every row
        slot = tl.load(slot_ptr + rows * slot_s, mask=in_batch, other=0)
        slot_ok = (slot >= 0) & (slot < ring_rows)
        tl.device_assert(slot_ok, "ring_slots out of range")  # active in debug builds only
        # Out-of-range slots (not checked on GPU tensors without a sync) are never written.
        ring_limit = tl.where(in_batch & slot_ok, D, 0)[:, None]
        ring_row = ring_ptr + slot[:, None] * r_rs
        for start in range(0, D, BLOCK_D):
            c = start + cols
            x = tl.load(z_row + c * z_cs, mask=c < ring_limit)
            tl.store(ring_row + c * r_cs, x, mask=c < ring_limit)

    # Step 2, the guard.
    ok = (tl.load(active_ptr + rows * active_s, mask=in_batch, other=0) != 0) & in_batch
    if HAS_LOSS:
        loss = tl.load(loss_ptr + rows * loss_s, mask=in_batch, other=0).to(tl.float64)
        ok = ok & ((loss - loss) == 0) & (loss > stop_loss)  # x - x is NaN for inf and NaN
    limit = tl.where(ok, D, 0)[:, None]
    sum_sq = tl.zeros((ROWS, BLOCK_D), CDT)
    non_finite = tl.zeros((ROWS, BLOCK_D), CDT)
    for start in range(0, D, BLOCK_D):
        c = start + cols
        g = tl.load(g_row + c * g_cs, mask=c < limit, other=0).to(CDT)
        sum_sq += g * g
        non_finite += g * 0
    ok = ok & (tl.sum(non_finite, axis=1) == 0)
    t = tl.load(step_ptr + rows * step_s, mask=in_batch, other=0) + 1
    tl.store(active_ptr + rows * active_s, ok.to(tl.uint8), mask=in_batch)
    tl.store(step_ptr + rows * step_s, t, mask=ok)
    limit = tl.where(ok, D, 0)[:, None]

    # Step 3, clipping: torch evaluates max_norm / (norm + 1e-6) as reciprocal(...) * max_norm.
    clip = tl.full((ROWS,), 1, CDT)
    if CLIP:
        norm = _sqrt(tl.sum(sum_sq, axis=1), F64)
        inv = _div(tl.full((ROWS,), 1, CDT), norm + tl.full((), 1e-6, CDT), F64)
        clip = tl.minimum(inv * tl.full((), max_norm_arg, tl.float64).to(CDT), 1)
    clip = clip[:, None]

    # Steps 4-5, the update of the active rows.
    lr = tl.load(lr_ptr + rows * lr_s, mask=in_batch, other=0).to(CDT)
    tf = t.to(tl.float64)
    b1 = beta1.to(CDT)
    b2 = beta2.to(CDT)
    one_minus_b1 = (1 - beta1).to(CDT)
    one_minus_b2 = (1 - beta2).to(CDT)
    eps = tl.full((), eps_arg, tl.float64).to(CDT)
    if OPTIMIZER == 1:
        step_size = _div(lr, _bias_correction(beta1, tf, CDT), F64)[:, None]
        bias2_sqrt = _sqrt(_bias_correction(beta2, tf, CDT), F64)[:, None]
    else:  # SGD does not use beta2, which may then hold any value
        step_size = lr[:, None]
        bias2_sqrt = lr[:, None]
    lr = lr[:, None]
    first = (t == 1)[:, None]
    for start in range(0, D, BLOCK_D):
        c = start + cols
        mask = c < limit
        z = tl.load(z_row + c * z_cs, mask=mask, other=0).to(CDT)
        g = tl.load(g_row + c * g_cs, mask=mask, other=0).to(CDT) * clip
        if OPTIMIZER == 1:
            m_addr = m_ptr + rows[:, None] * m_rs + c * m_cs
            v_addr = v_ptr + rows[:, None] * v_rs + c * v_cs
            m = b1 * tl.load(m_addr, mask=mask, other=0).to(CDT) + one_minus_b1 * g
            v = b2 * tl.load(v_addr, mask=mask, other=0).to(CDT) + one_minus_b2 * g * g
            denom = _div(_sqrt(v, F64), bias2_sqrt, F64) + eps
            z = z - step_size * _div(m, denom, F64)
            tl.store(m_addr, _to_storage(m, m_ptr.dtype.element_ty), mask=mask)
            tl.store(v_addr, _to_storage(v, v_ptr.dtype.element_ty), mask=mask)
        elif MOMENTUM:
            m_addr = m_ptr + rows[:, None] * m_rs + c * m_cs
            m = tl.where(first, g, b1 * tl.load(m_addr, mask=mask, other=0).to(CDT) + g)
            z = z - lr * m
            tl.store(m_addr, _to_storage(m, m_ptr.dtype.element_ty), mask=mask)
        else:
            z = z - lr * g
        tl.store(z_row + c * z_cs, _to_storage(z, z_ptr.dtype.element_ty), mask=mask)


def _row_stride(t: torch.Tensor) -> int:
    # One shared value (numel 1, any dim) is read at offset 0 for every row.
    return 0 if t.numel() == 1 else t.stride(0)


def launch_latent_step(
    z: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    active: torch.Tensor,
    lr: torch.Tensor,
    loss: torch.Tensor | None,
    optimizer: int,
    beta1: float,
    beta2: float,
    eps: float,
    max_grad_norm: float,
    stop_loss: float,
    ring_z: torch.Tensor | None = None,
    ring_slots: torch.Tensor | None = None,
) -> None:
    """Launch the kernel on validated arguments (see lli_fast.ops.latent_step for the checks).

    Shapes: z, grad (B, D); exp_avg (B, D) unless plain SGD; exp_avg_sq (B, D) for Adam; step (B,)
    int64; active (B,) bool; lr (1,) or (B,); loss (B,) or None; ring_z (N, D) with ring_slots
    (B,) int64, or both None. Updates z, exp_avg, exp_avg_sq, step, active and ring_z in place.
    """
    B, D = z.shape
    if B == 0:
        return
    momentum = optimizer == ADAM or beta1 != 0.0
    m = exp_avg if momentum else z  # unused operands get a harmless pointer and zero strides
    v = exp_avg_sq if optimizer == ADAM else z
    m_strides = m.stride() if momentum else (0, 0)
    v_strides = v.stride() if optimizer == ADAM else (0, 0)
    has_ring = ring_z is not None
    ring = ring_z if has_ring else z
    slots = ring_slots if has_ring else step
    # A program owns a (ROWS, BLOCK_D) tile of about 4096 elements: many short latent rows at
    # once, or one long row in BLOCK_D chunks. (This also keeps the interpreter's per-program
    # cost off the row count.)
    block_d = min(max(triton.next_power_of_2(D), 16), 4096)
    rows = min(max(4096 // block_d, 1), triton.next_power_of_2(B))
    _latent_step_kernel[(triton.cdiv(B, rows),)](
        z, grad, m, v, step, active.view(torch.uint8), lr,
        loss if loss is not None else lr, ring, slots,
        B, D, ring.shape[0],
        z.stride(0), z.stride(1), grad.stride(0), grad.stride(1), *m_strides, *v_strides,
        ring.stride(0), ring.stride(1),
        step.stride(0), active.stride(0), _row_stride(lr),
        loss.stride(0) if loss is not None else 0, slots.stride(0),
        float(beta1), float(beta2), float(eps), float(max_grad_norm), float(stop_loss),
        OPTIMIZER=int(optimizer), MOMENTUM=bool(momentum), CLIP=bool(max_grad_norm > 0),
        HAS_LOSS=loss is not None, HAS_RING=has_ring, F64=z.dtype == torch.float64,
        ROWS=rows, BLOCK_D=block_d, num_warps=max(1, min(8, rows * block_d // 512)),
    )  # fmt: skip

"""Reference semantics of the fused latent step (the op lli_fast::latent_step)."""

from __future__ import annotations

import torch

SGD = 0
ADAM = 1


def latent_step_ref(
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
    """One optimizer step on every active row of a latent batch, in place.

    Shapes: z, grad, exp_avg (B, D); exp_avg_sq (B, D) for Adam (ignored for SGD, may be empty);
    step (B,) int64; active (B,) bool; lr (1,) or (B,) float32; loss (B,) or None;
    ring_z (N, D) and ring_slots (B,) int64, both or neither.

    Per row b, in this order:
      1. if ring_z is given: ring_z[ring_slots[b]] = z[b] (the pre-update row, for every row).
      2. guard: active[b] &= isfinite(loss[b]) & (loss[b] > stop_loss) & all(isfinite(grad[b])).
         (loss terms only when loss is given.) Rows not active are left unchanged, state included.
      3. clip: if max_grad_norm > 0, g = grad[b] * min(1, max_grad_norm / (||grad[b]||_2 + 1e-6)).
      4. step[b] += 1; t = step[b].
      5. SGD (optimizer 0), momentum beta1: buf = g if t == 1 else beta1 * buf + g;
         z[b] -= lr[b] * buf                       (momentum 0: z[b] -= lr[b] * g)
         Adam (optimizer 1): m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
         z[b] -= lr[b] / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    These are torch.optim.SGD(momentum=beta1, dampening=0) and torch.optim.Adam numerics.
    Math runs in float32 for half/bfloat16 inputs and in the input dtype otherwise.
    """
    if ring_z is not None:
        ring_z[ring_slots] = z.detach().to(ring_z.dtype)

    compute = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
    g = grad.to(compute)
    ok = active.clone()
    ok &= torch.isfinite(g).all(dim=1)
    if loss is not None:
        lf = loss.to(torch.float64)
        ok &= torch.isfinite(lf) & (lf > stop_loss)
    active.copy_(ok)

    if max_grad_norm > 0:
        norm = torch.linalg.vector_norm(torch.where(ok[:, None], g, 0), dim=1, keepdim=True)
        g = g * torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)

    new_step = step + ok.to(step.dtype)
    t = new_step.to(compute)[:, None]
    rate = lr.to(compute).reshape(-1, 1).expand(z.shape[0], 1)
    zc = z.to(compute)
    m = exp_avg.to(compute)
    upd = ok[:, None]

    if optimizer == SGD:
        if beta1 != 0:
            m_new = torch.where(t == 1, g, beta1 * m + g)
            direction = m_new
            exp_avg.copy_(torch.where(upd, m_new, m).to(exp_avg.dtype))
        else:
            direction = g
        z_new = zc - rate * direction
    elif optimizer == ADAM:
        v = exp_avg_sq.to(compute)
        m_new = beta1 * m + (1 - beta1) * g
        v_new = beta2 * v + (1 - beta2) * g * g
        bias1 = 1 - beta1**t
        bias2 = 1 - beta2**t
        denom = v_new.sqrt() / bias2.sqrt() + eps
        z_new = zc - (rate / bias1) * (m_new / denom)
        exp_avg.copy_(torch.where(upd, m_new, m).to(exp_avg.dtype))
        exp_avg_sq.copy_(torch.where(upd, v_new, v).to(exp_avg_sq.dtype))
    else:
        raise ValueError(f"lli_fast: optimizer must be 0 (sgd) or 1 (adam), got {optimizer!r}")

    z.copy_(torch.where(upd, z_new, zc).to(z.dtype))
    step.copy_(new_step)

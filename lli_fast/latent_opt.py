"""Per-row optimizer state for a (B, D) latent batch, stepped by the fused latent_step op."""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adam", "sgd")
_F32 = torch.finfo(torch.float32)


def check_lr(lr: float | torch.Tensor, batch: int) -> None:
    """lr: a positive float, or a (1,) / (B,) tensor of positive values."""
    if isinstance(lr, torch.Tensor):
        if lr.dim() != 1 or lr.shape[0] not in (1, batch):
            raise ValueError(f"lr must be a float or a (1,) or ({batch},) tensor, got {lr.shape}")
        if not lr.is_floating_point():
            raise TypeError(f"lr must be a floating-point tensor, got {lr.dtype}")
        if lr.device.type == "cpu" and not bool(((lr > 0) & torch.isfinite(lr)).all()):
            raise ValueError(f"lr must be finite and > 0 in every row, got {lr.tolist()}")
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not _F32.tiny <= lr <= _F32.max:  # the state holds lr in float32: it must stay > 0, finite
        raise ValueError(
            f"lr must be between {_F32.tiny:.3g} and {_F32.max:.3g} (stored as float32), got {lr!r}"
        )


class LatentOptimizer:
    """Adam or SGD(+momentum) state for every row of a (B, D) latent batch.

    State lives on the latents' device: exp_avg, exp_avg_sq (B, D), step (B,) int64, active (B,)
    bool, lr (1,) or (B,) float32. `step()` is one call of the fused op; it needs no host sync.
    """

    def __init__(
        self,
        z: torch.Tensor,
        *,
        optimizer: str = "adam",
        lr: float | torch.Tensor = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        eps: float = 1e-8,
        max_grad_norm: float = 0.0,
        early_stop: float | None = None,
        backend: str = "auto",
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        check_lr(lr, z.shape[0])
        if not (isinstance(max_grad_norm, (int, float)) and max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be a number >= 0, got {max_grad_norm!r}")
        if early_stop is not None and not isinstance(early_stop, (int, float)):
            raise TypeError(f"early_stop must be None or a number, got {early_stop!r}")
        b, device = z.shape[0], z.device
        self.optimizer = optimizer
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if isinstance(momentum, bool) or not (
            isinstance(momentum, (int, float)) and 0 <= momentum < 1
        ):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.beta1 = float(betas[0] if optimizer == "adam" else momentum)
        self.beta2 = float(betas[1])
        self.eps = float(eps)
        self.max_grad_norm = float(max_grad_norm)
        self.stop_loss = float("-inf") if early_stop is None else float(early_stop)
        self.backend = backend
        self.exp_avg = torch.zeros_like(z)
        self.exp_avg_sq = torch.zeros_like(z) if optimizer == "adam" else z.new_empty((0,))
        self.step_count = torch.zeros(b, dtype=torch.int64, device=device)
        self.active = torch.ones(b, dtype=torch.bool, device=device)
        if isinstance(lr, torch.Tensor):
            self.lr = lr.detach().to(device=device, dtype=torch.float32)
        else:
            self.lr = torch.full((1,), float(lr), dtype=torch.float32, device=device)

    def step(
        self,
        z: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor | None = None,
        ring_z: torch.Tensor | None = None,
        ring_slots: torch.Tensor | None = None,
    ) -> None:
        """Update z (B, D) in place from grad (B, D); loss (B,) drives early stop and the guard."""
        from lli_fast.ops.latent_step import latent_step

        latent_step(
            z,
            grad,
            self.exp_avg,
            self.exp_avg_sq,
            self.step_count,
            self.active,
            self.lr,
            loss,
            optimizer=self.optimizer,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            max_grad_norm=self.max_grad_norm,
            stop_loss=self.stop_loss,
            ring_z=ring_z,
            ring_slots=ring_slots,
            backend=self.backend,
        )

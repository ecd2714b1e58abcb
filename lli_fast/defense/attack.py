"""L-infinity PGD (Madry et al., 2018), the project's own implementation.

The attack sees only the classifier (non-adaptive with respect to any purifier in front of it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_images(x: object, name: str = "x") -> torch.Tensor:
    """Validate a batch of images: a floating tensor (B, C, H, W) with values in [0, 1].

    Raises TypeError for a non-tensor or a non-floating dtype and ValueError for a wrong rank,
    an empty batch or values outside [0, 1], each naming the argument.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype} "
            f"(convert uint8 images with x.float() / 255)"
        )
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, C, H, W) with B >= 1, got {tuple(x.shape)}")
    low, high = torch.aminmax(x)
    if low < 0 or high > 1:
        raise ValueError(
            f"{name} must have values in [0, 1], got min {low.item():.4g} and max {high.item():.4g}"
        )
    return x


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Untargeted L-infinity PGD that maximises the cross entropy of `model` on (x, y).

    x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels. Returns x_adv (B, C, H, W) with
    |x_adv - x| <= eps elementwise and 0 <= x_adv <= 1. step_size defaults to 2.5 * eps / steps
    (so a walk of steps sign steps can cross the ball); random_start draws a uniform start in the
    ball. eps = 0 returns x unchanged. Gradients are taken with respect to the perturbation only:
    the model's parameters and their .grad are never touched, and it works under torch.no_grad().
    """
    check_images(x, "x")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1] or y.is_floating_point():
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},)")
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] for images in [0, 1], got {eps}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        if random_start:
            u = torch.rand(xb.shape, generator=generator).to(xb.device, xb.dtype)
            delta = (2 * u - 1) * eps
        else:
            delta = torch.zeros_like(xb)
        delta = (xb + delta).clamp(0, 1) - xb
        for _ in range(steps):
            with torch.enable_grad():
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(xb + delta), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, delta)
            # Project onto the eps-ball, then onto the pixel range; both are boxes, and the pixel
            # clamp cannot leave the ball because x itself lies in [0, 1].
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
            delta = (xb + delta).clamp(0, 1) - xb
        out.append((xb + delta).detach())
    return torch.cat(out)

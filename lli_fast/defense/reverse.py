"""The self-supervised purification loss and the reverse-attack baseline (Mao et al., ICCV 2021).

A reverse attack looks for a small r, ||r||_inf <= eps_v, that minimises the contrastive loss of
the classifier's projection head on augmented views of x + r, then classifies x + r.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lli_fast.defense.attack import check_images
from lli_fast.defense.views import random_views, view_agreement


class ContrastivePurificationLoss(nn.Module):
    """Per-image contrastive loss of a classifier's projection head: (B, C, H, W) -> (B,).

    Each image gets `n_views` augmented views (a random shift of up to max_shift pixels plus
    Gaussian noise); its loss is 1 - the mean cosine similarity of their projections (NT-Xent's
    positive term). Why not the full NT-Xent with negatives: its negatives push the image's
    projection away from those of other clean digits, the opposite of purification (with a fixed
    bank of 256 clean negatives it purified worse in a small comparison), and in-batch negatives
    would make the result depend on the batch and vanish at batch 1. Augmentations are drawn per
    view and shared by all rows, so row i's loss is a function of image i alone.

    `classifier` must have `embed(x) -> (B, P)` unit-norm projections. It is held by reference,
    not registered as a submodule, and never modified.
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        n_views: int = 2,
        max_shift: int = 2,
        noise_std: float = 0.1,
    ) -> None:
        super().__init__()
        if not callable(getattr(classifier, "embed", None)):
            raise TypeError(
                "classifier must have an embed(x) -> (B, P) method returning the contrastive "
                f"projections, got {type(classifier).__name__}"
            )
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 2:
            raise ValueError(
                f"n_views must be an int >= 2 (the loss compares views), got {n_views}"
            )
        if max_shift < 0 or noise_std < 0:
            raise ValueError(f"max_shift and noise_std must be >= 0, got {max_shift}, {noise_std}")
        self.__dict__["classifier"] = classifier  # plain attribute: no parameter registration
        self.n_views, self.max_shift, self.noise_std = n_views, max_shift, noise_std

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B,) loss per image, differentiable with respect to x."""
        views = random_views(
            x,
            self.n_views,
            max_shift=self.max_shift,
            noise_std=self.noise_std,
            generator=generator,
            shared=True,
        )
        proj = self.classifier.embed(views.flatten(0, 1)).unflatten(0, views.shape[:2])
        return view_agreement(proj)


def reverse_attack(
    loss_fn: ContrastivePurificationLoss,
    x: torch.Tensor,
    eps_v: float,
    steps: int,
    *,
    step_size: float | None = None,
    seed: int = 0,
    batch_size: int = 1000,
) -> torch.Tensor:
    """PGD that minimises `loss_fn` over r in the eps_v-ball; returns x + r (B, C, H, W) in [0, 1].

    x: (B, C, H, W) in [0, 1]. r starts at zero; each step draws fresh views (from a generator
    seeded with `seed`, so the result is deterministic and each row's result does not depend on
    the batch), takes a signed step of step_size, default min(eps_v, 2.5 * eps_v / steps), and
    projects onto the ball and the pixel range. Works under torch.no_grad() callers; it never
    touches the classifier's parameters or their .grad.
    """
    check_images(x, "x")
    if not 0 <= eps_v <= 1:
        raise ValueError(f"eps_v must be in [0, 1], got {eps_v}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if steps == 0 or eps_v == 0:
        return x.clone()
    alpha = min(eps_v, 2.5 * eps_v / steps) if step_size is None else step_size
    with torch.inference_mode(False):
        return _reverse_pgd(loss_fn, x.clone(), eps_v, steps, alpha, seed, batch_size)


def _reverse_pgd(
    loss_fn: ContrastivePurificationLoss,
    x: torch.Tensor,
    eps_v: float,
    steps: int,
    alpha: float,
    seed: int,
    batch_size: int,
) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        gen = torch.Generator().manual_seed(seed)
        delta = torch.zeros_like(xb)
        for _ in range(steps):
            with torch.enable_grad():
                delta.requires_grad_(True)
                (grad,) = torch.autograd.grad(loss_fn(xb + delta, gen).sum(), delta)
            delta = (delta.detach() - alpha * grad.sign()).clamp(-eps_v, eps_v)
            delta = (xb + delta).clamp(0, 1) - xb
        out.append((xb + delta).detach())
    return torch.cat(out)

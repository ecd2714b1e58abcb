"""Augmented views and the contrastive losses built on them, in plain, differentiable PyTorch.

Training uses SimCLR's NT-Xent between two views of every image, with the other images of the
batch as negatives. Purification uses NT-Xent's positive term alone (`view_agreement`): a loss
per row that does not depend on the rest of the batch, so that a purifier gives the same answer
at batch 1 and at batch 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift every image by whole pixels, filling with zeros (MNIST's background).

    x: (B, C, H, W); shifts: (B, 2) or (2,) integer (dy, dx), each in [-H+1, H-1] x [-W+1, W-1].
    Returns (B, C, H, W). Differentiable with respect to x (it is a gather).
    """
    b, c, h, w = x.shape
    shifts = shifts.to(device=x.device, dtype=torch.long).reshape(-1, 2).expand(b, 2)
    pad = int(shifts.abs().max().item()) if shifts.numel() else 0
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.arange(h, device=x.device)[None, :] + pad - shifts[:, 0:1]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + pad - shifts[:, 1:2]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_views(
    x: torch.Tensor,
    n_views: int,
    *,
    max_shift: int = 2,
    noise_std: float = 0.1,
    generator: torch.Generator | None = None,
    shared: bool = False,
) -> torch.Tensor:
    """Draw `n_views` augmented copies of a batch: a random translation plus Gaussian noise.

    x: (B, C, H, W) in [0, 1]. Returns (n_views, B, C, H, W), differentiable with respect to x.
    shared=False draws a shift and noise per image (training). shared=True draws one shift and
    one noise pattern per view and applies it to every row, so that each row's views, and any
    per-row loss on them, do not depend on which other images are in the batch.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    b = x.shape[0]
    rows = 1 if shared else b
    views = []
    for _ in range(n_views):
        shifts = torch.randint(-max_shift, max_shift + 1, (rows, 2), generator=generator)
        noise = torch.randn((rows, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
        views.append(translate(x, shifts) + noise_std * noise)
    return torch.stack(views)


def nt_xent(p1: torch.Tensor, p2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy, averaged over the 2B anchors.

    p1, p2: (B, P) unit-norm projections of two views of the same B images. Each view's positive
    is the other view of its image; the other 2B - 2 views are its negatives. Returns a scalar.
    """
    b = p1.shape[0]
    p = torch.cat([p1, p2])
    sim = p @ p.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=p.device), float("-inf"))
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(p.device)
    return F.cross_entropy(sim, positive)


def view_agreement(projections: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity between the distinct views of each image.

    projections: (V, B, P) unit-norm projections of V >= 2 views of B images. Returns (B,) in
    [0, 2]. This is NT-Xent's positive term alone: row i depends only on image i.
    """
    v = projections.shape[0]
    if v < 2:
        raise ValueError(f"view_agreement needs at least 2 views, got {v}")
    total = projections.sum(dim=0)  # sum_a p_a; |sum_a p_a|^2 = V + sum_{a != b} p_a . p_b
    pair_sum = total.pow(2).sum(dim=1) - projections.pow(2).sum(dim=(0, 2))
    return 1 - pair_sum / (v * (v - 1))

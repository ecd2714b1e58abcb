"""A tiny frozen generator for fast tests of invert() and the trainer."""

from __future__ import annotations

import torch
from torch import nn


class TinyGenerator(nn.Module):
    """(B, D) -> (B, 1, 8, 8): a small non-linear decoder with frozen, seeded weights."""

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.input_dim = dim
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, 64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.requires_grad_(
            True
        )  # like a user's model: params require grad, invert must not touch them

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc2(torch.tanh(self.fc1(z)))).view(-1, 1, 8, 8)


def snapshot(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(param copy, grad copy) for every parameter, to prove nothing changed."""
    return [
        (p.detach().clone(), None if p.grad is None else p.grad.detach().clone())
        for p in module.parameters()
    ]


def unchanged(module: nn.Module, before) -> bool:
    for p, (w, g) in zip(module.parameters(), before, strict=True):
        if not torch.equal(p.detach(), w):
            return False
        if (p.grad is None) != (g is None) or (g is not None and not torch.equal(p.grad, g)):
            return False
    return True

"""The mapping network theta: Z -> X whose landscape is learned."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + W2 act(W1 norm(x)): pre-norm residual MLP block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class MappingNetwork(nn.Module):
    """theta: (B, dim) -> (B, dim), a residual MLP that starts as the identity.

    theta(z) = z + head(blocks(z)). The last layer of the head starts at zero, so before training
    theta(z) == z and gradient descent on z is plain optimization-based inversion; training then
    reshapes the landscape that z sees. Each residual block's output layer also starts at zero.

    Args:
        dim: size of Z and X (the forward model's flat input size).
        hidden: width of the hidden layers.
        depth: number of residual blocks (>= 1).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MappingNetwork: {name} must be an int >= {low}, got {value!r}")
        self.dim, self.hidden, self.depth = dim, hidden, depth
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, hidden) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        for block in self.blocks:
            nn.init.zeros_(block.fc2.weight)
            nn.init.zeros_(block.fc2.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict[str, int]:
        """The constructor arguments, saved beside the weights in checkpoints."""
        return {"dim": self.dim, "hidden": self.hidden, "depth": self.depth}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, dim) -> x: (B, dim)."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(
                f"MappingNetwork: z must have shape (B, {self.dim}), got {tuple(z.shape)}"
            )
        return z + self.out(self.out_norm(self.blocks(self.inp(z))))

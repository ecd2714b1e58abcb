"""The mapping network theta: Z -> X whose landscape is learned."""

from __future__ import annotations

import torch
from torch import nn

SKIPS = ("identity", "linear")


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
    """theta: (B, latent_dim) -> (B, dim), a residual MLP that starts as the identity.

    theta(z) = embed(z) + head(blocks(z)), where embed(z) is z itself when latent_dim == dim (the
    default), its first `dim` coordinates when Z is wider, and z padded with zeros when it is
    narrower. The last layer of the head starts at zero, so before training theta(z) == embed(z)
    and gradient descent on z is plain optimization-based inversion; training then reshapes the
    landscape that z sees. Each residual block's output layer also starts at zero.

    With skip="linear" embed is a learned (dim, latent_dim) matrix that starts as that fixed
    embedding. It lets theta scale or rotate the part of z that passes straight through, e.g.
    damp the random start z_0 that a fixed identity copies into every answer (the head, behind a
    LayerNorm, cannot cancel a term linear in z); on the face DCGAN it lowers the 10-step loss by
    about 10% at equal training time (bench/RESULTS.md).

    Args:
        dim: size of X (the forward model's flat input size).
        hidden: width of the hidden layers.
        depth: number of residual blocks (>= 1).
        latent_dim: size of Z, the space gradient descent runs in (default: dim).
        skip: "identity" (the fixed embedding) or "linear" (a learned one, starting there).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 2,
        latent_dim: int | None = None,
        skip: str = "identity",
    ) -> None:
        super().__init__()
        if latent_dim is None:
            latent_dim = dim
        for name, value in (
            ("dim", dim),
            ("hidden", hidden),
            ("depth", depth),
            ("latent_dim", latent_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MappingNetwork: {name} must be an int >= 1, got {value!r}")
        if skip not in SKIPS:
            raise ValueError(f"MappingNetwork: skip must be one of {SKIPS}, got {skip!r}")
        self.dim, self.hidden, self.depth, self.latent_dim = dim, hidden, depth, latent_dim
        self.skip = skip
        self.embed: nn.Linear | None = None
        if skip == "linear":
            self.embed = nn.Linear(latent_dim, dim, bias=False)
            with torch.no_grad():
                self.embed.weight.copy_(torch.eye(dim, latent_dim))
        self.inp = nn.Linear(latent_dim, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, hidden) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        for block in self.blocks:
            nn.init.zeros_(block.fc2.weight)
            nn.init.zeros_(block.fc2.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def config(self) -> dict[str, int | str]:
        """The constructor arguments, saved beside the weights in checkpoints."""
        return {
            "dim": self.dim,
            "hidden": self.hidden,
            "depth": self.depth,
            "latent_dim": self.latent_dim,
            "skip": self.skip,
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim) -> x: (B, dim)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"MappingNetwork: z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}"
            )
        if self.embed is not None:
            base = self.embed(z)
        elif self.latent_dim == self.dim:
            base = z
        elif self.latent_dim > self.dim:
            base = z[:, : self.dim]
        else:
            base = nn.functional.pad(z, (0, self.dim - self.latent_dim))
        return base + self.out(self.out_norm(self.blocks(self.inp(z))))

"""Per-row losses L(F(x), y) for inversion: every loss returns one value per batch row."""

from __future__ import annotations

from collections.abc import Callable

import torch

RowLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per row: (B, ...) x (B, ...) -> (B,)."""
    return (pred - target).pow(2).flatten(1).mean(dim=1)


def l1_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per row: (B, ...) x (B, ...) -> (B,)."""
    return (pred - target).abs().flatten(1).mean(dim=1)


LOSSES: dict[str, RowLoss] = {"mse": mse_rows, "l1": l1_rows}


def resolve_loss(loss: str | RowLoss) -> RowLoss:
    """A loss name ("mse", "l1") or a callable (pred, target) -> (B,) per-row losses."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
        return LOSSES[loss]
    if callable(loss):
        return loss
    raise TypeError(
        f"loss must be one of {sorted(LOSSES)} or a callable (pred, target) -> (B,) per-row "
        f"losses, got {type(loss).__name__}"
    )


def checked_row_loss(fn: RowLoss, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """fn(pred, target), checked to be one value per row (a callable returning a scalar would
    silently couple the rows' gradients and break per-row early stopping)."""
    rows = fn(pred, target)
    if not isinstance(rows, torch.Tensor) or rows.shape != (pred.shape[0],):
        shape = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(
            f"loss must return per-row losses of shape ({pred.shape[0]},), got {shape}"
        )
    return rows

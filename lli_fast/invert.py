"""invert(): the drop-in call. K gradient steps on z, answer x = theta(z_K).

With `mapping=None` it is plain optimization-based inversion (OBI) in X: the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lli_fast.latent_opt import LatentOptimizer
from lli_fast.losses import RowLoss, checked_row_loss, resolve_loss


@dataclass
class InversionResult:
    """What invert() found, per row of the batch.

    x: (B, D) the answer, theta(z_K) (or x_K without a mapping).
    z: (B, D) the final latents z_K.
    output: forward_model(x), e.g. the reconstructed images (B, ...).
    loss: (B,) loss of the answer.
    loss_curve: (steps + 1, B) loss at z_0 ... z_K.
    steps_taken: (B,) steps each row actually took (early stop and the guard freeze rows).
    nonfinite: (B,) rows frozen because their loss or gradient became NaN/Inf.
    trajectory: (steps + 1, B, D) z_0 ... z_K when return_trajectory=True, else None.
    """

    x: torch.Tensor
    z: torch.Tensor
    output: torch.Tensor
    loss: torch.Tensor
    loss_curve: torch.Tensor
    steps_taken: torch.Tensor
    nonfinite: torch.Tensor
    trajectory: torch.Tensor | None = None


def _model_tensor(module: nn.Module) -> torch.Tensor | None:
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None


def latent_size(forward_model: nn.Module, mapping: nn.Module | None, init) -> int:
    """The size of z: mapping.latent_dim, else forward_model.input_dim, else the init tensor's."""
    dim = getattr(forward_model, "input_dim", None)
    if mapping is not None:
        if not isinstance(getattr(mapping, "dim", None), int):
            raise TypeError("mapping must have an integer attribute `dim` (use MappingNetwork)")
        if isinstance(dim, int) and mapping.dim != dim:
            raise ValueError(
                f"mapping.dim ({mapping.dim}) must equal the forward model's input_dim ({dim})"
            )
        return int(getattr(mapping, "latent_dim", mapping.dim))
    if isinstance(dim, int) and dim > 0:
        return dim
    if isinstance(init, torch.Tensor) and init.dim() == 2:
        return int(init.shape[1])
    raise ValueError(
        "cannot tell the latent size: pass init=(B, D) tensor, a mapping, or give the forward "
        "model an integer attribute `input_dim`"
    )


def make_init(init, batch: int, dim: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    """z_0 (B, D): a given tensor, a callable n -> (n, D), or a seeded N(0, I) draw (the draw is
    made on the CPU so that the same seed gives the same start on every device)."""
    if init is None or (isinstance(init, str) and init == "normal"):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        gen = torch.Generator().manual_seed(seed)
        z0 = torch.randn(batch, dim, generator=gen)
    elif isinstance(init, str) and init == "zeros":
        z0 = torch.zeros(batch, dim)
    elif isinstance(init, torch.Tensor):
        z0 = init
    elif callable(init):
        z0 = init(batch)
    else:
        raise TypeError(
            f"init must be None, 'normal', 'zeros', a (B, D) tensor or a callable n -> (n, D), "
            f"got {type(init).__name__}"
        )
    if not isinstance(z0, torch.Tensor) or z0.shape != (batch, dim):
        shape = tuple(z0.shape) if isinstance(z0, torch.Tensor) else type(z0).__name__
        raise ValueError(f"init must give a tensor of shape ({batch}, {dim}), got {shape}")
    if isinstance(init, torch.Tensor) and (init.device != like.device or init.dtype != like.dtype):
        raise ValueError(
            f"init must be on the target's device and dtype ({like.device}, {like.dtype}), "
            f"got ({init.device}, {init.dtype})"
        )
    return z0.detach().to(device=like.device, dtype=like.dtype).clone()


def check_target(target: torch.Tensor, forward_model: nn.Module, validate: bool = True) -> None:
    """Target checks that need no forward pass; `validate=False` skips the host-syncing ones."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dim() < 1 or target.shape[0] == 0:
        raise ValueError(
            f"target must be a non-empty batch (B >= 1, ...), got {tuple(target.shape)}"
        )
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating-point tensor, got {target.dtype}")
    ref = _model_tensor(forward_model)
    if ref is not None and (ref.device != target.device):
        raise ValueError(
            f"target must be on the forward model's device ({ref.device}), got {target.device}"
        )
    if ref is not None and ref.is_floating_point() and ref.dtype != target.dtype:
        raise ValueError(
            f"target must have the forward model's dtype ({ref.dtype}), got {target.dtype}"
        )
    if validate and not bool(torch.isfinite(target).all()):
        raise ValueError("target contains NaN or Inf values")


MAX_STEPS = 1_000_000
# invert() checks every this many steps (only when validate=True, since it syncs with the
# device) whether any row is still active, and stops early once none is.
ACTIVE_CHECK_EVERY = 8


def check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int in [0, {MAX_STEPS}], got {steps!r}")


def check_forward_model_mode(forward_model) -> None:
    """Reject batch-norm layers in training mode: every forward pass would update their running
    statistics (changing the model) and couple the rows of the batch through batch statistics."""
    if not isinstance(forward_model, nn.Module):
        return
    for name, sub in forward_model.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            raise ValueError(
                f"forward_model has a batch-norm layer in training mode ({name or 'the model'}): "
                "inversion would update its running statistics and couple the rows; call "
                "forward_model.eval() first"
            )


# Works for torch.no_grad() and torch.inference_mode() callers: z_0, the optimizer state and the
# graph of each step are made outside inference mode, with gradients on.
@torch.inference_mode(False)
@torch.enable_grad()
def invert(
    forward_model: nn.Module,
    target: torch.Tensor,
    mapping: nn.Module | None = None,
    *,
    steps: int = 100,
    optimizer: str = "adam",
    lr: float | torch.Tensor = 0.05,
    init=None,
    loss: str | RowLoss = "mse",
    early_stop: float | None = None,
    max_grad_norm: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.0,
    return_trajectory: bool = False,
    seed: int = 0,
    validate: bool = True,
    backend: str = "auto",
) -> InversionResult:
    """Invert `forward_model` at `target`: K gradient steps on z, answer theta(z_K).

    Args:
        forward_model: F, taking flat inputs (B, D) to outputs shaped like target (B, ...).
        target: y (B, ...), on F's device and dtype, finite.
        mapping: theta (B, D) -> (B, D) from landscape learning; None for plain OBI in X.
        steps: K >= 0 gradient steps.
        optimizer: "adam" or "sgd" (with `momentum`); state is per row.
        lr: > 0, a float or a (B,) tensor (per-row step sizes).
        init: z_0: None/"normal" (seeded N(0, I)), "zeros", (B, D) tensor, or callable n -> (n, D).
        loss: "mse", "l1" or a callable (pred, target) -> (B,) per-row losses.
        early_stop: rows whose loss falls to this value or below stop changing.
        max_grad_norm: > 0 clips each row's gradient norm.
        return_trajectory: keep z_0 ... z_K in the result.
        seed: seed of the default random start.
        validate: False skips checks that synchronise with the device (for real-time loops).
        backend: latent-step backend, "auto" or one of lli_fast.backends.BACKENDS.

    Gradients are taken with respect to z only, so neither F's nor theta's parameters or `.grad`
    change; it works under torch.no_grad() callers (it enables the gradients it needs itself).
    """
    if not isinstance(forward_model, nn.Module) and not callable(forward_model):
        raise TypeError(f"forward_model must be an nn.Module or callable, got {forward_model!r}")
    module = forward_model if isinstance(forward_model, nn.Module) else nn.Module()
    check_forward_model_mode(forward_model)
    check_target(target, module, validate)
    check_steps(steps)
    loss_fn = resolve_loss(loss)
    batch = target.shape[0]
    dim = latent_size(module, mapping, init)
    z = make_init(init, batch, dim, seed, target)
    opt = LatentOptimizer(
        z,
        optimizer=optimizer,
        lr=lr,
        betas=betas,
        momentum=momentum,
        max_grad_norm=max_grad_norm,
        early_stop=early_stop,
        backend=backend,
    )
    if target.is_inference():
        target = target.clone()
    curve = torch.empty(steps + 1, batch, dtype=torch.float32, device=target.device)
    traj = (
        torch.empty(steps + 1, batch, dim, dtype=z.dtype, device=z.device)
        if return_trajectory
        else None
    )
    theta = mapping if mapping is not None else (lambda v: v)

    for t in range(steps):
        if traj is not None:
            traj[t].copy_(z)
        zg = z.detach().requires_grad_(True)
        pred = forward_model(theta(zg))
        if t == 0 and pred.shape != target.shape:
            raise ValueError(
                f"target must have the forward model's output shape {tuple(pred.shape)}, "
                f"got {tuple(target.shape)}"
            )
        rows = checked_row_loss(loss_fn, pred, target)
        (grad,) = torch.autograd.grad(rows.sum(), zg)
        rows = rows.detach()
        curve[t].copy_(rows)
        opt.step(z, grad, rows)
        if validate and (t + 1) % ACTIVE_CHECK_EVERY == 0 and not bool(opt.active.any()):
            # every row stopped or froze: the rest of the trajectory would repeat this point
            if traj is not None:
                traj[t + 1 :].copy_(z.expand(steps - t, -1, -1))
            curve[t + 1 : steps].copy_(rows.expand(steps - t - 1, -1))
            break
    with torch.no_grad():
        if traj is not None:
            traj[steps].copy_(z)
        x = theta(z)
        output = forward_model(x)
        if steps == 0 and output.shape != target.shape:
            raise ValueError(
                f"target must have the forward model's output shape {tuple(output.shape)}, "
                f"got {tuple(target.shape)}"
            )
        final = checked_row_loss(loss_fn, output, target).to(torch.float32)
        curve[steps].copy_(final)
        converged = final <= opt.stop_loss
        nonfinite = ~opt.active & ~converged & (opt.step_count < steps)
        nonfinite |= ~torch.isfinite(final)
    return InversionResult(
        x=x.detach(),
        z=z,
        output=output.detach(),
        loss=final,
        loss_curve=curve,
        steps_taken=opt.step_count,
        nonfinite=nonfinite,
        trajectory=traj,
    )

"""Landscape learning: coordinate descent on the mapping network theta with experience replay.

Each round:
  collect  theta frozen; K latent steps for a batch of targets from random starts; every z_t
           (with its target index, step t and loss) goes into the ring replay buffer, written by
           the fused latent-step op in the same pass that updates z.
  fit      z's fixed; `fit_iters` Adam updates of theta on minibatches drawn from the buffer,
           minimising mean L(F(theta(z)), y[target_index]).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from lli_fast.invert import (
    check_forward_model_mode,
    check_steps,
    check_target,
    latent_size,
    make_init,
)
from lli_fast.latent_opt import LatentOptimizer
from lli_fast.losses import RowLoss, checked_row_loss, resolve_loss
from lli_fast.mapping import MappingNetwork
from lli_fast.replay import RingReplayBuffer


@dataclass
class TrainHistory:
    """Per-round records of training, for plots and logs."""

    round: list[int] = field(default_factory=list)
    collect_loss_start: list[float] = field(default_factory=list)  # mean loss at z_0
    collect_loss_end: list[float] = field(default_factory=list)  # mean loss at z_K
    fit_loss: list[float] = field(default_factory=list)  # mean theta loss over the round's fits
    seconds: list[float] = field(default_factory=list)  # wall time since train() began

    def as_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.__dict__.items()}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class LandscapeTrainer:
    """Trains a MappingNetwork so that K gradient steps on z invert `forward_model` well.

    Args:
        forward_model: F, flat inputs (B, D) -> outputs (B, ...); frozen, never modified.
        mapping: theta (its `dim` is D); trained in place.
        targets: (N, ...) training targets y, on F's device and dtype.
        loss: "mse", "l1" or callable (pred, target) -> (B,) per-row losses.
        steps: K inner steps per trajectory (use the K you will invert with).
        optimizer, lr, betas, momentum, max_grad_norm: the inner latent optimizer, as in invert().
        init: z_0 sampler: None (N(0, I)), "zeros" or a callable n -> (n, D).
        batch_size: trajectories per collect phase.
        buffer_capacity: rows in the ring replay buffer (default: 50 collect phases' worth).
        fit_batch_size, fit_iters: theta minibatch size and updates per round.
        theta_lr: Adam learning rate of theta.
        target_transform: optional callable applied to each minibatch of targets (augmentation).
        seed: seeds the target draws, starts and replay sampling.
        backend: backend of the latent-step and ring ops.
    """

    def __init__(
        self,
        forward_model: nn.Module,
        mapping: MappingNetwork,
        targets: torch.Tensor,
        *,
        loss: str | RowLoss = "mse",
        steps: int = 10,
        optimizer: str = "adam",
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        max_grad_norm: float = 0.0,
        init=None,
        batch_size: int = 32,
        buffer_capacity: int | None = None,
        fit_batch_size: int = 64,
        fit_iters: int = 10,
        theta_lr: float = 1e-3,
        target_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        if not isinstance(mapping, MappingNetwork):
            raise TypeError(f"mapping must be a MappingNetwork, got {type(mapping).__name__}")
        check_forward_model_mode(forward_model)
        latent_size(forward_model, mapping, None)
        check_target(targets, forward_model)
        check_steps(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1 to collect trajectories, got {steps}")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.fit_batch_size = _positive_int("fit_batch_size", fit_batch_size)
        self.fit_iters = _positive_int("fit_iters", fit_iters)
        capacity = buffer_capacity if buffer_capacity is not None else 50 * batch_size * steps
        capacity = _positive_int("buffer_capacity", capacity)
        if capacity < batch_size:
            raise ValueError(
                f"buffer_capacity must be >= batch_size ({batch_size}), got {capacity}"
            )
        if not (isinstance(theta_lr, (int, float)) and math.isfinite(theta_lr) and theta_lr > 0):
            raise ValueError(f"theta_lr must be a finite number > 0, got {theta_lr!r}")
        self.forward_model = forward_model
        self.mapping = mapping
        self.targets = targets
        self.loss_fn = resolve_loss(loss)
        self.steps = steps
        self.opt_kwargs = dict(
            optimizer=optimizer, lr=lr, betas=betas, momentum=momentum, max_grad_norm=max_grad_norm
        )
        LatentOptimizer(targets.new_zeros(1, mapping.dim), backend=backend, **self.opt_kwargs)
        self.init = init
        self.target_transform = target_transform
        self.backend = backend
        self.device = targets.device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.seed = seed
        self.buffer = RingReplayBuffer(
            capacity,
            mapping.dim,
            device=self.device,
            dtype=targets.dtype,
            seed=seed,
            backend=backend,
        )
        self._check_output_shape()
        self.theta_opt = torch.optim.Adam(mapping.parameters(), lr=theta_lr)
        self.history = TrainHistory()
        self.rounds_done = 0

    def _check_output_shape(self) -> None:
        """F(theta(z)) must have the (transformed) targets' shape: a broadcast would silently train
        on a meaningless loss."""
        index = torch.arange(min(2, len(self.targets)), device=self.device)
        y = self._targets_for(index)
        z = torch.zeros(len(index), self.mapping.dim, dtype=self.targets.dtype, device=self.device)
        with torch.no_grad():
            pred = self.forward_model(self.mapping(z))
        if not isinstance(pred, torch.Tensor) or pred.shape != y.shape:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(
                f"targets must have the forward model's output shape per row {got}, got "
                f"{tuple(y.shape)} (after target_transform)"
            )

    def _targets_for(self, index: torch.Tensor) -> torch.Tensor:
        y = self.targets[index]
        return self.target_transform(y) if self.target_transform is not None else y

    def collect(self) -> tuple[float, float]:
        """One collect phase; returns the mean loss at z_0 and at z_K (theta frozen)."""
        n = self.batch_size
        index = torch.randint(len(self.targets), (n,), generator=self.gen).to(self.device)
        y = self._targets_for(index)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
        z = make_init(self.init, n, self.mapping.dim, seed, y)
        opt = LatentOptimizer(z, backend=self.backend, **self.opt_kwargs)
        first = last = None
        with torch.enable_grad():
            for t in range(self.steps):
                zg = z.detach().requires_grad_(True)
                rows = checked_row_loss(self.loss_fn, self.forward_model(self.mapping(zg)), y)
                (grad,) = torch.autograd.grad(rows.sum(), zg)
                rows = rows.detach()
                slots = self.buffer.reserve_slots(n)
                opt.step(z, grad, rows, ring_z=self.buffer.z, ring_slots=slots)
                self.buffer.push(None, index, t, rows)
                first = rows if first is None else first
                last = rows
        return float(first.mean()), float(last.mean())

    def fit(self) -> float:
        """`fit_iters` theta updates on replay minibatches; returns their mean loss."""
        params = [p for p in self.mapping.parameters() if p.requires_grad]
        total = torch.zeros((), device=self.device)
        for _ in range(self.fit_iters):
            z, index, _, _ = self.buffer.sample(self.fit_batch_size)
            y = self._targets_for(index)
            with torch.enable_grad():
                rows = checked_row_loss(self.loss_fn, self.forward_model(self.mapping(z)), y)
                loss = rows.mean()
                # autograd.grad w.r.t. theta only: F's parameters never receive a .grad
                grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            self.theta_opt.step()
            self.theta_opt.zero_grad(set_to_none=True)
            total += loss.detach()
        return float(total) / self.fit_iters

    def train(
        self,
        rounds: int | None = None,
        time_budget_s: float | None = None,
        progress: bool = True,
    ) -> TrainHistory:
        """Run collect + fit rounds until `rounds` are done or `time_budget_s` has passed."""
        if rounds is None and time_budget_s is None:
            raise ValueError("train needs rounds or time_budget_s (or both)")
        if rounds is not None:
            _positive_int("rounds", rounds)
        if time_budget_s is not None and not (
            isinstance(time_budget_s, (int, float)) and 0 < time_budget_s < math.inf
        ):
            raise ValueError(f"time_budget_s must be a finite number > 0, got {time_budget_s!r}")
        was_training = self.mapping.training
        self.mapping.train()
        start = time.perf_counter()
        bar = tqdm(total=rounds, disable=not progress, desc="landscape learning", unit="round")
        done = 0
        try:
            while (rounds is None or done < rounds) and (
                time_budget_s is None or time.perf_counter() - start < time_budget_s
            ):
                loss0, loss_k = self.collect()
                fit_loss = self.fit()
                done += 1
                self.rounds_done += 1
                h = self.history
                h.round.append(self.rounds_done)
                h.collect_loss_start.append(loss0)
                h.collect_loss_end.append(loss_k)
                h.fit_loss.append(fit_loss)
                h.seconds.append(time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix(loss_K=f"{loss_k:.4f}", fit=f"{fit_loss:.4f}")
        finally:
            bar.close()
            self.mapping.train(was_training)
        return self.history

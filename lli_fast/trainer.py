"""Landscape learning: coordinate descent on the mapping network theta with experience replay.

Each round:
  collect  theta frozen; K latent steps for a batch of targets from random starts; every z_t,
           t = 0..K (with its target index, step t and loss) goes into the ring replay buffer,
           z_0..z_{K-1} written by the fused latent-step op in the same pass that updates z.
  fit      z's fixed; `fit_iters` Adam updates of theta on minibatches drawn from the buffer,
           minimising mean L(F(theta(z)), y) against the very target y that z's trajectory ran
           toward.

Targets are rows of the user's tensor and/or samples of the forward model itself (y = F(x), x
from its prior). A trajectory's target must be the one its z_t are later fitted against: when a
target_transform (augmentation) or prior samples are used, each collected target is kept in a
target pool (a ring, like the replay buffer, sized so that a pool slot is reused only after every
ring row that points at it has been overwritten), and the buffer's target_index points there.
"""

from __future__ import annotations

import math
import time
import warnings
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
    nonfinite_rows: list[int] = field(default_factory=list)  # replay rows left out (NaN/Inf)
    skipped_updates: list[int] = field(default_factory=list)  # theta updates not taken (NaN/Inf)
    seconds: list[float] = field(default_factory=list)  # wall time since train() began

    def as_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.__dict__.items()}


def _prior_fraction(value, targets) -> float:
    if value is None:
        return 0.0 if targets is not None else 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"prior_fraction must be a number in [0, 1], got {value!r}")
    if targets is None and value != 1:
        raise ValueError(f"prior_fraction must be 1 when targets is None, got {value!r}")
    return float(value)


def _reference_tensor(forward_model: nn.Module, mapping: nn.Module, targets) -> torch.Tensor:
    """A tensor on the device and of the dtype training runs in."""
    if targets is not None:
        return targets
    for t in forward_model.parameters():
        if t.is_floating_point():
            return t.detach()
    for t in mapping.parameters():
        return t.detach()
    raise ValueError("targets=None needs a forward model or mapping with parameters")


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def _finite_mean(rows: torch.Tensor) -> float:
    """Mean over the finite rows (NaN when none is): frozen, diverged rows do not hide the rest."""
    ok = torch.isfinite(rows)
    return float(rows[ok].mean()) if bool(ok.any()) else math.nan


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class LandscapeTrainer:
    """Trains a MappingNetwork so that K gradient steps on z invert `forward_model` well.

    Args:
        forward_model: F, flat inputs (B, D) -> outputs (B, ...); frozen, never modified.
        mapping: theta (its `dim` is D); trained in place.
        targets: (N, ...) training targets y, on F's device and dtype; or None to train on
            samples of the forward model only (prior_fraction 1).
        loss: "mse", "l1" or callable (pred, target) -> (B,) per-row losses.
        steps: K inner steps per trajectory (use the K you will invert with).
        optimizer, lr, betas, momentum, max_grad_norm: the inner latent optimizer, as in invert().
        init: z_0 sampler: None (N(0, I)), "zeros" or a callable n -> (n, D).
        batch_size: trajectories per collect phase.
        buffer_capacity: rows in the ring replay buffer (default: 50 collect phases' worth).
        fit_batch_size, fit_iters: theta minibatch size and updates per round.
        theta_lr: Adam learning rate of theta.
        target_transform: optional callable applied to each collected batch of targets from
            `targets` (augmentation); the transformed targets are the ones fitted against.
        prior_fraction: share of each collect batch whose targets are y = F(x), x = prior(n)
            (default 0 with targets, 1 without).
        prior: x sampler n -> (n, dim) for those targets (default N(0, I) of theta's output size).
        seed: seeds the target draws, starts and replay sampling.
        backend: backend of the latent-step and ring ops.
        autocast: None (train in the targets' dtype) or torch.bfloat16 / torch.float16: run
            theta and F under torch.autocast in collect and fit (F's output is cast back to the
            training dtype before the loss; z, the replay ring and theta's weights stay in it).
            About 1.8x more rounds per second for the face DCGAN on this project's AVX-512 CPU
            with bfloat16, at the same loss per round (bench/RESULTS.md); invert() itself
            never autocasts.
    """

    def __init__(
        self,
        forward_model: nn.Module,
        mapping: MappingNetwork,
        targets: torch.Tensor | None,
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
        prior_fraction: float | None = None,
        prior: Callable[[int], torch.Tensor] | None = None,
        seed: int = 0,
        backend: str = "auto",
        autocast: torch.dtype | None = None,
    ) -> None:
        if not isinstance(mapping, MappingNetwork):
            raise TypeError(f"mapping must be a MappingNetwork, got {type(mapping).__name__}")
        check_forward_model_mode(forward_model)
        latent_size(forward_model, mapping, None)
        if targets is not None:
            check_target(targets, forward_model)
        self.prior_fraction = _prior_fraction(prior_fraction, targets)
        if prior is not None and not callable(prior):
            raise TypeError(f"prior must be a callable n -> (n, dim), got {type(prior).__name__}")
        if targets is None and target_transform is not None:
            raise ValueError("target_transform needs targets (prior samples are not transformed)")
        check_steps(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1 to collect trajectories, got {steps}")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.fit_batch_size = _positive_int("fit_batch_size", fit_batch_size)
        self.fit_iters = _positive_int("fit_iters", fit_iters)
        rows_per_phase = batch_size * (steps + 1)  # z_0..z_K of each trajectory
        capacity = buffer_capacity if buffer_capacity is not None else 50 * rows_per_phase
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
        ref = _reference_tensor(forward_model, mapping, targets)
        LatentOptimizer(ref.new_zeros(1, mapping.latent_dim), backend=backend, **self.opt_kwargs)
        self.init = init
        self.target_transform = target_transform
        self.prior = prior
        self.backend = backend
        self.device = ref.device
        self.dtype = ref.dtype
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}"
            )
        self.autocast = autocast
        for owner, module in (("mapping", mapping), ("forward_model", forward_model)):
            for t in module.parameters():
                if t.is_floating_point() and t.dtype != self.dtype:
                    raise TypeError(
                        f"{owner}'s parameters are {t.dtype} but training runs in {self.dtype} "
                        f"(the targets' dtype): call {owner}.to({self.dtype})"
                    )
                break
        self.n_targets = 0 if targets is None else len(targets)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.seed = seed
        self.buffer = RingReplayBuffer(
            capacity,
            mapping.latent_dim,
            device=self.device,
            dtype=self.dtype,
            seed=seed,
            backend=backend,
        )
        # Target pool: one slot per trajectory, reused only after all K of its rows have left the
        # ring (the ring holds rows of at most ceil(capacity / (B (K + 1))) + 1 collect phases).
        self.use_pool = target_transform is not None or self.prior_fraction > 0
        phases = -(-capacity // rows_per_phase) + 1
        self.pool_size = phases * batch_size if self.use_pool else 0
        self.pool: torch.Tensor | None = None  # allocated at the first collect
        self._pool_head = 0
        self._check_output_shape()
        self.theta_opt = torch.optim.Adam(mapping.parameters(), lr=theta_lr)
        self.history = TrainHistory()
        self.rounds_done = 0
        self._fit_dropped = self._fit_skipped = 0

    def _check_output_shape(self) -> None:
        """F(theta(z)) must have the (transformed) targets' shape: a broadcast would silently train
        on a meaningless loss."""
        z = torch.zeros(2, self.mapping.latent_dim, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            pred = self._predict(z)
        if not isinstance(pred, torch.Tensor):
            raise ValueError(f"the forward model must return a tensor, got {type(pred).__name__}")
        if self.targets is None:
            return
        n = min(2, len(self.targets))
        y = self.targets[:n]
        if self.target_transform is not None:
            y = self.target_transform(y)
        if not isinstance(y, torch.Tensor) or pred[:n].shape != y.shape:
            got = tuple(pred[:n].shape)
            shown = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"targets must have the forward model's output shape per row {got}, got "
                f"{shown} (after target_transform)"
            )

    def _predict(self, z: torch.Tensor) -> torch.Tensor:
        """F(theta(z)), under autocast when asked, returned in the training dtype."""
        if self.autocast is None:
            return self.forward_model(self.mapping(z))
        with torch.autocast(self.device.type, dtype=self.autocast):
            pred = self.forward_model(self.mapping(z))
        return pred.to(self.dtype) if isinstance(pred, torch.Tensor) else pred

    def _sample_prior_targets(self, n: int) -> torch.Tensor:
        if self.prior is not None:
            x = self.prior(n)
        else:
            x = torch.randn(n, self.mapping.dim, generator=self.gen, dtype=self.dtype)
        if not isinstance(x, torch.Tensor) or x.shape != (n, self.mapping.dim):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"prior(n) must return a ({n}, {self.mapping.dim}) tensor, got {got}")
        with torch.no_grad():
            return self.forward_model(x.to(device=self.device, dtype=self.dtype))

    def _draw_targets(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A collect batch: (index into targets, or len(targets) + pool slot; the targets y).
        Untransformed rows of `targets` are referenced in place; the others go to the pool."""
        n_prior = n if self.targets is None else round(self.prior_fraction * n)
        ys, indices = [], []
        if n_prior < n:
            real = torch.randint(self.n_targets, (n - n_prior,), generator=self.gen)
            y = self.targets[real.to(self.device)]
            if self.target_transform is not None:
                y = self.target_transform(y)
                real = None
            ys.append(y)
            indices.append(real)
        if n_prior > 0:
            ys.append(self._sample_prior_targets(n_prior))
            indices.append(None)
        for i, (y, index) in enumerate(zip(ys, indices, strict=True)):
            if index is None:  # into the pool
                if self.pool is None:
                    self.pool = y.new_empty((self.pool_size, *y.shape[1:]))
                slots = (self._pool_head + torch.arange(len(y))) % self.pool_size
                self._pool_head = (self._pool_head + len(y)) % self.pool_size
                self.pool[slots.to(self.device)] = y.detach()
                index = self.n_targets + slots
            indices[i] = index.to(self.device)
        if len(ys) == 1:
            return indices[0], ys[0]
        return torch.cat(indices), torch.cat(ys)

    def target(self, index: torch.Tensor) -> torch.Tensor:
        """The targets that buffer rows with these target_index values were collected against:
        rows of `targets` below len(targets), target-pool slots from there on."""
        if self.pool is None:
            return self.targets[index]
        if self.targets is None:
            return self.pool[index - self.n_targets]
        in_pool = index >= self.n_targets
        y_real = self.targets[torch.where(in_pool, 0, index)]
        y_pool = self.pool[torch.where(in_pool, index - self.n_targets, 0)]
        return torch.where(in_pool.view(-1, *[1] * (y_real.dim() - 1)), y_pool, y_real)

    def collect(self) -> tuple[float, float]:
        """One collect phase; returns the mean loss at z_0 and at z_K (theta frozen).

        Every z_t of the trajectories, t = 0..K, goes into the ring: z_0..z_{K-1} written by the
        fused latent step as it updates z, and z_K, the point invert() answers with, scored by one
        more forward pass (without it theta would never be fitted where the answer is read).
        """
        n = self.batch_size
        index, y = self._draw_targets(n)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.gen))
        z = make_init(self.init, n, self.mapping.latent_dim, seed, y)
        opt = LatentOptimizer(z, backend=self.backend, **self.opt_kwargs)
        first = None
        with torch.enable_grad():
            for t in range(self.steps):
                zg = z.detach().requires_grad_(True)
                rows = checked_row_loss(self.loss_fn, self._predict(zg), y)
                (grad,) = torch.autograd.grad(rows.sum(), zg)
                rows = rows.detach()
                slots = self.buffer.reserve_slots(n)
                opt.step(z, grad, rows, ring_z=self.buffer.z, ring_slots=slots)
                self.buffer.push(None, index, t, rows)
                first = rows if first is None else first
        with torch.no_grad():
            last = checked_row_loss(self.loss_fn, self._predict(z), y)
        self.buffer.push(z, index, self.steps, last)
        return _finite_mean(first), _finite_mean(last)

    def fit(self) -> float:
        """`fit_iters` theta updates on replay minibatches; returns their mean loss.

        Replay rows whose trajectory turned non-finite (the latent step froze the row: its loss
        was NaN/Inf when collected) are left out of the loss, and an update whose loss or
        gradient is still non-finite is skipped, so one diverging trajectory cannot turn theta's
        weights into NaN. Both are counted in history.nonfinite_rows / skipped_updates.
        """
        params = [p for p in self.mapping.parameters() if p.requires_grad]
        total = torch.zeros((), device=self.device)
        dropped = torch.zeros((), dtype=torch.int64, device=self.device)
        done = skipped = 0
        for _ in range(self.fit_iters):
            z, index, _, stored_loss = self.buffer.sample(self.fit_batch_size)
            ok = torch.isfinite(stored_loss) & torch.isfinite(z).all(dim=1)
            z = torch.where(ok.unsqueeze(1), z, torch.zeros((), dtype=z.dtype, device=z.device))
            weight = ok.to(torch.float32)
            dropped += (~ok).sum()
            y = self.target(index)
            with torch.enable_grad():
                rows = checked_row_loss(self.loss_fn, self._predict(z), y)
                # left-out rows get weight 0 (their z is zeroed, so 0 * a finite loss)
                loss = (rows.float() * weight).sum() / weight.sum().clamp(min=1.0)
                # autograd.grad w.r.t. theta only: F's parameters never receive a .grad
                grads = torch.autograd.grad(loss, params)
            finite = torch.isfinite(loss) & torch.stack([torch.isfinite(g).all() for g in grads])
            if not bool(finite.all()):  # one sync per update: never step on NaN/Inf
                skipped += 1
                continue
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            self.theta_opt.step()
            self.theta_opt.zero_grad(set_to_none=True)
            total += loss.detach()
            done += 1
        self._fit_dropped, self._fit_skipped = int(dropped), skipped
        return float(total) / done if done else math.nan

    def train(
        self,
        rounds: int | None = None,
        time_budget_s: float | None = None,
        progress: bool = True,
    ) -> TrainHistory:
        """Run collect + fit rounds until `rounds` are done or `time_budget_s` would be passed.

        With a time budget, a round starts only if one more round as long as the last one still
        ends within the budget (the first round always runs), so the budget is not overshot by
        a whole round; the progress bar shows the seconds left.
        """
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
        last_round_s = 0.0  # a round is started only if one more like the last fits the budget
        warned = False
        try:
            while (rounds is None or done < rounds) and (
                time_budget_s is None
                or done == 0
                or time.perf_counter() - start + last_round_s <= time_budget_s
            ):
                round_start = time.perf_counter()
                loss0, loss_k = self.collect()
                fit_loss = self.fit()
                done += 1
                self.rounds_done += 1
                h = self.history
                h.round.append(self.rounds_done)
                h.collect_loss_start.append(loss0)
                h.collect_loss_end.append(loss_k)
                h.fit_loss.append(fit_loss)
                h.nonfinite_rows.append(self._fit_dropped)
                h.skipped_updates.append(self._fit_skipped)
                if self._fit_skipped == self.fit_iters and not warned:
                    warnings.warn(
                        f"landscape learning round {self.rounds_done}: every theta update had a "
                        "non-finite loss or gradient and was skipped; the inner lr may be too "
                        "large for this forward model",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    warned = True
                h.seconds.append(time.perf_counter() - start)
                last_round_s = time.perf_counter() - round_start
                bar.update(1)
                postfix = {"loss_K": f"{loss_k:.4f}", "fit": f"{fit_loss:.4f}"}
                if time_budget_s is not None:
                    left = max(0.0, time_budget_s - (time.perf_counter() - start))
                    postfix["left"] = f"{left:.0f}s"
                bar.set_postfix(postfix)
        finally:
            bar.close()
            self.mapping.train(was_training)
        return self.history

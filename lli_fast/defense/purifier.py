"""`Purifier`: a drop-in module that purifies its input, then classifies it.

Two purifiers share one self-supervised loss (`ContrastivePurificationLoss`):
  reverse attack     (mapping=None) `steps` signed PGD steps on r in the eps_v-ball (Mao et al.).
  learned landscape  (mapping=theta) K gradient steps on z with `lli_fast.invert`, then
                     r = eps_v tanh(u / eps_v), u = theta(z_K) - theta(0); theta is trained
                     (landscape.py) so that one step suffices.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lli_fast.defense.attack import check_images
from lli_fast.defense.reverse import ContrastivePurificationLoss, reverse_attack
from lli_fast.invert import invert
from lli_fast.mapping import MappingNetwork


def apply_perturbation(x: torch.Tensor, u: torch.Tensor, eps_v: float) -> torch.Tensor:
    """x + eps_v * tanh(u / eps_v), clamped to [0, 1]. x: (B, C, H, W); u: (B, C*H*W).

    tanh keeps r inside the eps_v-ball for any u without a projection step, and is the identity
    near 0, so a small theta output is a small perturbation. The clamp's gradient is passed
    straight through: with a plain clamp, a background pixel at exactly 0 gets a gradient or none
    depending on the sign of a 1e-8 rounding error in r, which made the purified image depend on
    the batch it came in (float rounding differs with the batch size).
    """
    y = x + eps_v * torch.tanh(u.view(x.shape) / eps_v)
    return y + (y.clamp(0, 1) - y).detach()


class CenteredMapping(nn.Module):
    """Forward model u -> u - theta(0), holding theta by reference (not as a submodule).

    Composed with theta it gives u(z) = theta(z) - theta(0), so z_0 = 0 always means "no
    perturbation". Without it, half of what the landscape trainer fits (the z_0 rows of every
    trajectory) would teach theta(0) one universal perturbation for all images.

    `offset` is theta(0) precomputed (1, D) for a frozen theta at test time, which saves a pass
    of theta per call; None computes it on every call (training, where theta changes).
    """

    def __init__(self, mapping: MappingNetwork, offset: torch.Tensor | None = None) -> None:
        super().__init__()
        self.__dict__["mapping"] = mapping
        self.offset = offset

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: (B, D) -> (B, D)."""
        offset = self.offset
        if offset is None:
            offset = self.mapping(u.new_zeros(1, u.shape[1]))
        return u - offset


class PerturbationLoss:
    """Adapter for `invert` / `LandscapeTrainer`: loss(u, x_flat) -> (B,).

    u: (B, D) perturbation parameters; x_flat: (B, D) the images to purify, flattened. The loss
    is the contrastive loss of x + r(u), plus r_weight * mean(((x + r(u) - x) / eps_v)^2) over
    the pixels (after the clamp): a small-change prior that keeps an amortised purifier from
    learning one perturbation that lowers the contrastive loss of every image at once.
    """

    def __init__(
        self,
        ssl_loss: ContrastivePurificationLoss,
        eps_v: float,
        image_shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        r_weight: float = 0.0,
        score_answer: bool = True,
    ) -> None:
        self.ssl_loss, self.eps_v, self.image_shape = ssl_loss, eps_v, tuple(image_shape)
        self.generator, self.r_weight, self.score_answer = generator, r_weight, score_answer

    def __call__(self, u: torch.Tensor, x_flat: torch.Tensor) -> torch.Tensor:
        if not self.score_answer and not torch.is_grad_enabled():
            # invert() scores its answer once more with gradients off; a purifier never reads
            # that score, so skip the views' forward pass (NaN marks the rows as not scored).
            return u.new_full((u.shape[0],), float("nan"))
        x = x_flat.view(-1, *self.image_shape)
        purified = apply_perturbation(x, u, self.eps_v)
        rows = self.ssl_loss(purified, self.generator)
        if self.r_weight:
            # The change that reaches the classifier (after the clamp), relative to the budget.
            change = ((purified - x) / self.eps_v).pow(2).flatten(1).mean(dim=1)
            rows = rows + self.r_weight * change
        return rows


class Purifier(nn.Module):
    """Purify a batch of images at test time, then return the classifier's logits on them.

    Args:
        classifier: the model to defend, (B, C, H, W) -> (B, classes) logits, with an
            `embed(x) -> (B, P)` contrastive projection head (e.g. ContrastiveCNN). Its
            parameters and .grad are never modified.
        mapping: a trained MappingNetwork(C*H*W) for the learned-landscape defense; None for the
            reverse-attack (PGD) baseline.
        eps_v: L-infinity budget of the purifying perturbation.
        steps: gradient steps (on z with a mapping, on r without).
        lr: inner step size on z for the learned landscape (Adam's first step moves each
            coordinate by about lr).
        optimizer: "adam" or "sgd", the latent optimizer of the learned landscape.
        step_size: PGD step of the reverse attack; default min(eps_v, 2.5 * eps_v / steps).
        n_views, max_shift, noise_std: the views of the contrastive loss (match training).
        seed: seeds the views; every forward reseeds, so purification is deterministic and each
            row's result does not depend on the rest of the batch.
        r_weight, centered: the learned landscape's small-change prior and u = theta(z) -
            theta(0) parametrisation; use the values theta was trained with
            (`LandscapeConfig.purifier` does).
        backend: latent-step backend of `invert`.

    forward(x): x (B, C, H, W) float in [0, 1] -> logits (B, classes). Works for any B >= 1 and
    under torch.no_grad() / inference_mode callers (it enables the gradients it needs itself).
    The purification is not differentiated through (its result is detached).
    """

    def __init__(
        self,
        classifier: nn.Module,
        mapping: MappingNetwork | None = None,
        *,
        eps_v: float = 0.3,
        steps: int = 1,
        lr: float = 0.3,
        optimizer: str = "adam",
        step_size: float | None = None,
        n_views: int = 2,
        max_shift: int = 2,
        noise_std: float = 0.1,
        seed: int = 0,
        r_weight: float = 0.0,
        centered: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
        if mapping is not None and not isinstance(mapping, MappingNetwork):
            raise TypeError(f"mapping must be a MappingNetwork or None, got {type(mapping)}")
        if not 0 < eps_v <= 1:
            raise ValueError(f"eps_v must be in (0, 1], got {eps_v}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        self.classifier = classifier
        self.mapping = mapping
        self.loss = ContrastivePurificationLoss(
            classifier, n_views=n_views, max_shift=max_shift, noise_std=noise_std
        )
        self.input_shape = tuple(getattr(classifier, "input_shape", ()) or ())
        if mapping is not None and self.input_shape:
            numel = int(torch.Size(self.input_shape).numel())
            if mapping.dim != numel:
                raise ValueError(
                    f"mapping.dim must equal the image size C*H*W = {numel}, got {mapping.dim}"
                )
        self.eps_v, self.steps, self.lr, self.optimizer = eps_v, steps, lr, optimizer
        self.step_size, self.seed, self.backend = step_size, seed, backend
        self.r_weight, self.centered = r_weight, centered
        self._offset_cache: tuple | None = None
        # Listed once: walking the module tree on every call costs more than theta's forward.
        self._mapping_params = list(mapping.parameters()) if mapping is not None else []
        ref = next(classifier.parameters(), None)
        self._dtype = ref.dtype if ref is not None else None

    @property
    def method(self) -> str:
        return "reverse_attack" if self.mapping is None else "learned_landscape"

    def _check(self, x: object) -> torch.Tensor:
        x = check_images(x, "x")
        if self.input_shape and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if self._dtype is not None and x.dtype != self._dtype:
            raise TypeError(f"x must have the classifier's dtype {self._dtype}, got {x.dtype}")
        return x

    def _offset(self, flat: torch.Tensor) -> torch.Tensor:
        """theta(0) (1, D), cached until theta's weights change (any in-place update, such as an
        optimizer step or load_state_dict, bumps a parameter's version counter)."""
        key = (flat.device, flat.dtype, *(p._version for p in self._mapping_params))
        if self._offset_cache is None or self._offset_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                offset = self.mapping(torch.zeros(1, flat.shape[1], device=flat.device))
            self._offset_cache = (key, offset.to(flat.dtype))
        return self._offset_cache[1]

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> purified images (B, C, H, W) in [0, 1], detached."""
        x = self._check(x)
        if self.mapping is None:
            return reverse_attack(
                self.loss, x, self.eps_v, self.steps, step_size=self.step_size, seed=self.seed
            )
        gen = torch.Generator().manual_seed(self.seed)
        loss = PerturbationLoss(
            self.loss, self.eps_v, x.shape[1:], gen, self.r_weight, score_answer=False
        )
        flat = x.reshape(len(x), -1)
        forward_model = nn.Identity()
        if self.centered:
            forward_model = CenteredMapping(self.mapping, self._offset(flat))
        result = invert(
            forward_model,
            flat,
            self.mapping,
            steps=self.steps,
            optimizer=self.optimizer,
            lr=self.lr,
            init="zeros",
            loss=loss,
            validate=False,
            backend=self.backend,
        )
        with torch.no_grad():
            return apply_perturbation(x, result.output, self.eps_v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) float in [0, 1] -> the classifier's logits (B, classes) on purify(x)."""
        return self.classifier(self.purify(x))

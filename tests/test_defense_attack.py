"""The project's L-inf PGD: its contract (ball, pixel range, eps = 0) and its effect."""

from __future__ import annotations

import copy

import pytest
import torch
from defense_tiny import heldout, tiny_classifier

from lli_fast.defense.attack import pgd_attack
from lli_fast.defense.classifier import accuracy


def test_eps_zero_changes_nothing():
    x, y = heldout(16)
    adv = pgd_attack(tiny_classifier(), x, y, 0.0, steps=5)
    assert torch.equal(adv, x)


@pytest.mark.parametrize("eps", [0.03, 0.3])
def test_stays_in_the_eps_ball_and_the_pixel_range(eps):
    x, y = heldout(64)
    gen = torch.Generator().manual_seed(0)
    # A step larger than the ball stresses the projection on every step.
    adv = pgd_attack(tiny_classifier(), x, y, eps, steps=5, step_size=0.5, generator=gen)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    # It does use the budget: most pixels that can move by eps do.
    assert (adv - x).abs().max() >= eps - 1e-6


def test_accuracy_falls_monotonically_with_eps():
    x, y = heldout(200)
    model = tiny_classifier()
    accs = []
    for eps in [0.0, 0.02, 0.05, 0.1, 0.2, 0.3]:
        adv = pgd_attack(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(1))
        accs.append(accuracy(model, adv, y))
    assert all(a >= b for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[0] > 0.7 and accs[-1] < 0.05, accs


def test_model_parameters_and_grads_untouched_under_no_grad():
    x, y = heldout(8)
    model = copy.deepcopy(tiny_classifier()).requires_grad_(True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        adv = pgd_attack(model, x, y, 0.1, steps=3)
    assert not torch.equal(adv, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_bad_inputs_raise_clear_errors():
    x, y = heldout(4)
    model = tiny_classifier()
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        pgd_attack(model, (x * 255).to(torch.uint8), y, 0.1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        pgd_attack(model, x[:, 0], y, 0.1)
    with pytest.raises(ValueError, match=r"x must have values in \[0, 1\]"):
        pgd_attack(model, x * 2, y, 0.1)
    with pytest.raises(ValueError, match="eps must be in"):
        pgd_attack(model, x, y, -0.1)
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        pgd_attack(model, x, y[:2], 0.1)

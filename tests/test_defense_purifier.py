"""Purifier's contract: shapes, batch 1 and large batches, no_grad callers, untouched classifier,
clear input errors; and that both purifiers actually lower the contrastive loss."""

from __future__ import annotations

import copy

import pytest
import torch
from defense_tiny import heldout, tiny_classifier

from lli_fast.defense.attack import pgd_attack
from lli_fast.defense.landscape import LandscapeConfig, train_landscape
from lli_fast.defense.purifier import Purifier
from lli_fast.defense.reverse import ContrastivePurificationLoss, reverse_attack
from lli_fast.mapping import MappingNetwork

EPS_V = 0.2


def purifiers(classifier) -> dict[str, Purifier]:
    torch.manual_seed(0)
    mapping = MappingNetwork(784, hidden=32, depth=1)
    with torch.no_grad():  # a non-identity theta, so the landscape path is really exercised
        mapping.out.weight.normal_(0, 0.02)
    mapping.requires_grad_(False)
    return {
        "reverse": Purifier(classifier, eps_v=EPS_V, steps=3),
        "landscape": Purifier(classifier, mapping, eps_v=EPS_V, steps=1, lr=0.1),
    }


@pytest.fixture(scope="module")
def attacked():
    x, y = heldout(40)
    return pgd_attack(tiny_classifier(), x, y, 0.2, steps=5), y


@pytest.mark.parametrize("method", ["reverse", "landscape"])
def test_shapes_range_budget_and_batch_independence(method, attacked):
    x, _ = attacked
    purifier = purifiers(tiny_classifier())[method]
    logits = purifier(x)
    assert logits.shape == (40, 10) and logits.dtype == torch.float32
    purified = purifier.purify(x)
    assert purified.shape == x.shape
    assert (purified - x).abs().max() <= EPS_V + 1e-6
    assert purified.min() >= 0 and purified.max() <= 1
    assert (purified - x).abs().mean() > 0.01 * EPS_V  # it did move
    one = purifier.purify(x[7:8])  # batch 1 gives row 7's answer: views are shared per row
    assert one.shape == (1, 1, 28, 28)
    close = ((one - purified[7:8]).abs() < 1e-4).float().mean()
    assert close > 0.99, close  # a sign step may flip where a gradient entry is ~0
    torch.testing.assert_close(purifier(x), logits)  # deterministic


@pytest.mark.parametrize("method", ["reverse", "landscape"])
def test_classifier_params_and_grads_untouched_under_no_grad(method, attacked):
    x, _ = attacked
    classifier = copy.deepcopy(tiny_classifier()).requires_grad_(True)
    for p in classifier.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    purifier = purifiers(classifier)[method]
    with torch.no_grad():
        out = purifier(x[:5])
    with torch.inference_mode():
        torch.testing.assert_close(purifier(x[:5]), out)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in classifier.parameters())
    if purifier.mapping is not None:
        assert all(p.grad is None for p in purifier.mapping.parameters())


def test_reverse_attack_lowers_the_contrastive_loss(attacked):
    x, _ = attacked
    loss = ContrastivePurificationLoss(tiny_classifier(), n_views=4)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731 (same views for both)
    with torch.no_grad():
        before = loss(x, gen()).mean()
        after = loss(reverse_attack(loss, x, EPS_V, steps=10), gen()).mean()
    assert after < 0.7 * before, (before, after)
    assert torch.equal(reverse_attack(loss, x, EPS_V, steps=0), x)


def test_landscape_training_lowers_the_one_step_objective(attacked):
    """What landscape learning is for: after training theta, ONE step on z reaches a lower
    purification objective than one step of the untrained (identity) theta."""
    x, _ = attacked
    cfg = LandscapeConfig(
        eps_v=EPS_V, hidden=32, rounds=20, batch_size=16, fit_batch_size=32, fit_iters=2
    )
    mapping, history = train_landscape(tiny_classifier(), x, cfg)
    assert len(history["round"]) == 20
    assert all(p.grad is None and not p.requires_grad for p in mapping.parameters())
    untrained = MappingNetwork(784, hidden=32, depth=1).requires_grad_(False)
    loss = ContrastivePurificationLoss(tiny_classifier(), n_views=8)
    objective = {}
    for name, theta in (("trained", mapping), ("untrained", untrained)):
        purified = cfg.purifier(tiny_classifier(), theta).purify(x)
        with torch.no_grad():
            ssl = loss(purified, torch.Generator().manual_seed(3))
        change = ((purified - x) / EPS_V).pow(2).flatten(1).mean(1)
        objective[name] = float((ssl + cfg.r_weight * change).mean())
    assert objective["trained"] < 0.9 * objective["untrained"], objective


def test_bad_inputs_raise_clear_errors():
    x, _ = heldout(2)
    purifier = purifiers(tiny_classifier())["landscape"]
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        purifier(x.numpy())
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        purifier((x * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="classifier's dtype torch.float32"):
        purifier(x.double())
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 28, 28\)"):
        purifier(x[:, :, :27])
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        purifier(x[:, 0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\) with B >= 1"):
        purifier(x[:0])
    with pytest.raises(ValueError, match=r"x must have values in \[0, 1\]"):
        purifier(x - 0.5)
    with pytest.raises(ValueError, match="eps_v must be in"):
        Purifier(tiny_classifier(), eps_v=0.0)
    with pytest.raises(ValueError, match="mapping.dim must equal"):
        Purifier(tiny_classifier(), MappingNetwork(10, hidden=4, depth=1))
    with pytest.raises(TypeError, match="embed"):
        Purifier(torch.nn.Linear(784, 10))

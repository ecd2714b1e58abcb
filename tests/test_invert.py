"""invert(): plain OBI and with a mapping; per-row contract; errors that name the argument."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import TinyGenerator, snapshot, unchanged

from lli_fast.invert import invert
from lli_fast.losses import mse_rows
from lli_fast.mapping import MappingNetwork


@pytest.fixture
def problem():
    torch.manual_seed(0)
    gen = TinyGenerator()
    x_true = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = gen(x_true)
    return gen, x_true, y


def test_plain_obi_matches_torch_optim_adam(problem):
    gen, _, y = problem
    z0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    res = invert(gen, y, steps=15, lr=0.05, init=z0)
    # The same K Adam steps, written with torch.optim on the whole batch: the per-row losses
    # sum, so each row's gradient is its own and Adam is element-wise.
    x = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    losses = []
    for _ in range(15):
        rows = mse_rows(gen(x), y)
        losses.append(rows.detach())
        opt.zero_grad()
        rows.sum().backward()
        opt.step()
    torch.testing.assert_close(res.x, x.detach())
    torch.testing.assert_close(res.loss_curve[:15], torch.stack(losses), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.loss, mse_rows(gen(x.detach()), y))
    assert res.loss_curve.shape == (16, 5)
    assert torch.equal(res.steps_taken, torch.full((5,), 15))
    assert not res.nonfinite.any()


def test_loss_decreases_and_output_is_model_of_x(problem):
    gen, _, y = problem
    res = invert(gen, y, steps=60, lr=0.1)
    assert (res.loss_curve[-1] < 0.5 * res.loss_curve[0]).all()
    torch.testing.assert_close(res.output, gen(res.x))


def test_identity_mapping_equals_plain_obi(problem):
    gen, _, y = problem
    theta = MappingNetwork(8, hidden=16, depth=1)  # starts as the identity
    a = invert(gen, y, steps=10, lr=0.05, seed=3)
    b = invert(gen, y, theta, steps=10, lr=0.05, seed=3)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.loss_curve, b.loss_curve, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("latent_dim", [5, 8, 13])
def test_linear_skip_starts_as_the_fixed_embedding_and_is_learned(problem, latent_dim):
    gen, _, y = problem
    fixed = MappingNetwork(8, hidden=16, depth=1, latent_dim=latent_dim)
    learned = MappingNetwork(8, hidden=16, depth=1, latent_dim=latent_dim, skip="linear")
    learned.load_state_dict(fixed.state_dict(), strict=False)  # same head weights
    z = torch.randn(6, latent_dim)
    torch.testing.assert_close(learned(z), fixed(z), rtol=0, atol=0)
    # the embedding is a parameter: a gradient reaches it and changing it changes theta(z)
    ((gen(learned(z)) - y[:1]) ** 2).mean().backward()
    assert learned.embed.weight.grad is not None and learned.embed.weight.grad.abs().sum() > 0
    with torch.no_grad():
        learned.embed.weight.mul_(0.5)
    assert not torch.allclose(learned(z), fixed(z))
    with pytest.raises(ValueError, match="skip must be one of"):
        MappingNetwork(8, skip="conv")


def test_sgd_matches_torch_optim_sgd(problem):
    gen, _, y = problem
    z0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    res = invert(gen, y, steps=12, optimizer="sgd", momentum=0.9, lr=0.2, init=z0)
    x = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.2, momentum=0.9)
    for _ in range(12):
        opt.zero_grad()
        mse_rows(gen(x), y).sum().backward()
        opt.step()
    torch.testing.assert_close(res.x, x.detach())


def test_never_touches_model_or_mapping_params_and_grads(problem):
    gen, _, y = problem
    theta = MappingNetwork(8, hidden=16, depth=1)
    with torch.no_grad():
        theta.out.weight.normal_()
    for p in gen.parameters():  # a stale .grad a user left behind must survive
        p.grad = torch.full_like(p, 7.0)
    before_g, before_t = snapshot(gen), snapshot(theta)
    invert(gen, y, theta, steps=5, lr=0.1)
    assert unchanged(gen, before_g)
    assert unchanged(theta, before_t)


def test_works_under_no_grad_and_inference_mode(problem):
    gen, _, y = problem
    ref = invert(gen, y, steps=5, lr=0.1, seed=5)
    with torch.no_grad():
        a = invert(gen, y, steps=5, lr=0.1, seed=5)
    with torch.inference_mode():
        b = invert(gen, y, steps=5, lr=0.1, seed=5)
    torch.testing.assert_close(a.x, ref.x)
    torch.testing.assert_close(b.x, ref.x)


def test_early_stop_freezes_rows_at_threshold(problem):
    gen, _, y = problem
    full = invert(gen, y, steps=40, lr=0.1, seed=6)
    threshold = float(full.loss_curve[10].median())
    res = invert(gen, y, steps=40, lr=0.1, seed=6, early_stop=threshold)
    stopped = res.steps_taken < 40
    assert stopped.any() and (~stopped).any() or stopped.all()
    for b in torch.nonzero(stopped).flatten().tolist():
        t = int(res.steps_taken[b])
        # the row stopped at the first step its loss was <= threshold, and never moved again
        assert res.loss_curve[t, b] <= threshold
        assert (res.loss_curve[:t, b] > threshold).all()
        assert torch.all(res.loss_curve[t:, b] == res.loss_curve[t, b])
    assert not res.nonfinite.any()


def test_nonfinite_row_is_frozen_and_reported(problem):
    gen, _, y = problem

    def loss(pred, target):  # row 2's loss is NaN: it must not poison the other rows
        rows = mse_rows(pred, target)
        return torch.cat([rows[:2], rows[2:3] * math.nan, rows[3:]])

    res = invert(gen, y, steps=8, lr=0.1, loss=loss, seed=7)
    assert res.nonfinite.tolist() == [False, False, True, False, False]
    assert int(res.steps_taken[2]) == 0
    assert torch.isfinite(res.loss_curve[:, [0, 1, 3, 4]]).all()
    assert (res.loss_curve[-1, [0, 1, 3, 4]] < res.loss_curve[0, [0, 1, 3, 4]]).all()


def test_per_row_lr_and_zero_steps(problem):
    gen, _, y = problem
    lr = torch.tensor([0.0001, 0.3, 0.3, 0.3, 0.3])
    res = invert(gen, y, steps=10, lr=lr, seed=8)
    moved = (res.x - invert(gen, y, steps=0, seed=8).x).norm(dim=1)
    assert moved[0] < 0.01 and (moved[1:] > 0.1).all()
    zero = invert(gen, y, steps=0, seed=8)
    assert zero.loss_curve.shape == (1, 5)
    torch.testing.assert_close(zero.loss, mse_rows(gen(zero.x), y))


def test_return_trajectory(problem):
    gen, _, y = problem
    res = invert(gen, y, steps=4, lr=0.1, return_trajectory=True, seed=9)
    assert res.trajectory.shape == (5, 5, 8)
    torch.testing.assert_close(res.trajectory[-1], res.z)
    z0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(res.trajectory[0], z0)


def test_custom_loss_callable(problem):
    gen, _, y = problem
    l1 = lambda p, t: (p - t).abs().flatten(1).sum(1)  # noqa: E731
    res = invert(gen, y, steps=20, lr=0.05, loss=l1)
    assert (res.loss_curve[-1] < res.loss_curve[0]).all()


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(steps=-1), ValueError, "steps"),
        (dict(steps=2.5), ValueError, "steps"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lr=1e39), ValueError, "lr must be between .* float32"),  # overflows float32
        (dict(lr=1e-50), ValueError, "lr must be between .* float32"),  # rounds to 0
        (dict(lr=torch.tensor([0.1, -0.1, 0.1, 0.1, 0.1])), ValueError, "lr"),
        (dict(optimizer="lbfgs"), ValueError, "optimizer"),
        (dict(loss="huber"), ValueError, "loss"),
        (dict(loss=42), TypeError, "loss"),
        (dict(loss=lambda p, t: (p - t).pow(2).mean()), ValueError, "per-row"),
        (dict(init=torch.zeros(5, 7)), ValueError, "init"),
        (dict(init=torch.zeros(5, 8, dtype=torch.float64)), ValueError, "init"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    ],
)
def test_bad_arguments_name_the_argument(problem, kwargs, exc, words):
    gen, _, y = problem
    with pytest.raises(exc, match=words):
        invert(gen, y, **kwargs)


def test_bad_targets_name_the_target(problem):
    gen, _, y = problem
    with pytest.raises(ValueError, match=r"target must have the forward model's output shape"):
        invert(gen, y[:, :, :4], steps=3)
    with pytest.raises(ValueError, match=r"target must have the forward model's output shape"):
        invert(gen, y[:, :, :4], steps=0)
    bad = y.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="target contains NaN or Inf"):
        invert(gen, bad, steps=3)
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="target contains NaN or Inf"):
        invert(gen, bad, steps=3)
    with pytest.raises(ValueError, match="non-empty batch"):
        invert(gen, y[:0], steps=3)
    with pytest.raises(ValueError, match=r"target must have the forward model's dtype"):
        invert(gen, y.double(), steps=3)
    with pytest.raises(TypeError, match="floating-point"):
        invert(gen, y.to(torch.int64), steps=3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        invert(gen, y.numpy(), steps=3)


def test_device_mismatch_is_named(problem):
    gen, _, y = problem
    meta_target = torch.empty(y.shape, device="meta")
    with pytest.raises(ValueError, match=r"target must be on the forward model's device"):
        invert(gen, meta_target, steps=1)


def test_public_api_names_are_the_functions():
    import lli_fast
    import lli_fast.invert  # noqa: F401  (importing the submodule must not shadow the function)
    import lli_fast.trainer  # noqa: F401

    assert callable(lli_fast.invert) and lli_fast.invert is invert
    assert lli_fast.MappingNetwork is MappingNetwork


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.input_dim = inner, 0, inner.input_dim

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_stops_once_every_row_has_stopped(problem):
    gen, _, y = problem
    counting = CountingModel(gen)
    res = invert(counting, y, steps=100_000, early_stop=10.0)  # every row is done at step 0
    assert counting.calls <= 8 + 1  # one check interval, then the answer's forward
    assert torch.equal(res.steps_taken, torch.zeros(5, dtype=torch.int64))
    assert res.loss_curve.shape == (100_001, 5)
    assert torch.equal(res.loss_curve[-1], res.loss_curve[0])
    with pytest.raises(ValueError, match="steps must be an int in"):
        invert(gen, y, steps=10**9)


def test_batchnorm_in_training_mode_is_refused():
    from lli_fast.models import face_dcgan

    gen = face_dcgan().train()
    before = [b.clone() for b in gen.buffers()]
    y = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"batch-norm layer in training mode .*forward_model.eval"):
        invert(gen, y, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, gen.buffers(), strict=True))


def test_mapping_size_must_fit_the_model(problem):
    gen, _, y = problem
    with pytest.raises(ValueError, match=r"mapping.dim \(7\) must equal .*input_dim \(8\)"):
        invert(gen, y, MappingNetwork(7, hidden=8, depth=1), steps=2)


@pytest.mark.parametrize("latent_dim", [5, 8, 13])
def test_mapping_with_its_own_latent_size(problem, latent_dim):
    # Z narrower or wider than X: at init theta embeds z (zero-padded / first 8 coordinates), so
    # invert() on z equals plain optimization over that embedding; z has the mapping's size.
    gen, _, y = problem
    theta = MappingNetwork(8, hidden=8, depth=1, latent_dim=latent_dim)
    z0 = torch.randn(5, latent_dim, generator=torch.Generator().manual_seed(3))
    res = invert(gen, y, theta, steps=4, lr=0.05, init=z0)
    assert res.z.shape == (5, latent_dim)
    if latent_dim < 8:  # X's last coordinates stay at the zero padding, and the loss falls
        assert torch.equal(res.x[:, latent_dim:], torch.zeros(5, 8 - latent_dim))
        assert (res.loss_curve[-1] < res.loss_curve[0]).all()
    else:
        plain = invert(gen, y, steps=4, lr=0.05, init=z0[:, :8])
        torch.testing.assert_close(res.x, plain.x)
        torch.testing.assert_close(res.loss_curve, plain.loss_curve)
        # the extra coordinates get no gradient until theta is trained
        torch.testing.assert_close(res.z[:, 8:], z0[:, 8:], rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"z must have shape \(B, {latent_dim}\)"):
        theta(torch.zeros(2, latent_dim + 1))

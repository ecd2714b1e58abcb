"""LandscapeTrainer: coordinate descent lowers the K-step loss; it never touches F."""

from __future__ import annotations

import math
import re

import pytest
import torch
from tiny import TinyGenerator, snapshot, unchanged

from lli_fast.invert import invert
from lli_fast.mapping import MappingNetwork
from lli_fast.trainer import LandscapeTrainer


@pytest.fixture
def setup():
    torch.manual_seed(0)
    gen = TinyGenerator(dim=8)
    g = torch.Generator().manual_seed(1)
    # targets come from a shifted prior: plain OBI from N(0, I) starts far from them, and a
    # learned landscape can (and must) learn where they live and how to get there in K steps.
    with torch.no_grad():
        train_y = gen(torch.randn(64, 8, generator=g) * 0.5 + 1.5)
        test_y = gen(torch.randn(32, 8, generator=g) * 0.5 + 1.5)
    return gen, train_y, test_y


def k_step_loss(gen, y, theta, k=5, lr=0.05):
    return float(invert(gen, y, theta, steps=k, lr=lr, seed=11).loss.mean())


def tiny_trainer(gen, theta, train_y, **kwargs):
    """The trainer settings that lower the tiny generator's 5-step loss in 25 rounds."""
    settings = dict(
        steps=5, lr=0.05, batch_size=16, fit_batch_size=64, fit_iters=10, theta_lr=3e-3, seed=0
    )
    return LandscapeTrainer(gen, theta, train_y, **{**settings, **kwargs})


def test_training_lowers_held_out_k_step_loss(setup):
    gen, train_y, test_y = setup
    theta = MappingNetwork(8, hidden=64, depth=2)
    before = k_step_loss(gen, test_y, theta)  # theta starts as the identity: plain OBI
    trainer = tiny_trainer(gen, theta, train_y)
    history = trainer.train(rounds=25, progress=False)
    after = k_step_loss(gen, test_y, theta.eval())
    assert len(history.round) == 25 and trainer.rounds_done == 25
    assert after < 0.3 * before, (before, after)  # measured about 0.08-0.09 over seeds
    # every collect phase pushed K + 1 rows per trajectory into the ring (z_0..z_K)
    assert len(trainer.buffer) == min(25 * 16 * 6, trainer.buffer.capacity)
    first, last = history.fit_loss[:5], history.fit_loss[-5:]
    assert sum(last) < sum(first)


def test_bfloat16_autocast_trains_in_low_precision_and_stores_float32(setup):
    gen, train_y, test_y = setup
    theta = MappingNetwork(8, hidden=64, depth=2)
    before = k_step_loss(gen, test_y, theta)
    seen = []
    hook = gen.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer = tiny_trainer(gen, theta, train_y, autocast=torch.bfloat16)
    trainer.train(rounds=25, progress=False)
    hook.remove()
    after = k_step_loss(gen, test_y, theta.eval())  # evaluated in float32
    assert torch.bfloat16 in seen  # F really ran under autocast in collect and fit
    assert after < 0.3 * before, (before, after)
    assert trainer.buffer.z.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in theta.parameters())


def test_ring_holds_the_trajectories(setup):
    gen, train_y, _ = setup
    theta = MappingNetwork(8, hidden=16, depth=1)
    trainer = LandscapeTrainer(
        gen,
        theta,
        train_y,
        steps=3,
        lr=0.05,
        batch_size=4,
        fit_iters=1,
        seed=0,
        buffer_capacity=16,
    )
    torch.manual_seed(123)
    start, end = trainer.collect()
    buf = trainer.buffer
    z, idx, step, loss = (t.clone() for t in (buf.z, buf.target_index, buf.step, buf.loss))
    assert step.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # z_0 .. z_K, K = 3
    assert start == pytest.approx(float(loss[:4].mean())) and end == pytest.approx(
        float(loss[12:].mean())
    )
    # row t of each trajectory is z_t, with the loss of theta(z_t) against its own target
    y = train_y[idx]
    with torch.no_grad():
        rows = ((gen(theta(z)) - y) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, rows, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(idx[:4], idx[i : i + 4]) for i in (4, 8, 12))
    assert not torch.equal(z[:4], z[4:8]) and not torch.equal(z[8:12], z[12:])
    # z_K is the point invert() answers with: K steps from the same start land on it
    same = invert(gen, train_y[idx[:4]], theta, steps=3, lr=0.05, init=z[:4].clone())
    torch.testing.assert_close(same.z, z[12:], rtol=1e-5, atol=1e-6)


def test_trainer_never_touches_forward_model(setup):
    gen, train_y, _ = setup
    before = snapshot(gen)
    theta = MappingNetwork(8, hidden=16, depth=1)
    LandscapeTrainer(gen, theta, train_y, steps=2, batch_size=4, fit_iters=2).train(
        rounds=2, progress=False
    )
    assert unchanged(gen, before)
    assert any(p.abs().sum() > 0 for p in theta.out.parameters())  # theta itself did learn


def test_time_budget_stops(setup):
    gen, train_y, _ = setup
    theta = MappingNetwork(8, hidden=16, depth=1)
    trainer = LandscapeTrainer(gen, theta, train_y, steps=2, batch_size=4, fit_iters=1)
    history = trainer.train(time_budget_s=0.5, progress=False)
    assert 1 <= len(history.round) and history.seconds[-1] < 5.0


def test_time_budget_is_not_overshot_by_a_round(setup, monkeypatch):
    import lli_fast.trainer as trainer_module

    gen, train_y, _ = setup
    trainer = LandscapeTrainer(
        gen, MappingNetwork(8, hidden=16, depth=1), train_y, steps=2, batch_size=4, fit_iters=1
    )
    clock = [100.0]  # a fake clock: every collect phase takes exactly 0.3 s
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: clock[0])
    real_collect = trainer.collect

    def collect():
        clock[0] += 0.3
        return real_collect()

    monkeypatch.setattr(trainer, "collect", collect)
    # rounds end at 0.3, 0.6, 0.9 s; a 4th would end at 1.2 s, past the 1 s budget: not started
    history = trainer.train(time_budget_s=1.0, progress=False)
    assert history.seconds == pytest.approx([0.3, 0.6, 0.9])
    # a budget shorter than one round still runs that one round
    assert len(trainer.train(time_budget_s=0.1, progress=False).round) == 4


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(fit_iters=0), ValueError, "fit_iters"),
        (dict(fit_batch_size=-3), ValueError, "fit_batch_size"),
        (dict(buffer_capacity=2, batch_size=4), ValueError, "buffer_capacity"),
        (dict(theta_lr=0.0), ValueError, "theta_lr"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(optimizer="rmsprop"), ValueError, "optimizer"),
        (dict(loss="nope"), ValueError, "loss"),
        (dict(autocast=torch.float32), ValueError, "autocast"),
        (dict(autocast="bf16"), ValueError, "autocast"),
    ],
)
def test_bad_arguments(setup, kwargs, exc, words):
    gen, train_y, _ = setup
    with pytest.raises(exc, match=words):
        LandscapeTrainer(gen, MappingNetwork(8, hidden=8, depth=1), train_y, **kwargs)


def test_bad_mapping_and_train_args(setup):
    gen, train_y, _ = setup
    with pytest.raises(TypeError, match="mapping must be a MappingNetwork"):
        LandscapeTrainer(gen, torch.nn.Linear(8, 8), train_y)
    trainer = LandscapeTrainer(gen, MappingNetwork(8, hidden=8, depth=1), train_y)
    with pytest.raises(ValueError, match="rounds or time_budget_s"):
        trainer.train()
    with pytest.raises(ValueError, match="rounds"):
        trainer.train(rounds=0)
    with pytest.raises(ValueError, match="time_budget_s"):
        trainer.train(time_budget_s=-1)


def test_targets_must_match_model_output(setup):
    gen, train_y, _ = setup
    theta = MappingNetwork(8, hidden=8, depth=1)
    with pytest.raises(ValueError, match=r"targets must have the forward model's output shape"):
        LandscapeTrainer(gen, theta, train_y[:, :, :, :1])
    with pytest.raises(ValueError, match=r"after target_transform"):
        LandscapeTrainer(gen, theta, train_y, target_transform=lambda y: y[:1])
    with pytest.raises(ValueError, match=r"mapping.dim \(5\) must equal"):
        LandscapeTrainer(gen, MappingNetwork(5, hidden=8, depth=1), train_y)


def test_batchnorm_model_in_training_mode_is_refused(setup):
    _, train_y, _ = setup
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.BatchNorm1d(64))
    model.input_dim = 8
    with pytest.raises(ValueError, match="batch-norm layer in training mode"):
        LandscapeTrainer(model, MappingNetwork(8, hidden=8, depth=1), train_y.flatten(1))


def _rows_match_their_targets(trainer):
    """Every ring row's stored loss is L(F(theta(z)), y) for the target that trainer.target()
    returns for its index: the row is fitted against the target its trajectory ran toward."""
    buf = trainer.buffer
    n = len(buf)
    z, idx, loss = buf.z[:n], buf.target_index[:n], buf.loss[:n]
    with torch.no_grad():
        rows = (trainer.forward_model(trainer.mapping(z)) - trainer.target(idx)) ** 2
    torch.testing.assert_close(loss, rows.flatten(1).mean(1), rtol=1e-5, atol=1e-7)
    return idx


def test_augmented_targets_stay_paired_with_their_trajectories(setup):
    # A transform that never gives the same target twice: fitting against a fresh draw (rather
    # than the target the trajectory ran toward) would break the pairing this test checks.
    gen, train_y, _ = setup
    theta = MappingNetwork(8, hidden=16, depth=1)
    noisy = lambda y: y + 0.3 * torch.randn_like(y)  # noqa: E731
    trainer = LandscapeTrainer(
        gen, theta, train_y, steps=3, lr=0.05, batch_size=4, buffer_capacity=30,
        target_transform=noisy, seed=0,
    )  # fmt: skip
    for _ in range(9):  # the ring (30 rows) and the target pool both wrap several times
        trainer.collect()
    idx = _rows_match_their_targets(trainer)
    assert bool((idx >= len(train_y)).all())  # augmented targets live in the pool
    assert trainer.pool_size == (-(-30 // 16) + 1) * 4  # 16 rows per phase: 4 x (K + 1)
    trainer.fit()  # fits against the pool without error


def test_prior_targets_alone_and_mixed(setup):
    gen, train_y, _ = setup
    theta = MappingNetwork(8, hidden=32, depth=2)
    trainer = LandscapeTrainer(gen, theta, None, steps=3, lr=0.05, batch_size=8, seed=0)
    assert trainer.prior_fraction == 1.0
    for _ in range(3):
        trainer.collect()
    idx = _rows_match_their_targets(trainer)
    assert bool((idx >= 0).all()) and trainer.n_targets == 0
    # prior targets are F(x) for x ~ N(0, I): in the model's range, so F(x) reconstructs them
    assert trainer.pool.shape[1:] == train_y.shape[1:]

    mixed = LandscapeTrainer(
        gen, MappingNetwork(8, hidden=16, depth=1), train_y, steps=2, lr=0.05, batch_size=10,
        prior_fraction=0.3, prior=lambda n: torch.full((n, 8), 0.5), seed=1,
    )  # fmt: skip
    for _ in range(4):
        mixed.collect()
    idx = _rows_match_their_targets(mixed)
    from_pool = idx >= len(train_y)
    assert int(from_pool.sum()) == 3 * 3 * 4  # 3 of 10 trajectories per phase, K + 1 = 3 rows each
    with torch.no_grad():
        want = gen(torch.full((1, 8), 0.5))
    got = mixed.target(idx[from_pool])
    assert torch.allclose(got, want.expand_as(got))


def test_training_on_prior_samples_lowers_their_k_step_loss(setup):
    gen, _, _ = setup
    g = torch.Generator().manual_seed(5)
    shifted = lambda n: torch.randn(n, 8, generator=g) * 0.5 + 1.5  # noqa: E731
    with torch.no_grad():
        test_y = gen(torch.randn(32, 8, generator=torch.Generator().manual_seed(6)) * 0.5 + 1.5)
    theta = MappingNetwork(8, hidden=64, depth=2)
    before = k_step_loss(gen, test_y, theta)
    trainer = LandscapeTrainer(
        gen, theta, None, prior=shifted, steps=5, lr=0.05, batch_size=16, fit_iters=10,
        theta_lr=3e-3, seed=0,
    )  # fmt: skip
    trainer.train(rounds=25, progress=False)
    assert k_step_loss(gen, test_y, theta.eval()) < 0.5 * before


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"prior_fraction": 1.5}, "prior_fraction must be a number in [0, 1]"),
        ({"prior_fraction": "half"}, "prior_fraction must be a number in [0, 1]"),
        ({"targets": None, "prior_fraction": 0.5}, "prior_fraction must be 1 when targets is None"),
        ({"targets": None, "target_transform": lambda y: y}, "target_transform needs targets"),
        ({"prior": 3}, "prior must be a callable"),
    ],
)
def test_bad_prior_arguments(setup, kwargs, words):
    gen, train_y, _ = setup
    kwargs = {"targets": train_y, **kwargs}
    targets = kwargs.pop("targets")
    exc = TypeError if "callable" in words else ValueError
    with pytest.raises(exc, match=re.escape(words)):
        LandscapeTrainer(gen, MappingNetwork(8, hidden=8, depth=1), targets, **kwargs)


def test_prior_of_the_wrong_shape_is_named(setup):
    gen, train_y, _ = setup
    trainer = LandscapeTrainer(
        gen, MappingNetwork(8, hidden=8, depth=1), train_y, prior_fraction=0.5,
        prior=lambda n: torch.zeros(n, 3), batch_size=4, steps=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"prior\(n\) must return a \(2, 8\) tensor, got \(2, 3\)"):
        trainer.collect()


def test_diverging_trajectories_do_not_poison_theta():
    # SGD at lr 300 on a linear model diverges: some rows overflow to Inf/NaN and are frozen by
    # the latent step; they must stay out of theta's fit (else theta's weights turn NaN).
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6).requires_grad_(False)
    theta = MappingNetwork(8, hidden=16, depth=1, skip="linear")
    trainer = LandscapeTrainer(
        model,
        theta,
        torch.randn(16, 6),
        steps=10,
        batch_size=8,
        fit_iters=4,
        fit_batch_size=16,
        optimizer="sgd",
        lr=300.0,
        momentum=0.5,
    )
    history = trainer.train(rounds=3, progress=False)
    assert sum(history.nonfinite_rows) > 0  # there were non-finite rows to leave out
    assert all(bool(torch.isfinite(p).all()) for p in theta.parameters())
    assert all(math.isfinite(v) for v in history.collect_loss_start)


def test_mapping_of_another_dtype_is_named(setup):
    gen, train_y, _ = setup
    with pytest.raises(TypeError, match=r"mapping's parameters are torch.float64 .*float32"):
        LandscapeTrainer(gen, MappingNetwork(8, hidden=8, depth=1).double(), train_y)

"""Pins latent_step_ref itself: hand-computed steps, torch.optim numerics, guard, clip, ring.

Every kernel test compares against latent_step_ref, so a wrong reference would let every kernel
pass; these tests check it against values worked out by hand and against torch.optim.
"""

from __future__ import annotations

import pytest
import torch
from helpers import tol

from lli_fast.reference.latent_step import ADAM, SGD, latent_step_ref

INF = float("inf")
NAN = float("nan")


def state(z, grad, *, exp_avg=None, step=None, active=None, dtype=torch.float64):
    """Tensors of latent_step for rows `z` (list of lists), zero moments unless given."""
    z = torch.tensor(z, dtype=dtype)
    B = z.shape[0]
    return dict(
        z=z,
        grad=torch.tensor(grad, dtype=dtype),
        exp_avg=torch.zeros_like(z) if exp_avg is None else torch.tensor(exp_avg, dtype=dtype),
        exp_avg_sq=torch.zeros_like(z),
        step=torch.zeros(B, dtype=torch.int64) if step is None else torch.tensor(step),
        active=torch.ones(B, dtype=torch.bool) if active is None else torch.tensor(active),
    )


def step_ref(s, *, lr=0.1, loss=None, optimizer=ADAM, beta1=0.9, beta2=0.999, eps=0.0,
             max_grad_norm=0.0, stop_loss=-INF, ring_z=None, ring_slots=None):  # fmt: skip
    lr = torch.as_tensor(lr, dtype=torch.float32).reshape(-1)
    latent_step_ref(
        s["z"], s["grad"], s["exp_avg"], s["exp_avg_sq"], s["step"], s["active"], lr, loss,
        optimizer, beta1, beta2, eps, max_grad_norm, stop_loss, ring_z, ring_slots,
    )  # fmt: skip


def test_adam_by_hand_constant_gradient_moves_lr_times_sign():
    # g = [0.5, -4], lr = 0.1, betas (0.9, 0.999), eps = 0.
    # t=1: m = 0.1 g = [0.05, -0.4]; v = 0.001 g^2 = [0.00025, 0.016];
    #      m_hat = m / 0.1 = g; sqrt(v_hat) = sqrt(v / 0.001) = |g|; z -= 0.1 * g / |g|.
    # t=2: m = 0.9 m + 0.1 g = [0.095, -0.76]; v = 0.999 v + 0.001 g^2 = [0.00049975, 0.031984];
    #      m / (1 - 0.81) = g again, v / (1 - 0.998001) = g^2 again: another 0.1 * sign(g).
    s = state([[1.0, -2.0]], [[0.5, -4.0]])
    step_ref(s)
    torch.testing.assert_close(s["z"], torch.tensor([[0.9, -1.9]], dtype=torch.float64))
    torch.testing.assert_close(s["exp_avg"], torch.tensor([[0.05, -0.4]], dtype=torch.float64))
    torch.testing.assert_close(
        s["exp_avg_sq"], torch.tensor([[0.00025, 0.016]], dtype=torch.float64)
    )
    step_ref(s)
    torch.testing.assert_close(s["z"], torch.tensor([[0.8, -1.8]], dtype=torch.float64))
    torch.testing.assert_close(s["exp_avg"], torch.tensor([[0.095, -0.76]], dtype=torch.float64))
    torch.testing.assert_close(
        s["exp_avg_sq"], torch.tensor([[0.00049975, 0.031984]], dtype=torch.float64)
    )
    assert s["step"].tolist() == [2]


def test_adam_by_hand_eps():
    # One step, g = [2], eps = 1: z -= 0.1 * 2 / (|2| + 1) = 0.0666...
    s = state([[0.0]], [[2.0]])
    step_ref(s, eps=1.0)
    torch.testing.assert_close(s["z"], torch.tensor([[-0.2 / 3]], dtype=torch.float64))


def test_sgd_momentum_by_hand_first_step_ignores_old_buffer():
    # t=1: buf = g = 2 (the stale buffer 5 is ignored); z = 1 - 0.1 * 2 = 0.8.
    # t=2: buf = 0.9 * 2 + 2 = 3.8; z = 0.8 - 0.38 = 0.42.
    s = state([[1.0]], [[2.0]], exp_avg=[[5.0]])
    step_ref(s, optimizer=SGD, beta1=0.9)
    torch.testing.assert_close(s["z"], torch.tensor([[0.8]], dtype=torch.float64))
    torch.testing.assert_close(s["exp_avg"], torch.tensor([[2.0]], dtype=torch.float64))
    step_ref(s, optimizer=SGD, beta1=0.9)
    torch.testing.assert_close(s["z"], torch.tensor([[0.42]], dtype=torch.float64))
    torch.testing.assert_close(s["exp_avg"], torch.tensor([[3.8]], dtype=torch.float64))


def test_plain_sgd_by_hand_leaves_buffer_alone():
    # momentum 0: z = 1 - 0.1 * 2 = 0.8; exp_avg is neither read nor written.
    s = state([[1.0]], [[2.0]], exp_avg=[[7.0]])
    step_ref(s, optimizer=SGD, beta1=0.0)
    torch.testing.assert_close(s["z"], torch.tensor([[0.8]], dtype=torch.float64))
    assert s["exp_avg"].item() == 7.0


def test_clip_by_hand():
    # g = [3, 4] has norm 5. max_norm 1: g * 1 / (5 + 1e-6); max_norm 10: coef > 1 -> unclipped.
    # Plain SGD with lr 1 makes z = -g_clipped.
    s = state([[0.0, 0.0]], [[3.0, 4.0]])
    step_ref(s, lr=1.0, optimizer=SGD, beta1=0.0, max_grad_norm=1.0)
    expected = -torch.tensor([[3.0, 4.0]], dtype=torch.float64) / (5 + 1e-6)
    torch.testing.assert_close(s["z"], expected, rtol=1e-12, atol=0)
    s = state([[0.0, 0.0]], [[3.0, 4.0]])
    step_ref(s, lr=1.0, optimizer=SGD, beta1=0.0, max_grad_norm=10.0)
    assert s["z"].tolist() == [[-3.0, -4.0]]


def test_per_row_lr_by_hand():
    s = state([[1.0], [1.0], [1.0]], [[1.0], [1.0], [-2.0]])
    step_ref(s, lr=[0.1, 0.5, 0.25], optimizer=SGD, beta1=0.0)
    # float32 learning rates: 0.1 is not exact, hence the tolerance.
    torch.testing.assert_close(
        s["z"], torch.tensor([[0.9], [0.5], [1.5]], dtype=torch.float64), rtol=1e-7, atol=1e-7
    )


def test_guard_deactivates_and_leaves_rows_untouched():
    # rows: 0 ok, 1 NaN loss, 2 inf grad, 3 loss == stop_loss (not strictly above),
    # 4 already inactive, 5 -inf loss, 6 loss just above stop_loss.
    z = [[float(b), -float(b)] for b in range(7)]
    grad = [[1.0, 1.0]] * 7
    grad[2] = [INF, 1.0]
    s = state(z, grad, active=[True, True, True, True, False, True, True], step=[3] * 7)
    s["exp_avg"].fill_(0.5)
    s["exp_avg_sq"].fill_(0.25)
    before = {k: v.clone() for k, v in s.items()}
    loss = torch.tensor([1.0, NAN, 1.0, 0.5, 1.0, -INF, 0.5000001])
    step_ref(s, loss=loss, stop_loss=0.5)
    assert s["active"].tolist() == [True, False, False, False, False, False, True]
    assert s["step"].tolist() == [4, 3, 3, 3, 3, 3, 4]
    for row in (1, 2, 3, 4, 5):
        for name in ("z", "exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name][row], before[name][row]), (name, row)
    for row in (0, 6):
        assert not torch.equal(s["z"][row], before["z"][row])


def test_non_finite_grad_without_loss():
    s = state([[1.0, 2.0], [3.0, 4.0]], [[NAN, 0.0], [1.0, 1.0]])
    step_ref(s)
    assert s["active"].tolist() == [False, True]
    assert s["z"][0].tolist() == [1.0, 2.0]


def test_ring_write_holds_pre_update_rows_of_every_row():
    s = state([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1.0, 1.0]] * 3, active=[True, False, True])
    before = s["z"].clone()
    ring = torch.full((5, 2), -1.0, dtype=torch.float64)
    step_ref(s, ring_z=ring, ring_slots=torch.tensor([4, 0, 2]))
    assert ring[[4, 0, 2]].tolist() == before.tolist()
    assert ring[[1, 3]].tolist() == [[-1.0, -1.0]] * 2
    assert not torch.equal(s["z"][0], before[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "name, make, optimizer, beta1",
    [
        (
            "adam",
            lambda p, lr: torch.optim.Adam([p], lr=lr, betas=(0.8, 0.99), eps=1e-6),
            ADAM,
            0.8,
        ),
        ("sgd_momentum", lambda p, lr: torch.optim.SGD([p], lr=lr, momentum=0.7), SGD, 0.7),
        ("sgd", lambda p, lr: torch.optim.SGD([p], lr=lr), SGD, 0.0),
    ],
)
def test_matches_torch_optim_per_row(dtype, name, make, optimizer, beta1):
    """25 steps, one torch.optim optimizer per row, each with its own learning rate."""
    gen = torch.Generator().manual_seed(0)
    B, D, steps = 4, 33, 25
    z0 = torch.randn(B, D, generator=gen, dtype=dtype)
    grads = torch.randn(steps, B, D, generator=gen, dtype=dtype)
    lrs = torch.tensor([0.01, 0.05, 0.002, 0.1], dtype=torch.float32)
    s = state(z0.tolist(), grads[0].tolist(), dtype=dtype)
    params = [z0[b].clone().requires_grad_(True) for b in range(B)]
    opts = [make(params[b], float(lrs[b])) for b in range(B)]
    for k in range(steps):
        s["grad"].copy_(grads[k])
        step_ref(s, lr=lrs, optimizer=optimizer, beta1=beta1, beta2=0.99, eps=1e-6)
        for b in range(B):
            params[b].grad = grads[k, b].clone()
            opts[b].step()
    expected = torch.stack([p.detach() for p in params])
    # float32 learning rates: torch.optim gets the same float32-rounded values.
    torch.testing.assert_close(s["z"], expected, **tol(dtype))
    if name == "adam":
        m = torch.stack([opts[b].state[params[b]]["exp_avg"] for b in range(B)])
        v = torch.stack([opts[b].state[params[b]]["exp_avg_sq"] for b in range(B)])
        torch.testing.assert_close(s["exp_avg"], m, **tol(dtype))
        torch.testing.assert_close(s["exp_avg_sq"], v, **tol(dtype))
    elif name == "sgd_momentum":
        buf = torch.stack([opts[b].state[params[b]]["momentum_buffer"] for b in range(B)])
        torch.testing.assert_close(s["exp_avg"], buf, **tol(dtype))
    assert s["step"].tolist() == [steps] * B


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 100.0])
def test_clip_matches_clip_grad_norm_then_adam(max_norm):
    gen = torch.Generator().manual_seed(1)
    B, D = 5, 17
    z0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    grad = torch.randn(B, D, generator=gen, dtype=torch.float64) * torch.arange(1, B + 1)[:, None]
    s = state(z0.tolist(), grad.tolist())
    step_ref(s, lr=0.05, eps=1e-8, max_grad_norm=max_norm)
    for b in range(B):
        p = z0[b].clone().requires_grad_(True)
        p.grad = grad[b].clone()
        torch.nn.utils.clip_grad_norm_([p], max_norm)
        opt = torch.optim.Adam([p], lr=float(torch.tensor(0.05, dtype=torch.float32)), eps=1e-8)
        opt.step()
        torch.testing.assert_close(s["z"][b], p.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s["exp_avg"][b], opt.state[p]["exp_avg"], rtol=1e-12, atol=0)

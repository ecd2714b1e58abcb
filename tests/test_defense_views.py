"""Augmentations and contrastive losses of the defense, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lli_fast.defense.views import nt_xent, random_views, translate, view_agreement


def test_translate_moves_pixels_and_fills_with_zeros():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    down_right = translate(x, torch.tensor([1, 2]))
    expected = torch.zeros(4, 4)
    expected[1:, 2:] = x[0, 0, :3, :2]
    torch.testing.assert_close(down_right[0, 0], expected)
    up = translate(x, torch.tensor([-1, 0]))
    torch.testing.assert_close(up[0, 0, :3], x[0, 0, 1:])
    assert up[0, 0, 3].abs().sum() == 0


def test_translate_per_sample_shifts_and_zero_shift_is_identity():
    x = torch.rand(3, 1, 5, 5)
    shifts = torch.tensor([[0, 0], [1, 0], [0, -1]])
    out = translate(x, shifts)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1, 0, 1:], x[1, 0, :4])
    torch.testing.assert_close(out[2, 0, :, :4], x[2, 0, :, 1:])


def test_translate_gradient_counts_the_pixels_kept():
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    translate(x, torch.tensor([1, 1])).sum().backward()
    expected = torch.zeros(4, 4)
    expected[:3, :3] = 1  # the last row and column fall off the image
    torch.testing.assert_close(x.grad[0, 0], expected)


def test_shared_views_do_not_depend_on_the_rest_of_the_batch():
    x = torch.rand(5, 1, 8, 8)
    big = random_views(x, 3, generator=torch.Generator().manual_seed(7), shared=True)
    one = random_views(x[2:3], 3, generator=torch.Generator().manual_seed(7), shared=True)
    assert big.shape == (3, 5, 1, 8, 8)
    torch.testing.assert_close(big[:, 2:3], one)


def test_view_agreement_values():
    e = torch.eye(3)
    same = torch.stack([e, e])  # two identical views of three images
    torch.testing.assert_close(view_agreement(same), torch.zeros(3))
    orthogonal = torch.stack([e, e.roll(1, dims=1)])
    torch.testing.assert_close(view_agreement(orthogonal), torch.ones(3))
    # Three views at 0, 60 and 120 degrees: mean cosine over the 6 ordered pairs is 0 -> loss 1.
    angles = torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3])
    v = torch.stack([angles.cos(), angles.sin()], dim=1)[:, None, :]
    cos = (0.5 + 0.5 - 0.5) * 2 / 6
    torch.testing.assert_close(view_agreement(v), torch.tensor([1 - cos]))
    with pytest.raises(ValueError, match="at least 2 views"):
        view_agreement(e[None])


def test_nt_xent_matches_hand_computation():
    p1 = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    p2 = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=1)
    t = 0.5
    p = torch.cat([p1, p2])
    loss = 0.0
    for i, j in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        logits = torch.tensor([float(p[i] @ p[k]) / t for k in range(4) if k != i])
        pos = [k for k in range(4) if k != i].index(j)
        loss += -(logits[pos] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(nt_xent(p1, p2, t), loss / 4)

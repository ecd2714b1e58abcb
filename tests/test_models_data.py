"""The real forward model and data that ship in packages, and the mapping network."""

from __future__ import annotations

import pytest
import torch

from lli_fast.data import lfw_faces, to_model_range
from lli_fast.mapping import MappingNetwork
from lli_fast.models import face_dcgan


def test_face_dcgan_loads_frozen_and_produces_faces():
    gen = face_dcgan()
    assert not gen.training
    assert all(not p.requires_grad for p in gen.parameters())
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = gen(z)
    assert img.shape == (4, 3, 64, 64)
    assert img.min() >= -1 and img.max() <= 1
    # a trained generator: different latents give different faces, same latent the same face
    assert (img[0] - img[1]).abs().mean() > 0.05
    torch.testing.assert_close(gen(z[:1]), img[:1])
    torch.testing.assert_close(gen(z[:, :, None, None]), img)


def test_lfw_faces_split_is_fixed_and_scaled():
    a, b = lfw_faces(), lfw_faces()
    assert a.train.shape == (80, 3, 64, 64) and a.heldout.shape == (20, 3, 64, 64)
    assert torch.equal(a.heldout, b.heldout)
    assert a.train.min() >= -1 and a.train.max() <= 1
    assert torch.equal(a.train[:, 0], a.train[:, 1])  # gray repeated into 3 channels
    # no face is in both parts
    d = torch.cdist(a.train.flatten(1), a.heldout.flatten(1))
    assert d.min() > 1.0
    with pytest.raises(ValueError, match="heldout"):
        lfw_faces(heldout=0)
    with pytest.raises(ValueError, match="size"):
        lfw_faces(size=2)


def test_to_model_range():
    x = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    y = to_model_range(x, 2)
    assert y.shape == (1, 3, 2, 2)
    assert y[0, 0].tolist() == [[-1.0, 1.0], [0.0, -0.5]]
    with pytest.raises(ValueError, match="images must be"):
        to_model_range(torch.zeros(2, 5, 4, 4), 4)


def test_mapping_starts_as_identity_and_checks_input():
    theta = MappingNetwork(10, hidden=32, depth=3)
    z = torch.randn(7, 10)
    torch.testing.assert_close(theta(z), z, rtol=0, atol=0)
    # yet it can learn: the output layer receives a gradient at init
    theta(z).pow(2).sum().backward()
    assert theta.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"z must have shape \(B, 10\)"):
        theta(torch.randn(7, 9))
    for bad in (dict(dim=0), dict(dim=4, hidden=0), dict(dim=4, depth=0), dict(dim=2.5)):
        with pytest.raises(ValueError, match="must be an int"):
            MappingNetwork(**bad)

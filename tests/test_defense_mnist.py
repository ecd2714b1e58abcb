"""The fixed, stratified MNIST split of the defense demo."""

from __future__ import annotations

import pytest
import torch
from defense_tiny import split

from lli_fast.defense.mnist import load_mnist_split


def test_split_sizes_balance_range_and_dtype():
    data = split()
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert torch.bincount(data.y_test, minlength=10).tolist() == [100] * 10
    assert torch.bincount(data.y_train, minlength=10).tolist() == [400] * 10
    assert data.x_train.min() == 0 and data.x_train.max() == 1


def test_split_is_deterministic_and_disjoint():
    data = split()
    again = load_mnist_split()
    assert torch.equal(data.x_test, again.x_test) and torch.equal(data.y_train, again.y_train)
    train_rows = {row.numpy().tobytes() for row in data.x_train.flatten(1)}
    shared = sum(row.numpy().tobytes() in train_rows for row in data.x_test.flatten(1))
    assert shared == 0


def test_bad_holdout_size_is_rejected():
    with pytest.raises(ValueError, match="holdout_per_class"):
        load_mnist_split(holdout_per_class=500)

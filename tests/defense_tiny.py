"""Shared, session-cached tiny models for the defense tests (not a test module).

A LeNet-sized classifier trained for a few hundred images' worth of steps on the real MNIST split:
weak (about 92% accurate) but real, so that attacks and purifiers have something to act on, and
cheap enough (seconds on 2 CPU cores) that every defense test file can share it.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch

from lli_fast.defense.classifier import ClassifierConfig, train_classifier
from lli_fast.defense.mnist import MnistSplit, load_mnist_split

TINY = ClassifierConfig(
    channels=(8, 16), feature_dim=64, projection_dim=32, epochs=4, batch_size=64, lr=1e-2
)


@functools.cache
def split() -> MnistSplit:
    return load_mnist_split()


@functools.cache
def small_split(n_train: int = 1500) -> MnistSplit:
    data = split()
    return replace(data, x_train=data.x_train[:n_train], y_train=data.y_train[:n_train])


@functools.cache
def tiny_classifier():
    """A frozen ContrastiveCNN in eval mode (do not modify it: it is shared)."""
    torch.manual_seed(0)
    return train_classifier(TINY, small_split())


def heldout(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = split()
    return data.x_test[:n], data.y_test[:n]

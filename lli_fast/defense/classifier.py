"""A small MNIST CNN with a SimCLR projection head, trained jointly, and its cached checkpoint."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lli_fast.defense.checkpoint import cache_dir, config_key, load_checked, save_atomic
from lli_fast.defense.mnist import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    SPLIT_VERSION,
    MnistSplit,
    load_mnist_split,
)
from lli_fast.defense.views import nt_xent, random_views


class ContrastiveCNN(nn.Module):
    """LeNet-sized classifier whose penultimate features also feed a contrastive projection head.

    Input: (B, 1, 28, 28) images in [0, 1]. `forward` gives class logits (B, 10); `embed` gives
    unit-norm projections (B, projection_dim) for the self-supervised loss.
    """

    def __init__(
        self, channels: tuple[int, int] = (16, 32), feature_dim: int = 128, projection_dim: int = 64
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.input_shape = IMAGE_SHAPE
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, feature_dim),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(feature_dim, NUM_CLASSES)
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, projection_dim)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, feature_dim) penultimate features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, 10) logits."""
        return self.classifier(self.body(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, projection_dim) unit-norm contrastive projections."""
        return F.normalize(self.projector(self.body(x)), dim=1)


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines the trained weights (it keys the cache)."""

    channels: tuple[int, int] = (16, 32)
    feature_dim: int = 128
    projection_dim: int = 64
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    contrastive_weight: float = 0.5
    temperature: float = 0.2
    max_shift: int = 2
    # Strong view noise makes the features (and so the contrastive loss) more stable to small
    # input changes. Measured: 97.6% held-out with 0.3 vs 97.9% with 0.1, and on 200 held-out
    # digits (0s and 1s) undefended PGD-40 accuracy at eps 0.1 of 95% vs 87.5%.
    noise_std: float = 0.3
    holdout_per_class: int = 100
    seed: int = 0

    def build(self) -> ContrastiveCNN:
        return ContrastiveCNN(tuple(self.channels), self.feature_dim, self.projection_dim)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on images x (N, 1, 28, 28) with labels y (N,)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / max(len(x), 1)


def train_classifier(
    config: ClassifierConfig, data: MnistSplit, *, progress: bool = False
) -> ContrastiveCNN:
    """Train cross entropy on two augmented views plus weight * NT-Xent between them.

    Both terms share the backbone, so the features the classifier uses are the ones the
    contrastive loss measures; that link is what lets a test-time purifier repair the classifier's
    input by minimising the contrastive loss alone.
    """
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = config.build()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(data.x_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            views = random_views(
                x, 2, max_shift=config.max_shift, noise_std=config.noise_std, generator=gen
            )
            feats = model.features(views.flatten(0, 1))
            logits = model.classifier(feats)
            proj = F.normalize(model.projector(feats), dim=1).unflatten(0, (2, len(idx)))
            loss = F.cross_entropy(logits, y.repeat(2)) + config.contrastive_weight * nt_xent(
                proj[0], proj[1], config.temperature
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            acc = accuracy(model, data.x_test, data.y_test)
            print(f"  classifier epoch {epoch + 1}/{config.epochs}: held-out acc {acc:.4f}")
    opt.zero_grad(set_to_none=True)  # a frozen model carries no stale .grad
    model.eval()
    model.requires_grad_(False)
    return model


def _cache_config(config: ClassifierConfig) -> dict:
    return {**asdict(config), "data": SPLIT_VERSION}


def classifier_path(config: ClassifierConfig) -> Path:
    """Where the cached checkpoint of `config` lives."""
    return cache_dir() / f"classifier-{config_key(_cache_config(config))}.safetensors"


def cached_classifier(config: ClassifierConfig) -> bool:
    """Whether the cache holds a usable checkpoint trained with `config`."""
    return load_checked(classifier_path(config), _cache_config(config)) is not None


def load_or_train_classifier(
    config: ClassifierConfig | None = None,
    data: MnistSplit | None = None,
    *,
    use_cache: bool = True,
    progress: bool = False,
) -> tuple[ContrastiveCNN, dict]:
    """Return (frozen model in eval mode, info) from the cache, training and caching it if needed.

    info holds the config, the held-out accuracy, whether it came from the cache and the training
    time. The checkpoint is safetensors (no code runs on load) keyed by the config's digest.
    """
    config = config or ClassifierConfig()
    data = data or load_mnist_split(config.holdout_per_class, seed=config.seed)
    cfg = _cache_config(config)
    path = classifier_path(config)
    loaded = load_checked(path, cfg) if use_cache else None
    if loaded is not None:
        tensors, meta = loaded
        model = config.build()
        model.load_state_dict(tensors)
        model.eval()
        model.requires_grad_(False)
        info = {**meta, "from_cache": True, "path": str(path)}
        return model, info
    start = time.perf_counter()
    model = train_classifier(config, data, progress=progress)
    seconds = time.perf_counter() - start
    meta = {
        "config": cfg,
        "heldout_accuracy": accuracy(model, data.x_test, data.y_test),
        "train_seconds": round(seconds, 1),
        "n_train": len(data.x_train),
        "n_heldout": len(data.x_test),
    }
    if use_cache:
        save_atomic(path, model.state_dict(), meta)
    return model, {**meta, "from_cache": False, "path": str(path) if use_cache else None}

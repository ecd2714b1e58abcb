"""Latency of test-time purification on MNIST (issue 5), side by side in one run.

  landscape_1   learned landscape, one gradient step on z (lli_fast.invert + theta)
  reverse_K     reverse attack (Mao et al.), K = 1, 5, 40 PGD steps on the contrastive loss
Each provider returns the classifier's logits on the purified batch, at batch 1 and 256.
The landscape is listed first, so the ratio column reads "reverse_K is xN slower than one
learned step". Target: reverse_40 / landscape_1 >= 20 at both batch sizes.

Latency does not depend on the weights, so the models here are untrained copies of the demo's
architectures (ContrastiveCNN, MappingNetwork with the demo's width and depth): the suite needs
no training and no cache. Accuracy is measured by `lli defend-demo`, not here.
"""

from __future__ import annotations

import pytest
import torch

from lli_fast.defense.classifier import ClassifierConfig
from lli_fast.defense.landscape import LandscapeConfig
from lli_fast.defense.purifier import Purifier
from lli_fast.mapping import MappingNetwork

PROVIDERS = ["landscape_1", "reverse_1", "reverse_5", "reverse_40"]
ROUNDS = {
    1: {"landscape_1": 40, "reverse_1": 40, "reverse_5": 20, "reverse_40": 8},
    256: {"landscape_1": 6, "reverse_1": 6, "reverse_5": 3, "reverse_40": 2},
}


@pytest.fixture(scope="module")
def purifiers() -> dict[str, Purifier]:
    torch.manual_seed(0)
    classifier = ClassifierConfig().build().eval().requires_grad_(False)
    cfg = LandscapeConfig()
    mapping = MappingNetwork(784, hidden=cfg.hidden, depth=cfg.depth).requires_grad_(False)
    out = {"landscape_1": cfg.purifier(classifier, mapping, steps=1)}
    for k in (1, 5, 40):
        out[f"reverse_{k}"] = Purifier(
            classifier, eps_v=cfg.eps_v, steps=k, n_views=cfg.n_views, noise_std=cfg.noise_std
        )
    return out


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_purify_and_classify(benchmark, purifiers, provider, batch):
    benchmark.group = f"MNIST purification + classification, B={batch}"
    benchmark.extra_info["batch"] = batch
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    purifier = purifiers[provider]

    def call() -> torch.Tensor:
        with torch.no_grad():
            return purifier(x)

    logits = benchmark.pedantic(call, rounds=ROUNDS[batch][provider], warmup_rounds=1)
    assert logits.shape == (batch, 10)

"""Test-time adversarial purification on MNIST with a learned landscape (issue 5).

    from lli_fast.defense import Purifier, load_or_train_classifier, pgd_attack
    classifier, info = load_or_train_classifier()          # cached after the first call
    defended = Purifier(classifier, mapping)                # drop-in: images -> logits
    logits = defended(x)                                    # x: (B, 1, 28, 28) in [0, 1]

Modules: mnist (data split), views (augmentations, contrastive losses), classifier (CNN with a
projection head, cached checkpoint), attack (L-inf PGD), reverse (reverse-attack baseline),
purifier (Purifier), landscape (training theta), demo (`lli defend-demo`).
"""

from lli_fast.defense.attack import pgd_attack
from lli_fast.defense.classifier import ClassifierConfig, ContrastiveCNN, load_or_train_classifier
from lli_fast.defense.landscape import LandscapeConfig, load_or_train_landscape, train_landscape
from lli_fast.defense.mnist import load_mnist_split
from lli_fast.defense.purifier import Purifier
from lli_fast.defense.reverse import ContrastivePurificationLoss, reverse_attack

__all__ = [
    "ClassifierConfig",
    "ContrastiveCNN",
    "ContrastivePurificationLoss",
    "LandscapeConfig",
    "Purifier",
    "load_mnist_split",
    "load_or_train_classifier",
    "load_or_train_landscape",
    "pgd_attack",
    "reverse_attack",
    "train_landscape",
]

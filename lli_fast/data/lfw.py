"""Real face photos that ship with scikit-image: `skimage.data.lfw_subset()`.

The subset holds 200 grayscale 25x25 crops from Labeled Faces in the Wild; the first 100 are faces
(the rest are non-face patches). We resize them, repeat gray into 3 channels and scale to [-1, 1],
the output range of the face DCGAN, and split them with a fixed permutation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

N_FACES = 100
SPLIT_SEED = 20230


class FaceSplit(NamedTuple):
    train: torch.Tensor  # (N_train, 3, size, size) in [-1, 1]
    heldout: torch.Tensor  # (N_heldout, 3, size, size) in [-1, 1]


def to_model_range(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) images in [0, 1] -> (N, 3, size, size) in [-1, 1] (bilinear)."""
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be (N, H, W) or (N, 1 or 3, H, W), got shape {tuple(images.shape)}"
        )
    images = images.to(torch.float32)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.clamp(0, 1) * 2 - 1).contiguous()


def lfw_faces(size: int = 64, heldout: int = 20) -> FaceSplit:
    """The 100 LFW face crops in skimage, as (N, 3, size, size) tensors in [-1, 1].

    A fixed permutation (seed SPLIT_SEED) puts `heldout` faces aside for evaluation; the rest are
    for training. The split is the same on every machine.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if not isinstance(heldout, int) or not 0 < heldout < N_FACES:
        raise ValueError(f"heldout must be an int in [1, {N_FACES - 1}], got {heldout!r}")
    try:
        from skimage.data import lfw_subset
    except ImportError as exc:
        raise ModuleNotFoundError(
            "lli_fast.data.lfw_faces needs scikit-image (pip install 'lli_fast[data]')"
        ) from exc
    faces = torch.from_numpy(np.asarray(lfw_subset()[:N_FACES], dtype=np.float32))
    images = to_model_range(faces, size)
    order = torch.randperm(N_FACES, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return FaceSplit(train=images[order[heldout:]], heldout=images[order[:heldout]])

"""The pretrained 64x64 face DCGAN shipped in the `gan-face-generate` package (MIT).

The package's `weights.tar` is a torch zip whose `netG_state_dict` fits the standard DCGAN
generator (nz=100, ngf=64, 3 channels, tanh output). The module below is our own definition of that
architecture; it takes flat (B, 100) latents so that every lli_fast forward model has flat inputs.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn

LATENT_DIM = 100
IMAGE_SHAPE = (3, 64, 64)


class DCGANGenerator(nn.Module):
    """Standard DCGAN generator: (B, nz) -> (B, 3, 64, 64) in [-1, 1].

    Five transposed convolutions (4x4 kernels) grow a 1x1 map to 4, 8, 16, 32, 64 pixels, with batch
    norm and ReLU between them and tanh at the end. Layer indices match the checkpoint's `main.N`.
    """

    def __init__(self, nz: int = LATENT_DIM, ngf: int = 64, channels: int = 3) -> None:
        super().__init__()
        self.input_dim = nz
        widths = [nz, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = []
        for i in range(4):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride, pad, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, nz) or (B, nz, 1, 1) -> images (B, 3, 64, 64)."""
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


def weights_path() -> str:
    """Path of `weights.tar` inside the installed gan-face-generate package."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "lli_fast.models.face_dcgan needs the package gan-face-generate==1.1.1; install it "
            "with `pip install --no-deps gan-face-generate==1.1.1` (its own requirements pull in a "
            "torchvision that breaks beside the CPU torch)"
        )
    path = os.path.join(os.path.dirname(spec.origin), "weights.tar")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gan-face-generate is installed but has no weights file at {path}")
    return path


def face_dcgan(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The pretrained face DCGAN, in eval mode with every parameter frozen.

    Returns a module mapping latents (B, 100) ~ N(0, I) to faces (B, 3, 64, 64) in [-1, 1].
    The checkpoint is loaded with weights_only=True (no code runs from the file).
    """
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    if "netG_state_dict" not in state:
        raise KeyError(f"{weights_path()} has no 'netG_state_dict' (keys: {sorted(state)})")
    net = DCGANGenerator()
    net.load_state_dict(state["netG_state_dict"])
    net.eval().requires_grad_(False)
    return net.to(device=device, dtype=dtype)
